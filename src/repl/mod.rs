//! The shell: `millrace` with no arguments.
//!
//! On a terminal it is a line editor (history file, multi-line statements ended by
//! `;`, tab completion of keywords, tables, columns, functions and queries), backslash
//! commands (`\d`, `\i`, `\pset`, ... in [`commands`]), and live queries: a `SELECT`
//! over an unbounded table shows its result in place, batch after batch, until Ctrl-C
//! ([`live`]). `CREATE SINK` queries run in the background; their failures are reported
//! at the next prompt.
//!
//! With standard input not a terminal (a pipe, a file) it reads statements and
//! commands line by line without the editor, and a bare `SELECT` over a stream prints
//! to the console in the background, as scripts do.

pub mod commands;
pub mod completion;
mod live;
mod output;
mod terminate;

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use datafusion::arrow::util::pretty::pretty_format_batches;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor, EventHandler, ExternalPrinter, KeyEvent};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::session::{Session, StatementResult};
use crate::sink::OutputMode;
use crate::sql::split::{ends_statement, split_statements};
use completion::{Catalog, InterruptHandler, ShellHelper, is_command};
use output::OutputSettings;

/// Prints what a statement produced, the same way in scripts (`-f`, `-c`): rows on
/// standard output, notes on standard error.
pub fn print_result(result: &StatementResult) -> Result<()> {
    match result {
        StatementResult::Rows(batches) => println!("{}", pretty_format_batches(batches)?),
        StatementResult::Declared(name) => eprintln!("table '{name}' declared"),
        StatementResult::QueryStarted(query) => eprintln!(
            "streaming query '{}' started (id {}, run {})",
            query.name(),
            query.id(),
            query.run_id()
        ),
        StatementResult::Stopped(query) => eprintln!("streaming query '{}' stopped", query.name()),
        StatementResult::Json(value) => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        ),
        StatementResult::Done => {}
    }
    Ok(())
}

/// The environment variable naming the shell's history file (empty: keep no
/// history), so tests and scripted sessions do not touch `~/.millrace_history`.
pub const HISTORY_ENV: &str = "MILLRACE_HISTORY";

/// How the shell starts.
#[derive(Debug, Clone, Default)]
pub struct ShellOptions {
    /// Where typed statements are remembered across sessions; `None` keeps no history.
    pub history_file: Option<PathBuf>,
}

impl ShellOptions {
    /// Options with the history file given on the command line (`--history-file`),
    /// else `$MILLRACE_HISTORY` (empty: none), else `~/.millrace_history`.
    pub fn new(history_file: Option<PathBuf>) -> Self {
        let history_file = history_file.or_else(|| match std::env::var_os(HISTORY_ENV) {
            Some(path) if path.is_empty() => None,
            Some(path) => Some(PathBuf::from(path)),
            None => {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".millrace_history"))
            }
        });
        ShellOptions { history_file }
    }
}

/// Runs the shell until `\q`, end of input, or a second Ctrl-C at an empty prompt;
/// then stops every query after its current batch and waits for them. SIGTERM does
/// the same and exits with status 143 (see `terminate.rs`).
///
/// On a terminal the shell exits successfully once the queries have stopped (their
/// failures were reported at the prompt). Reading a pipe, it returns the first
/// failure of a query, as a script would.
pub fn run(session: &Session, runtime: &Runtime, options: &ShellOptions) -> Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let mut shell = Shell {
        session,
        runtime,
        interactive,
        settings: OutputSettings::default(),
        interrupts: if interactive {
            Interrupts::listen(runtime)
        } else {
            Interrupts::none()
        },
        reported: HashSet::new(),
        depth: 0,
        screen_rows: None,
    };
    let watch = terminate::Watch::listen(runtime);
    let finished = watch.finisher();
    std::thread::scope(|scope| {
        scope.spawn(|| watch.wait(session, runtime));
        let outcome = if interactive {
            let outcome = shell.run_editor(options);
            crate::sink::console::set_console_printer(None);
            outcome
        } else {
            shell.run_plain()
        };
        finished.notify_one();
        outcome
    })
}

const BANNER: &str = "statements end with ';'; \\? lists the commands, \\q quits";

/// What the shell does after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Read the next input.
    Continue,
    /// The input failed (a script given with `\i` stops there).
    Failed,
    /// Leave the shell.
    Quit,
}

struct Shell<'a> {
    session: &'a Session,
    runtime: &'a Runtime,
    /// Standard input is a terminal: line editor, live queries, Ctrl-C handling.
    interactive: bool,
    settings: OutputSettings,
    interrupts: Interrupts,
    /// Run ids of the failed queries already reported.
    reported: HashSet<String>,
    /// Nesting of `\i` scripts.
    depth: usize,
    /// The terminal's height, so a live table can be redrawn without scrolling.
    screen_rows: Option<usize>,
}

impl Shell<'_> {
    fn run_editor(&mut self, options: &ShellOptions) -> Result<()> {
        let config = Config::builder()
            .history_ignore_space(true)
            .auto_add_history(false)
            .completion_type(CompletionType::List)
            .build();
        let mut editor: Editor<ShellHelper, DefaultHistory> =
            Editor::with_config(config).map_err(terminal_error)?;
        editor.set_helper(Some(ShellHelper::new()));
        let empty_line = Arc::new(AtomicBool::new(true));
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(InterruptHandler(empty_line.clone()))),
        );
        // Background console sinks print above the prompt, not into the typed line.
        if let Ok(mut printer) = editor.create_external_printer() {
            crate::sink::console::set_console_printer(Some(Box::new(move |text: String| {
                let _ = printer.print(text);
            })));
        }
        let history = options.history_file.as_deref();
        if let Some(path) = history.filter(|p| p.exists())
            && let Err(e) = editor.load_history(path)
        {
            eprintln!(
                "warning: cannot read the history file {}: {e}",
                path.display()
            );
        }
        eprintln!("millrace {} — {BANNER}", env!("CARGO_PKG_VERSION"));
        let mut history_warned = false;
        let mut interrupted = false;
        loop {
            self.report_failures();
            let catalog = self.catalog();
            if let Some(helper) = editor.helper_mut() {
                helper.catalog = catalog;
            }
            match editor.readline("millrace> ") {
                Ok(input) => {
                    interrupted = false;
                    self.screen_rows = editor.dimensions().map(|(_, rows)| usize::from(rows));
                    if input.trim().is_empty() {
                        continue;
                    }
                    let _ = editor.add_history_entry(input.trim_end());
                    if let Some(path) = history
                        && let Err(e) = editor.append_history(path)
                        && !std::mem::replace(&mut history_warned, true)
                    {
                        eprintln!(
                            "warning: cannot write the history file {}: {e}",
                            path.display()
                        );
                    }
                    if self.handle(&input) == Flow::Quit {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    if !empty_line.load(Ordering::SeqCst) {
                        interrupted = false;
                    } else if interrupted {
                        break;
                    } else {
                        interrupted = true;
                        eprintln!("(Ctrl-C again at an empty prompt, \\q or Ctrl-D quits)");
                    }
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => {
                    self.quit()?;
                    return Err(terminal_error(e));
                }
            }
        }
        self.quit()
    }

    fn run_plain(&mut self) -> Result<()> {
        eprintln!("millrace {} — {BANNER}", env!("CARGO_PKG_VERSION"));
        let stdin = std::io::stdin();
        let mut pending = Pending::default();
        loop {
            self.report_failures();
            eprint!(
                "{}",
                if pending.is_empty() {
                    "millrace> "
                } else {
                    "       -> "
                }
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("error: cannot read standard input: {e}");
                    break;
                }
            }
            if let Some(input) = pending.push(&line)
                && self.handle(&input) == Flow::Quit
            {
                return self.quit();
            }
        }
        if let Some(rest) = pending.finish() {
            self.handle(&rest);
        }
        self.quit()
    }

    /// Runs one complete input: a command, or statements ending with `;`.
    fn handle(&mut self, input: &str) -> Flow {
        let trimmed = input.trim();
        if is_command(trimmed) {
            return self.command(trimmed);
        }
        for statement in split_statements(input) {
            if !self.run_statement(&statement) {
                return Flow::Failed;
            }
        }
        Flow::Continue
    }

    /// Runs one statement and shows what it produced; `false` if it failed or was
    /// cancelled with Ctrl-C.
    fn run_statement(&mut self, sql: &str) -> bool {
        let started = Instant::now();
        let (sender, receiver) = live::channel();
        let live_mode: Arc<Mutex<Option<OutputMode>>> = Arc::default();
        let outcome = if self.interactive {
            let recorded = live_mode.clone();
            let live_sink = move |mode: OutputMode| {
                *recorded.lock().unwrap_or_else(PoisonError::into_inner) = Some(mode);
                live::sink(sender.clone())
            };
            let (session, interrupts) = (self.session, &mut self.interrupts);
            interrupts.clear();
            self.runtime.block_on(async {
                tokio::select! {
                    result = session.execute_with_live_sink(sql, &live_sink) => Some(result),
                    _ = interrupts.recv() => None,
                }
            })
        } else {
            Some(self.runtime.block_on(self.session.execute(sql)))
        };
        let result = match outcome {
            None => {
                eprintln!("cancelled");
                return false;
            }
            Some(Err(e)) => {
                eprintln!("error: {e}");
                return false;
            }
            Some(Ok(result)) => result,
        };
        let live_mode = *live_mode.lock().unwrap_or_else(PoisonError::into_inner);
        match (result, live_mode) {
            (StatementResult::QueryStarted(query), Some(mode)) => {
                let shown = live::show(
                    self.runtime,
                    &query,
                    mode,
                    receiver,
                    &mut self.interrupts,
                    &self.settings,
                    self.screen_rows,
                );
                if let Err(e) = shown {
                    query.stop();
                    eprintln!("error: {e}");
                    return false;
                }
                self.report_failures();
                true
            }
            (result, _) => self.show(&result, started),
        }
    }

    /// Shows a statement's result in the shell: rows in the chosen output format.
    fn show(&mut self, result: &StatementResult, started: Instant) -> bool {
        match result {
            StatementResult::Rows(batches) => {
                let Some(schema) = batches.first().map(|b| b.schema()) else {
                    return true;
                };
                match output::render(&schema, batches, &self.settings, true) {
                    Ok(rendered) => {
                        print_stdout(&rendered.text);
                        eprintln!(
                            "{} in {:.3} s",
                            rendered.summary(),
                            started.elapsed().as_secs_f64()
                        );
                        true
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        false
                    }
                }
            }
            StatementResult::QueryStarted(query) => {
                eprintln!(
                    "streaming query '{name}' started in the background; \
                     SHOW QUERIES lists it, STOP QUERY {name} stops it",
                    name = query.name(),
                );
                true
            }
            other => print_result(other)
                .map_err(|e| eprintln!("error: {e}"))
                .is_ok(),
        }
    }

    /// Prints, once each, the failures of queries that ended with an error.
    fn report_failures(&mut self) {
        for query in self.session.queries() {
            if let Some(error) = query.exception()
                && self.reported.insert(query.run_id().to_string())
            {
                eprintln!("streaming query '{}' failed: {error}", query.name());
            }
        }
    }

    /// What completion knows: tables with their columns, functions, queries.
    fn catalog(&self) -> Catalog {
        let tables = self.runtime.block_on(commands::tables(self.session));
        let state = self.session.context().state();
        let mut functions: Vec<String> = state
            .scalar_functions()
            .keys()
            .chain(state.aggregate_functions().keys())
            .chain(state.window_functions().keys())
            .filter(|name| !name.starts_with("__"))
            .cloned()
            .chain(["window", crate::functions::SESSION_WINDOW, "window_time"].map(String::from))
            .collect();
        functions.sort();
        functions.dedup();
        let mut queries: Vec<String> = self
            .session
            .queries()
            .iter()
            .map(|q| q.name().to_string())
            .collect();
        queries.sort();
        queries.dedup();
        Catalog {
            columns: tables
                .iter()
                .map(|(name, provider)| {
                    let schema = provider.schema();
                    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
                    (name.clone(), columns)
                })
                .collect(),
            tables: tables.into_iter().map(|(name, _)| name).collect(),
            functions,
            queries,
        }
    }

    /// Stops every query after its current batch and waits for them. On a terminal,
    /// Ctrl-C while waiting leaves at once (status 130).
    fn quit(&mut self) -> Result<()> {
        let active = self
            .session
            .queries()
            .iter()
            .filter(|q| q.is_active())
            .count();
        if active > 0 {
            eprintln!(
                "stopping {active} streaming {} after the current batch",
                if active == 1 { "query" } else { "queries" }
            );
        }
        self.session.stop_all();
        if !self.interactive {
            return self.session.await_all();
        }
        let (session, interrupts) = (self.session, &mut self.interrupts);
        interrupts.clear();
        let stopped = self.runtime.block_on(async {
            tokio::select! {
                _ = async {
                    for query in session.queries() {
                        let _ = query.await_termination().await;
                    }
                } => true,
                _ = interrupts.recv() => false,
            }
        });
        if !stopped {
            eprintln!("not waiting for the queries to stop");
            std::process::exit(130);
        }
        self.report_failures();
        Ok(())
    }
}

/// Lines read so far of an input that is not complete yet (without the line editor:
/// standard input not a terminal, and `\i` scripts).
#[derive(Default)]
struct Pending {
    buffer: String,
}

impl Pending {
    /// Adds a line; returns the input once it is complete: a command on its own
    /// line, or statements whose last one ends with `;`.
    fn push(&mut self, line: &str) -> Option<String> {
        if self.is_empty() && is_command(line) {
            self.buffer.clear();
            return Some(line.trim().to_string());
        }
        self.buffer.push_str(line);
        if !line.ends_with('\n') {
            self.buffer.push('\n');
        }
        if ends_statement(&self.buffer) {
            Some(std::mem::take(&mut self.buffer))
        } else {
            None
        }
    }

    /// Whether no statement has been started.
    fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty()
    }

    /// At the end of the input: a last statement without its `;`, if any.
    fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        (!split_statements(&rest).is_empty()).then_some(rest)
    }
}

/// Ctrl-C while a statement or a live query runs (on a terminal; at the prompt the
/// line editor reads Ctrl-C as a key). Listening replaces SIGINT's default action for
/// the life of the process, so Ctrl-C never kills the shell.
struct Interrupts {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    listening: bool,
}

impl Interrupts {
    /// Listens for SIGINT from now on.
    fn listen(runtime: &Runtime) -> Self {
        let _entered = runtime.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Interrupts {
                signal: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Interrupts { listening: true }
    }

    /// Never fires: SIGINT keeps its default action.
    fn none() -> Self {
        #[cfg(unix)]
        {
            Interrupts { signal: None }
        }
        #[cfg(not(unix))]
        Interrupts { listening: false }
    }

    /// Waits for the next Ctrl-C.
    async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        if self.listening {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await
        }
    }

    /// Forgets a Ctrl-C that came while nothing was listening for it.
    fn clear(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            use futures::FutureExt;
            while let Some(Some(())) = signal.recv().now_or_never() {}
        }
    }
}

/// Writes to standard output; a closed pipe is not worth a panic.
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn terminal_error(e: ReadlineError) -> Error {
    Error::Network(format!("the terminal failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn pending_input_is_complete_at_a_semicolon_or_a_command() {
        let mut pending = Pending::default();
        assert_eq!(pending.push("\\d\n"), Some("\\d".to_string()));
        assert_eq!(pending.push("SELECT 1\n"), None);
        assert!(!pending.is_empty());
        // A command inside a statement is part of the statement.
        assert_eq!(pending.push("\\q\n"), None);
        assert_eq!(
            pending.push("+ 1;\n"),
            Some("SELECT 1\n\\q\n+ 1;\n".to_string())
        );
        assert_eq!(pending.push("SELECT 2"), None);
        assert_eq!(pending.finish(), Some("SELECT 2\n".to_string()));
        assert_eq!(pending.push("-- a comment\n"), None);
        assert_eq!(pending.finish(), None);
    }
}
