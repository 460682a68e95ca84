//! Spark's `writeStream`: a builder that picks the sink, output mode and trigger, and
//! starts the query.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use super::StreamingContext;
use crate::connector::registry::{self, Location, Role};
use crate::error::{Error, Result};
use crate::execution::{StreamingQuery, Trigger};
use crate::sink::foreach_batch::ForeachBatchFn;
use crate::sink::{OutputMode, SinkRequest, SinkSpec};
use crate::source::options::Options;

/// Describes the sink of a stream frame, then [`start`](Self::start)s the query.
pub struct DataStreamWriter {
    ctx: StreamingContext,
    plan: LogicalPlan,
    format: String,
    options: Vec<(String, String)>,
    output_mode: OutputMode,
    trigger: Trigger,
    name: Option<String>,
    foreach: Option<ForeachBatchFn>,
}

impl DataStreamWriter {
    pub(super) fn new(ctx: StreamingContext, plan: LogicalPlan) -> Self {
        DataStreamWriter {
            ctx,
            plan,
            format: "console".to_string(),
            options: Vec::new(),
            output_mode: OutputMode::Append,
            trigger: Trigger::default(),
            name: None,
            foreach: None,
        }
    }

    /// The sink, by its name in the connector registry (any case): `console` (default),
    /// `memory` (a session table named after the query), `parquet`, `csv` or `json`
    /// (files under the `path` option), `kafka` (records of the topic named by the
    /// `topic` option), `postgres` (rows of the table named by the `table` option), or
    /// `noop` (rows dropped, for measuring). Each takes the options of its
    /// `CREATE SINK ... STORED AS` form.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }

    /// One sink option: the connector's location option (`path` for file sinks,
    /// `topic` for Kafka, `table` for PostgreSQL: the SQL sink's `LOCATION`),
    /// `checkpoint` (also `checkpointLocation`), and the options of the SQL sink of the
    /// same format (`num_rows`, Kafka's `bootstrap.servers`, ...), checked by the same
    /// code with the same messages.
    pub fn option(mut self, key: &str, value: &str) -> Self {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    /// Which rows the sink receives; default [`OutputMode::Append`].
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// When batches run; default: as soon as new data exists.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The query's name (and a memory sink's table name). Default: `query_<n>`.
    pub fn query_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Sends each batch's rows to `function` as a DataFusion `DataFrame`, with the
    /// batch id (Spark's `foreachBatch`). At-least-once: after a crash the interrupted
    /// batch is passed again with the same id and rows, so make the writer idempotent
    /// on the id for exactly-once.
    pub fn foreach_batch<F, Fut>(mut self, function: F) -> Self
    where
        F: Fn(u64, DataFrame) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        self.format = "foreach_batch".to_string();
        self.foreach = Some(ForeachBatchFn(Arc::new(move |id, frame| {
            Box::pin(function(id, frame))
        })));
        self
    }

    /// Starts the query; errors (options, unsupported query shapes, a checkpoint of
    /// another query) are returned before anything runs.
    pub async fn start(self) -> Result<StreamingQuery> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None if self.format == "memory" => {
                return Err(Error::Option(
                    "a memory sink's table is named after the query: call query_name(...)"
                        .to_string(),
                ));
            }
            None => format!("query_{}", self.ctx.queries().len() + 1),
        };
        let (sink, checkpoint) = self.sink(&name)?;
        if !sink.supports(self.output_mode) {
            return Err(Error::Unsupported(format!(
                "a {} sink only appends: use OutputMode::Append",
                self.format
            )));
        }
        self.ctx
            .session()
            .start_plan(
                &name,
                self.plan,
                sink,
                self.output_mode,
                self.trigger,
                checkpoint,
            )
            .await
    }

    /// The sink from `format(...)` and `option(...)`: the connector comes from the
    /// registry and its options go through the SQL sink's parser ([`SinkSpec::parse`]
    /// and the strict [`Options`]), so they are checked, and refused, with the same
    /// messages as in `CREATE SINK`; the connector's location option (`path`, Kafka's
    /// `topic`, PostgreSQL's `table`) stands for the statement's `LOCATION`.
    fn sink(&self, name: &str) -> Result<(SinkSpec, Option<PathBuf>)> {
        if self.format == "foreach_batch" {
            let function = self.foreach.clone().ok_or_else(|| {
                Error::Option(
                    "format('foreach_batch') needs the function: call .foreach_batch(f) \
                     instead of .format(\"foreach_batch\")"
                        .to_string(),
                )
            })?;
            // Its only option is the checkpoint (Spark's `checkpointLocation`): without
            // one, replays after a restart start from nothing.
            let mut checkpoint = None;
            for (key, value) in &self.options {
                match key.as_str() {
                    "checkpoint" | "checkpointLocation" => {
                        let path = PathBuf::from(value);
                        checkpoint = Some(std::path::absolute(&path).map_err(Error::io(&path))?);
                    }
                    other => {
                        return Err(Error::Option(format!(
                            "unknown option '{other}' for a foreach_batch sink (its only \
                             option is 'checkpoint')"
                        )));
                    }
                }
            }
            return Ok((crate::sink::foreach_batch::spec(function), checkpoint));
        }
        let connector = registry::find(Role::Sink, &self.format)
            .filter(|c| c.dataframe && c.sql)
            .ok_or_else(|| registry::unknown_dataframe_format(&self.format))?;
        let what = format!("{} sink '{name}'", connector.name);
        let pairs = self
            .options
            .iter()
            .map(|(key, value)| {
                let key = if key.eq_ignore_ascii_case("checkpointLocation") {
                    "checkpoint".to_string()
                } else {
                    key.clone()
                };
                (key, value.clone())
            })
            .collect();
        let mut options = Options::new(what.clone(), pairs)?;
        let location = connector.location_option.and_then(|key| options.take(key));
        let checkpoint = options
            .take("checkpoint")
            .map(|c| std::path::absolute(&c).map_err(Error::io(&c)))
            .transpose()?;
        let spec = SinkSpec::parse(
            SinkRequest {
                connector,
                what: &what,
                location,
                location_hint: match (connector.location_option, connector.location) {
                    (Some(key), Location::Required(x) | Location::Optional(x)) => {
                        format!("option('{key}', '{x}')")
                    }
                    _ => String::new(),
                },
                has_checkpoint: checkpoint.is_some(),
            },
            &mut options,
        )?;
        options.finish(&connector.dataframe_options())?;
        Ok((spec, checkpoint))
    }
}
