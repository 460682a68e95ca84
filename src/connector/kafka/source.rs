//! The Kafka source: records of one topic (LOCATION) or of every topic matching
//! `topic_pattern`, read in micro-batches delimited by per-partition offsets.
//!
//! **Offsets live in millrace's offset log, not in a consumer group** (as in Spark). A
//! batch's end offset is `{"<topic>": {"<partition>": <next offset>, ...}, ...}`;
//! [`get_batch`](StreamSource::get_batch) assigns the partitions to a consumer and seeks
//! to the start of each range, so a replayed batch reads exactly the same offset ranges.
//! No group is joined; offsets are committed to the broker only with `commit_to_group`,
//! for monitoring tools (informational: never read back).
//!
//! - The first batch starts from `starting_offsets` (`earliest`, `latest`, or Spark's
//!   per-partition JSON), resolved to concrete offsets once and kept in
//!   `<checkpoint>/sources/<table>/initial-offsets.json` before the first offset is
//!   returned, so a replay of batch 0 starts at the same place.
//! - Partitions that appear later (a new topic matching the pattern, partitions added
//!   to a topic) are found by every `latest_offset` and read from offset 0.
//! - `max_offsets_per_trigger` caps a batch; the cap is split max-min fairly: every
//!   partition with a backlog gets an equal share, and what small backlogs leave unused
//!   goes to the others.
//! - Records deleted before they were read (retention, `DeleteRecords`, a topic deleted
//!   and created again) are *data loss*: with `fail_on_data_loss` (default) the query
//!   stops with the topic, partition and offsets named; without it, the source skips to
//!   what is still there and counts the offsets it skipped
//!   (`sources[].metrics.numOffsetsSkippedByDataLoss`).
//! - A broker that does not answer is retried with exponential backoff (100 ms to 5 s)
//!   for `broker_retry_timeout` (default 60 s) before the query fails.
//!
//! Rows: the declared columns parsed from the value (`format` `json` or `csv`, with
//! the files' decoders and malformed-record `mode`), then the metadata columns of
//! [`METADATA_COLUMNS`] (a declared column of the same name hides the metadata
//! column). With `format` `raw` there are only the metadata columns.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray, StringBuilder, StructArray, TimestampNanosecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::filter;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use serde_json::{Map, Value, json};

use crate::checkpoint::write_atomic;
use crate::connector::kafka::client::{Backoff, check_topic_name};
use crate::error::{Error, Result};
use crate::source::format::{CORRUPT_RECORD_COLUMN, MalformedMode, RecordEncoding, decode_records};
use crate::source::options::Options;
use crate::source::{
    DeclaredSource, Offset, SourceArgs, SourceBatch, SourceDefinition, StreamDef, StreamSource,
};

/// The metadata columns every Kafka table has (Spark's names), after the declared ones:
/// `key BINARY`, `value BINARY` (the raw value), `topic VARCHAR`, `partition INT`,
/// `offset BIGINT`, `timestamp TIMESTAMP` (the record's create or log-append time) and
/// `headers`, a list of `{key VARCHAR, value BINARY}` structs in record order (Spark's
/// `array<struct<key: string, value: binary>>`; empty when the record has none).
pub const METADATA_COLUMNS: [&str; 7] = [
    "key",
    "value",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "headers",
];

/// Option keys of a Kafka table, listed in the error for an unknown option (the
/// `kafka.*` client settings are passed through, so any such key is "known").
pub const OPTION_KEYS: [&str; 12] = [
    "bootstrap.servers",
    "topic_pattern",
    "format",
    "mode",
    "delimiter",
    "starting_offsets",
    "max_offsets_per_trigger",
    "fail_on_data_loss",
    "isolation.level",
    "broker_retry_timeout",
    "commit_to_group",
    "kafka.<librdkafka setting>",
];

/// Client settings millrace sets itself; `kafka.<key>` is refused for these.
const MANAGED_SETTINGS: [(&str, &str); 7] = [
    (
        "group.id",
        "offsets are kept in the checkpoint, no consumer group is used (for monitoring, \
         'commit_to_group' commits each batch's end offsets to a group)",
    ),
    ("enable.auto.commit", "offsets are kept in the checkpoint"),
    (
        "enable.auto.offset.store",
        "offsets are kept in the checkpoint",
    ),
    (
        "auto.offset.reset",
        "use 'starting_offsets'; records deleted before they are read are handled by 'fail_on_data_loss'",
    ),
    (
        "enable.partition.eof",
        "the source needs it to find partition ends",
    ),
    ("isolation.level", "use the option 'isolation.level'"),
    ("bootstrap.servers", "use the option 'bootstrap.servers'"),
];

/// Default of `broker_retry_timeout`: long enough to ride out a broker restart or a
/// leader election, short enough that a query against a dead cluster says so.
pub const DEFAULT_BROKER_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait of one client call (metadata, watermarks).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a Kafka table reads: part of the checkpoint identity, so a checkpoint is not
/// reused for other topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Subscription {
    /// One topic (`LOCATION`).
    Topic(String),
    /// Every topic whose whole name matches the regular expression (`topic_pattern`).
    Pattern(String),
}

/// How a record's value becomes the declared columns (Kafka does not say: the table
/// declares it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueFormat {
    /// No parsing: the table has only the metadata columns.
    Raw,
    /// Parsed as JSON or CSV into the declared columns.
    Parsed(RecordEncoding),
}

/// Where the first batch starts (`starting_offsets`); later batches start where the
/// checkpoint says.
#[derive(Debug, Clone, PartialEq)]
pub enum StartingOffsets {
    /// Each partition's earliest offset still on the broker.
    Earliest,
    /// Each partition's end when the query first runs: only records produced later.
    Latest,
    /// Per topic and partition: an offset, `-2` (earliest) or `-1` (latest); partitions
    /// not named start from the earliest offset.
    Specific(BTreeMap<String, BTreeMap<i32, i64>>),
}

/// Everything a Kafka table's declaration says, checked when the table is declared so
/// that a query never starts with options it cannot use.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    /// `bootstrap.servers`: where the client first connects.
    pub bootstrap_servers: String,
    /// The topic or topic pattern.
    pub subscription: Subscription,
    /// How values are parsed.
    pub format: ValueFormat,
    /// What to do with values that do not parse.
    pub mode: MalformedMode,
    /// Where the first batch starts.
    pub starting_offsets: StartingOffsets,
    /// At most this many offsets per batch, over all partitions.
    pub max_offsets_per_trigger: Option<u64>,
    /// Stop the query when records were deleted before they were read.
    pub fail_on_data_loss: bool,
    /// `read_committed` (default) or `read_uncommitted`.
    pub isolation_level: String,
    /// How long an unanswering broker is retried before the query fails.
    pub broker_retry_timeout: Duration,
    /// `kafka.*` settings with the prefix taken off, handed to librdkafka as they are.
    pub client_settings: Vec<(String, String)>,
    /// How many leading columns of the table are parsed from the value (the declared
    /// ones); the metadata columns follow.
    pub parsed_columns: usize,
    /// A consumer group to which each committed batch's end offsets are committed, for
    /// group-lag monitoring tools only: millrace never reads them back.
    pub commit_to_group: Option<String>,
}

impl KafkaOptions {
    /// The table's identity in checkpoint metadata (the topic, or the pattern), so a
    /// checkpoint made for other topics is refused.
    pub fn identity(&self) -> String {
        match &self.subscription {
            Subscription::Topic(topic) => format!("KAFKA {topic}"),
            Subscription::Pattern(pattern) => format!("KAFKA pattern {pattern}"),
        }
    }

    /// The topic or the pattern, for `StreamDef::location` (shown in descriptions).
    pub fn location(&self) -> String {
        match &self.subscription {
            Subscription::Topic(topic) | Subscription::Pattern(topic) => topic.clone(),
        }
    }

    fn client_config(&self, table: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("millrace-{table}"))
            // librdkafka refuses assign() without a group; none is joined, and offsets are
            // committed only to a `commit_to_group` group, for monitoring.
            .set(
                "group.id",
                self.commit_to_group
                    .clone()
                    .unwrap_or_else(|| format!("millrace-source-{table}")),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("isolation.level", &self.isolation_level);
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }
}

/// The Arrow type of the `headers` column: a list (headers are ordered and keys may
/// repeat, so not a map) of `{key Utf8, value Binary}` structs, as Spark has it.
pub fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        false,
    )))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn metadata_field(name: &str) -> Field {
    match name {
        "key" => Field::new("key", DataType::Binary, true),
        "value" => Field::new("value", DataType::Binary, true),
        "topic" => Field::new("topic", DataType::Utf8, false),
        "partition" => Field::new("partition", DataType::Int32, false),
        "offset" => Field::new("offset", DataType::Int64, false),
        "timestamp" => Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        ),
        _ => Field::new("headers", headers_type(), false),
    }
}

/// Reads a Kafka table's `LOCATION` and options (taking them from `options`) and
/// returns them checked, with the table's schema: the declared columns (parsed from
/// the value), then the metadata columns they do not hide.
pub fn declare(
    declared: Schema,
    location: Option<String>,
    options: &mut Options,
    what: &str,
) -> Result<(KafkaOptions, SchemaRef)> {
    let bootstrap_servers = match (
        options.take("bootstrap.servers"),
        options.take("kafka.bootstrap.servers"),
    ) {
        (Some(_), Some(_)) => {
            return Err(Error::Option(format!(
                "{what} gives both 'bootstrap.servers' and 'kafka.bootstrap.servers'; keep one"
            )));
        }
        (Some(servers), None) | (None, Some(servers)) if !servers.trim().is_empty() => servers,
        _ => {
            return Err(Error::Option(format!(
                "{what} needs OPTIONS ('bootstrap.servers' '<host>:<port>[,<host>:<port>...]'): \
                 the brokers to connect to"
            )));
        }
    };
    let subscription = match (location, options.take("topic_pattern")) {
        (Some(_), Some(_)) => {
            return Err(Error::Sql(format!(
                "{what} has both LOCATION (a topic) and 'topic_pattern'; give one"
            )));
        }
        (Some(topic), None) => {
            check_topic_name(&topic, what)?;
            Subscription::Topic(topic)
        }
        (None, Some(pattern)) => {
            compile_pattern(&pattern).map_err(|e| {
                Error::Option(format!(
                    "'topic_pattern' '{pattern}' of {what} is not a valid regular expression: {e}"
                ))
            })?;
            Subscription::Pattern(pattern)
        }
        (None, None) => {
            return Err(Error::Sql(format!(
                "{what} needs LOCATION '<topic>' or OPTIONS ('topic_pattern' '<regex>')"
            )));
        }
    };
    let format = match options.take("format") {
        None if declared.fields().is_empty() => ValueFormat::Raw,
        None => {
            return Err(Error::Option(format!(
                "{what} declares columns but no value format: add OPTIONS ('format' 'json') or \
                 ('format' 'csv') to parse each record's value into them, or leave out the \
                 column list to read raw records"
            )));
        }
        Some(f) => match f.to_ascii_lowercase().as_str() {
            "raw" => ValueFormat::Raw,
            "json" => ValueFormat::Parsed(RecordEncoding::Json),
            "csv" => ValueFormat::Parsed(RecordEncoding::Csv { delimiter: b',' }),
            _ => {
                return Err(Error::Option(format!(
                    "'format' of {what} must be 'json', 'csv' or 'raw', got '{f}'"
                )));
            }
        },
    };
    let mode = match options.take("mode") {
        None => MalformedMode::Permissive,
        Some(_) if format == ValueFormat::Raw => {
            return Err(Error::Option(format!(
                "'mode' of {what} applies to parsed values: it needs 'format' 'json' or 'csv'"
            )));
        }
        Some(m) => MalformedMode::parse(&m)?,
    };
    let format = match (format, options.take("delimiter")) {
        (f, None) => f,
        (ValueFormat::Parsed(RecordEncoding::Csv { .. }), Some(d)) => {
            let d = if d == "\\t" { "\t".to_string() } else { d };
            match d.as_bytes() {
                [byte] => ValueFormat::Parsed(RecordEncoding::Csv { delimiter: *byte }),
                _ => {
                    return Err(Error::Option(format!(
                        "'delimiter' of {what} must be a single character, got '{d}'"
                    )));
                }
            }
        }
        (_, Some(_)) => {
            return Err(Error::Option(format!(
                "'delimiter' of {what} needs 'format' 'csv'"
            )));
        }
    };
    let starting_offsets = match options.take("starting_offsets") {
        None => StartingOffsets::Latest,
        Some(text) => parse_starting_offsets(&text, &subscription, what)?,
    };
    let max_offsets_per_trigger =
        options.take_parsed::<u64>("max_offsets_per_trigger", "a positive whole number")?;
    if max_offsets_per_trigger == Some(0) {
        return Err(Error::Option(format!(
            "'max_offsets_per_trigger' of {what} must be at least 1"
        )));
    }
    let fail_on_data_loss = options.take_bool("fail_on_data_loss")?.unwrap_or(true);
    let isolation_level = match options.take("isolation.level") {
        None => "read_committed".to_string(),
        Some(level) => match level.to_ascii_lowercase().as_str() {
            l @ ("read_committed" | "read_uncommitted") => l.to_string(),
            _ => {
                return Err(Error::Option(format!(
                    "'isolation.level' of {what} must be 'read_committed' or 'read_uncommitted', \
                     got '{level}'"
                )));
            }
        },
    };
    let broker_retry_timeout = options
        .take("broker_retry_timeout")
        .map(|d| crate::duration::parse_duration(&d))
        .transpose()?
        .unwrap_or(DEFAULT_BROKER_RETRY_TIMEOUT);
    let commit_to_group = match options.take("commit_to_group") {
        Some(group) if group.trim().is_empty() => {
            return Err(Error::Option(format!(
                "'commit_to_group' of {what} must name a consumer group"
            )));
        }
        group => group,
    };
    let mut client_settings = Vec::new();
    for (setting, value) in options.take_prefixed("kafka.") {
        if let Some((_, why)) = MANAGED_SETTINGS.iter().find(|(k, _)| *k == setting) {
            return Err(Error::Option(format!(
                "option 'kafka.{setting}' of {what} cannot be set: {why}"
            )));
        }
        client_settings.push((setting, value));
    }
    let kafka = KafkaOptions {
        bootstrap_servers,
        subscription,
        format,
        mode,
        starting_offsets,
        max_offsets_per_trigger,
        fail_on_data_loss,
        isolation_level,
        broker_retry_timeout,
        client_settings,
        parsed_columns: declared.fields().len(),
        commit_to_group,
    };
    // librdkafka checks setting names and values without connecting anywhere.
    kafka
        .client_config("check")
        .create_native_config()
        .map_err(|e| Error::Option(format!("a 'kafka.*' option of {what} is refused: {e}")))?;
    let schema = table_schema(declared, format, what)?;
    Ok((kafka, schema))
}

/// A pattern matches whole topic names, as Java's `Pattern.matches` does in Spark.
fn compile_pattern(pattern: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Parses `starting_offsets`: `earliest`, `latest`, or `{"topic": {"0": 23, "1": -2}}`,
/// refusing topics the table does not read (a typo would otherwise be ignored).
pub fn parse_starting_offsets(
    text: &str,
    subscription: &Subscription,
    what: &str,
) -> Result<StartingOffsets> {
    match text.trim().to_ascii_lowercase().as_str() {
        "earliest" => return Ok(StartingOffsets::Earliest),
        "latest" => return Ok(StartingOffsets::Latest),
        _ => {}
    }
    let bad = |why: String| {
        Error::Option(format!(
            "'starting_offsets' of {what} must be 'earliest', 'latest' or JSON like \
             '{{\"topic\":{{\"0\":23,\"1\":-2}}}}' (-2: earliest, -1: latest): {why}"
        ))
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("'{text}' is not JSON ({e})")))?;
    let topics = value
        .as_object()
        .ok_or_else(|| bad("expected an object of topics".to_string()))?;
    let pattern = match subscription {
        Subscription::Pattern(p) => Some(compile_pattern(p).map_err(|e| bad(e.to_string()))?),
        Subscription::Topic(_) => None,
    };
    let mut out = BTreeMap::new();
    for (topic, partitions) in topics {
        let subscribed = match (&pattern, subscription) {
            (Some(pattern), _) => pattern.is_match(topic),
            (None, Subscription::Topic(t)) => t == topic,
            (None, Subscription::Pattern(_)) => false,
        };
        if !subscribed {
            return Err(bad(format!("topic '{topic}' is not one the table reads")));
        }
        let partitions = partitions
            .as_object()
            .ok_or_else(|| bad(format!("topic '{topic}' needs an object of partitions")))?;
        let mut offsets = BTreeMap::new();
        for (partition, offset) in partitions {
            let partition: i32 = partition
                .parse()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| bad(format!("'{partition}' is not a partition number")))?;
            let offset = offset
                .as_i64()
                .filter(|o| *o >= -2)
                .ok_or_else(|| bad(format!("{offset} is not an offset, -1 or -2")))?;
            offsets.insert(partition, offset);
        }
        out.insert(topic.clone(), offsets);
    }
    Ok(StartingOffsets::Specific(out))
}

/// The schema of a Kafka table: parsed columns (with an optional `_corrupt_record`),
/// then the metadata columns the declared ones do not hide.
fn table_schema(declared: Schema, format: ValueFormat, what: &str) -> Result<SchemaRef> {
    if format == ValueFormat::Raw && !declared.fields().is_empty() {
        return Err(Error::Sql(format!(
            "{what} has 'format' 'raw': its columns are the metadata columns ({}); leave out \
             the column list, or set 'format' 'json' or 'csv' to parse the value",
            METADATA_COLUMNS.join(", ")
        )));
    }
    let mut fields: Vec<Field> = Vec::new();
    for field in declared.fields() {
        let mut field = field.as_ref().clone();
        if field.name() == CORRUPT_RECORD_COLUMN {
            if !matches!(
                field.data_type(),
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            ) || !field.is_nullable()
            {
                return Err(Error::Sql(format!(
                    "column {CORRUPT_RECORD_COLUMN} of {what} must be a nullable VARCHAR"
                )));
            }
            // The decoders fill this column as Utf8.
            field = field.with_data_type(DataType::Utf8);
        }
        fields.push(field);
    }
    for name in METADATA_COLUMNS {
        if !declared
            .fields()
            .iter()
            .any(|f| f.name().eq_ignore_ascii_case(name))
        {
            fields.push(metadata_field(name));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

// ---------------------------------------------------------------------------------
// Offsets

/// A topic partition.
type Tp = (String, i32);

/// An offset per partition.
type PartitionOffsets = BTreeMap<Tp, i64>;

/// `{"topic": {"0": 5}}` from a map of partitions.
fn offsets_to_json(offsets: &PartitionOffsets) -> Value {
    let mut topics = Map::new();
    for ((topic, partition), offset) in offsets {
        let entry = topics
            .entry(topic.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(partitions) = entry {
            partitions.insert(partition.to_string(), json!(offset));
        }
    }
    Value::Object(topics)
}

fn offsets_from_json(value: &Value) -> Result<PartitionOffsets> {
    let damaged = || {
        Error::Checkpoint(format!(
            "Kafka source offset {value} is not {{\"<topic>\": {{\"<partition>\": <offset>}}}}: \
             the checkpoint is damaged"
        ))
    };
    let mut out = BTreeMap::new();
    for (topic, partitions) in value.as_object().ok_or_else(damaged)? {
        for (partition, offset) in partitions.as_object().ok_or_else(damaged)? {
            let partition: i32 = partition.parse().map_err(|_| damaged())?;
            let offset = offset.as_i64().ok_or_else(damaged)?;
            out.insert((topic.clone(), partition), offset);
        }
    }
    Ok(out)
}

/// Splits `limit` offsets over partitions with `backlogs` (max-min fair): partitions
/// whose backlog is below an equal share get all of it, the others share the rest
/// equally, and the indivisible remainder goes one each in partition order.
pub fn split_limit(backlogs: &[u64], limit: u64) -> Vec<u64> {
    let mut grant = vec![0u64; backlogs.len()];
    let mut order: Vec<usize> = (0..backlogs.len()).filter(|&i| backlogs[i] > 0).collect();
    order.sort_by_key(|&i| (backlogs[i], i));
    let mut left = limit;
    for (k, &i) in order.iter().enumerate() {
        let remaining = (order.len() - k) as u64;
        let share = left / remaining;
        if backlogs[i] <= share {
            grant[i] = backlogs[i];
            left -= backlogs[i];
            continue;
        }
        let mut rest = order[k..].to_vec();
        rest.sort_unstable();
        for &j in &rest {
            grant[j] = share;
        }
        left -= share * remaining;
        for &j in rest.iter().take(left as usize) {
            grant[j] += 1;
        }
        break;
    }
    grant
}

/// What a broker currently holds of one partition.
#[derive(Debug, Clone, Copy)]
struct Watermarks {
    low: i64,
    high: i64,
}

/// How one attempt of a retried broker call ended.
enum Attempt<T> {
    Done(T),
    /// Worth trying again (broker unreachable, leader moving, topic not yet back).
    Retry(String),
    /// Not worth trying again.
    Fail(Error),
}

// ---------------------------------------------------------------------------------
// The source

/// A Kafka source opened for one query: everything it needs to replay a batch is in
/// the offsets and `initial-offsets.json`, nothing in the broker's consumer groups.
pub struct KafkaSource {
    table: String,
    options: KafkaOptions,
    schema: SchemaRef,
    /// The declared (parsed) columns, for the value decoder.
    parsed: SchemaRef,
    pattern: Option<regex::Regex>,
    initial_path: PathBuf,
    /// Metadata and watermark queries.
    client: BaseConsumer,
    /// One reading consumer per topic (partition-EOF events name only the partition).
    readers: HashMap<String, BaseConsumer>,
    /// With `available_now`: the end of every partition when the query started.
    bound: Option<PartitionOffsets>,
    /// The first batch's start (from `initial-offsets.json`).
    initial: Option<PartitionOffsets>,
    /// Offsets behind the latest per partition, for the batch ending at `.0`.
    behind: Option<(PartitionOffsets, Vec<i64>)>,
}

impl KafkaSource {
    /// Opens the source; nothing is fetched from the broker yet (a broker that is down
    /// when the query starts is retried by the first batch, not refused here).
    pub fn open(
        table: &str,
        schema: SchemaRef,
        options: KafkaOptions,
        state_dir: &Path,
    ) -> Result<Self> {
        let client = options
            .client_config(table)
            .create::<BaseConsumer>()
            .map_err(|e| {
                Error::Option(format!("cannot create a Kafka client for '{table}': {e}"))
            })?;
        let pattern = match &options.subscription {
            Subscription::Pattern(p) => Some(compile_pattern(p).map_err(|e| {
                Error::Option(format!("'topic_pattern' '{p}' is not a valid regex: {e}"))
            })?),
            Subscription::Topic(_) => None,
        };
        let parsed = Arc::new(Schema::new(
            schema.fields()[..options.parsed_columns.min(schema.fields().len())].to_vec(),
        ));
        Ok(KafkaSource {
            table: table.to_string(),
            schema,
            parsed,
            pattern,
            initial_path: state_dir.join("initial-offsets.json"),
            client,
            readers: HashMap::new(),
            bound: None,
            initial: None,
            behind: None,
            options,
        })
    }

    fn call_timeout(&self) -> Duration {
        CALL_TIMEOUT.min(
            self.options
                .broker_retry_timeout
                .max(Duration::from_millis(100)),
        )
    }

    /// Runs `call` until it is done, retrying with exponential backoff (100 ms to 5 s)
    /// for `broker_retry_timeout`; `what` says what was being done, for the error.
    fn retry<T>(&self, what: &str, mut call: impl FnMut() -> Attempt<T>) -> Result<T> {
        let deadline = Instant::now() + self.options.broker_retry_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match call() {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(why) => {
                    let wait = backoff.next_wait();
                    if Instant::now() + wait > deadline {
                        return Err(Error::Network(format!(
                            "Kafka table '{}': {what} failed for {} s ({why}); check that the \
                             brokers at '{}' run and are reachable, or raise the table option \
                             'broker_retry_timeout'",
                            self.table,
                            self.options.broker_retry_timeout.as_secs(),
                            self.options.bootstrap_servers
                        )));
                    }
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Whether the query has read before (its first batch's start is fixed).
    fn started_before(&self) -> bool {
        self.initial.is_some() || self.initial_path.exists()
    }

    /// The partitions the table reads now, with their watermarks.
    fn current(&self) -> Result<BTreeMap<Tp, Watermarks>> {
        let partitions = self.retry("listing the topic's partitions", || self.list_partitions())?;
        let mut out = BTreeMap::new();
        for (topic, partition) in partitions {
            let watermarks = self.retry(
                &format!("reading the offsets of topic '{topic}' partition {partition}"),
                || match self
                    .client
                    .fetch_watermarks(&topic, partition, self.call_timeout())
                {
                    Ok((low, high)) => Attempt::Done(Watermarks { low, high }),
                    Err(e) => Attempt::Retry(e.to_string()),
                },
            )?;
            out.insert((topic, partition), watermarks);
        }
        Ok(out)
    }

    /// One attempt at listing the subscribed partitions from the broker's metadata.
    fn list_partitions(&self) -> Attempt<Vec<Tp>> {
        let topic = match &self.options.subscription {
            Subscription::Topic(t) => Some(t.as_str()),
            Subscription::Pattern(_) => None,
        };
        let metadata = match self.client.fetch_metadata(topic, self.call_timeout()) {
            Ok(m) => m,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let mut out = Vec::new();
        for t in metadata.topics() {
            let wanted = match (&self.pattern, topic) {
                (_, Some(name)) => t.name() == name,
                (Some(pattern), None) => !t.name().starts_with("__") && pattern.is_match(t.name()),
                (None, None) => false,
            };
            if !wanted {
                continue;
            }
            if let Some(error) = t.error() {
                let code = RDKafkaErrorCode::from(error);
                if topic.is_none() {
                    // A matching topic being created or deleted: read it once it is whole.
                    continue;
                }
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    if self.started_before() {
                        // It was there: deleted, or a broker restarting. Give it time.
                        return Attempt::Retry(format!(
                            "topic '{}' does not exist (any more)",
                            t.name()
                        ));
                    }
                    return Attempt::Fail(Error::Data(format!(
                        "topic '{}' of Kafka table '{}' does not exist on the brokers at '{}': \
                         create it first, or fix the table's LOCATION",
                        t.name(),
                        self.table,
                        self.options.bootstrap_servers
                    )));
                }
                return Attempt::Retry(format!("topic '{}': {code}", t.name()));
            }
            if t.partitions().is_empty() && topic.is_some() {
                return Attempt::Retry(format!("topic '{}' has no partitions yet", t.name()));
            }
            for p in t.partitions() {
                out.push((t.name().to_string(), p.id()));
            }
        }
        if let Some(name) = topic
            && out.is_empty()
        {
            return Attempt::Retry(format!("no metadata for topic '{name}'"));
        }
        Attempt::Done(out)
    }

    /// The first batch's start: read from `initial-offsets.json`, or resolved from
    /// `starting_offsets` now and written there before anything uses it.
    fn initial_offsets(&mut self, current: &BTreeMap<Tp, Watermarks>) -> Result<PartitionOffsets> {
        if let Some(initial) = &self.initial {
            return Ok(initial.clone());
        }
        let initial = match read_initial_offsets(&self.initial_path)? {
            Some(initial) => initial,
            None => {
                let mut initial = PartitionOffsets::new();
                if let StartingOffsets::Specific(specific) = &self.options.starting_offsets {
                    for (topic, partitions) in specific {
                        for partition in partitions.keys() {
                            if !current.contains_key(&(topic.clone(), *partition)) {
                                let count = current.keys().filter(|(t, _)| t == topic).count();
                                return Err(Error::Option(format!(
                                    "'starting_offsets' of Kafka table '{}' names partition \
                                     {partition} of topic '{topic}', which has {count} \
                                     partition(s) on '{}'",
                                    self.table, self.options.bootstrap_servers
                                )));
                            }
                        }
                    }
                }
                for (tp, w) in current {
                    let offset = match &self.options.starting_offsets {
                        StartingOffsets::Earliest => w.low,
                        StartingOffsets::Latest => w.high,
                        StartingOffsets::Specific(specific) => {
                            match specific.get(&tp.0).and_then(|p| p.get(&tp.1)) {
                                Some(-1) => w.high,
                                Some(-2) | None => w.low,
                                Some(offset) => *offset,
                            }
                        }
                    };
                    initial.insert(tp.clone(), offset);
                }
                write_atomic(
                    &self.initial_path,
                    offsets_to_json(&initial).to_string().as_bytes(),
                )?;
                initial
            }
        };
        self.initial = Some(initial.clone());
        Ok(initial)
    }

    /// The start of every partition of a batch starting at `start`.
    fn starts(&mut self, start: Option<&Offset>) -> Result<PartitionOffsets> {
        match start {
            Some(start) => offsets_from_json(start),
            None => match &self.initial {
                Some(initial) => Ok(initial.clone()),
                None => {
                    let bytes = std::fs::read(&self.initial_path).map_err(|e| {
                        Error::Checkpoint(format!(
                            "the Kafka source's first offsets ({}) cannot be read: {e}; the \
                             checkpoint is damaged",
                            self.initial_path.display()
                        ))
                    })?;
                    let initial = offsets_from_json(&serde_json::from_slice(&bytes)?)?;
                    self.initial = Some(initial.clone());
                    Ok(initial)
                }
            },
        }
    }

    fn data_loss(&self, message: String) -> Error {
        Error::Data(format!(
            "Kafka table '{}': {message}. Records were deleted (retention, DeleteRecords, or \
             the topic was deleted and created again) before the query read them; set the \
             table option 'fail_on_data_loss' 'false' to skip to the records still there",
            self.table
        ))
    }

    fn reader(&mut self, topic: &str) -> Result<()> {
        if !self.readers.contains_key(topic) {
            let consumer = self
                .options
                .client_config(&self.table)
                .create::<BaseConsumer>()
                .map_err(|e| {
                    Error::Option(format!(
                        "cannot create a Kafka consumer for '{}': {e}",
                        self.table
                    ))
                })?;
            self.readers.insert(topic.to_string(), consumer);
        }
        Ok(())
    }
}

impl StreamSource for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>> {
        let current = self.current()?;
        let first = start.is_none();
        let starts = match start {
            Some(start) => offsets_from_json(start)?,
            None => self.initial_offsets(&current)?,
        };
        // Every partition the query knows: those read before keep their place even if
        // they vanished from the metadata (nothing new is read from them).
        let mut from: PartitionOffsets = starts.clone();
        for tp in current.keys() {
            // Partitions that appeared since are read from their beginning.
            from.entry(tp.clone()).or_insert(0);
        }
        let mut available = PartitionOffsets::new();
        for (tp, start) in &from {
            let Some(w) = current.get(tp) else {
                available.insert(tp.clone(), *start);
                continue;
            };
            let mut end = w.high;
            if let Some(bound) = &self.bound {
                end = end.min(bound.get(tp).copied().unwrap_or(*start));
            }
            if w.high < *start {
                if self.options.fail_on_data_loss {
                    return Err(self.data_loss(format!(
                        "topic '{}' partition {} ends at offset {} but the query has read up \
                         to offset {start}",
                        tp.0, tp.1, w.high
                    )));
                }
                // Offsets went back: the partition is new. Read it from its start.
                available.insert(tp.clone(), w.high);
                continue;
            }
            available.insert(tp.clone(), end.max(*start));
        }
        let mut ends = available.clone();
        if let Some(limit) = self.options.max_offsets_per_trigger {
            let keys: Vec<&Tp> = available.keys().collect();
            let backlogs: Vec<u64> = keys
                .iter()
                .map(|tp| (available[*tp] - from[*tp]).max(0) as u64)
                .collect();
            let grants = split_limit(&backlogs, limit);
            for (tp, grant) in keys.iter().zip(grants) {
                if available[*tp] > from[*tp] {
                    ends.insert((*tp).clone(), from[*tp] + grant as i64);
                }
            }
        }
        let behind: Vec<i64> = ends
            .iter()
            .filter_map(|(tp, end)| current.get(tp).map(|w| (w.high - end).max(0)))
            .collect();
        self.behind = Some((ends.clone(), behind));
        if first && ends == starts {
            return Ok(None);
        }
        Ok(Some(offsets_to_json(&ends)))
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        let current = self.current()?;
        self.bound = Some(current.into_iter().map(|(tp, w)| (tp, w.high)).collect());
        Ok(())
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch> {
        let starts = self.starts(start)?;
        let ends = offsets_from_json(end)?;
        let mut ranges: BTreeMap<String, Vec<Range>> = BTreeMap::new();
        for ((topic, partition), to) in &ends {
            let from = starts
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(0);
            if from != *to {
                ranges.entry(topic.clone()).or_default().push(Range {
                    partition: *partition,
                    from,
                    to: *to,
                    next: from,
                    done: false,
                    skipped: 0,
                    end_seen_after_seek: false,
                });
            }
        }
        let mut out = SourceBatch::default();
        if let Some((behind_end, behind)) = &self.behind
            && behind_end == &ends
            && !behind.is_empty()
        {
            let min = behind.iter().min().copied().unwrap_or(0);
            let max = behind.iter().max().copied().unwrap_or(0);
            let avg = behind.iter().sum::<i64>() as f64 / behind.len() as f64;
            out.metrics
                .insert("minOffsetsBehindLatest".into(), min.to_string());
            out.metrics
                .insert("maxOffsetsBehindLatest".into(), max.to_string());
            out.metrics
                .insert("avgOffsetsBehindLatest".into(), format!("{avg:.1}"));
        }
        // Data loss: records of a range no longer on the broker.
        for (topic, topic_ranges) in &mut ranges {
            for range in topic_ranges.iter_mut() {
                let partition = range.partition;
                let w = self.retry(
                    &format!("reading the offsets of topic '{topic}' partition {partition}"),
                    || match self
                        .client
                        .fetch_watermarks(topic, partition, self.call_timeout())
                    {
                        Ok((low, high)) => Attempt::Done(Watermarks { low, high }),
                        Err(e) => Attempt::Retry(e.to_string()),
                    },
                )?;
                self.check_range(topic, range, w)?;
            }
        }
        for topic in ranges.keys() {
            self.reader(topic)?;
        }
        let read: Vec<Result<Vec<RawPartition>>> = {
            let this = &*self;
            let topics: Vec<(&String, &mut Vec<Range>)> = ranges.iter_mut().collect();
            if topics.len() <= 1 {
                topics
                    .into_iter()
                    .map(|(topic, ranges)| this.read_topic(topic, ranges))
                    .collect()
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = topics
                        .into_iter()
                        .map(|(topic, ranges)| scope.spawn(move || this.read_topic(topic, ranges)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(Error::Network("a Kafka reader thread panicked".into()))
                            })
                        })
                        .collect()
                })
            }
        };
        let mut raws = Vec::new();
        for r in read {
            raws.extend(r?);
        }
        let skipped: u64 = ranges.values().flatten().map(|r| r.skipped).sum();
        out.metrics
            .insert("numOffsetsSkippedByDataLoss".into(), skipped.to_string());
        let decoded = self.decode_all(&raws)?;
        for (batch, dropped) in decoded {
            out.malformed_dropped += dropped;
            if batch.num_rows() > 0 {
                out.batches.push(batch);
            }
        }
        Ok(out)
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        let Some(group) = &self.options.commit_to_group else {
            return Ok(());
        };
        // Informational: a failure is reported and the query goes on.
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets_from_json(end)? {
            if list
                .add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset))
                .is_err()
            {
                return Ok(());
            }
        }
        if let Err(e) = self.client.commit(&list, CommitMode::Sync) {
            tracing::warn!(
                "Kafka table '{}': committing offsets to group '{group}' (for monitoring \
                 only) failed: {e}",
                self.table
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.options.subscription {
            Subscription::Topic(t) => format!("KafkaSource[Subscribe[{t}]]"),
            Subscription::Pattern(p) => format!("KafkaSource[SubscribePattern[{p}]]"),
        }
    }
}

/// One partition's offsets to read in a batch.
#[derive(Debug, Clone, Copy)]
struct Range {
    partition: i32,
    from: i64,
    to: i64,
    /// The next offset expected.
    next: i64,
    done: bool,
    /// Offsets that were gone and skipped (`fail_on_data_loss` false).
    skipped: u64,
    /// Whether the reader was sent back to `next` after an end-of-partition event, so
    /// that the next such event is known to be about this range.
    end_seen_after_seek: bool,
}

/// The records read from one partition, before decoding.
struct RawPartition {
    topic: String,
    partition: i32,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    header_offsets: Vec<i32>,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
}

impl RawPartition {
    fn new(topic: &str, partition: i32) -> Self {
        RawPartition {
            topic: topic.to_string(),
            partition,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            keys: BinaryBuilder::new(),
            values: BinaryBuilder::new(),
            header_offsets: vec![0],
            header_keys: StringBuilder::new(),
            header_values: BinaryBuilder::new(),
        }
    }

    fn push<M: Message>(&mut self, message: &M) {
        self.offsets.push(message.offset());
        self.timestamps.push(message.timestamp().to_millis());
        self.keys.append_option(message.key());
        self.values.append_option(message.payload());
        let mut count = 0;
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                self.header_keys.append_value(header.key);
                self.header_values.append_option(header.value);
                count += 1;
            }
        }
        let last = *self.header_offsets.last().unwrap_or(&0);
        self.header_offsets.push(last + count);
    }
}

impl KafkaSource {
    /// Checks a range against what the broker still holds, before reading it.
    fn check_range(&self, topic: &str, range: &mut Range, w: Watermarks) -> Result<()> {
        let fail = self.options.fail_on_data_loss;
        let partition = range.partition;
        if range.to < range.from {
            // Offsets went back (only planned with fail_on_data_loss false): a new
            // partition under the old name, read from its start.
            range.from = w.low.min(range.to);
            range.next = range.from;
            return Ok(());
        }
        if w.low > range.from {
            if fail {
                return Err(self.data_loss(format!(
                    "topic '{topic}' partition {partition}: the next offset to read is {} but \
                     the earliest offset on the broker is {} (offsets {}..{} are gone)",
                    range.from,
                    w.low,
                    range.from,
                    w.low.min(range.to) - 1
                )));
            }
            let from = w.low.min(range.to);
            range.skipped += (from - range.from) as u64;
            tracing::warn!(
                "Kafka table '{}': topic '{topic}' partition {partition}: offsets {}..{} were \
                 deleted before they were read; skipped (fail_on_data_loss is false)",
                self.table,
                range.from,
                from - 1
            );
            range.from = from;
            range.next = from;
        }
        if w.high < range.to {
            if fail {
                return Err(self.data_loss(format!(
                    "topic '{topic}' partition {partition}: the batch reads up to offset {} but \
                     the partition now ends at offset {}",
                    range.to, w.high
                )));
            }
            range.skipped += (range.to - w.high.max(range.from)) as u64;
            range.to = w.high.max(range.from);
        }
        if range.from >= range.to {
            range.done = true;
        }
        Ok(())
    }

    /// Checks what is left of a range being read (from its next offset) against the
    /// broker's watermarks, after the reader hit the partition's end or a deleted offset.
    fn recheck(&self, topic: &str, range: &mut Range, w: Watermarks) -> Result<()> {
        let mut rest = Range {
            from: range.next,
            next: range.next,
            skipped: 0,
            ..*range
        };
        self.check_range(topic, &mut rest, w)?;
        range.skipped += rest.skipped;
        range.next = rest.from;
        range.to = rest.to;
        range.done = rest.done;
        Ok(())
    }

    /// Reads the ranges of one topic with the topic's consumer: every partition is
    /// assigned at its start offset and read until its end offset (or its end, when
    /// the last offsets hold no records for this reader, e.g. transaction markers).
    fn read_topic(&self, topic: &str, ranges: &mut [Range]) -> Result<Vec<RawPartition>> {
        let consumer = &self.readers[topic];
        let mut raws: Vec<RawPartition> = ranges
            .iter()
            .map(|r| RawPartition::new(topic, r.partition))
            .collect();
        let index: HashMap<i32, usize> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (r.partition, i))
            .collect();
        let mut pending = ranges.iter().filter(|r| !r.done).count();
        if pending == 0 {
            return Ok(raws);
        }
        let mut list = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| !r.done) {
            list.add_partition_offset(topic, r.partition, rdkafka::Offset::Offset(r.from))
                .map_err(|e| Error::Network(format!("Kafka: {e}")))?;
        }
        consumer.assign(&list).map_err(|e| {
            Error::Network(format!(
                "Kafka table '{}': cannot assign the partitions of topic '{topic}': {e}",
                self.table
            ))
        })?;
        let mut last_progress = Instant::now();
        let mut last_error: Option<String> = None;
        let outcome = loop {
            if pending == 0 {
                break Ok(());
            }
            if last_progress.elapsed() > self.options.broker_retry_timeout {
                let unfinished: Vec<String> = ranges
                    .iter()
                    .filter(|r| !r.done)
                    .map(|r| format!("{} (at offset {} of {})", r.partition, r.next, r.to))
                    .collect();
                break Err(Error::Network(format!(
                    "Kafka table '{}': reading topic '{topic}' from '{}' made no progress for {} \
                     s; unfinished partitions: {}{}; check that the brokers run and are \
                     reachable, or raise the table option 'broker_retry_timeout'",
                    self.table,
                    self.options.bootstrap_servers,
                    self.options.broker_retry_timeout.as_secs(),
                    unfinished.join(", "),
                    last_error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    let Some(&i) = index.get(&message.partition()) else {
                        continue;
                    };
                    let range = &mut ranges[i];
                    if range.done {
                        continue;
                    }
                    last_progress = Instant::now();
                    let offset = message.offset();
                    if offset >= range.next && offset < range.to {
                        raws[i].push(&message);
                        range.next = offset + 1;
                    }
                    if offset + 1 >= range.to {
                        range.done = true;
                        pending -= 1;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    let Some(&i) = index.get(&partition) else {
                        continue;
                    };
                    if ranges[i].done {
                        continue;
                    }
                    // The end of what the broker has, before `to`: the offsets left hold
                    // no records for this reader (transaction markers, aborted records),
                    // unless the partition lost records since the batch was planned.
                    match consumer.fetch_watermarks(topic, partition, self.call_timeout()) {
                        // An end-of-partition event is only believed after a seek of our
                        // own to the next offset: one can be left over from before the
                        // assignment (seen after a broker restart, with records 0..3 on
                        // the broker and none read), and taking it for the end would
                        // lose the range. The seek makes the client fetch again: records
                        // come, or the end is reached again, now for this range.
                        Ok((_, high)) if high >= ranges[i].to && ranges[i].end_seen_after_seek => {
                            ranges[i].done = true;
                            pending -= 1;
                        }
                        Ok((_, high)) if high >= ranges[i].to => {
                            let range = &mut ranges[i];
                            match consumer.seek(
                                topic,
                                partition,
                                rdkafka::Offset::Offset(range.next),
                                self.call_timeout(),
                            ) {
                                Ok(()) => range.end_seen_after_seek = true,
                                Err(e) => last_error = Some(e.to_string()),
                            }
                        }
                        Ok((low, high)) => {
                            let w = Watermarks { low, high };
                            if let Err(e) = self.recheck(topic, &mut ranges[i], w) {
                                break Err(e);
                            }
                            if ranges[i].done {
                                pending -= 1;
                            }
                        }
                        Err(e) => last_error = Some(e.to_string()),
                    }
                }
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) =>
                {
                    // The next offset was deleted while reading (retention ran meanwhile).
                    let mut moved = false;
                    let mut failed = None;
                    for range in ranges.iter_mut().filter(|r| !r.done) {
                        let partition = range.partition;
                        let Ok((low, high)) =
                            consumer.fetch_watermarks(topic, partition, self.call_timeout())
                        else {
                            continue;
                        };
                        if low <= range.next {
                            continue;
                        }
                        moved = true;
                        if let Err(e) = self.recheck(topic, range, Watermarks { low, high }) {
                            failed = Some(e);
                            break;
                        }
                        if range.done {
                            pending -= 1;
                        } else {
                            let _ = consumer.seek(
                                topic,
                                partition,
                                rdkafka::Offset::Offset(range.next),
                                self.call_timeout(),
                            );
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                    if !moved {
                        last_error = Some(e.to_string());
                    }
                }
                Some(Err(e)) => last_error = Some(e.to_string()),
            }
        };
        let _ = consumer.unassign();
        outcome.map(|()| raws)
    }

    /// Decodes the partitions read, in parallel when there is enough to share.
    fn decode_all(&self, raws: &[RawPartition]) -> Result<Vec<(RecordBatch, u64)>> {
        let records: usize = raws.iter().map(|r| r.offsets.len()).sum();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(raws.len());
        if threads <= 1 || records < 10_000 {
            return raws.iter().map(|raw| self.decode(raw)).collect();
        }
        let chunk = raws.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = raws
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|raw| self.decode(raw))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for handle in handles {
                let decoded = handle.join().unwrap_or_else(|_| {
                    Err(Error::Data("a Kafka decoding thread panicked".into()))
                })?;
                out.extend(decoded);
            }
            Ok(out)
        })
    }

    /// Turns one partition's records into rows of the table's schema.
    fn decode(&self, raw: &RawPartition) -> Result<(RecordBatch, u64)> {
        let rows = raw.offsets.len();
        let keys = raw.keys.finish_cloned();
        let values: BinaryArray = raw.values.finish_cloned();
        let (parsed, kept, dropped) = match self.options.format {
            ValueFormat::Raw => (None, None, 0),
            ValueFormat::Parsed(encoding) => {
                let slices: Vec<Option<&[u8]>> = values.iter().collect();
                let locate = |i: usize| {
                    format!(
                        "topic '{}' partition {} offset {}",
                        raw.topic, raw.partition, raw.offsets[i]
                    )
                };
                let decoded =
                    decode_records(encoding, self.options.mode, &slices, &self.parsed, &locate)?;
                (Some(decoded.batch), decoded.kept, decoded.malformed_dropped)
            }
        };
        let header_keys = raw.header_keys.finish_cloned();
        let header_values = raw.header_values.finish_cloned();
        let headers = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
            OffsetBuffer::new(raw.header_offsets.clone().into()),
            Arc::new(StructArray::try_new(
                header_fields(),
                vec![Arc::new(header_keys), Arc::new(header_values)],
                None,
            )?),
            None,
        )?;
        let metadata: HashMap<&str, ArrayRef> = HashMap::from([
            ("key", Arc::new(keys) as ArrayRef),
            ("value", Arc::new(values) as ArrayRef),
            (
                "topic",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    raw.topic.as_str(),
                    rows,
                ))) as ArrayRef,
            ),
            (
                "partition",
                Arc::new(Int32Array::from_value(raw.partition, rows)) as ArrayRef,
            ),
            (
                "offset",
                Arc::new(Int64Array::from(raw.offsets.clone())) as ArrayRef,
            ),
            (
                "timestamp",
                Arc::new(TimestampNanosecondArray::from_iter(
                    raw.timestamps
                        .iter()
                        .map(|t| t.and_then(|ms| ms.checked_mul(1_000_000))),
                )) as ArrayRef,
            ),
            ("headers", Arc::new(headers) as ArrayRef),
        ]);
        let keep = |array: &ArrayRef, kept: Option<&BooleanArray>| -> Result<ArrayRef> {
            match kept {
                Some(kept) => Ok(filter(array.as_ref(), kept)?),
                None => Ok(array.clone()),
            }
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        if let Some(parsed) = &parsed {
            columns.extend(parsed.columns().iter().cloned());
        }
        for field in self.schema.fields().iter().skip(columns.len()) {
            let array = metadata.get(field.name().as_str()).ok_or_else(|| {
                Error::Data(format!("no Kafka metadata column '{}'", field.name()))
            })?;
            columns.push(keep(array, kept.as_ref())?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok((batch, dropped))
    }
}

/// Reads `initial-offsets.json`: `None` only when the file does not exist (the query's
/// first start). Any other failure (permissions, an I/O error, a directory in its place,
/// bad JSON) is an error naming the file: guessing "absent" would resolve
/// `starting_offsets` again and move batch 0.
fn read_initial_offsets(path: &std::path::Path) -> Result<Option<PartitionOffsets>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Checkpoint(format!(
                "the Kafka source's first offsets ({}) cannot be read: {e}; fix the file's \
                 permissions or the disk and restart the query (the file is not rewritten, \
                 so the query keeps the start it had)",
                path.display()
            )));
        }
    };
    let json = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Checkpoint(format!(
            "the Kafka source's first offsets ({}) are not valid JSON: {e}; the checkpoint is \
             damaged",
            path.display()
        ))
    })?;
    offsets_from_json(&json).map(Some)
}

impl SourceDefinition for KafkaOptions {
    fn format_name(&self) -> &'static str {
        "KAFKA"
    }

    /// The topic, or `pattern <regex>` (not `KAFKA <location>`).
    fn identity(&self, _location: &str) -> String {
        KafkaOptions::identity(self)
    }

    fn open(&self, table: &StreamDef, state_dir: &Path) -> Result<Box<dyn StreamSource>> {
        Ok(Box::new(KafkaSource::open(
            &table.name,
            table.schema.clone(),
            self.clone(),
            state_dir,
        )?))
    }

    /// Client settings are shown by name only: they may hold credentials.
    fn details(&self) -> Vec<String> {
        let mut options = vec![format!("bootstrap.servers '{}'", self.bootstrap_servers)];
        if let Subscription::Pattern(pattern) = &self.subscription {
            options.push(format!("topic_pattern '{pattern}'"));
        }
        options.push(format!(
            "format {}",
            match self.format {
                ValueFormat::Raw => "raw",
                ValueFormat::Parsed(RecordEncoding::Json) => "json",
                ValueFormat::Parsed(RecordEncoding::Csv { .. }) => "csv",
            }
        ));
        if matches!(self.format, ValueFormat::Parsed(_)) {
            options.push(format!("mode {}", self.mode.name()));
        }
        options.push(format!(
            "starting_offsets {}",
            match &self.starting_offsets {
                StartingOffsets::Earliest => "earliest".to_string(),
                StartingOffsets::Latest => "latest".to_string(),
                StartingOffsets::Specific(offsets) => {
                    format!("'{}'", serde_json::to_string(offsets).unwrap_or_default())
                }
            }
        ));
        options.push(format!(
            "max_offsets_per_trigger {}",
            self.max_offsets_per_trigger
                .map_or("(no limit)".to_string(), |n| n.to_string())
        ));
        options.push(format!("fail_on_data_loss {}", self.fail_on_data_loss));
        options.push(format!("isolation.level {}", self.isolation_level));
        if let Some(group) = &self.commit_to_group {
            options.push(format!("commit_to_group '{group}'"));
        }
        for (setting, _) in &self.client_settings {
            options.push(format!("kafka.{setting} (set)"));
        }
        options
    }
}

/// `STORED AS KAFKA` (table): the registry's parse function.
pub fn parse_source(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    let (kafka, schema) = declare(args.declared, args.location, options, args.what)?;
    let location = kafka.location();
    Ok(DeclaredSource {
        definition: Arc::new(kafka),
        schema,
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_offsets_are_absent_only_when_the_file_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initial-offsets.json");
        assert!(read_initial_offsets(&path).unwrap().is_none());
        std::fs::write(&path, br#"{"clicks":{"0":5}}"#).unwrap();
        let mut expected = PartitionOffsets::new();
        expected.insert(("clicks".into(), 0), 5);
        assert_eq!(read_initial_offsets(&path).unwrap(), Some(expected));
        // A read that fails for another reason (here: a directory where the file
        // should be) is an error naming the file, not "absent".
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let error = read_initial_offsets(&path).unwrap_err().to_string();
        assert!(error.contains("initial-offsets.json"), "{error}");
        assert!(error.contains("cannot be read"), "{error}");
        assert!(path.is_dir(), "nothing was written in its place");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let error = read_initial_offsets(&path).unwrap_err().to_string();
        assert!(error.contains("not valid JSON"), "{error}");
    }

    #[test]
    fn the_limit_is_split_max_min_fairly() {
        // Small backlogs are served whole; the rest share equally.
        assert_eq!(split_limit(&[2, 100, 100], 50), vec![2, 24, 24]);
        // An indivisible remainder goes one each in partition order.
        assert_eq!(split_limit(&[100, 100, 100], 10), vec![4, 3, 3]);
        // Fewer offsets than partitions: the first partitions get one each.
        assert_eq!(split_limit(&[5, 5, 5], 2), vec![1, 1, 0]);
        // Enough for everything.
        assert_eq!(split_limit(&[3, 0, 4], 100), vec![3, 0, 4]);
        // Never more than the limit, never more than a backlog.
        let backlogs = [7, 1, 30, 0, 12];
        for limit in 0..60 {
            let grant = split_limit(&backlogs, limit);
            let total: u64 = grant.iter().sum();
            assert_eq!(total, limit.min(backlogs.iter().sum()), "limit {limit}");
            assert!(grant.iter().zip(&backlogs).all(|(g, b)| g <= b));
        }
    }

    #[test]
    fn offsets_round_trip_through_json_like_spark() {
        let mut offsets = PartitionOffsets::new();
        offsets.insert(("clicks".into(), 0), 23);
        offsets.insert(("clicks".into(), 10), 5);
        offsets.insert(("views".into(), 1), 0);
        let value = offsets_to_json(&offsets);
        assert_eq!(
            value,
            json!({"clicks": {"0": 23, "10": 5}, "views": {"1": 0}})
        );
        assert_eq!(offsets_from_json(&value).unwrap(), offsets);
        assert!(offsets_from_json(&json!({"clicks": 3})).is_err());
        assert!(offsets_from_json(&json!({"clicks": {"x": 3}})).is_err());
    }

    #[test]
    fn starting_offsets_accept_spark_json() {
        let topic = Subscription::Topic("clicks".into());
        assert_eq!(
            parse_starting_offsets("EARLIEST", &topic, "t").unwrap(),
            StartingOffsets::Earliest
        );
        match parse_starting_offsets(r#"{"clicks":{"0":23,"1":-2}}"#, &topic, "t").unwrap() {
            StartingOffsets::Specific(map) => {
                assert_eq!(map["clicks"], BTreeMap::from([(0, 23), (1, -2)]));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"views":{"0":1}}"#,
            r#"{"clicks":{"a":1}}"#,
            r#"{"clicks":{"0":-3}}"#,
            r#"{"clicks":[1]}"#,
            "sometimes",
        ] {
            let error = parse_starting_offsets(bad, &topic, "t")
                .unwrap_err()
                .to_string();
            assert!(error.contains("'starting_offsets'"), "{bad}: {error}");
        }
        let pattern = Subscription::Pattern("click.*".into());
        assert!(parse_starting_offsets(r#"{"clicks2":{"0":1}}"#, &pattern, "t").is_ok());
        assert!(parse_starting_offsets(r#"{"views":{"0":1}}"#, &pattern, "t").is_err());
    }

    fn declare_with(
        columns: Vec<Field>,
        location: Option<&str>,
        pairs: &[(&str, &str)],
    ) -> Result<(KafkaOptions, SchemaRef)> {
        let mut options = Options::new(
            "KAFKA table 't'",
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )?;
        let declared = declare(
            Schema::new(columns),
            location.map(str::to_string),
            &mut options,
            "KAFKA table 't'",
        )?;
        options.finish(&OPTION_KEYS)?;
        Ok(declared)
    }

    fn error(columns: Vec<Field>, location: Option<&str>, pairs: &[(&str, &str)]) -> String {
        declare_with(columns, location, pairs)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    fn id() -> Vec<Field> {
        vec![Field::new("id", DataType::Int64, true)]
    }

    #[test]
    fn declaration_defaults_and_schema() {
        let (options, schema) = declare_with(
            vec![
                Field::new("id", DataType::Int64, true),
                Field::new("timestamp", DataType::Utf8View, true),
            ],
            Some("clicks"),
            &[
                ("bootstrap.servers", "127.0.0.1:9092"),
                ("format", "JSON"),
                ("kafka.fetch.wait.max.ms", "10"),
            ],
        )
        .unwrap();
        assert_eq!(options.starting_offsets, StartingOffsets::Latest);
        assert!(options.fail_on_data_loss);
        assert_eq!(options.isolation_level, "read_committed");
        assert_eq!(
            options.client_settings,
            vec![("fetch.wait.max.ms".to_string(), "10".to_string())]
        );
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        // The declared `timestamp` hides the metadata column of that name.
        assert_eq!(
            names,
            vec![
                "id",
                "timestamp",
                "key",
                "value",
                "topic",
                "partition",
                "offset",
                "headers"
            ]
        );
        let (options, schema) = declare_with(
            vec![],
            None,
            &[
                ("kafka.bootstrap.servers", "b:1"),
                ("topic_pattern", "clicks-.*"),
            ],
        )
        .unwrap();
        assert_eq!(options.format, ValueFormat::Raw);
        assert_eq!(options.identity(), "KAFKA pattern clicks-.*");
        assert_eq!(schema.fields().len(), METADATA_COLUMNS.len());
    }

    #[test]
    fn declaration_errors_name_the_problem_and_the_fix() {
        let servers = ("bootstrap.servers", "127.0.0.1:9092");
        let json = ("format", "json");
        for (columns, location, pairs, expected) in [
            (
                id(),
                Some("clicks"),
                vec![json],
                "needs OPTIONS ('bootstrap.servers'",
            ),
            (
                id(),
                None,
                vec![servers, json],
                "needs LOCATION '<topic>' or",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("topic_pattern", "c.*")],
                "both LOCATION",
            ),
            (
                id(),
                Some("a b"),
                vec![servers, json],
                "is not a Kafka topic name",
            ),
            (id(), Some("clicks"), vec![servers], "no value format"),
            (
                id(),
                Some("clicks"),
                vec![servers, ("format", "avro")],
                "'json', 'csv' or 'raw'",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, ("format", "raw")],
                "leave out the column list",
            ),
            (
                vec![],
                Some("clicks"),
                vec![servers, ("mode", "permissive")],
                "needs 'format'",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("delimiter", ";")],
                "needs 'format' 'csv'",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("max_offsets_per_trigger", "0")],
                "at least 1",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("fail_on_data_loss", "maybe")],
                "'true' or 'false'",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("isolation.level", "dirty")],
                "'read_committed' or",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("kafka.group.id", "g")],
                "no consumer group is used",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("kafka.auto.offset.reset", "latest")],
                "use 'starting_offsets'",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("kafka.no.such.setting", "1")],
                "No such configuration property",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("maxOffsetsPerTrigger", "5")],
                "unknown option 'maxoffsetspertrigger'",
            ),
            (
                vec![],
                None,
                vec![servers, ("topic_pattern", "(")],
                "not a valid regular expression",
            ),
            (
                id(),
                Some("clicks"),
                vec![servers, json, ("broker_retry_timeout", "soon")],
                "",
            ),
        ] {
            let message = error(columns, location, &pairs);
            assert!(message.contains(expected), "{pairs:?}: {message}");
        }
    }
}
