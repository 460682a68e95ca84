//! Reading and preparing Kafka topics from tests, independently of millrace's own
//! client code: create a topic, read everything in it, read a consumer group's
//! committed offset (the Kafka sink's batch marker).
//!
//! Reading "everything" cannot rely on the high watermark (tansu reports it wrong, and
//! a transaction's commit marker takes an offset no consumer ever receives), so
//! [`read_topic`] first appends a *sentinel* record to every partition and reads until
//! it has seen each one: all records before a sentinel in its partition have then been
//! read. Sentinels carry the key [`SENTINEL_KEY`] and are left out of the result.
//! With `read_committed`, a read waits for open transactions to end on a correct
//! broker, so read that way only when no transaction can be open (read_uncommitted
//! otherwise).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The key of the sentinel records [`read_topic`] appends.
pub const SENTINEL_KEY: &str = "__millrace_test_sentinel__";

/// One record as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// The key as UTF-8 (lossy), if any.
    pub key: Option<String>,
    /// The value as UTF-8 (lossy); `None` for a tombstone.
    pub value: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let created = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
    ))
    .expect("create topics");
    for result in created {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let deadline = Instant::now() + TIMEOUT;
    while partition_count(bootstrap, topic) != partitions as usize {
        assert!(Instant::now() < deadline, "topic {topic} did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The metadata shows a new topic's partitions a moment before their leader serves
    // them (`NotLeaderForPartition`): wait until each answers.
    let reader = consumer(bootstrap, "millrace-test-metadata", false);
    for partition in 0..partitions {
        while reader
            .fetch_watermarks(topic, partition, Duration::from_secs(2))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "partition {partition} of {topic} has no leader"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn consumer(bootstrap: &str, group: &str, read_committed: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("consumer")
}

/// How many partitions `topic` has (0: it does not exist).
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let reader = consumer(bootstrap, "millrace-test-metadata", false);
    let metadata = reader
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("fetch metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

/// Every record of `topic` in (partition, offset) order, read to a fresh sentinel in
/// each partition (see the module doc); sentinels are left out.
pub fn read_topic(bootstrap: &str, topic: &str, read_committed: bool) -> Vec<Record> {
    let partitions = partition_count(bootstrap, topic) as i32;
    assert!(partitions > 0, "topic {topic} does not exist");
    let sentinel = format!("end-{}", uuid::Uuid::new_v4());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for partition in 0..partitions {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(SENTINEL_KEY)
                    .payload(&sentinel),
            )
            .unwrap_or_else(|(e, _)| panic!("send a sentinel: {e}"));
    }
    producer.flush(TIMEOUT).expect("flush the sentinels");
    let reader = consumer(bootstrap, "millrace-test-reader", read_committed);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assign");
    }
    reader.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let mut ended = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: no sentinel from partitions {:?} within 60 s",
            (0..partitions)
                .filter(|p| !ended.contains(p))
                .collect::<Vec<_>>()
        );
        let Some(message) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let key = text(message.key());
        let value = text(message.payload());
        if key.as_deref() == Some(SENTINEL_KEY) {
            if value.as_deref() == Some(sentinel.as_str()) {
                ended.insert(message.partition());
            }
            continue;
        }
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key,
            value,
        });
    }
    records.sort();
    records
}

/// The committed offset of `group` for partition `partition` of `topic` (the Kafka
/// sink's batch marker is group `millrace-<query id>`, partition 0 of its topic).
pub fn committed_offset(bootstrap: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let reader = consumer(bootstrap, group, true);
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, partition);
    let committed = reader
        .committed_offsets(partitions, TIMEOUT)
        .expect("read committed offsets");
    match committed
        .find_partition(topic, partition)
        .map(|p| p.offset())
    {
        Some(Offset::Offset(n)) => Some(n),
        _ => None,
    }
}

/// Produces `values` to `topic` without key (plain producer, flushed).
pub fn produce(bootstrap: &str, topic: &str, values: &[&str]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for value in values {
        producer
            .send(BaseRecord::<(), str>::to(topic).payload(*value))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    producer.flush(TIMEOUT).expect("flush");
}

/// Does what a restarted Kafka sink does first: `init_transactions` with the query's
/// transactional id (`millrace-<query id>`), which fences every earlier producer of
/// that id and aborts its open transaction. Until then the broker will not give out a
/// group offset sent in that open transaction (`UNSTABLE_OFFSET_COMMIT`), so a test
/// reads the batch marker after a crash only after this.
#[allow(dead_code)]
pub fn abort_open_transaction(bootstrap: &str, transactional_id: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .unwrap_or_else(|e| panic!("init_transactions({transactional_id}): {e}"));
}
