//! What Apache Kafka 4.4 (the broker of every Kafka test, `scripts/kafka-broker.sh`)
//! does for the behaviours millrace's Kafka source and exactly-once sink rely on, with
//! rdkafka 0.39 (librdkafka 2.12.1) as the client: topics and partitions, watermarks,
//! deleted records, group offsets, and the transaction guarantees (aborted records
//! hidden from `read_committed`, the last stable offset, fencing of a zombie producer,
//! the abort of a transaction that outlives its timeout, offsets committed inside a
//! transaction).
//!
//! Every test asserts what the broker does, so that a broker or client upgrade that
//! changes it fails here and `docs/kafka.md` is revisited. All tests share the binary's
//! broker; each makes its own topics.

mod common;
mod kafka_support;

use std::time::{Duration, Instant};

use common::kafka::{shared, unique};
use kafka_support::*;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode as Code;
use rdkafka::{Message, Offset};

/// `n` records spread over `partitions` partitions, with keys, headers and timestamps.
fn sample(n: usize, partitions: i32) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            partition: Some(i as i32 % partitions),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("v{i}").into_bytes()),
            headers: vec![
                ("h".to_string(), Some(format!("x{i}").into_bytes())),
                ("empty".to_string(), None),
            ],
            timestamp: Some(1_700_000_000_000 + i as i64),
        })
        .collect()
}

fn transactional_producer(
    bootstrap: &str,
    id: &str,
    timeout_ms: &str,
) -> rdkafka::producer::FutureProducer {
    producer(
        bootstrap,
        &[
            ("transactional.id", id),
            ("transaction.timeout.ms", timeout_ms),
        ],
    )
}

/// A fresh topic with `partitions` partitions on the shared broker.
fn topic(partitions: i32) -> (&'static str, String) {
    let bootstrap = shared().bootstrap.as_str();
    let name = unique("probe");
    create_topic(bootstrap, &name, partitions);
    (bootstrap, name)
}

// ---------------------------------------------------------------------------------
// topics, records, offsets

#[test]
fn creates_topics_with_several_partitions_refuses_a_second_creation_and_adds_partitions() {
    let (bootstrap, probe) = topic(3);
    assert_eq!(partition_count(bootstrap, &probe), 3);
    assert_eq!(
        try_create_topic(bootstrap, &probe, 3),
        Err(KafkaError::AdminOp(Code::TopicAlreadyExists)),
        "a second CreateTopics of the same name"
    );
    try_add_partitions(bootstrap, &probe, 5).expect("CreatePartitions");
    wait_for_partitions(bootstrap, &probe, 5);
}

#[test]
fn round_trips_records_exactly_with_an_idempotent_producer() {
    let (bootstrap, probe) = topic(3);
    let records = sample(30, 3);
    let idempotent = producer(bootstrap, &[("enable.idempotence", "true")]);
    let delivered = send_all(&idempotent, &probe, &records);
    // Offsets count from 0 in each partition, in send order.
    for (i, (partition, offset)) in delivered.iter().enumerate() {
        assert_eq!(*partition, i as i32 % 3);
        assert_eq!(*offset, i as i64 / 3);
    }
    for partition in 0..3 {
        let read = read_partition(bootstrap, &probe, partition, "read_committed");
        let expected: Vec<Read> = records
            .iter()
            .filter(|r| r.partition == Some(partition))
            .enumerate()
            .map(|(offset, r)| Read {
                offset: offset as i64,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp: r.timestamp,
            })
            .collect();
        assert_eq!(read, expected, "partition {partition}");
    }
}

#[test]
fn reports_watermarks_as_first_and_next_offset() {
    let (bootstrap, probe) = topic(2);
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (0, 0));
    // Two produce calls, so the partition holds two record batches.
    produce_values(bootstrap, &probe, 0, ["a", "b", "c"]);
    produce_values(bootstrap, &probe, 0, ["d", "e"]);
    for isolation in ["read_committed", "read_uncommitted"] {
        assert_eq!(
            watermarks(bootstrap, &probe, 0, isolation),
            (0, 5),
            "{isolation}: high watermark = offset of the next record"
        );
        assert_eq!(watermarks(bootstrap, &probe, 1, isolation), (0, 0));
    }
}

#[test]
fn stores_and_returns_group_offsets_without_a_group_join() {
    let (bootstrap, probe) = topic(2);
    produce_values(bootstrap, &probe, 0, ["a", "b", "c"]);
    let group = unique("probe-group");
    let consumer = consumer(bootstrap, &[("group.id", &group)]);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&probe, 0, Offset::Offset(2))
        .unwrap();
    offsets
        .add_partition_offset(&probe, 1, Offset::Offset(0))
        .unwrap();
    // An assign-only consumer (no subscribe, so no JoinGroup) may commit offsets.
    consumer.assign(&offsets).unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    let other = kafka_support::consumer(bootstrap, &[("group.id", &group)]);
    let mut ask = TopicPartitionList::new();
    ask.add_partition(&probe, 0);
    ask.add_partition(&probe, 1);
    let committed = other.committed_offsets(ask, CALL).unwrap();
    assert_eq!(
        committed.find_partition(&probe, 0).unwrap().offset(),
        Offset::Offset(2)
    );
    assert_eq!(
        committed.find_partition(&probe, 1).unwrap().offset(),
        Offset::Offset(0)
    );
}

#[test]
fn deletes_records_and_a_fetch_below_the_low_watermark_is_out_of_range() {
    let (bootstrap, probe) = topic(1);
    produce_values(bootstrap, &probe, 0, ["a", "b", "c", "d"]);
    try_delete_records(bootstrap, &probe, 0, 2).expect("DeleteRecords");
    // What retention does: the earliest offset moves up.
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (2, 4));
    assert_eq!(
        read_partition(bootstrap, &probe, 0, "read_committed")
            .iter()
            .map(|r| (r.offset, r.value.clone().unwrap()))
            .collect::<Vec<_>>(),
        vec![(2, b"c".to_vec()), (3, b"d".to_vec())]
    );
    let consumer = consumer(bootstrap, &[("auto.offset.reset", "error")]);
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&probe, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&list).unwrap();
    // With auto.offset.reset=error the consumer reports the range error instead of
    // silently jumping to an end (what millrace's source configures).
    let deadline = Instant::now() + CALL;
    let error = loop {
        assert!(Instant::now() < deadline, "no error reported");
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(m)) => panic!("read offset {} below the low watermark", m.offset()),
            Some(Err(e)) => break e,
        }
    };
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AutoOffsetReset),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------
// transactions

#[test]
fn aborted_records_are_hidden_from_read_committed_readers() {
    let (bootstrap, probe) = topic(1);
    let producer = transactional_producer(bootstrap, &unique("probe-tx"), "10000");
    producer.init_transactions(CALL).expect("init_transactions");

    producer.begin_transaction().unwrap();
    send_all(
        &producer,
        &probe,
        &[Rec::value(0, "c1"), Rec::value(0, "c2")],
    );
    producer.commit_transaction(CALL).expect("commit");

    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "aborted")]);
    producer.abort_transaction(CALL).expect("abort");

    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "c3")]);
    producer.commit_transaction(CALL).expect("commit");

    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_uncommitted"),
        vec!["c1", "c2", "aborted", "c3"]
    );
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["c1", "c2", "c3"]
    );
    // Each transaction's commit or abort marker takes an offset no reader receives:
    // 2 + 1 + 1 records and 3 markers.
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (0, 7));
}

#[test]
fn an_open_transaction_holds_read_committed_readers_at_the_last_stable_offset() {
    let (bootstrap, probe) = topic(1);
    produce_values(bootstrap, &probe, 0, ["before"]);
    let producer = transactional_producer(bootstrap, &unique("probe-tx"), "10000");
    producer.init_transactions(CALL).expect("init_transactions");
    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "pending")]);
    // A record written outside the transaction after it began is held back too.
    produce_values(bootstrap, &probe, 0, ["after"]);
    // The high watermark librdkafka reports follows the isolation level: for
    // read_committed it is the last stable offset (the open transaction's first
    // offset), which is what millrace's source plans its batches up to.
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (0, 1));
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_uncommitted"), (0, 3));
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["before"]
    );
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_uncommitted"),
        vec!["before", "pending", "after"]
    );
    producer.commit_transaction(CALL).expect("commit");
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["before", "pending", "after"]
    );
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (0, 4));
}

#[test]
fn a_zombie_producer_with_the_same_transactional_id_is_fenced() {
    let (bootstrap, probe) = topic(1);
    let id = unique("probe-fence");
    let zombie = transactional_producer(bootstrap, &id, "10000");
    zombie.init_transactions(CALL).expect("init_transactions");
    zombie.begin_transaction().unwrap();
    send_all(&zombie, &probe, &[Rec::value(0, "from the zombie")]);
    // The successor's InitProducerId bumps the epoch and aborts the zombie's open
    // transaction; the zombie's commit fails with librdkafka's "fenced by a newer
    // instance" (a fatal error: the producer is unusable).
    let successor = transactional_producer(bootstrap, &id, "10000");
    successor
        .init_transactions(CALL)
        .expect("init_transactions of the successor");
    let error = zombie
        .commit_transaction(CALL)
        .expect_err("the zombie cannot commit");
    assert!(
        matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fenced)),
        "{error}"
    );
    successor.begin_transaction().unwrap();
    send_all(&successor, &probe, &[Rec::value(0, "from the successor")]);
    successor.commit_transaction(CALL).expect("commit");
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["from the successor"]
    );
}

#[test]
fn a_transaction_that_outlives_its_timeout_is_aborted_by_the_broker() {
    let (bootstrap, probe) = topic(1);
    // The test broker checks for expired transactions every second
    // (transaction.abort.timed.out.transaction.cleanup.interval.ms=1000).
    // (librdkafka wants socket.timeout.ms <= transaction.timeout.ms + 100 and
    // message.timeout.ms <= transaction.timeout.ms.)
    let producer = producer(
        bootstrap,
        &[
            ("transactional.id", &unique("probe-timeout")),
            ("transaction.timeout.ms", "3000"),
            ("message.timeout.ms", "3000"),
            ("socket.timeout.ms", "3000"),
        ],
    );
    producer.init_transactions(CALL).expect("init_transactions");
    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "never committed")]);
    produce_values(bootstrap, &probe, 0, ["plain"]);
    assert_eq!(watermarks(bootstrap, &probe, 0, "read_committed"), (0, 0));
    // The coordinator aborts the transaction: its abort marker moves the last stable
    // offset past the plain record (0: aborted, 1: plain, 2: the marker).
    let deadline = Instant::now() + Duration::from_secs(60);
    while watermarks(bootstrap, &probe, 0, "read_committed").1 != 3 {
        assert!(
            Instant::now() < deadline,
            "the transaction was not aborted within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["plain"]
    );
    // The producer learns it only when it tries to commit: the abort bumped its epoch,
    // so it is fenced like a zombie.
    let error = producer
        .commit_transaction(CALL)
        .expect_err("an expired transaction cannot commit");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced),
        "{error}"
    );
}

#[test]
fn offsets_sent_to_a_transaction_are_committed_with_it_and_only_then() {
    let (bootstrap, probe) = topic(1);
    let input = unique("probe-input");
    create_topic(bootstrap, &input, 1);
    let producer = transactional_producer(bootstrap, &unique("probe-tx"), "10000");
    producer.init_transactions(CALL).expect("init_transactions");
    let group = unique("probe-group");
    let consumer = consumer(bootstrap, &[("group.id", &group)]);
    let metadata = consumer.group_metadata().expect("group metadata");
    let committed = |offset| {
        let mut ask = TopicPartitionList::new();
        ask.add_partition(&input, 0);
        let got = consumer.committed_offsets(ask, CALL).unwrap();
        assert_eq!(got.find_partition(&input, 0).unwrap().offset(), offset);
    };
    let offsets = |n| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&input, 0, Offset::Offset(n))
            .unwrap();
        list
    };
    // Aborted: the offset is not committed.
    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "x")]);
    producer
        .send_offsets_to_transaction(&offsets(3), &metadata, CALL)
        .expect("send_offsets_to_transaction");
    producer.abort_transaction(CALL).expect("abort");
    committed(Offset::Invalid);
    // Committed: it is.
    producer.begin_transaction().unwrap();
    send_all(&producer, &probe, &[Rec::value(0, "y")]);
    producer
        .send_offsets_to_transaction(&offsets(7), &metadata, CALL)
        .expect("send_offsets_to_transaction");
    producer.commit_transaction(CALL).expect("commit");
    committed(Offset::Offset(7));
    assert_eq!(
        read_values(bootstrap, &probe, 0, "read_committed"),
        vec!["y"]
    );
}

#[test]
fn a_tombstone_without_a_key_round_trips() {
    let (bootstrap, probe) = topic(1);
    let delivered = produce(
        bootstrap,
        &probe,
        &[
            Rec::value(0, "a"),
            Rec {
                partition: Some(0),
                ..Rec::default()
            },
            Rec::value(0, "b"),
        ],
    );
    assert_eq!(delivered, vec![(0, 0), (0, 1), (0, 2)]);
    let read = read_partition(bootstrap, &probe, 0, "read_committed");
    let values: Vec<Option<Vec<u8>>> = read.into_iter().map(|r| r.value).collect();
    assert_eq!(values, vec![Some(b"a".to_vec()), None, Some(b"b".to_vec())]);
}
