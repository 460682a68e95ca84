//! Kafka client helpers for the tests that talk to a real broker (`kafka_broker_probe`,
//! `kafka_source`): create topics, add partitions, delete records, produce records and
//! wait for their offsets, read a partition back. Every call has a short timeout and
//! panics with what it was doing, so a broker that misbehaves fails the test quickly.
//!
//! Brokers are started by `tests/common/kafka.rs` (`Broker::start`).

#![allow(dead_code)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The timeout of one client call in these tests.
pub const CALL: Duration = Duration::from_secs(10);

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Rec {
    /// The partition (`None`: the producer's partitioner decides).
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Create time in ms since the epoch (`None`: the producer's clock).
    pub timestamp: Option<i64>,
}

impl Rec {
    /// A record with `value` for `partition`.
    pub fn value(partition: i32, value: impl AsRef<[u8]>) -> Rec {
        Rec {
            partition: Some(partition),
            value: Some(value.as_ref().to_vec()),
            ..Rec::default()
        }
    }
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// Offset in its partition.
    pub offset: i64,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (ms), if any.
    pub timestamp: Option<i64>,
}

/// A client configuration for `bootstrap` with short timeouts.
pub fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000")
        .set("message.timeout.ms", "10000");
    config
}

/// An admin client.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    config(bootstrap).create().expect("create an admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(CALL))
}

/// Creates `topic` with `partitions` partitions (replication 1); the broker's answer.
pub fn try_create_topic(bootstrap: &str, topic: &str, partitions: i32) -> KafkaResult<()> {
    let admin = admin(bootstrap);
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&new], &options()))?;
    for result in results {
        result.map_err(|(_, code)| rdkafka::error::KafkaError::AdminOp(code))?;
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions, and waits until every partition has a
/// leader that answers (a new topic's metadata shows its partitions a moment before
/// their leader serves them: `NotLeaderForPartition`).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    try_create_topic(bootstrap, topic, partitions)
        .unwrap_or_else(|e| panic!("create topic {topic} on {bootstrap}: {e}"));
    wait_for_partitions(bootstrap, topic, partitions as usize);
}

/// Raises the partition count of `topic` to `total`; the broker's answer.
pub fn try_add_partitions(bootstrap: &str, topic: &str, total: usize) -> KafkaResult<()> {
    let admin = admin(bootstrap);
    let new = NewPartitions::new(topic, total);
    let results = futures::executor::block_on(admin.create_partitions([&new], &options()))?;
    for result in results {
        result.map_err(|(_, code)| rdkafka::error::KafkaError::AdminOp(code))?;
    }
    Ok(())
}

/// Deletes the records of `topic`/`partition` before `before`; the broker's answer.
pub fn try_delete_records(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    before: i64,
) -> KafkaResult<()> {
    let admin = admin(bootstrap);
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(before))?;
    let result = futures::executor::block_on(admin.delete_records(&list, &options()))?;
    for element in result.elements() {
        element.error()?;
    }
    Ok(())
}

/// The number of partitions the broker's metadata shows for `topic` (0 if unknown).
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = config(bootstrap).create().expect("create a consumer");
    consumer
        .fetch_metadata(Some(topic), CALL)
        .ok()
        .and_then(|m| {
            m.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
        })
        .unwrap_or(0)
}

/// Waits until `topic` has `partitions` partitions in the broker's metadata.
pub fn wait_for_partitions(bootstrap: &str, topic: &str, partitions: usize) {
    let deadline = std::time::Instant::now() + CALL;
    while partition_count(bootstrap, topic) != partitions {
        assert!(
            std::time::Instant::now() < deadline,
            "topic {topic} did not show {partitions} partitions on {bootstrap}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reader = consumer(bootstrap, &[]);
    for partition in 0..partitions as i32 {
        while reader
            .fetch_watermarks(topic, partition, Duration::from_secs(2))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "partition {partition} of {topic} has no leader on {bootstrap}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A producer; `extra` settings are added to the defaults (e.g. idempotence).
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = config(bootstrap);
    config.set("linger.ms", "5");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config.create().expect("create a producer")
}

/// Sends `records` to `topic` with `producer` and waits for every delivery; returns
/// each record's `(partition, offset)`.
pub fn send_all(producer: &FutureProducer, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
    let mut futures = Vec::new();
    for rec in records {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(partition) = rec.partition {
            record = record.partition(partition);
        }
        if let Some(key) = &rec.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &rec.value {
            record = record.payload(value.as_slice());
        }
        if let Some(ts) = rec.timestamp {
            record = record.timestamp(ts);
        }
        if !rec.headers.is_empty() {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &rec.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            record = record.headers(headers);
        }
        let future = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("queue a record for {topic}: {e}"));
        futures.push(future);
    }
    producer.flush(CALL).expect("flush the producer");
    futures
        .into_iter()
        .map(|f| {
            let delivery = futures::executor::block_on(f)
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("deliver a record to {topic}: {e}"));
            (delivery.partition, delivery.offset)
        })
        .collect()
}

/// Produces `records` to `topic` (plain producer); returns `(partition, offset)` each.
pub fn produce(bootstrap: &str, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
    send_all(&producer(bootstrap, &[]), topic, records)
}

/// Produces one value per entry of `values` to `partition`.
pub fn produce_values<S: AsRef<[u8]>>(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    values: impl IntoIterator<Item = S>,
) -> Vec<(i32, i64)> {
    let records: Vec<Rec> = values
        .into_iter()
        .map(|v| Rec::value(partition, v))
        .collect();
    produce(bootstrap, topic, &records)
}

/// A consumer with `extra` settings. librdkafka refuses `assign` without a `group.id`
/// ("Local: Unknown group"), so a group is always named; an assign-only consumer
/// never joins it.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = config(bootstrap);
    config
        .set("group.id", "millrace-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config.create().expect("create a consumer")
}

/// Low and high watermarks of a partition, as the broker reports them.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32, isolation: &str) -> (i64, i64) {
    consumer(bootstrap, &[("isolation.level", isolation)])
        .fetch_watermarks(topic, partition, CALL)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

/// Every record of `topic`/`partition` from offset 0 until the end (partition EOF),
/// read with `isolation.level` `isolation`.
pub fn read_partition(bootstrap: &str, topic: &str, partition: i32, isolation: &str) -> Vec<Read> {
    let consumer = consumer(bootstrap, &[("isolation.level", isolation)]);
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("partition list");
    consumer.assign(&list).expect("assign");
    let deadline = std::time::Instant::now() + CALL;
    let mut out = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic}/{partition} did not reach its end"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("read {topic}/{partition}: {e}"),
            Some(Ok(message)) => out.push(Read {
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp: message.timestamp().to_millis(),
            }),
        }
    }
}

/// The values of [`read_partition`] as strings.
pub fn read_values(bootstrap: &str, topic: &str, partition: i32, isolation: &str) -> Vec<String> {
    read_partition(bootstrap, topic, partition, isolation)
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned())
        .collect()
}
