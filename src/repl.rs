//! A minimal interactive shell: statements end with `;`, streaming queries run in
//! the background while you keep typing, and `\q` stops them and leaves.
//! (A richer shell with live result tables is a later issue.)

use std::io::{BufRead, Write};

use datafusion::arrow::util::pretty::pretty_format_batches;
use tokio::runtime::Runtime;

use crate::error::Result;
use crate::session::{Session, StatementResult};

/// Prints what a statement produced, the same way in scripts and the shell.
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
        StatementResult::Json(value) => println!("{value:#}"),
        StatementResult::Done => {}
    }
    Ok(())
}

const HELP: &str = "statements end with ';'.  \\queries  list streaming queries\n\
                    \\stop NAME  stop a query after its current batch    \\q  stop all and quit";

/// Reads statements from standard input until end of input or `\q`.
pub fn run(session: &Session, runtime: &Runtime) -> Result<()> {
    let stdin = std::io::stdin();
    let mut buffer = String::new();
    eprintln!("millrace {} — {HELP}", env!("CARGO_PKG_VERSION"));
    loop {
        eprint!(
            "{}",
            if buffer.is_empty() {
                "millrace> "
            } else {
                "       -> "
            }
        );
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let trimmed = line.trim();
        if buffer.is_empty() {
            match trimmed.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["\\q"] | ["quit"] | ["exit"] => break,
                ["\\help"] | ["\\h"] | ["help"] => {
                    eprintln!("{HELP}");
                    continue;
                }
                ["\\queries"] => {
                    for q in session.queries() {
                        let state = if q.is_active() { "active" } else { "ended" };
                        let batch = q.last_progress().map(|p| p.batch_id.to_string());
                        eprintln!(
                            "{}  {state}  last batch: {}",
                            q.name(),
                            batch.unwrap_or_else(|| "-".into())
                        );
                    }
                    continue;
                }
                ["\\stop", name] => {
                    let matching: Vec<_> = session
                        .queries()
                        .into_iter()
                        .filter(|q| q.name() == *name && q.is_active())
                        .collect();
                    if matching.is_empty() {
                        eprintln!("no running query named '{name}' (see \\queries)");
                    }
                    matching.iter().for_each(|q| q.stop());
                    continue;
                }
                [] => continue,
                _ => {}
            }
        }
        buffer.push_str(&line);
        if !trimmed.ends_with(';') {
            continue;
        }
        let script = std::mem::take(&mut buffer);
        match runtime.block_on(session.execute_script(&script)) {
            Ok(results) => {
                for result in &results {
                    print_result(result)?;
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    session.stop_all();
    session.await_all()
}
