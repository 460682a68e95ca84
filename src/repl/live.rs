//! Live queries at the prompt: a `SELECT` over an unbounded table runs with a
//! `foreach_batch` sink that hands each batch's rows to the shell over a channel, and
//! the shell shows them until Ctrl-C stops the query.
//!
//! - An aggregation (output mode `complete`, or `update`) is a result table: it is
//!   redrawn after each batch. On a terminal the previous drawing is erased first
//!   (cursor up, clear to the end of the screen; lines are not wrapped while drawing,
//!   so each line is one screen row and the erase is exact); elsewhere each version
//!   is printed after the previous one.
//! - Otherwise (`append`) each batch's rows are printed as they come.
//!
//! Below the rows, a status line: batch id, input rows and rows/s, watermark, rows in
//! the state. On a terminal it is rewritten in place.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Interrupts;
use super::output::{OutputFormat, OutputSettings, render};
use crate::error::{Error, Result};
use crate::execution::{QueryProgress, StreamingQuery};
use crate::session::state_rows;
use crate::sink::foreach_batch::ForeachBatchFn;
use crate::sink::{OutputMode, SinkSpec};

/// How often the view looks at the query's progress and state.
const TICK: Duration = Duration::from_millis(200);

/// One batch of a live query's result.
pub struct LiveBatch {
    /// The result's schema (so an empty result still shows its columns).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// The channel a live query's sink sends its batches on.
pub fn channel() -> (UnboundedSender<LiveBatch>, UnboundedReceiver<LiveBatch>) {
    unbounded_channel()
}

/// The sink of a live query: each batch's rows, collected, sent to the shell. A shell
/// no longer listening (the query is being stopped) is not an error.
pub fn sink(sender: UnboundedSender<LiveBatch>) -> SinkSpec {
    crate::sink::foreach_batch::spec(ForeachBatchFn(Arc::new(move |_batch_id, frame| {
        let sender = sender.clone();
        Box::pin(async move {
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await?;
            let _ = sender.send(LiveBatch { schema, batches });
            Ok(())
        })
    })))
}

/// Shows the live `query` until Ctrl-C (which stops it after its current batch) or
/// until it ends by itself. Its failure, if any, is left for the shell to report.
/// `screen_rows` is the terminal's height: a table redrawn in place shows at most the
/// rows that fit, since lines scrolled off the screen cannot be erased.
pub fn show(
    runtime: &Runtime,
    query: &StreamingQuery,
    mode: OutputMode,
    mut receiver: UnboundedReceiver<LiveBatch>,
    interrupts: &mut Interrupts,
    settings: &OutputSettings,
    screen_rows: Option<usize>,
) -> Result<()> {
    eprintln!(
        "streaming query '{}' runs live ({} mode); Ctrl-C stops it",
        query.name(),
        match mode {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        }
    );
    let table = mode != OutputMode::Append;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut settings = *settings;
    if let Some(rows) = screen_rows.filter(|_| table && terminal)
        && settings.format == OutputFormat::Table
    {
        // Borders, header, summary and status line take 6 lines; keep 2 for the
        // lines above the drawing.
        let fit = rows.saturating_sub(8).max(3);
        settings.limit = if settings.limit == 0 {
            fit
        } else {
            settings.limit.min(fit)
        };
    }
    let mut view = View {
        table,
        terminal,
        settings,
        region: 0,
        body: String::new(),
        status: String::new(),
        status_batch: None,
        header_printed: false,
    };
    view.start()?;
    let stopped = runtime.block_on(async {
        let mut tick = tokio::time::interval(TICK);
        let mut open = true;
        loop {
            tokio::select! {
                batch = receiver.recv(), if open => match batch {
                    Some(batch) => view.batch(batch)?,
                    None => open = false,
                },
                _ = interrupts.recv() => return Ok::<_, Error>(true),
                _ = tick.tick() => {
                    if let Some(progress) = query.last_progress() {
                        view.progress(&progress)?;
                    }
                    if !query.is_active() {
                        // Rows sent before the end are still to be shown.
                        while let Ok(batch) = receiver.try_recv() {
                            view.batch(batch)?;
                        }
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    drop(receiver);
    if !stopped {
        if query.exception().is_none() {
            eprintln!("streaming query '{}' ended", query.name());
        }
        return Ok(());
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // Over the `^C` the terminal echoed.
        eprint!("\r\x1b[K");
    }
    query.stop();
    interrupts.clear();
    let ended = runtime.block_on(async {
        tokio::select! {
            _ = query.await_termination() => true,
            _ = interrupts.recv() => false,
        }
    });
    if ended {
        eprintln!("streaming query '{}' stopped", query.name());
    } else {
        eprintln!(
            "streaming query '{}' stops after its current batch (SHOW QUERIES shows when)",
            query.name()
        );
    }
    Ok(())
}

/// What is on the screen.
struct View {
    /// Redraw the whole result each batch (an aggregation) rather than append rows.
    table: bool,
    /// Standard output is a terminal: redraw in place.
    terminal: bool,
    settings: OutputSettings,
    /// Terminal lines drawn that the next redraw erases: the table (in table mode)
    /// and the status line.
    region: usize,
    /// The current result, rendered (table mode).
    body: String,
    status: String,
    /// The batch the status line describes.
    status_batch: Option<u64>,
    /// CSV header printed (append mode).
    header_printed: bool,
}

/// Terminal: stop wrapping long lines (so a line is one screen row), and start again.
const NO_WRAP: &str = "\x1b[?7l";
const WRAP: &str = "\x1b[?7h";

impl View {
    fn start(&mut self) -> Result<()> {
        self.status = "waiting for the first batch ... (Ctrl-C stops)".to_string();
        if self.terminal {
            let text = format!("{NO_WRAP}{}\n{WRAP}", self.status);
            self.region = 1;
            write(&text)?;
        }
        Ok(())
    }

    /// A batch's rows arrived.
    fn batch(&mut self, batch: LiveBatch) -> Result<()> {
        let header = !self.header_printed || self.table;
        let rendered = render(&batch.schema, &batch.batches, &self.settings, header)?;
        if self.table {
            let summary = (rendered.shown < rendered.total).then(|| rendered.summary());
            self.body = rendered.text;
            if let Some(summary) = summary {
                self.body.push_str(&format!("{summary}\n"));
            }
            if self.terminal {
                self.redraw()
            } else {
                write(&self.body)
            }
        } else {
            if rendered.total == 0 {
                return Ok(());
            }
            self.header_printed = true;
            let mut text = rendered.text;
            if rendered.shown < rendered.total {
                text.push_str(&format!(
                    "({} more rows in this batch not shown; \\pset limit N changes that)\n",
                    rendered.total - rendered.shown
                ));
            }
            if self.terminal {
                // The rows go above the status line, and stay.
                let erase = self.erase();
                write(&format!("{erase}{text}{NO_WRAP}{}\n{WRAP}", self.status))?;
                self.region = 1;
                Ok(())
            } else {
                write(&text)
            }
        }
    }

    /// The query reported progress: update the status line if it is a new batch.
    fn progress(&mut self, progress: &QueryProgress) -> Result<()> {
        if self.status_batch == Some(progress.batch_id) {
            return Ok(());
        }
        self.status_batch = Some(progress.batch_id);
        self.status = status_line(progress);
        if !self.terminal {
            return write(&format!("{}\n", self.status));
        }
        if self.region == 0 {
            self.region = 1;
            return write(&format!("{NO_WRAP}{}\n{WRAP}", self.status));
        }
        // The status line is the last line drawn: rewrite it alone.
        write(&format!("\x1b[1F\x1b[J{NO_WRAP}{}\n{WRAP}", self.status))
    }

    /// Erases the drawn region and draws the result table and the status line.
    fn redraw(&mut self) -> Result<()> {
        let erase = self.erase();
        let text = format!("{erase}{NO_WRAP}{}{}\n{WRAP}", self.body, self.status);
        self.region = self.body.lines().count() + 1;
        write(&text)
    }

    /// The escape sequence that erases the drawn region (cursor to the start of its
    /// first line, clear to the end of the screen).
    fn erase(&mut self) -> String {
        let lines = std::mem::take(&mut self.region);
        if self.terminal && lines > 0 {
            format!("\x1b[{lines}F\x1b[J")
        } else {
            String::new()
        }
    }
}

/// `batch 3 | 120 input rows (40.0/s) | watermark 2026-... | 7 state rows`.
pub fn status_line(progress: &QueryProgress) -> String {
    let mut parts = vec![
        format!("batch {}", progress.batch_id),
        format!(
            "{} input rows ({:.1}/s)",
            progress.num_input_rows, progress.input_rows_per_second
        ),
    ];
    if let Some(watermark) = &progress.event_time.watermark {
        parts.push(format!("watermark {watermark}"));
    }
    if let Some(rows) = state_rows(progress) {
        parts.push(format!("{rows} state rows"));
    }
    parts.push("Ctrl-C stops".to_string());
    format!("-- {} --", parts.join(" | "))
}

fn write(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::Network(format!("cannot write to standard output: {e}")))
}
