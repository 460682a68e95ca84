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
//! - [`noop`]: drops the rows (for benchmarks), so there is nothing to guarantee;
//! - [`postgres`](crate::connector::postgres): rows of a PostgreSQL table, exactly-once
//!   for any reader of the database (one transaction per batch that also records the
//!   batch id);
//! - [`delta`](crate::connector::delta::sink): commits of a Delta Lake table,
//!   exactly-once for any Delta reader (each commit carries a `txn` action with the
//!   query id and batch id).
//!
//! Which formats exist and which options each takes is the connector registry's
//! ([`crate::connector::registry`]); [`SinkSpec::parse`] turns a format and its options
//! into a `SinkSpec` for both SQL and the DataFrame API, and [`SinkSpec::open`] opens it
//! for a query.

pub mod console;
pub mod file;
pub mod foreach_batch;
pub use crate::connector::kafka::sink as kafka;
pub mod memory;
pub mod noop;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::connector::delta::sink::{DeltaSink, DeltaSinkOptions};
use crate::connector::postgres::{PostgresSink, PostgresSinkOptions};
use crate::connector::registry::{Connector, Location};
use crate::error::{Error, Result};
use crate::planning::BatchTable;
use crate::source::options::Options;

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
    /// Rows of a PostgreSQL table.
    Postgres(Box<PostgresSinkOptions>),
    /// Commits of a Delta Lake table.
    Delta(DeltaSinkOptions),
}

/// How a batch's rows change a table-like sink (memory table, database table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableWrite {
    /// Add the rows (append mode, and update mode without aggregation).
    Append,
    /// Replace the table with the rows (complete mode: the whole result each batch).
    Replace,
    /// Replace the rows with the same values in these columns (update mode: the GROUP BY
    /// columns), add the others.
    Upsert(Vec<usize>),
}

/// What a sink needs to know about the query it is opened for.
pub struct SinkContext<'a> {
    /// The checkpoint's query id (stable across restarts).
    pub query_id: &'a str,
    /// The query's checkpoint directory (sinks that keep a record of their own there,
    /// such as the Kafka sink's marker record).
    pub checkpoint_dir: &'a std::path::Path,
    /// The schema of the rows the sink receives.
    pub schema: &'a SchemaRef,
    /// The query's output mode.
    pub output_mode: OutputMode,
    /// In update mode over a (non-deduplicating) aggregation: the output columns that
    /// hold the GROUP BY keys, and the group names (for messages).
    pub upsert_keys: Option<(Vec<usize>, Vec<String>)>,
    /// The session table a memory sink fills.
    pub memory_table: Option<Arc<BatchTable>>,
}

impl SinkContext<'_> {
    /// How rows change a keyed table in this query's output mode; `sink` names the sink
    /// in the error for an update-mode query whose SELECT list drops a GROUP BY column.
    pub fn table_write(&self, sink: &str) -> Result<TableWrite> {
        Ok(match (self.output_mode, &self.upsert_keys) {
            (OutputMode::Complete, _) => TableWrite::Replace,
            (OutputMode::Update, Some((keys, groups))) => {
                if keys.len() < groups.len() {
                    return Err(Error::Unsupported(format!(
                        "a {sink} sink in update mode upserts rows by the GROUP BY columns, so the \
                         SELECT list must include them (renamed or not): {}",
                        groups.join(", ")
                    )));
                }
                TableWrite::Upsert(keys.clone())
            }
            _ => TableWrite::Append,
        })
    }
}

/// Where a front end's sink declaration comes from, for [`SinkSpec::parse`].
pub struct SinkRequest<'a> {
    /// The registered connector (from `STORED AS` or `format(...)`).
    pub connector: &'static Connector,
    /// The sink's description for messages (`POSTGRES sink 'alerts'`).
    pub what: &'a str,
    /// `LOCATION` (SQL) or the connector's location option (DataFrame API).
    pub location: Option<String>,
    /// How the user gives the location, for messages: `LOCATION '<x>'` or
    /// `option('path', '<x>')`.
    pub location_hint: String,
    /// Whether a checkpoint directory was given.
    pub has_checkpoint: bool,
}

impl SinkSpec {
    /// Whether the sink can serve `mode` at all (file sinks only append, as in Spark).
    pub fn supports(&self, mode: OutputMode) -> bool {
        !matches!(self, SinkSpec::Files { .. }) || mode == OutputMode::Append
    }

    /// Reads a sink's location and own options (taking them from `options`), for SQL's
    /// `CREATE SINK` and the DataFrame API alike; the caller then refuses what is left
    /// with the connector's option list.
    pub fn parse(request: SinkRequest<'_>, options: &mut Options) -> Result<SinkSpec> {
        let SinkRequest {
            connector,
            what,
            location,
            location_hint,
            has_checkpoint,
        } = request;
        match (connector.location, &location) {
            (Location::None, Some(l)) => {
                return Err(Error::Sql(format!("{what} takes no LOCATION (got '{l}')")));
            }
            (Location::Required(_), None) => {
                return Err(Error::Sql(format!("{what} needs {location_hint}")));
            }
            _ => {}
        }
        let files = |format| -> Result<SinkSpec> {
            if !has_checkpoint {
                return Err(Error::Option(format!(
                    "{what} needs a checkpoint for exactly-once output: add OPTIONS ('checkpoint' \
                     '<directory>') (DataFrame API: option('checkpoint', '<directory>'))"
                )));
            }
            let path = PathBuf::from(location.clone().unwrap_or_default());
            Ok(SinkSpec::Files {
                format,
                path: std::path::absolute(&path).map_err(Error::io(&path))?,
            })
        };
        Ok(match connector.name {
            "CONSOLE" => {
                let num_rows = options
                    .take_parsed::<usize>("num_rows", "a whole number")?
                    .unwrap_or(20);
                if num_rows == 0 {
                    return Err(Error::Option(format!(
                        "'num_rows' of {what} must be at least 1"
                    )));
                }
                SinkSpec::Console { num_rows }
            }
            "MEMORY" => SinkSpec::Memory,
            "NOOP" => SinkSpec::Noop,
            "PARQUET" => files(FileSinkFormat::Parquet)?,
            "CSV" => files(FileSinkFormat::Csv)?,
            "JSON" => files(FileSinkFormat::Json)?,
            "KAFKA" => SinkSpec::Kafka(Box::new(kafka::KafkaSinkOptions::parse(
                options,
                location.as_deref(),
                has_checkpoint,
                what,
            )?)),
            "POSTGRES" => SinkSpec::Postgres(Box::new(PostgresSinkOptions::parse(
                options,
                location.as_deref().unwrap_or_default(),
                has_checkpoint,
                what,
            )?)),
            "DELTA" => SinkSpec::Delta(DeltaSinkOptions::parse(
                options,
                location.as_deref().unwrap_or_default(),
                has_checkpoint,
                what,
            )?),
            other => {
                return Err(Error::Unsupported(format!(
                    "sink connector {other} is registered but SinkSpec::parse does not know it"
                )));
            }
        })
    }

    /// Opens the sink for one run of a query (execution calls this; it does not know
    /// the sinks).
    pub fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(match self {
            SinkSpec::Console { num_rows } => Box::new(console::ConsoleSink::stdout(*num_rows)),
            SinkSpec::Memory => Box::new(memory::MemorySink::new(
                ctx.memory_table.clone().ok_or_else(|| {
                    Error::Option(
                        "a memory sink has no table: set QueryConfig::memory_table (the \
                         session's start_plan does), or use another sink"
                            .into(),
                    )
                })?,
                ctx.table_write("memory")?,
            )),
            SinkSpec::Noop => Box::new(noop::NoopSink),
            SinkSpec::Files { format, path } => {
                Box::new(file::FileSink::open(*format, path, ctx.query_id)?)
            }
            SinkSpec::ForeachBatch(function) => {
                Box::new(foreach_batch::ForeachBatchSink::new(function.clone()))
            }
            SinkSpec::Kafka(options) => Box::new(kafka::KafkaSink::open(
                options.as_ref().clone(),
                ctx.schema,
                ctx.query_id,
                ctx.checkpoint_dir,
            )?),
            SinkSpec::Postgres(options) => Box::new(PostgresSink::open(
                options.as_ref().clone(),
                ctx.schema,
                ctx.query_id,
                ctx.table_write("POSTGRES")?,
            )?),
            SinkSpec::Delta(options) => Box::new(DeltaSink::open(
                options.clone(),
                ctx.schema,
                ctx.query_id,
                ctx.table_write("DELTA")?,
            )?),
        })
    }
}
