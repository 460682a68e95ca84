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

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

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

/// A declared sink, checked, before it is opened for a query: what a connector's parse
/// function (its registry entry's [`Connector::parse_sink`]) makes of a location and
/// options. Execution only opens it, so no code outside a sink's own module names the
/// sink (as DataFusion's `TableProviderFactory` makes providers it does not know).
pub trait SinkDefinition: Send + Sync + std::fmt::Debug {
    /// Opens the sink for one run of a query.
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>>;

    /// Whether the sink can serve `mode` at all (file sinks only append, as in Spark).
    fn supports(&self, _mode: OutputMode) -> bool {
        true
    }

    /// Whether the sink fills a session table named after the query (the memory sink):
    /// the session registers that table and hands it over in
    /// [`SinkContext::memory_table`]. The one front-end-specific case of the interface.
    fn fills_session_table(&self) -> bool {
        false
    }
}

/// What a `CREATE SINK` statement (or `write_stream()`) writes to, before it is opened
/// for a query: a shared [`SinkDefinition`].
#[derive(Debug, Clone)]
pub struct SinkSpec(Arc<dyn SinkDefinition>);

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

/// What a connector's sink parse function gets: the sink's location and context;
/// the options come beside it, to take what the connector knows.
pub struct SinkArgs<'a> {
    /// The sink's description for messages (`POSTGRES sink 'alerts'`).
    pub what: &'a str,
    /// `LOCATION` (SQL) or the connector's location option (DataFrame API), checked
    /// against the connector's [`Location`] already.
    pub location: Option<String>,
    /// Whether a checkpoint directory was given.
    pub has_checkpoint: bool,
}

/// A connector's sink parse function: reads its options (taking them from the
/// [`Options`]; the caller refuses the rest) into a [`SinkSpec`].
pub type SinkParser = fn(SinkArgs<'_>, &mut Options) -> Result<SinkSpec>;

impl SinkSpec {
    /// A spec of `definition` (what connectors' parse functions return).
    pub fn new(definition: impl SinkDefinition + 'static) -> Self {
        SinkSpec(Arc::new(definition))
    }

    /// Whether the sink can serve `mode` at all (file sinks only append, as in Spark).
    pub fn supports(&self, mode: OutputMode) -> bool {
        self.0.supports(mode)
    }

    /// Whether the sink fills a session table named after the query (memory sink).
    pub fn fills_session_table(&self) -> bool {
        self.0.fills_session_table()
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
        let parse = connector.parse_sink.ok_or_else(|| {
            Error::Unsupported(format!(
                "sink connector {} is registered without a parse function",
                connector.name
            ))
        })?;
        parse(
            SinkArgs {
                what,
                location,
                has_checkpoint,
            },
            options,
        )
    }

    /// Opens the sink for one run of a query (execution calls this; it does not know
    /// the sinks).
    pub fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        self.0.open(ctx)
    }
}
