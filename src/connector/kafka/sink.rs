//! The Kafka sink: each batch's rows become records of one topic, exactly once per
//! batch for `read_committed` consumers (with a transactional broker), or at least once.
//!
//! ```sql
//! CREATE SINK alerts STORED AS KAFKA LOCATION 'alerts'
//! OPTIONS ('bootstrap.servers' '127.0.0.1:9092', 'format' 'json', 'key' 'user_id',
//!          'checkpoint' 'ckpt/alerts', 'output_mode' 'update')
//! AS SELECT ...;
//! ```
//!
//! **Exactly-once** (`delivery` `exactly_once`, the default) needs a broker with
//! transactions. The producer's `transactional.id` is `millrace-<query id>` (the query
//! id is in the checkpoint, so a restarted process is the same producer and fences the
//! old one), and each batch N with rows is one transaction that carries, beside the
//! records, a *marker*: the offset `N + 1` committed for partition 0 of the output topic
//! in the consumer group `millrace-<query id>` (`send_offsets_to_transaction`). The
//! broker commits records and marker atomically, so the marker says which batches the
//! topic holds. `add_batch(N)` first reads the marker (`read_committed`): if it is
//! already `N + 1`, the process crashed after the broker's commit and before
//! `commits/N`, and the batch is not written again. A transaction a crash left open is
//! aborted by `init_transactions` when the sink opens. Step by step, with every crash
//! point: `docs/kafka-exactly-once.md`.
//!
//! The broker deletes a group's offsets after `offsets.retention.minutes` (7 days by
//! default) without a commit, so the marker can vanish while a query is down. The sink
//! therefore also keeps, in the checkpoint (`sinks/kafka-marker.json`), the last marker
//! it knows committed and the batch it is about to commit ([`MarkerRecord`]). When the
//! broker's marker is gone, that record says whether the pending batch is committed
//! (skip it), never reached its commit (write it), or might have been committed just
//! before a crash: then the sink refuses to guess and says how to set the marker.
//!
//! **At-least-once** (`delivery` `at_least_once`) is for brokers without transactions:
//! an idempotent producer, flushed before `add_batch` returns, so a batch is delivered
//! before `commits/N`; a batch replayed after a crash is written again.
//!
//! Either way a batch the broker did not take fails `add_batch` after bounded retries,
//! so the commit log is never written for an undelivered batch.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::checkpoint::write_atomic;
use crate::connector::kafka::client::{Backoff, TopicNotCreated, check_topic_name, create_topic};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::sink::{self, Sink, SinkArgs, SinkDefinition, SinkSpec};
use crate::source::options::Options;

/// The partition of the output topic whose committed offset (in the query's consumer
/// group) is the batch marker. Partition 0 exists in every topic.
pub const MARKER_PARTITION: i32 = 0;
/// Attempts at delivering one batch before the query fails.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each later one, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How much longer than `timeout` a flush waits: every queued record has been
/// delivered or has failed by then (`message.timeout.ms` is `timeout`).
const FLUSH_MARGIN: Duration = Duration::from_secs(2);
/// Default for the `timeout` option.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a row becomes a record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFormat {
    /// One JSON object per row, every column (nulls written as `null`).
    Json,
    /// One CSV line per row, every column, no header.
    Csv,
    /// The row's single value column (VARCHAR or BINARY) as it is; a null is a
    /// tombstone (a record without value).
    Raw,
}

impl KafkaFormat {
    fn name(self) -> &'static str {
        match self {
            KafkaFormat::Json => "json",
            KafkaFormat::Csv => "csv",
            KafkaFormat::Raw => "raw",
        }
    }
}

/// The guarantee the sink gives, chosen with the `delivery` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// One transaction per batch with the batch marker: each batch's records once for
    /// `read_committed` consumers. Needs a broker with transactions.
    ExactlyOnce,
    /// Idempotent producer, flushed per batch; a replayed batch is written again.
    AtLeastOnce,
}

impl KafkaDelivery {
    fn name(self) -> &'static str {
        match self {
            KafkaDelivery::ExactlyOnce => "exactly_once",
            KafkaDelivery::AtLeastOnce => "at_least_once",
        }
    }
}

/// A `CREATE SINK ... STORED AS KAFKA` statement's options, checked, before the sink
/// is opened for a query (opening needs the query id and the broker).
#[derive(Debug, Clone)]
pub struct KafkaSinkOptions {
    /// The output topic (`LOCATION`).
    pub topic: String,
    /// `bootstrap.servers` (or `kafka.bootstrap.servers`).
    pub bootstrap_servers: String,
    /// How rows become record values.
    pub format: KafkaFormat,
    /// The column whose value becomes the record key.
    pub key: Option<String>,
    /// Exactly-once or at-least-once.
    pub delivery: KafkaDelivery,
    /// `Some(partitions)`: create the topic with that many partitions if it is missing
    /// (`create_topic` `true`); `None`: a missing topic is an error.
    pub create_topic: Option<i32>,
    /// Bound of every blocking broker call and of a record's delivery (`timeout`).
    pub timeout: Duration,
    /// `kafka.*` options, prefix removed: librdkafka settings passed on as they are.
    pub client_settings: Vec<(String, String)>,
}

/// Names of the options a Kafka sink takes besides `checkpoint`, `output_mode` and
/// `trigger`, for "unknown option" messages.
pub const KAFKA_SINK_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "format",
    "key",
    "delivery",
    "create_topic",
    "create_topic_partitions",
    "timeout",
    "kafka.<librdkafka setting>",
];

/// librdkafka settings the sink sets itself and that `kafka.*` may not change.
const RESERVED_SETTINGS: &[(&str, &str)] = &[
    (
        "transactional.id",
        "it is millrace-<query id>, so that a restarted query fences its previous run",
    ),
    (
        "group.id",
        "the batch marker's consumer group is millrace-<query id>",
    ),
];

impl KafkaSinkOptions {
    /// Reads the Kafka options out of `options` (the rest are left for the caller's
    /// `finish`). `topic` is the statement's `LOCATION`; exactly-once needs a
    /// checkpoint, because the transactional id comes from its query id.
    pub fn parse(
        options: &mut Options,
        topic: Option<&str>,
        has_checkpoint: bool,
        what: &str,
    ) -> Result<Self> {
        let topic = topic.ok_or_else(|| {
            Error::Sql(format!(
                "{what} needs LOCATION '<topic>': the Kafka topic to write to"
            ))
        })?;
        check_topic_name(topic, what)?;
        let mut client_settings = options.take_prefixed("kafka.");
        let bootstrap_servers = match (
            options.take("bootstrap.servers"),
            client_settings
                .iter()
                .position(|(k, _)| k == "bootstrap.servers"),
        ) {
            (Some(_), Some(_)) => {
                return Err(Error::Option(format!(
                    "{what} has both 'bootstrap.servers' and 'kafka.bootstrap.servers'; keep one"
                )));
            }
            (Some(servers), None) => servers,
            (None, Some(index)) => client_settings.remove(index).1,
            (None, None) => {
                return Err(Error::Option(format!(
                    "{what} needs the brokers to write to: OPTIONS ('bootstrap.servers' 'host:port[,host:port...]')"
                )));
            }
        };
        if bootstrap_servers.trim().is_empty() {
            return Err(Error::Option(format!(
                "'bootstrap.servers' of {what} is empty; give 'host:port[,host:port...]'"
            )));
        }
        for (key, _) in &client_settings {
            if let Some((_, why)) = RESERVED_SETTINGS.iter().find(|(k, _)| k == key) {
                return Err(Error::Option(format!(
                    "option 'kafka.{key}' of {what} cannot be set: {why}"
                )));
            }
        }
        let format = match options.take("format") {
            None => KafkaFormat::Json,
            Some(f) => match f.to_ascii_lowercase().as_str() {
                "json" => KafkaFormat::Json,
                "csv" => KafkaFormat::Csv,
                "raw" => KafkaFormat::Raw,
                _ => {
                    return Err(Error::Option(format!(
                        "unknown 'format' '{f}' for {what}: use 'json' (default), 'csv' or 'raw'"
                    )));
                }
            },
        };
        let key = options.take("key");
        if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(Error::Option(format!(
                "'key' of {what} is empty: name the column whose value becomes the record key"
            )));
        }
        let delivery = match options.take("delivery") {
            None => KafkaDelivery::ExactlyOnce,
            Some(d) => match d.to_ascii_lowercase().as_str() {
                "exactly_once" => KafkaDelivery::ExactlyOnce,
                "at_least_once" => KafkaDelivery::AtLeastOnce,
                _ => {
                    return Err(Error::Option(format!(
                        "unknown 'delivery' '{d}' for {what}: use 'exactly_once' (default; needs \
                         a broker with transactions) or 'at_least_once'"
                    )));
                }
            },
        };
        if delivery == KafkaDelivery::ExactlyOnce && !has_checkpoint {
            return Err(Error::Option(format!(
                "{what} delivers exactly once, which needs a checkpoint (its query id names the \
                 Kafka transactions): add OPTIONS ('checkpoint' '<directory>'), or choose \
                 'delivery' 'at_least_once'"
            )));
        }
        let create = options.take_bool("create_topic")?.unwrap_or(false);
        let partitions = options
            .take_parsed::<i32>("create_topic_partitions", "a whole number from 1")?
            .map(|p| {
                if p < 1 {
                    Err(Error::Option(format!(
                        "'create_topic_partitions' of {what} must be at least 1, got {p}"
                    )))
                } else if !create {
                    Err(Error::Option(format!(
                        "'create_topic_partitions' of {what} needs 'create_topic' 'true'"
                    )))
                } else {
                    Ok(p)
                }
            })
            .transpose()?;
        let timeout = options
            .take("timeout")
            .map(|t| crate::duration::parse_duration(&t))
            .transpose()?
            .unwrap_or(DEFAULT_TIMEOUT);
        if timeout < Duration::from_secs(1) {
            return Err(Error::Option(format!(
                "'timeout' of {what} must be at least 1 second"
            )));
        }
        let options = KafkaSinkOptions {
            topic: topic.to_string(),
            bootstrap_servers,
            format,
            key,
            delivery,
            create_topic: create.then(|| partitions.unwrap_or(1)),
            timeout,
            client_settings,
        };
        // librdkafka checks every setting's name and value: report a bad one now,
        // naming the option, rather than when the query starts.
        options
            .producer_config("millrace-check")
            .create_native_config()
            .map_err(|e| Error::Option(format!("{what}: {}", kafka_setting_error(&e))))?;
        Ok(options)
    }

    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            // A missing topic is an error (or created on purpose), never auto-created.
            .set("allow.auto.create.topics", "false");
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }

    fn producer_config(&self, transactional_id: &str) -> ClientConfig {
        let timeout_ms = self.timeout.as_millis().to_string();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("allow.auto.create.topics", "false")
            // Java-compatible key hashing: keyed records land on the partitions Java
            // producers (Kafka Streams, Spark) would choose.
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", &timeout_ms);
        match self.delivery {
            KafkaDelivery::ExactlyOnce => {
                let txn_ms = self.timeout.max(Duration::from_secs(60)).as_millis();
                config
                    .set("transactional.id", transactional_id)
                    .set("transaction.timeout.ms", txn_ms.to_string());
            }
            KafkaDelivery::AtLeastOnce => {
                config.set("enable.idempotence", "true");
            }
        }
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }
}

fn kafka_setting_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => format!(
            "Kafka setting 'kafka.{key}' = '{value}' is refused by librdkafka: {description}"
        ),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Rows to records

/// One record to produce: key and value bytes (a `None` value is a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The record key, from the `key` column (`None`: no key, or a null in the column).
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub value: Option<Vec<u8>>,
}

/// Turns result rows into records, in the sink's format, checked against the query's
/// schema once when the sink opens so that a bad `key` or `raw` column fails the
/// `CREATE SINK`, not a batch.
#[derive(Debug, Clone)]
pub struct RecordEncoder {
    format: KafkaFormat,
    key: Option<usize>,
    /// `raw`: the column that is the value.
    raw_value: Option<usize>,
}

impl RecordEncoder {
    /// Checks `format` and `key` against the query's output `schema`.
    pub fn new(format: KafkaFormat, key: Option<&str>, schema: &SchemaRef) -> Result<Self> {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let key = match key {
            None => None,
            Some(name) => Some(
                names
                    .iter()
                    .position(|n| *n == name)
                    .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(name)))
                    .ok_or_else(|| {
                        Error::Option(format!(
                            "'key' '{name}' of the Kafka sink is not a column of the query's \
                             result (columns: {}); name one of them, or add it to the SELECT list",
                            names.join(", ")
                        ))
                    })?,
            ),
        };
        let raw_value = match format {
            KafkaFormat::Raw => {
                let values: Vec<usize> = (0..names.len()).filter(|i| Some(*i) != key).collect();
                let [value] = values.as_slice() else {
                    return Err(Error::Sql(format!(
                        "a Kafka sink with 'format' 'raw' writes one column as the record value, \
                         but the query's result has {} column(s) besides the key ({}); select \
                         exactly one VARCHAR or BINARY value column (and the key column, if any)",
                        values.len(),
                        names.join(", ")
                    )));
                };
                let field = schema.field(*value);
                if !is_text_or_bytes(field.data_type()) {
                    return Err(Error::Sql(format!(
                        "a Kafka sink with 'format' 'raw' writes column '{}' as it is, but it is \
                         {}; use 'json' or 'csv', or cast it: CAST({} AS VARCHAR)",
                        field.name(),
                        field.data_type(),
                        field.name()
                    )));
                }
                Some(*value)
            }
            _ => None,
        };
        Ok(RecordEncoder {
            format,
            key,
            raw_value,
        })
    }

    /// Appends one record per row of `batch` to `out`.
    pub fn encode(&self, batch: &RecordBatch, out: &mut Vec<KafkaRecord>) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys: Vec<Option<Vec<u8>>> = match self.key {
            None => vec![None; rows],
            Some(index) => column_bytes(batch.column(index))?,
        };
        let values: Vec<Option<Vec<u8>>> = match self.format {
            KafkaFormat::Json => json_lines(batch)?.into_iter().map(Some).collect(),
            KafkaFormat::Csv => csv_lines(batch)?.into_iter().map(Some).collect(),
            KafkaFormat::Raw => {
                let index = self.raw_value.expect("raw format has its value column");
                column_bytes(batch.column(index))?
            }
        };
        if values.len() != rows {
            return Err(Error::Data(format!(
                "the {} encoder made {} values for {rows} rows",
                self.format.name(),
                values.len()
            )));
        }
        out.extend(
            keys.into_iter()
                .zip(values)
                .map(|(key, value)| KafkaRecord { key, value }),
        );
        Ok(())
    }
}

fn is_text_or_bytes(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// A column's values as bytes: text as UTF-8, binary as it is, anything else as
/// Arrow displays it (`42`, `2026-01-01T00:00:00`); nulls as `None`.
fn column_bytes(array: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>> {
    let bytes = |v: Option<&[u8]>| v.map(<[u8]>::to_vec);
    Ok(match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| bytes(v.map(str::as_bytes)))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| bytes(v.map(str::as_bytes)))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| bytes(v.map(str::as_bytes)))
            .collect(),
        DataType::Binary => array.as_binary::<i32>().iter().map(bytes).collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().map(bytes).collect(),
        DataType::BinaryView => array.as_binary_view().iter().map(bytes).collect(),
        DataType::FixedSizeBinary(_) => array.as_fixed_size_binary().iter().map(bytes).collect(),
        _ => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            (0..array.len())
                .map(|i| (!array.is_null(i)).then(|| formatter.value(i).to_string().into_bytes()))
                .collect()
        }
    })
}

/// One JSON object per row (Arrow's JSON writer, nulls written out). JSON escapes
/// line breaks inside strings, so the writer's lines are the rows.
fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    use datafusion::arrow::json::WriterBuilder;
    use datafusion::arrow::json::writer::LineDelimited;
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text = writer.into_inner();
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// One CSV line per row (no header, no line terminator): each cell as Arrow displays
/// it, an empty cell for a null, quoted when it holds a comma, quote or line break.
fn csv_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let mut ends = Vec::with_capacity(batch.num_rows());
    let mut cells: Vec<String> = Vec::with_capacity(formatters.len());
    for row in 0..batch.num_rows() {
        cells.clear();
        cells.extend(formatters.iter().map(|f| f.value(row).to_string()));
        writer
            .write_record(&cells)
            .and_then(|()| writer.flush().map_err(csv::Error::from))
            .map_err(|e| Error::Data(format!("cannot write a CSV record: {e}")))?;
        ends.push(writer.get_ref().len());
    }
    let text = writer
        .into_inner()
        .map_err(|e| Error::Data(format!("cannot write a CSV record: {e}")))?;
    let mut start = 0;
    Ok(ends
        .into_iter()
        .map(|end| {
            let line = text[start..end - 1].to_vec();
            start = end;
            line
        })
        .collect())
}

// ---------------------------------------------------------------------------------
// Talking to the broker

/// Client callbacks: keeps the last error librdkafka reported (e.g. "Connection
/// refused"), so a timeout can say what went wrong, and, for the producer, which
/// records failed delivery.
#[derive(Default)]
struct SinkContext {
    last_error: Mutex<Option<String>>,
    failed: Mutex<Vec<(usize, KafkaError)>>,
}

impl SinkContext {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn take_failed(&self) -> Vec<(usize, KafkaError)> {
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // "n/m brokers are down" says less than the connection error before it.
        if error_code(&error) == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        let message = if reason.is_empty() {
            error.to_string()
        } else {
            reason.to_string()
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

impl ConsumerContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Err((error, _)) = result {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((index, error.clone()));
        }
    }
}

/// Queues `record` with `producer`, waiting while librdkafka's queue is full (it
/// drains as the broker takes records) for at most `timeout`: waiting longer for room
/// for one record means the broker takes none, and the `QueueFull` error is returned.
/// Shared by everything in millrace that produces many records (this sink, `millrace
/// kafka produce`, the Kafka benchmarks).
pub fn send_when_room<'a, C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    timeout: Duration,
) -> std::result::Result<(), KafkaError>
where
    C: ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let started = Instant::now();
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if started.elapsed() <= timeout =>
            {
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

type SinkProducer = ThreadedProducer<SinkContext>;

/// Why an attempt at delivering a batch failed, and whether another attempt may help.
#[derive(Debug)]
struct Failure {
    message: String,
    /// Worth another attempt (a broker or network hiccup), as opposed to a refusal
    /// that will not change by itself (authorisation, fencing, a missing topic).
    transient: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The broker's error code inside any kind of client error.
fn error_code(error: &KafkaError) -> Option<RDKafkaErrorCode> {
    match error {
        KafkaError::Transaction(e) => Some(e.code()),
        other => other.rdkafka_error_code(),
    }
}

/// The sink's own record of the batch marker, in the checkpoint
/// (`sinks/kafka-marker.json`), for when the broker has expired the group's offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarkerRecord {
    /// The topic the record is about (a record of another topic says nothing).
    pub topic: String,
    /// The last marker the sink knows the broker committed (batches `< marker` are in
    /// the topic).
    pub marker: Option<u64>,
    /// A batch whose `commit_transaction` was called and whose outcome was not yet
    /// recorded: it may or may not be in the topic.
    pub committing: Option<u64>,
}

impl MarkerRecord {
    /// Reads the record at `path`: `None` only when the file does not exist.
    fn read(path: &std::path::Path) -> Result<Option<MarkerRecord>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Checkpoint(format!(
                    "the Kafka sink's marker record ({}) is not valid JSON: {e}; the checkpoint \
                     is damaged",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Checkpoint(format!(
                "the Kafka sink's marker record ({}) cannot be read: {e}",
                path.display()
            ))),
        }
    }
}

/// What to do with batch N when the broker's marker does not say (it is gone, or older
/// than what the sink recorded): decided from the sink's own [`MarkerRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostMarker {
    /// The record says batch N is committed: skip it.
    Committed,
    /// Batch N never reached `commit_transaction`: write it.
    NotCommitted,
    /// Batch N's commit was called and the marker that would tell its outcome is gone.
    Unknown,
}

/// The rule for a marker the broker no longer has (see the module doc).
pub fn decide_lost_marker(record: &MarkerRecord, batch_id: u64) -> LostMarker {
    if record.marker.is_some_and(|m| m > batch_id) {
        LostMarker::Committed
    } else if record.committing == Some(batch_id) {
        LostMarker::Unknown
    } else {
        LostMarker::NotCommitted
    }
}

/// A sink opened for one query: the producer, and for exactly-once the reader of the
/// batch marker.
pub struct KafkaSink {
    options: KafkaSinkOptions,
    encoder: RecordEncoder,
    /// `millrace-<query id>`: the transactional id and the marker's consumer group.
    client_id: String,
    /// `None` after a failure that needs a fresh producer (made on the next attempt).
    producer: Option<SinkProducer>,
    /// Reads the marker (exactly-once) and the topic's metadata.
    reader: BaseConsumer<SinkContext>,
    /// The marker group's metadata, for `send_offsets_to_transaction`.
    group: Option<ConsumerGroupMetadata>,
    /// Whether the producer has a transaction open (to abort it after a failure).
    in_transaction: bool,
    /// Where the [`MarkerRecord`] lives, and its content.
    record_path: std::path::PathBuf,
    record: MarkerRecord,
}

impl KafkaSink {
    /// Opens the sink for query `query_id`: checks the key and format against the
    /// query's output `schema`, reaches the broker, finds (or creates) the topic, and
    /// for exactly-once starts the transactional producer, which aborts a transaction
    /// left open by a crashed run of the same query. `checkpoint` is the query's
    /// checkpoint directory (the sink keeps its [`MarkerRecord`] there).
    pub fn open(
        options: KafkaSinkOptions,
        schema: &SchemaRef,
        query_id: &str,
        checkpoint: &std::path::Path,
    ) -> Result<Self> {
        let encoder = RecordEncoder::new(options.format, options.key.as_deref(), schema)?;
        let record_path = checkpoint.join("sinks").join("kafka-marker.json");
        let record = MarkerRecord::read(&record_path)?
            .filter(|r| r.topic == options.topic)
            .unwrap_or_else(|| MarkerRecord {
                topic: options.topic.clone(),
                ..MarkerRecord::default()
            });
        let client_id = format!("millrace-{query_id}");
        let mut reader_config = options.base_config();
        reader_config
            .set("group.id", &client_id)
            .set("enable.auto.commit", "false")
            // Offsets committed by an open transaction are not read as committed.
            .set("isolation.level", "read_committed");
        let reader: BaseConsumer<SinkContext> = reader_config
            .create_with_context(SinkContext::default())
            .map_err(|e| Error::Option(format!("Kafka sink: {}", kafka_setting_error(&e))))?;
        let group = match options.delivery {
            KafkaDelivery::ExactlyOnce => Some(reader.group_metadata().ok_or_else(|| {
                Error::Network("Kafka sink: librdkafka gave no consumer group metadata".into())
            })?),
            KafkaDelivery::AtLeastOnce => None,
        };
        let mut sink = KafkaSink {
            options,
            encoder,
            client_id,
            producer: None,
            reader,
            group,
            in_transaction: false,
            record_path,
            record,
        };
        sink.check_topic()?;
        if let Err(failure) = sink.producer() {
            return Err(sink.open_error(failure));
        }
        Ok(sink)
    }

    fn open_error(&self, failure: Failure) -> Error {
        Error::Network(format!(
            "Kafka sink for topic '{}' cannot start: {failure}",
            self.options.topic
        ))
    }

    /// The broker is reachable and the topic exists (or is created, if asked for).
    fn check_topic(&self) -> Result<()> {
        let topic = &self.options.topic;
        let partitions = self.topic_partitions().map_err(|f| self.open_error(f))?;
        if partitions > 0 {
            return Ok(());
        }
        let Some(create) = self.options.create_topic else {
            return Err(Error::Sql(format!(
                "Kafka topic '{topic}' does not exist on {}: create it first (e.g. kafka-topics.sh \
                 --create --topic {topic}), or let the sink create it: OPTIONS ('create_topic' 'true' \
                 [, 'create_topic_partitions' '<n>'])",
                self.options.bootstrap_servers
            )));
        };
        match create_topic(
            &self.options.base_config(),
            topic,
            create,
            -1,
            self.options.timeout,
        ) {
            Ok(()) => {}
            Err(TopicNotCreated::Refused(RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err(TopicNotCreated::Config(e)) => {
                return Err(Error::Option(format!(
                    "Kafka sink: {}",
                    kafka_setting_error(&e)
                )));
            }
            Err(TopicNotCreated::Client(e)) => {
                return Err(self.open_error(self.failure("creating the topic", e)));
            }
            Err(TopicNotCreated::Refused(code)) => {
                return Err(Error::Network(format!(
                    "Kafka sink cannot create topic '{topic}' with {create} partition(s): {code}{}",
                    hint_for(Some(code))
                )));
            }
        }
        // The new topic's metadata reaches every broker shortly after.
        let deadline = Instant::now() + self.options.timeout;
        loop {
            if self.topic_partitions().map_err(|f| self.open_error(f))? > 0 {
                tracing::info!("Kafka sink created topic '{topic}' ({create} partition(s))");
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Network(format!(
                    "Kafka sink created topic '{topic}', but the broker did not show it within {:?}",
                    self.options.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The topic's partition count (0: the topic does not exist).
    fn topic_partitions(&self) -> std::result::Result<usize, Failure> {
        let topic = &self.options.topic;
        let metadata = self
            .reader
            .fetch_metadata(Some(topic), self.options.timeout)
            .map_err(|e| self.failure("reading the topic's metadata", e))?;
        let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(0);
        };
        match entry.error().map(RDKafkaErrorCode::from) {
            None => Ok(entry.partitions().len()),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Ok(0)
            }
            Some(code) => Err(Failure {
                message: format!(
                    "the broker refused the metadata of topic '{topic}': {code}{}",
                    hint_for(Some(code))
                ),
                transient: !is_permanent(code),
            }),
        }
    }

    /// Describes a client error: what was being done, the broker's word, what to do.
    fn failure(&self, doing: &str, error: KafkaError) -> Failure {
        let code = error_code(&error);
        let last = self
            .producer
            .as_ref()
            .and_then(|p| p.context().last_error())
            .or_else(|| self.reader.context().last_error());
        let unreachable = matches!(
            code,
            Some(
                RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::Resolve
                    | RDKafkaErrorCode::MessageTimedOut
            )
        );
        let message = if unreachable {
            format!(
                "{doing}: no answer from the Kafka broker(s) at '{}' within {:?} ({error}){}; check \
                 'bootstrap.servers' and that the broker is running",
                self.options.bootstrap_servers,
                self.options.timeout,
                last.map(|l| format!("; last client error: {l}"))
                    .unwrap_or_default()
            )
        } else {
            format!("{doing}: {error}{}", hint_for(code))
        };
        // The hints name the ids generically; this query's are known here.
        let message = message.replace("millrace-<query id>", &self.client_id);
        let transient = match &error {
            KafkaError::Transaction(e) if e.is_fatal() => !matches!(
                e.code(),
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            ),
            _ => !code.is_some_and(is_permanent),
        };
        Failure { message, transient }
    }

    /// The producer, made (and for exactly-once, initialised) if there is none.
    fn producer(&mut self) -> std::result::Result<&SinkProducer, Failure> {
        if self.producer.is_none() {
            let producer: SinkProducer = self
                .options
                .producer_config(&self.client_id)
                .create_with_context(SinkContext::default())
                .map_err(|e| Failure {
                    message: format!("cannot create the producer: {}", kafka_setting_error(&e)),
                    transient: false,
                })?;
            if self.options.delivery == KafkaDelivery::ExactlyOnce {
                // Fences earlier producers of this transactional id and aborts a
                // transaction a crashed run left open.
                if let Err(e) = producer.init_transactions(self.options.timeout) {
                    let last = producer.context().last_error();
                    let mut failure = self.failure("starting the transactional producer", e);
                    if let Some(last) = last
                        && !failure.message.contains(&last)
                    {
                        failure
                            .message
                            .push_str(&format!(" (last client error: {last})"));
                    }
                    return Err(failure);
                }
            }
            self.in_transaction = false;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("made above"))
    }

    /// The batch marker: `Some(n)` when batches up to `n - 1` are committed to the topic.
    fn committed_marker(&self) -> std::result::Result<Option<u64>, Failure> {
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&self.options.topic, MARKER_PARTITION);
        let committed = self
            .reader
            .committed_offsets(partitions, self.options.timeout)
            .map_err(|e| self.failure("reading the batch marker (committed offset of group)", e))?;
        Ok(committed
            .find_partition(&self.options.topic, MARKER_PARTITION)
            .and_then(|p| match p.offset() {
                Offset::Offset(n) if n >= 0 => Some(n as u64),
                _ => None,
            }))
    }

    /// Before the query's first transaction: commits marker 0 ("no batch committed
    /// yet") to the broker and records it, so that the broker's marker is known to
    /// exist from then on and its loss (expired group offsets) is noticed for every
    /// batch, the first included. Without it, a first batch whose process died between
    /// the broker's commit and the record's update, then stayed down past the
    /// retention, would find no marker anywhere and be written twice.
    fn mark_start(&mut self) -> std::result::Result<(), Failure> {
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.options.topic, MARKER_PARTITION, Offset::Offset(0))
            .map_err(|e| self.failure("building the initial batch marker", e))?;
        self.reader
            .commit(&marker, CommitMode::Sync)
            .map_err(|e| self.failure("committing the initial batch marker", e))?;
        self.save_record(MarkerRecord {
            topic: self.options.topic.clone(),
            marker: Some(0),
            committing: None,
        })
    }

    /// Queues every record (waiting while librdkafka's queue is full).
    fn produce(
        &self,
        records: &[KafkaRecord],
        which: &[usize],
    ) -> std::result::Result<(), Failure> {
        let producer = self
            .producer
            .as_ref()
            .expect("a producer is made before producing");
        let topic = self.options.topic.as_str();
        for &index in which {
            let record = &records[index];
            let mut base: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, index);
            if let Some(key) = &record.key {
                base = base.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                base = base.payload(value.as_slice());
            }
            match send_when_room(producer, base, self.options.timeout) {
                Ok(()) => {}
                Err(error @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    return Err(self.failure("queueing records", error));
                }
                Err(error) => return Err(self.failure("producing a record", error)),
            }
        }
        Ok(())
    }

    /// Writes the [`MarkerRecord`] (fsynced) before the next step depends on it.
    fn save_record(&mut self, record: MarkerRecord) -> std::result::Result<(), Failure> {
        let bytes = serde_json::to_vec(&record).expect("a marker record serializes");
        if let Some(dir) = self.record_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Failure {
                message: format!("creating {}: {e}", dir.display()),
                transient: false,
            })?;
        }
        write_atomic(&self.record_path, &bytes).map_err(|e| Failure {
            message: e.to_string(),
            transient: false,
        })?;
        self.record = record;
        Ok(())
    }

    /// The error for a batch whose fate the lost marker would have told.
    fn lost_marker_failure(&self, batch_id: u64) -> Failure {
        Failure {
            message: format!(
                "the batch marker of consumer group '{group}' for topic '{topic}' is gone (the \
                 broker deletes a group's offsets after 'offsets.retention.minutes', 7 days by \
                 default, without a commit), and batch {batch_id} was being committed when the \
                 query last stopped ({record}): it may or may not be in the topic, and the sink \
                 does not guess. Look for batch {batch_id}'s rows in the topic, then set the \
                 marker and restart: `kafka-consumer-groups.sh --bootstrap-server {servers} \
                 --group {group} --topic {topic}:{partition} --reset-offsets --to-offset X \
                 --execute` with X = {next} if the batch is in the topic, {batch_id} if it is not",
                group = self.client_id,
                topic = self.options.topic,
                record = self.record_path.display(),
                servers = self.options.bootstrap_servers,
                partition = MARKER_PARTITION,
                next = batch_id + 1,
            ),
            transient: false,
        }
    }

    /// One attempt at batch `batch_id` as a transaction; `Ok(false)`: the marker showed
    /// the batch already committed, nothing was written.
    fn transaction(
        &mut self,
        batch_id: u64,
        records: &[KafkaRecord],
    ) -> std::result::Result<bool, Failure> {
        self.producer()?;
        let mut marker = self.committed_marker()?;
        if marker.is_none() && self.record.marker.is_none() && self.record.committing.is_none() {
            self.mark_start()?;
            marker = Some(0);
        }
        // The broker's marker is gone, or older than one this sink saw committed: its
        // group offsets expired. The sink's own record decides.
        if self
            .record
            .marker
            .is_some_and(|known| marker.is_none_or(|m| m < known))
        {
            match decide_lost_marker(&self.record, batch_id) {
                LostMarker::Committed => marker = Some(batch_id + 1),
                LostMarker::NotCommitted => marker = None,
                LostMarker::Unknown => return Err(self.lost_marker_failure(batch_id)),
            }
        }
        if let Some(next) = marker {
            if next == batch_id + 1 {
                self.save_record(MarkerRecord {
                    topic: self.options.topic.clone(),
                    marker: Some(next),
                    committing: None,
                })?;
                return Ok(false);
            }
            if next > batch_id + 1 {
                return Err(Failure {
                    message: format!(
                        "topic '{}' already holds batch {} of this query (batch marker of group \
                         '{}'), but the checkpoint is at batch {batch_id}: the checkpoint is older \
                         than the topic (restored from a copy?); use the checkpoint that wrote the \
                         topic, or a new checkpoint",
                        self.options.topic,
                        next - 1,
                        self.client_id
                    ),
                    transient: false,
                });
            }
        }
        let timeout = self.options.timeout;
        let producer = self.producer.as_ref().expect("made above");
        producer.context().take_failed();
        producer
            .begin_transaction()
            .map_err(|e| self.failure("beginning the transaction", e))?;
        self.in_transaction = true;
        let all: Vec<usize> = (0..records.len()).collect();
        self.produce(records, &all)?;
        // Records on the broker before the marker is added: a record the broker
        // refuses fails the batch here, and the crash points below come after the
        // records really are in the open transaction.
        let producer = self.producer.as_ref().expect("made above");
        producer
            .flush(timeout + FLUSH_MARGIN)
            .map_err(|e| self.failure("sending the batch's records", e))?;
        if let Some((_, first)) = producer.context().take_failed().into_iter().next() {
            return Err(self.failure("sending the batch's records", first));
        }
        crash_point("kafka-after-produce");
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(
                &self.options.topic,
                MARKER_PARTITION,
                Offset::Offset(batch_id as i64 + 1),
            )
            .map_err(|e| self.failure("building the batch marker", e))?;
        let producer = self.producer.as_ref().expect("made above");
        let group = self
            .group
            .as_ref()
            .expect("exactly-once has the marker group");
        producer
            .send_offsets_to_transaction(&marker, group, timeout)
            .map_err(|e| self.failure("adding the batch marker to the transaction", e))?;
        crash_point("kafka-after-marker");
        // From here the batch may end up committed: say so before asking.
        self.save_record(MarkerRecord {
            topic: self.options.topic.clone(),
            marker: self.record.marker,
            committing: Some(batch_id),
        })?;
        let producer = self.producer.as_ref().expect("made above");
        producer.commit_transaction(timeout).map_err(|e| {
            let mut failure = self.failure("committing the transaction", e);
            if let Some((_, first)) = producer.context().take_failed().first() {
                failure.message.push_str(&format!(
                    "; first record that failed: {first}{}",
                    hint_for(error_code(first))
                ));
                if error_code(first).is_some_and(is_permanent) {
                    failure.transient = false;
                }
            }
            failure
        })?;
        self.in_transaction = false;
        crash_point("kafka-after-txn-commit");
        self.save_record(MarkerRecord {
            topic: self.options.topic.clone(),
            marker: Some(batch_id + 1),
            committing: None,
        })?;
        Ok(true)
    }

    /// After a failed attempt: abort the open transaction, or drop the producer when
    /// that is not possible, so the next attempt starts clean.
    fn reset_after_failure(&mut self) {
        if let Some(producer) = &self.producer {
            let keep = self.options.delivery == KafkaDelivery::AtLeastOnce
                || !self.in_transaction
                || producer.abort_transaction(self.options.timeout).is_ok();
            if !keep {
                // init_transactions of the next producer resolves whatever is open.
                self.producer = None;
            }
        }
        self.in_transaction = false;
    }

    fn write_exactly_once(&mut self, batch_id: u64, records: &[KafkaRecord]) -> Result<()> {
        self.with_retries(batch_id, |sink| {
            match sink.transaction(batch_id, records)? {
                true => Ok(()),
                false => {
                    tracing::warn!(
                        "Kafka sink: batch {batch_id} is already committed to topic '{}' \
                     (the last run stopped after the broker's commit, before the commit log); \
                     not writing it again",
                        sink.options.topic
                    );
                    Ok(())
                }
            }
        })
    }

    /// Produces the records not yet delivered and flushes; records that failed stay in
    /// `pending` for the next attempt.
    fn deliver(
        &mut self,
        records: &[KafkaRecord],
        pending: &mut Vec<usize>,
    ) -> std::result::Result<(), Failure> {
        self.producer()?;
        let producer = self.producer.as_ref().expect("made above");
        producer.context().take_failed();
        self.produce(records, pending)?;
        let producer = self.producer.as_ref().expect("made above");
        // Every record is delivered or has failed by message.timeout.ms (= timeout).
        let flushed = producer.flush(self.options.timeout + FLUSH_MARGIN);
        if let Err(e) = flushed {
            // Not delivered in time: give up on what is queued; it is all sent again.
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            let _ = producer.flush(Duration::from_secs(1));
            producer.context().take_failed();
            self.producer = None;
            return Err(self.failure("delivering the batch", e));
        }
        let failed = producer.context().take_failed();
        if failed.is_empty() {
            pending.clear();
            return Ok(());
        }
        let permanent = failed
            .iter()
            .find(|(_, e)| error_code(e).is_some_and(is_permanent))
            .map(|(_, e)| e.clone());
        let count = failed.len();
        let first = failed[0].1.clone();
        let mut again: Vec<usize> = failed.into_iter().map(|(i, _)| i).collect();
        again.sort_unstable();
        *pending = again;
        Err(self.failure(
            &format!("{count} record(s) of the batch were not delivered"),
            permanent.unwrap_or(first),
        ))
    }

    fn write_at_least_once(&mut self, batch_id: u64, records: &[KafkaRecord]) -> Result<()> {
        let mut pending: Vec<usize> = (0..records.len()).collect();
        self.with_retries(batch_id, |sink| sink.deliver(records, &mut pending))
    }

    /// Runs `attempt` up to [`ATTEMPTS`] times with backoff while its failures are
    /// transient; the last failure becomes the query's error.
    fn with_retries(
        &mut self,
        batch_id: u64,
        mut attempt: impl FnMut(&mut Self) -> std::result::Result<(), Failure>,
    ) -> Result<()> {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        for number in 1..=ATTEMPTS {
            let failure = match attempt(self) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            self.reset_after_failure();
            if !failure.transient || number == ATTEMPTS {
                return Err(Error::Network(format!(
                    "Kafka sink could not deliver batch {batch_id} to topic '{}' ({} attempt(s)): \
                     {failure}. The batch is not committed: it runs again when the query restarts",
                    self.options.topic, number
                )));
            }
            let wait = backoff.next_wait();
            tracing::warn!(
                "Kafka sink: batch {batch_id}, attempt {number} of {ATTEMPTS} failed: \
                 {failure}; trying again in {wait:?}"
            );
            std::thread::sleep(wait);
        }
        unreachable!("the last attempt returns")
    }
}

/// Errors that another attempt will not fix.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::NotImplemented
    )
}

/// What to do about a broker error, for the messages users see.
fn hint_for(code: Option<RDKafkaErrorCode>) -> String {
    let hint = match code {
        Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => {
            "the broker refused the transactional id: it has no transactions or the \
             principal lacks WRITE on the TransactionalId 'millrace-<query id>'; for a broker \
             without transactions use OPTIONS ('delivery' 'at_least_once')"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
            "the principal may not write the topic: grant it WRITE (and DESCRIBE) on the topic"
        }
        Some(RDKafkaErrorCode::GroupAuthorizationFailed) => {
            "the principal may not use the batch marker's consumer group: grant it READ on the \
             group 'millrace-<query id>'"
        }
        Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => {
            "the principal lacks a cluster permission (IDEMPOTENT_WRITE or CREATE)"
        }
        Some(
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch,
        ) => {
            "another producer with this query's transactional id started: another process runs \
             this query from the same checkpoint; only one may"
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            "a record is larger than the broker or topic accepts (message.max.bytes / \
             max.message.bytes); make rows smaller or raise the limit (e.g. 'kafka.message.max.bytes')"
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            "the topic does not exist (any more): create it, or use OPTIONS ('create_topic' 'true')"
        }
        Some(
            RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::NotImplemented,
        ) => "the broker does not support this request",
        _ => return String::new(),
    };
    format!(" ({hint})")
}

impl Sink for KafkaSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let mut records = Vec::new();
        for batch in batches {
            self.encoder.encode(batch, &mut records)?;
        }
        // A batch without rows writes nothing, so it needs no transaction and no marker.
        if records.is_empty() {
            return Ok(());
        }
        match self.options.delivery {
            KafkaDelivery::ExactlyOnce => self.write_exactly_once(batch_id, &records),
            KafkaDelivery::AtLeastOnce => self.write_at_least_once(batch_id, &records),
        }
    }

    fn describe(&self) -> String {
        format!(
            "KafkaSink[{}, {}, {}]",
            self.options.topic,
            self.options.format.name(),
            self.options.delivery.name()
        )
    }
}

impl SinkDefinition for KafkaSinkOptions {
    fn open(&self, ctx: &sink::SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KafkaSink::open(
            self.clone(),
            ctx.schema,
            ctx.query_id,
            ctx.checkpoint_dir,
        )?))
    }
}

/// `STORED AS KAFKA` (sink): the registry's parse function.
pub fn parse_sink(args: SinkArgs<'_>, options: &mut Options) -> Result<SinkSpec> {
    Ok(SinkSpec::new(KafkaSinkOptions::parse(
        options,
        args.location.as_deref(),
        args.has_checkpoint,
        args.what,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BinaryArray, Int64Array, StringArray, StringViewArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringViewArray::from(vec![Some("u1"), None])),
                Arc::new(Int64Array::from(vec![Some(3), None])),
                Arc::new(StringArray::from(vec![Some("a, \"b\"\nc"), Some("plain")])),
            ],
        )
        .unwrap()
    }

    fn encode(
        format: KafkaFormat,
        key: Option<&str>,
        batch: &RecordBatch,
    ) -> Result<Vec<KafkaRecord>> {
        let encoder = RecordEncoder::new(format, key, &batch.schema())?;
        let mut out = Vec::new();
        encoder.encode(batch, &mut out)?;
        Ok(out)
    }

    fn text(bytes: &Option<Vec<u8>>) -> Option<String> {
        bytes
            .as_ref()
            .map(|b| String::from_utf8(b.clone()).unwrap())
    }

    #[test]
    fn a_lost_marker_is_decided_by_the_sinks_own_record() {
        let record = |marker, committing| MarkerRecord {
            topic: "out".into(),
            marker,
            committing,
        };
        // Recorded as committed: skip.
        assert_eq!(
            decide_lost_marker(&record(Some(4), None), 3),
            LostMarker::Committed
        );
        // The last commit was batch 2's, and batch 3 never reached its commit: write.
        assert_eq!(
            decide_lost_marker(&record(Some(3), None), 3),
            LostMarker::NotCommitted
        );
        // Batch 3's commit was called, its outcome not recorded: do not guess.
        assert_eq!(
            decide_lost_marker(&record(Some(3), Some(3)), 3),
            LostMarker::Unknown
        );
        // An intent for an earlier batch says nothing about this one.
        assert_eq!(
            decide_lost_marker(&record(Some(3), Some(2)), 3),
            LostMarker::NotCommitted
        );
    }

    #[test]
    fn json_is_one_object_per_row_with_nulls_and_the_key_column_as_key() {
        let records = encode(KafkaFormat::Json, Some("user_id"), &batch()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(text(&records[0].key).as_deref(), Some("u1"));
        assert_eq!(
            text(&records[0].value).as_deref(),
            Some(r#"{"user_id":"u1","n":3,"note":"a, \"b\"\nc"}"#)
        );
        assert_eq!(
            records[1].key, None,
            "a null key column gives a record without key"
        );
        assert_eq!(
            text(&records[1].value).as_deref(),
            Some(r#"{"user_id":null,"n":null,"note":"plain"}"#)
        );
    }

    #[test]
    fn csv_is_one_line_per_row_quoted_where_needed() {
        let records = encode(KafkaFormat::Csv, Some("N"), &batch()).unwrap();
        assert_eq!(
            text(&records[0].key).as_deref(),
            Some("3"),
            "keys match case-insensitively"
        );
        assert_eq!(
            text(&records[0].value).as_deref(),
            Some("u1,3,\"a, \"\"b\"\"\nc\"")
        );
        assert_eq!(text(&records[1].value).as_deref(), Some(",,plain"));
    }

    #[test]
    fn raw_writes_the_one_value_column_and_nulls_as_tombstones() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Binary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(BinaryArray::from(vec![Some(&[0u8, 255][..]), None])),
            ],
        )
        .unwrap();
        let records = encode(KafkaFormat::Raw, Some("k"), &batch).unwrap();
        assert_eq!(
            records[0],
            KafkaRecord {
                key: Some(b"1".to_vec()),
                value: Some(vec![0, 255])
            }
        );
        assert_eq!(
            records[1],
            KafkaRecord {
                key: Some(b"2".to_vec()),
                value: None
            }
        );
    }

    #[test]
    fn raw_needs_exactly_one_text_or_binary_value_column() {
        let error = encode(KafkaFormat::Raw, None, &batch())
            .unwrap_err()
            .to_string();
        assert!(error.contains("3 column(s) besides the key"), "{error}");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let error = RecordEncoder::new(KafkaFormat::Raw, None, &schema)
            .unwrap_err()
            .to_string();
        assert!(error.contains("CAST(n AS VARCHAR)"), "{error}");
    }

    #[test]
    fn an_unknown_key_column_is_refused_naming_the_columns() {
        let error = encode(KafkaFormat::Json, Some("user"), &batch())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("'key' 'user'") && error.contains("user_id, n, note"),
            "{error}"
        );
    }

    fn parse(
        pairs: &[(&str, &str)],
        location: Option<&str>,
        checkpoint: bool,
    ) -> Result<KafkaSinkOptions> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut options = Options::new("KAFKA sink 'out'", pairs)?;
        let parsed =
            KafkaSinkOptions::parse(&mut options, location, checkpoint, "KAFKA sink 'out'")?;
        options.finish(KAFKA_SINK_OPTIONS)?;
        Ok(parsed)
    }

    #[test]
    fn options_have_defaults_and_pass_kafka_settings_on() {
        let options = parse(
            &[
                ("bootstrap.servers", "b:9092"),
                ("kafka.linger.ms", "20"),
                ("key", "k"),
            ],
            Some("alerts"),
            true,
        )
        .unwrap();
        assert_eq!(options.topic, "alerts");
        assert_eq!(options.format, KafkaFormat::Json);
        assert_eq!(options.delivery, KafkaDelivery::ExactlyOnce);
        assert_eq!(options.create_topic, None);
        assert_eq!(options.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            options.client_settings,
            vec![("linger.ms".to_string(), "20".to_string())]
        );
        let options = parse(
            &[
                ("kafka.bootstrap.servers", "b:9092"),
                ("delivery", "at_least_once"),
                ("create_topic", "true"),
                ("create_topic_partitions", "3"),
                ("timeout", "5 seconds"),
                ("format", "CSV"),
            ],
            Some("alerts"),
            false,
        )
        .unwrap();
        assert_eq!(options.bootstrap_servers, "b:9092");
        assert!(options.client_settings.is_empty());
        assert_eq!(options.create_topic, Some(3));
        assert_eq!(options.timeout, Duration::from_secs(5));
        assert_eq!(options.format, KafkaFormat::Csv);
    }

    #[test]
    fn bad_options_are_refused_with_the_fix() {
        // (options, LOCATION, has a checkpoint, expected in the error)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, bool, &'a str);
        let cases: &[Case] = &[
            (
                &[("bootstrap.servers", "b:1")],
                None,
                true,
                "needs LOCATION '<topic>'",
            ),
            (
                &[("bootstrap.servers", "b:1")],
                Some("a b"),
                true,
                "is not a Kafka topic name",
            ),
            (&[], Some("t"), true, "needs the brokers to write to"),
            (
                &[("bootstrap.servers", "b:1")],
                Some("t"),
                false,
                "needs a checkpoint",
            ),
            (
                &[("bootstrap.servers", "b:1"), ("format", "avro")],
                Some("t"),
                true,
                "unknown 'format' 'avro'",
            ),
            (
                &[("bootstrap.servers", "b:1"), ("delivery", "maybe")],
                Some("t"),
                true,
                "unknown 'delivery' 'maybe'",
            ),
            (
                &[
                    ("bootstrap.servers", "b:1"),
                    ("kafka.transactional.id", "x"),
                ],
                Some("t"),
                true,
                "cannot be set",
            ),
            (
                &[("bootstrap.servers", "b:1"), ("kafka.no.such.setting", "1")],
                Some("t"),
                true,
                "kafka.no.such.setting",
            ),
            (
                &[
                    ("bootstrap.servers", "b:1"),
                    ("create_topic_partitions", "2"),
                ],
                Some("t"),
                true,
                "needs 'create_topic' 'true'",
            ),
            (
                &[("bootstrap.servers", "b:1"), ("partitions", "2")],
                Some("t"),
                true,
                "unknown option 'partitions'",
            ),
            (
                &[("bootstrap.servers", "b:1"), ("timeout", "10 ms")],
                Some("t"),
                true,
                "at least 1 second",
            ),
        ];
        for (pairs, location, checkpoint, expected) in cases {
            let error = parse(pairs, *location, *checkpoint)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{pairs:?}: expected '{expected}' in: {error}"
            );
        }
    }
}
