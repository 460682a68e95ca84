//! Sinks: where each micro-batch's result goes.
//!
//! The engine calls [`Sink::add_batch`] once per batch id, and again with the same id
//! if the process crashed after the batch ran but before `commits/<id>` was written.
//! A sink must therefore be idempotent by batch id; how each one manages that is its
//! delivery guarantee:
//!
//! - [`file`](mod@file) (Parquet, CSV, JSON): exactly-once, for plain readers of the directory;
//! - [`memory`]: exactly-once within the process (its table lives in memory);
//! - [`console`]: prints, so a replayed batch may print again (at-least-once);
//! - [`foreach_batch`]: user code, called again on replay (at-least-once unless the
//!   code is idempotent on the batch id);
//! - [`kafka`]: records of a Kafka topic, exactly-once for `read_committed` consumers
//!   (one transaction per batch, with the batch id committed in it) or at-least-once;
//! - [`noop`]: drops the rows (for benchmarks), so there is nothing to guarantee.

pub mod console;
pub mod file;
pub mod foreach_batch;
pub use crate::connector::kafka::sink as kafka;
pub mod memory;
pub mod noop;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};

/// A destination for micro-batch results.
pub trait Sink: Send {
    /// Delivers batch `batch_id`'s rows. Called again with the same id on replay, and
    /// must then neither lose nor duplicate rows (within the sink's guarantee).
    fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()>;

    /// A one-line description for progress reports.
    fn describe(&self) -> String;
}

/// Which rows of the result table a sink receives after each batch (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Only rows that are final and will never change.
    Append,
    /// Rows changed by this batch.
    Update,
    /// The whole result table.
    Complete,
}

impl OutputMode {
    /// Reads the `output_mode` option.
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "append" => Ok(OutputMode::Append),
            "update" => Ok(OutputMode::Update),
            "complete" => Ok(OutputMode::Complete),
            _ => Err(Error::Option(format!(
                "unknown output_mode '{value}': use 'append', 'update' or 'complete'"
            ))),
        }
    }
}

/// The `STORED AS` format of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSinkFormat {
    /// Apache Parquet files.
    Parquet,
    /// CSV files with a header line.
    Csv,
    /// JSON lines files.
    Json,
}

impl FileSinkFormat {
    /// File name extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            FileSinkFormat::Parquet => "parquet",
            FileSinkFormat::Csv => "csv",
            FileSinkFormat::Json => "json",
        }
    }
}

/// What a `CREATE SINK` statement writes to, before it is opened for a query.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    /// Pretty tables on standard output, showing at most `num_rows` rows per batch.
    Console {
        /// Rows shown per batch (the `num_rows` option, default 20).
        num_rows: usize,
    },
    /// A session table named after the sink.
    Memory,
    /// A user function per batch (the DataFrame API's `foreach_batch`).
    ForeachBatch(foreach_batch::ForeachBatchFn),
    /// Nowhere: the rows are dropped (Spark's `noop` format), to measure a query
    /// without the cost of its output.
    Noop,
    /// Files in a directory.
    Files {
        /// File format written.
        format: FileSinkFormat,
        /// Output directory (absolute).
        path: std::path::PathBuf,
    },
    /// Records of a Kafka topic (boxed: the options are much larger than the other variants).
    Kafka(Box<kafka::KafkaSinkOptions>),
}

impl SinkSpec {
    /// Whether the sink can serve `mode` at all (file sinks only append, as in Spark).
    pub fn supports(&self, mode: OutputMode) -> bool {
        !matches!(self, SinkSpec::Files { .. }) || mode == OutputMode::Append
    }
}
