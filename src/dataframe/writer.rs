//! Spark's `writeStream`: a builder that picks the sink, output mode and trigger, and
//! starts the query.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use super::StreamingContext;
use crate::error::{Error, Result};
use crate::execution::{StreamingQuery, Trigger};
use crate::sink::foreach_batch::ForeachBatchFn;
use crate::sink::kafka::{KAFKA_SINK_OPTIONS, KafkaSinkOptions};
use crate::sink::{FileSinkFormat, OutputMode, SinkSpec};
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

    /// The sink: `console` (default), `memory` (a session table named after the
    /// query), `parquet`, `csv` or `json` (files under the `path` option), `kafka`
    /// (records of the topic named by the `topic` option, with the options of
    /// `CREATE SINK ... STORED AS KAFKA`), or `noop` (rows dropped, for measuring).
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }

    /// One sink option: `path` (file sinks), `checkpoint` (also `checkpointLocation`),
    /// `num_rows` (console). A `kafka` sink takes `topic` (required, as Spark's Kafka
    /// writer does: the SQL sink's `LOCATION`), `checkpoint`, and the Kafka options
    /// of the SQL sink (`bootstrap.servers`, `format`, `key`, `delivery`,
    /// `create_topic`, `create_topic_partitions`, `timeout`, `kafka.<setting>`),
    /// checked by the same code with the same messages.
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
        let (sink, checkpoint) = if self.format == "kafka" {
            self.kafka_sink(&name)?
        } else {
            self.other_sink()?
        };
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

    /// A Kafka sink: the options go through the SQL sink's parser
    /// ([`KafkaSinkOptions::parse`] and the strict [`Options`]), so they are checked,
    /// and refused, with the same messages as in `CREATE SINK ... STORED AS KAFKA`;
    /// `topic` stands for the statement's `LOCATION`.
    fn kafka_sink(&self, name: &str) -> Result<(SinkSpec, Option<PathBuf>)> {
        let what = format!("KAFKA sink '{name}'");
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
        let topic = options.take("topic").ok_or_else(|| {
            Error::Option(format!(
                "{what} needs option('topic', '<topic>'): the Kafka topic to write to"
            ))
        })?;
        let checkpoint = options
            .take("checkpoint")
            .map(|c| std::path::absolute(&c).map_err(Error::io(&c)))
            .transpose()?;
        let kafka =
            KafkaSinkOptions::parse(&mut options, Some(&topic), checkpoint.is_some(), &what)?;
        let mut allowed = vec!["topic", "checkpoint"];
        allowed.extend_from_slice(KAFKA_SINK_OPTIONS);
        options.finish(&allowed)?;
        Ok((SinkSpec::Kafka(Box::new(kafka)), checkpoint))
    }

    /// Every other sink, from the options `path`, `checkpoint` and `num_rows`.
    fn other_sink(&self) -> Result<(SinkSpec, Option<PathBuf>)> {
        let mut path = None;
        let mut checkpoint = None;
        let mut num_rows = 20;
        for (key, value) in &self.options {
            match key.as_str() {
                "path" => path = Some(PathBuf::from(value)),
                "checkpoint" | "checkpointLocation" => checkpoint = Some(PathBuf::from(value)),
                "num_rows" if self.format == "console" => {
                    num_rows = value.parse().map_err(|_| {
                        Error::Option(format!("'num_rows' must be a whole number, got '{value}'"))
                    })?;
                }
                other => {
                    return Err(Error::Option(format!(
                        "unknown option '{other}' for a {} sink; the options are path, \
                         checkpoint and (console) num_rows",
                        self.format
                    )));
                }
            }
        }
        let files = |format| -> Result<SinkSpec> {
            let path = path.clone().ok_or_else(|| {
                Error::Option(format!(
                    "a {} sink needs option('path', '<directory>')",
                    self.format
                ))
            })?;
            if checkpoint.is_none() {
                return Err(Error::Option(format!(
                    "a {} sink needs option('checkpoint', '<directory>') for exactly-once output",
                    self.format
                )));
            }
            Ok(SinkSpec::Files {
                format,
                path: std::path::absolute(&path).map_err(Error::io(&path))?,
            })
        };
        let sink = match self.format.as_str() {
            "console" => SinkSpec::Console { num_rows },
            "memory" => SinkSpec::Memory,
            "noop" => SinkSpec::Noop,
            "parquet" => files(FileSinkFormat::Parquet)?,
            "csv" => files(FileSinkFormat::Csv)?,
            "json" => files(FileSinkFormat::Json)?,
            "foreach_batch" => SinkSpec::ForeachBatch(self.foreach.clone().ok_or_else(|| {
                Error::Option(
                    "format('foreach_batch') needs the function: call .foreach_batch(f) \
                     instead of .format(\"foreach_batch\")"
                        .to_string(),
                )
            })?),
            other => {
                return Err(Error::Option(format!(
                    "unknown sink format '{other}': use console, memory, parquet, csv, json, \
                     kafka or noop, or foreach_batch(...)"
                )));
            }
        };
        Ok((sink, checkpoint))
    }
}
