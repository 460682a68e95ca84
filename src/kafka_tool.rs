//! `millrace kafka produce` and `millrace kafka consume`: lines from standard input
//! to a topic's records, and a topic's records to standard output. Small helpers so
//! that the Kafka examples run with nothing but a broker and `millrace` (no Kafka
//! distribution with its console tools is needed).

use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::connector::kafka::client::{TopicNotCreated, config, create_topic};
use crate::connector::kafka::sink::send_when_room;
use crate::error::{Error, Result};

/// How long a broker call may take before the tool gives up.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Options of `millrace kafka consume`.
#[derive(Debug, Clone, Default)]
pub struct ConsumeOptions {
    /// Start at the oldest record of every partition (default: only new records).
    pub from_beginning: bool,
    /// Stop after this many records.
    pub max: Option<u64>,
    /// Read as a `read_committed` consumer: records of open or aborted transactions
    /// are not shown (on a broker that implements it).
    pub read_committed: bool,
    /// Print `key<TAB>value` instead of the value alone.
    pub keys: bool,
    /// Stop when no record arrived for this long (default: run until killed).
    pub idle: Option<Duration>,
}

/// Keeps the last client error (e.g. "Connection refused") and failed deliveries.
#[derive(Default)]
struct ToolContext {
    last_error: Mutex<Option<String>>,
    failed: Mutex<Option<KafkaError>>,
}

impl ClientContext for ToolContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ToolContext {}

impl ProducerContext for ToolContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| error.clone());
        }
    }
}

fn unreachable(bootstrap: &str, doing: &str, error: KafkaError, context: &ToolContext) -> Error {
    let last = context
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Error::Network(format!(
        "{doing}: no answer from the Kafka broker(s) at '{bootstrap}' ({error}){}; start one \
         (scripts/kafka-broker.sh start) or pass --bootstrap host:port",
        last.map(|l| format!("; last client error: {l}"))
            .unwrap_or_default()
    ))
}

fn client_error(e: KafkaError) -> Error {
    Error::Option(format!("Kafka client: {e}"))
}

/// The partition count of `topic` (0 if it does not exist).
fn partitions(consumer: &BaseConsumer<ToolContext>, bootstrap: &str, topic: &str) -> Result<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| unreachable(bootstrap, "reading topic metadata", e, consumer.context()))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Sends every line of `input` as one record (value only) to `topic`, creating the
/// topic with `partitions` partitions if it does not exist. Returns the records sent.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partitions_if_new: i32,
    input: impl BufRead,
) -> Result<u64> {
    let consumer: BaseConsumer<ToolContext> = config(bootstrap)
        .set("group.id", "millrace-kafka-tool")
        .create_with_context(ToolContext::default())
        .map_err(client_error)?;
    if partitions(&consumer, bootstrap, topic)? == 0 {
        match create_topic(&config(bootstrap), topic, partitions_if_new, -1, TIMEOUT) {
            Ok(()) | Err(TopicNotCreated::Refused(RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err(TopicNotCreated::Config(e)) => return Err(client_error(e)),
            Err(TopicNotCreated::Client(e)) => {
                return Err(unreachable(
                    bootstrap,
                    "creating the topic",
                    e,
                    consumer.context(),
                ));
            }
            Err(TopicNotCreated::Refused(code)) => {
                return Err(Error::Network(format!(
                    "cannot create topic '{topic}': {code}"
                )));
            }
        }
        let deadline = Instant::now() + TIMEOUT;
        while partitions(&consumer, bootstrap, topic)? == 0 {
            if Instant::now() > deadline {
                return Err(Error::Network(format!(
                    "topic '{topic}' was created but does not show up"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("created topic '{topic}' ({partitions_if_new} partition(s))");
    }
    let producer: ThreadedProducer<ToolContext> = config(bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
        .create_with_context(ToolContext::default())
        .map_err(client_error)?;
    let mut sent = 0u64;
    for line in input.lines() {
        let line = line.map_err(|e| Error::Network(format!("reading standard input: {e}")))?;
        let record = BaseRecord::<(), str, ()>::to(topic).payload(line.as_str());
        send_when_room(&producer, record, TIMEOUT)
            .map_err(|e| Error::Network(format!("cannot send to '{topic}': {e}")))?;
        sent += 1;
    }
    producer
        .flush(TIMEOUT + Duration::from_secs(2))
        .map_err(|e| unreachable(bootstrap, "sending the records", e, producer.context()))?;
    if let Some(error) = producer
        .context()
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => {
                unreachable(bootstrap, "sending the records", error, producer.context())
            }
            _ => Error::Network(format!("records to '{topic}' were not delivered: {error}")),
        });
    }
    Ok(sent)
}

/// Writes the records of every partition of `topic` to `out`, one line each (see
/// [`ConsumeOptions`]); returns how many were written. Stops at `max`, after `idle`
/// without records, or when `out` is closed (e.g. `| head`).
pub fn consume(
    bootstrap: &str,
    topic: &str,
    options: &ConsumeOptions,
    mut out: impl Write,
) -> Result<u64> {
    let consumer: BaseConsumer<ToolContext> = config(bootstrap)
        .set(
            "group.id",
            format!("millrace-consume-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if options.read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create_with_context(ToolContext::default())
        .map_err(client_error)?;
    let count = partitions(&consumer, bootstrap, topic)?;
    if count == 0 {
        return Err(Error::Option(format!(
            "Kafka topic '{topic}' does not exist on {bootstrap} (check the name; `millrace kafka \
             produce` creates a topic)"
        )));
    }
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..count {
        assignment
            .add_partition_offset(topic, partition, start)
            .map_err(client_error)?;
    }
    consumer.assign(&assignment).map_err(client_error)?;
    let mut written = 0u64;
    let mut last_record = Instant::now();
    while options.max.is_none_or(|max| written < max) {
        if options
            .idle
            .is_some_and(|idle| last_record.elapsed() >= idle)
        {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|e| Error::Network(format!("reading '{topic}': {e}")))?;
        last_record = Instant::now();
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
        let line = if options.keys {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default());
            format!("{key}\t{value}\n")
        } else {
            format!("{value}\n")
        };
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break; // the reader went away
        }
        written += 1;
    }
    Ok(written)
}
