//! Sources: where unbounded tables get their rows.
//!
//! A source is read in micro-batches delimited by **offsets**, JSON values that the
//! engine writes to the checkpoint's offset log before a batch runs. A source must
//! be able to return exactly the same rows for the same `(start, end]` range after a
//! restart: that is what makes a replayed batch identical to the one that crashed.
//!
//! - [`file`](mod@file): files landing in a directory (CSV, JSON lines, Parquet, text)
//!   ([`read_ahead`] decodes the next batch's files while the current batch runs)
//! - [`rate`]: a generator of `(timestamp, value)` rows at a fixed rate
//! - [`socket`]: lines from a TCP server, made replayable by a write-ahead log
//! - [`kafka`]: records of Kafka topics, by per-partition offsets kept in the checkpoint
//! - [`delta`](crate::connector::delta::source): the commits of a Delta Lake table, by
//!   table version and file index

pub mod fields;
pub mod file;
pub mod format;
pub use crate::connector::kafka::source as kafka;
pub mod options;
pub mod rate;
pub mod read_ahead;
pub mod socket;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde_json::Value;

use crate::error::{Error, Result};
use options::Options;

/// An offset: a source-specific JSON value, stored verbatim in the offset log.
pub type Offset = Value;

/// The rows a source returns for one batch, with what it had to leave out.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// The rows, in the source's schema.
    pub batches: Vec<RecordBatch>,
    /// Malformed records dropped under `mode = 'drop_malformed'`.
    pub malformed_dropped: u64,
    /// Source-specific counters for the batch's progress report
    /// (`sources[].metrics`), e.g. the Kafka source's offsets skipped by data loss.
    pub metrics: BTreeMap<String, String>,
}

impl SourceBatch {
    /// Number of rows in the batch.
    pub fn num_rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }
}

/// A source opened for one run of one streaming query (Spark's `Source`).
///
/// The engine calls, per batch: [`latest_offset`](Self::latest_offset) to decide the
/// batch's end, then [`get_batch`](Self::get_batch) for the rows, then, once the sink
/// has committed, [`commit`](Self::commit).
pub trait StreamSource: Send {
    /// The rows' schema (fixed for the life of the source).
    fn schema(&self) -> SchemaRef;

    /// The offset the next batch may read up to, honouring per-trigger limits.
    /// `start` is the previous batch's end (`None` before the source's first batch).
    /// A value equal to `start`, or `None` while the source has never had data, means
    /// there is no new data.
    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>>;

    /// Freezes the data available now as the upper bound for `trigger = 'available_now'`.
    fn prepare_for_available_now(&mut self) -> Result<()>;

    /// The rows in `(start, end]`: the same rows every time for the same range.
    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch>;

    /// The query reads only `columns` (indices into [`schema`](Self::schema), the
    /// event-time column included when there is a watermark): a source may leave the
    /// other columns NULL in its batches to save decoding them. Called once, before
    /// the first batch; by default every column is decoded.
    fn read_columns(&mut self, _columns: &[usize]) {}

    /// Batches up to `end` are committed: the source may forget what lies before it.
    fn commit(&mut self, end: &Offset) -> Result<()>;

    /// A one-line description for progress reports (`FileSource[in/readings/]`).
    fn describe(&self) -> String;
}

/// A declared unbounded table's source, checked, before it is opened for a query: what
/// a connector's parse function (its registry entry's
/// [`Connector::parse_source`](crate::connector::registry::Connector::parse_source))
/// makes of a location and options. The engine and the shell only call these methods,
/// so no code outside a source's own module names the source.
pub trait SourceDefinition: Send + Sync + std::fmt::Debug {
    /// The `STORED AS` name (`CSV`, `RATE`), for `\d` and the identity.
    fn format_name(&self) -> &'static str;

    /// Identity recorded in checkpoints, to check that a checkpoint belongs to a query
    /// over the same sources: `<FORMAT> <location>` unless the source says otherwise.
    /// Must stay byte-identical across versions, or old checkpoints stop restoring.
    fn identity(&self, location: &str) -> String {
        format!("{} {location}", self.format_name())
            .trim()
            .to_string()
    }

    /// Opens the source of `table` for one query, keeping its durable state in
    /// `state_dir` (which exists).
    fn open(&self, table: &StreamDef, state_dir: &Path) -> Result<Box<dyn StreamSource>>;

    /// The options as `\d name` lists them (`max_files_per_trigger 4`); never secrets.
    fn details(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a connector's source parse function gets besides the options.
pub struct SourceArgs<'a> {
    /// The table's description for messages (`CSV table 'readings'`).
    pub what: &'a str,
    /// The table's name.
    pub table: &'a str,
    /// The declared columns (empty when the statement has no column list).
    pub declared: Schema,
    /// `LOCATION`, if given.
    pub location: Option<String>,
}

/// A source as its parse function declares it.
pub struct DeclaredSource {
    /// The source.
    pub definition: Arc<dyn SourceDefinition>,
    /// The table's schema (declared, fixed by the source, or read from the data).
    pub schema: SchemaRef,
    /// The location as shown and recorded in the identity (absolute directory,
    /// `host:port`, topic; empty for rate).
    pub location: String,
}

/// A connector's source parse function: reads the declaration (taking its options
/// from the [`Options`]; the caller refuses the rest).
pub type SourceParser = fn(SourceArgs<'_>, &mut Options) -> Result<DeclaredSource>;

/// An event-time watermark declared with `WATERMARK FOR col AS col - INTERVAL ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkSpec {
    /// The event-time column (a timestamp).
    pub column: String,
    /// How late data may arrive: watermark = max event time seen - delay.
    pub delay: Duration,
    /// Event times further than this ahead of the batch's wall-clock time do not move
    /// the watermark (they are still processed as data, and counted): one row with a
    /// wrong, far-future timestamp would otherwise make every later row late.
    pub max_future: Duration,
    /// `watermark_idle_timeout`: once the table has delivered no rows for this long
    /// (processing time), it no longer holds the query's watermark back (opt-in; it can
    /// change results: its later rows may be late).
    pub idle_timeout: Option<Duration>,
}

/// Default of the `watermark_max_future` table option.
pub const DEFAULT_WATERMARK_MAX_FUTURE: Duration = Duration::from_secs(24 * 3600);

/// The declaration of an unbounded table: everything needed to open a source for a query.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// The table name used in queries.
    pub name: String,
    /// The declared schema (for files this includes an optional `_corrupt_record`).
    pub schema: SchemaRef,
    /// What the table reads.
    pub kind: Arc<dyn SourceDefinition>,
    /// Directory (files), `host:port` (socket), topic or topic pattern (Kafka); empty
    /// for rate.
    pub location: String,
    /// The event-time watermark, if declared.
    pub watermark: Option<WatermarkSpec>,
}

impl StreamDef {
    /// Identity used to check that a checkpoint belongs to a query over the same sources.
    pub fn identity(&self) -> String {
        self.kind.identity(&self.location)
    }

    /// Opens the source for one query, keeping its durable state in `state_dir`.
    pub fn open(&self, state_dir: &Path) -> Result<Box<dyn StreamSource>> {
        crate::checkpoint::create_dir_all(state_dir)?;
        self.kind.open(self, state_dir)
    }
}

/// Refuses a column list for a source whose columns are fixed (`fixed` names them).
pub fn no_columns(declared: &Schema, what: &str, fixed: &str) -> Result<()> {
    if declared.fields().is_empty() {
        Ok(())
    } else {
        Err(Error::Sql(format!(
            "{what} has fixed columns ({fixed}); leave out the column list"
        )))
    }
}

/// Refuses a `LOCATION` for a source that takes none.
pub fn no_location(location: &Option<String>, what: &str) -> Result<()> {
    match location {
        None => Ok(()),
        Some(l) => Err(Error::Sql(format!("{what} takes no LOCATION (got '{l}')"))),
    }
}
