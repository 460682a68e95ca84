//! The console sink: each batch as a pretty table under a `Batch: N` banner, as
//! Spark's console sink prints it. Meant for development and the REPL.

use std::io::Write;
use std::sync::{Mutex, PoisonError};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;

use super::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec};
use crate::error::{Error, Result};
use crate::source::options::Options;

/// Prints a console sink's text somewhere other than its writer; see
/// [`set_console_printer`].
pub type ConsolePrinter = Box<dyn FnMut(String) + Send>;

/// Where every console sink of the process prints while set (instead of standard
/// output).
static CONSOLE_PRINTER: Mutex<Option<ConsolePrinter>> = Mutex::new(None);

/// Sends the text of every console sink to `printer` from now on (`None`: back to
/// standard output). The shell sets its line editor's printer here, so that the
/// batches of a background query appear above the prompt instead of inside the line
/// being typed.
pub fn set_console_printer(printer: Option<ConsolePrinter>) {
    *CONSOLE_PRINTER
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = printer;
}

/// Prints batches to a writer (standard output by default).
pub struct ConsoleSink {
    num_rows: usize,
    out: Box<dyn Write + Send>,
}

impl ConsoleSink {
    /// A console sink on standard output showing up to `num_rows` rows per batch.
    pub fn stdout(num_rows: usize) -> Self {
        ConsoleSink {
            num_rows,
            out: Box::new(std::io::stdout()),
        }
    }
}

/// Formats one batch the way the console sink prints it.
pub fn format_batch(
    batch_id: u64,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    num_rows: usize,
) -> Result<String> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut left = num_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        shown.push(batch.slice(0, take));
        left -= take;
    }
    if shown.is_empty() {
        shown.push(RecordBatch::new_empty(schema.clone()));
    }
    let table = pretty_format_batches(&shown)?;
    let mut text = format!(
        "-------------------------------------------\nBatch: {batch_id}\n-------------------------------------------\n{table}\n"
    );
    if total > num_rows {
        text.push_str(&format!("only showing top {num_rows} rows\n"));
    }
    Ok(text)
}

impl Sink for ConsoleSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let text = format_batch(batch_id, schema, batches, self.num_rows)?;
        if let Some(printer) = CONSOLE_PRINTER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            printer(text);
            return Ok(());
        }
        self.out
            .write_all(text.as_bytes())
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::Network(format!("cannot write to the console: {e}")))
    }

    fn describe(&self) -> String {
        "ConsoleSink".to_string()
    }
}

/// A declared console sink: up to `num_rows` rows shown per batch.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleDefinition {
    /// Rows shown per batch (the `num_rows` option, default 20).
    pub num_rows: usize,
}

impl SinkDefinition for ConsoleDefinition {
    fn open(&self, _ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ConsoleSink::stdout(self.num_rows)))
    }
}

/// A console sink showing `num_rows` rows per batch (the shell's bare `SELECT` over a
/// stream uses 20).
pub fn spec(num_rows: usize) -> SinkSpec {
    SinkSpec::new(ConsoleDefinition { num_rows })
}

/// `STORED AS CONSOLE`: reads `num_rows`.
pub fn parse(args: SinkArgs<'_>, options: &mut Options) -> Result<SinkSpec> {
    let num_rows = options
        .take_parsed::<usize>("num_rows", "a whole number")?
        .unwrap_or(20);
    if num_rows == 0 {
        return Err(Error::Option(format!(
            "'num_rows' of {} must be at least 1",
            args.what
        )));
    }
    Ok(spec(num_rows))
}
