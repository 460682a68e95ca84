//! The Rust DataFrame API, shaped after Spark's `readStream` / `writeStream`:
//! [`StreamingContext::read_stream`] declares an unbounded table and gives a
//! [`StreamFrame`]; its transformations build a DataFusion logical plan (with
//! DataFusion's own [`Expr`](datafusion::prelude::Expr)s); [`StreamFrame::write_stream`]
//! chooses a sink and starts the query, returning a [`StreamingQuery`] handle.
//!
//! Everything runs through the same [`Session`] as SQL scripts, so a stream frame can
//! be registered as a view and queried from SQL, and a table declared in SQL can be
//! picked up as a frame ([`StreamingContext::table`]).
//!
//! ```no_run
//! use millrace::prelude::*;
//!
//! # async fn run() -> millrace::Result<()> {
//! let ctx = StreamingContext::new();
//! let schema = Schema::new(vec![
//!     Field::new("sensor", DataType::Utf8, false),
//!     Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
//!     Field::new("temp", DataType::Float64, true),
//! ]);
//! let readings = ctx
//!     .read_stream()
//!     .format("json")
//!     .schema(schema)
//!     .option("max_files_per_trigger", "10")
//!     .load("in/readings/")
//!     .await?
//!     .with_watermark("ts", "5 seconds")?;
//! let counts = readings
//!     .group_by(vec![window(col("ts"), "10 seconds", None), col("sensor")])
//!     .agg(vec![count(lit(1)).alias("n"), avg(col("temp")).alias("avg_temp")])?;
//! let query = counts
//!     .write_stream()
//!     .format("parquet")
//!     .option("path", "out/counts/")
//!     .option("checkpoint", "ckpt/counts")
//!     .output_mode(OutputMode::Append)
//!     .trigger(Trigger::ProcessingTime(std::time::Duration::from_secs(2)))
//!     .start()
//!     .await?;
//! query.await_termination().await?;
//! # Ok(())
//! # }
//! ```

mod frame;
mod reader;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::runtime::Handle;

pub use frame::{GroupedStream, KeyedStream, StreamFrame};
pub use reader::DataStreamReader;
pub use writer::DataStreamWriter;

use crate::error::{Error, Result};
use crate::execution::{StreamingQuery, StreamingQueryListener};
use crate::planning::scanned_stream;
use crate::session::{Session, SessionSettings, StatementResult};

/// The entry point of the DataFrame API (Spark's `SparkSession` for streaming):
/// declares streams, runs SQL, and keeps the queries it started. Cheap to clone.
///
/// A running word count, read back from the memory sink's table:
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> millrace::Result<()> {
/// use millrace::prelude::*;
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("a.json"), "{\"word\":\"hi\"}\n{\"word\":\"hi\"}\n{\"word\":\"yo\"}\n")
///     .unwrap();
/// let ctx = StreamingContext::new();
/// let words = ctx
///     .read_stream()
///     .format("json")
///     .schema(Schema::new(vec![Field::new("word", DataType::Utf8, true)]))
///     .load(dir.path().to_str().unwrap())
///     .await?;
/// let query = words
///     .group_by(vec![col("word")])
///     .agg(vec![count(lit(1)).alias("n")])?
///     .write_stream()
///     .format("memory")
///     .query_name("counts")
///     .output_mode(OutputMode::Complete)
///     .trigger(Trigger::AvailableNow)
///     .start()
///     .await?;
/// query.await_termination().await?;
/// let rows = ctx.session().query("SELECT word, n FROM counts ORDER BY word").await?;
/// let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows).unwrap().to_string();
/// assert!(text.contains("| hi   | 2 |") && text.contains("| yo   | 1 |"), "{text}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StreamingContext {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    /// Numbers the streams `read_stream` declares (`stream_1`, ...): the same program
    /// gives the same names, so a restarted query finds its sources in its checkpoint.
    streams: AtomicU64,
}

impl StreamingContext {
    /// A context whose queries run on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (use [`StreamingContext::with_session`] there).
    pub fn new() -> Self {
        Self::with_session(Session::new(Handle::current(), SessionSettings::default()))
    }

    /// Starts building a context with options: the web UI
    /// ([`StreamingContextBuilder::ui`]), session settings.
    pub fn builder() -> StreamingContextBuilder {
        StreamingContextBuilder::default()
    }

    /// The address of the web UI, REST API and `/metrics`, if started (see
    /// [`StreamingContextBuilder::ui`]).
    pub fn ui_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.session.ui_address()
    }

    /// A context over an existing session (its tables, settings and queries).
    pub fn with_session(session: Session) -> Self {
        StreamingContext {
            inner: Arc::new(Inner {
                session,
                streams: AtomicU64::new(0),
            }),
        }
    }

    /// The session underneath, for SQL and for DataFusion's `SessionContext`.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// Starts declaring an unbounded table (Spark's `readStream`).
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader::new(self.clone())
    }

    /// Runs one SQL statement in this context (declarations, sinks, static queries).
    pub async fn sql(&self, sql: &str) -> Result<StatementResult> {
        self.inner.session.execute(sql).await
    }

    /// A frame over a table declared in SQL (`CREATE UNBOUNDED EXTERNAL TABLE`) or a
    /// view registered with [`StreamFrame::create_or_replace_temp_view`].
    pub async fn table(&self, name: &str) -> Result<StreamFrame> {
        let frame = self.inner.session.context().table(name).await?;
        let streams = crate::planning::reads_stream_anywhere(frame.logical_plan());
        if !streams {
            return Err(Error::Sql(format!(
                "'{name}' is not an unbounded table (or a view over one); read static tables \
                 with session().context().table(...)"
            )));
        }
        Ok(StreamFrame::new(self.clone(), frame))
    }

    /// Registers a listener for every query started from now on (Spark's
    /// `streams.addListener`).
    pub fn add_listener(&self, listener: Arc<dyn StreamingQueryListener>) {
        self.inner.session.add_listener(listener);
    }

    /// The queries started from this context, running or ended (Spark's `streams`).
    pub fn queries(&self) -> Vec<StreamingQuery> {
        self.inner.session.queries()
    }

    fn next_stream_name(&self) -> String {
        format!(
            "stream_{}",
            self.inner.streams.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

/// Options of a [`StreamingContext`] (Spark's `SparkSession.builder`).
///
/// ```no_run
/// # async fn run() -> millrace::Result<()> {
/// use millrace::prelude::*;
/// let ctx = StreamingContext::builder().ui("127.0.0.1:0").build()?;
/// println!("web UI at http://{}/", ctx.ui_address().unwrap());
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct StreamingContextBuilder {
    settings: SessionSettings,
    ui: Option<String>,
}

impl StreamingContextBuilder {
    /// Serve the web UI, REST API and Prometheus `/metrics` on `addr` (`HOST:PORT` or a
    /// port on 127.0.0.1; port 0 picks a free one) while the context lives.
    pub fn ui(mut self, addr: impl Into<String>) -> Self {
        self.ui = Some(addr.into());
        self
    }

    /// The session settings (progress printing, retained batches).
    pub fn settings(mut self, settings: SessionSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The context, on the current tokio runtime; fails if the UI cannot listen.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self) -> Result<StreamingContext> {
        let session = Session::new(Handle::current(), self.settings);
        if let Some(addr) = &self.ui {
            session.start_ui(addr)?;
        }
        Ok(StreamingContext::with_session(session))
    }
}

impl Default for StreamingContext {
    /// [`StreamingContext::new`]: on the current tokio runtime.
    fn default() -> Self {
        Self::new()
    }
}

/// The unbounded tables a logical plan reads, by name.
fn streams_of(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<Arc<crate::source::StreamDef>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let mut found: Vec<Arc<crate::source::StreamDef>> = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(def) = scanned_stream(scan)
            && !found.iter().any(|d| d.name == def.name)
        {
            found.push(def);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// What one `use millrace::prelude::*;` brings: the DataFrame API, the sink and
/// trigger choices, DataFusion's expression builders and aggregate functions, and the
/// Arrow schema types a reader's `schema` needs.
pub mod prelude {
    pub use super::{
        DataStreamReader, DataStreamWriter, GroupedStream, KeyedStream, StreamFrame,
        StreamingContext, StreamingContextBuilder, session_window, window,
    };
    pub use crate::execution::operator::{GroupState, GroupStateTimeout, Row};
    pub use crate::execution::{
        QueryProgress, QueryStatus, StreamingQuery, StreamingQueryListener, Trigger,
    };
    pub use crate::sink::OutputMode;
    pub use datafusion::arrow::array::RecordBatch;
    pub use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    pub use datafusion::common::ScalarValue;
    pub use datafusion::functions_aggregate::expr_fn::*;
    pub use datafusion::logical_expr::JoinType;
    pub use datafusion::prelude::{DataFrame, Expr, col, lit};
}

/// Spark's `window(timeColumn, windowDuration[, slideDuration])` as an expression for
/// [`StreamFrame::group_by`]: tumbling when `slide` is `None`, sliding otherwise. The
/// result column is named `window`.
pub fn window(
    time: datafusion::prelude::Expr,
    size: &str,
    slide: Option<&str>,
) -> datafusion::prelude::Expr {
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::lit;
    let mut args = vec![time, lit(size)];
    if let Some(slide) = slide {
        args.push(lit(slide));
    }
    ScalarUDF::from(crate::functions::WindowFunction::new()).call(args)
}

/// Spark's `session_window(timeColumn, gapDuration)` as an expression for
/// [`StreamFrame::group_by`]: each key's rows less than `gap` apart form one session.
/// The result column is named `session_window`.
pub fn session_window(time: datafusion::prelude::Expr, gap: &str) -> datafusion::prelude::Expr {
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::lit;
    ScalarUDF::from(crate::functions::SessionWindowFunction::new()).call(vec![time, lit(gap)])
}
