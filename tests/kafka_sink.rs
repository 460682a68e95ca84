//! The Kafka sink against Apache Kafka 4.4 on loopback (one broker for this test
//! binary, `tests/common/kafka.rs`; each test its own topics; see
//! `docs/kafka-exactly-once.md`): formats and keys, update mode, exactly-once across a
//! crash at each point of the transaction window (a `read_committed` reader sees every
//! record once), errors.
//!
//! Topics are read independently of millrace's client code (`common::topic`), to a
//! sentinel record in every partition, never by waiting for a quiet moment.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::{Broker, shared, unique};
use common::topic::{
    Record, abort_open_transaction, committed_offset, create_topic, partition_count, read_topic,
};
use common::*;
use millrace::{Session, SessionSettings, StatementResult};
use serde_json::Value;
use tokio::runtime::Runtime;

/// The query id in a checkpoint's metadata: the Kafka sink's transactional id and
/// batch-marker group are `millrace-<query id>`.
fn query_id(checkpoint: &Path) -> String {
    read_json(&checkpoint.join("metadata"))["id"]
        .as_str()
        .expect("query id")
        .to_string()
}

/// The batch marker: `Some(n)` when the topic holds batches up to `n - 1` of the query.
/// Read after aborting a transaction a crashed run left open (as the restart would):
/// the broker withholds a marker sent in an open transaction.
fn marker(broker: &Broker, checkpoint: &Path, topic: &str) -> Option<i64> {
    let group = format!("millrace-{}", query_id(checkpoint));
    abort_open_transaction(&broker.bootstrap, &group);
    committed_offset(&broker.bootstrap, &group, topic, 0)
}

/// Writes JSON files of `{"id", "payload"}` rows, one file per id range.
fn write_inputs(input: &Path, ranges: &[std::ops::Range<i64>]) {
    for (n, range) in ranges.iter().enumerate() {
        write_atomic(
            input,
            &format!("f-{n:03}.json"),
            json_rows(range.clone()).as_bytes(),
        );
    }
}

/// The file source every job here reads: `events (id BIGINT NOT NULL, payload VARCHAR)`,
/// one file per batch.
fn source(input: &Path) -> String {
    format!(
        "CREATE UNBOUNDED EXTERNAL TABLE events (id BIGINT NOT NULL, payload VARCHAR)\n  \
         STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '1');\n",
        input.display()
    )
}

/// A Kafka sink statement: `options` go after bootstrap, checkpoint and trigger.
fn kafka_sink(
    name: &str,
    topic: &str,
    broker: &Broker,
    checkpoint: &Path,
    options: &str,
    select: &str,
) -> String {
    format!(
        "CREATE SINK {name} STORED AS KAFKA LOCATION '{topic}'\n  \
         OPTIONS ('bootstrap.servers' '{}', 'checkpoint' '{}', 'trigger' 'available_now'{options})\n  \
         AS {select};\n",
        broker.bootstrap,
        checkpoint.display()
    )
}

fn values(records: &[Record]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_str(r.value.as_deref().expect("a value")).expect("JSON value"))
        .collect()
}

fn pairs(records: &[Record]) -> Vec<(Option<String>, Option<String>)> {
    records
        .iter()
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------
// At-least-once: formats and keys

#[test]
fn at_least_once_writes_every_row_as_json_csv_or_raw_with_its_key() {
    let broker = shared();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    write_inputs(&input, &[0..10, 10..25, 25..30]);
    let (as_json, as_csv, as_raw) = (unique("as-json"), unique("as-csv"), unique("as-raw"));
    create_topic(&broker.bootstrap, &as_json, 3);
    create_topic(&broker.bootstrap, &as_raw, 1);
    let checkpoint = |name: &str| root.path().join(format!("ckpt-{name}"));
    let alo = ", 'delivery' 'at_least_once'";
    let job = source(&input)
        + &kafka_sink(
            "to_json",
            &as_json,
            broker,
            &checkpoint("json"),
            &format!("{alo}, 'key' 'id'"),
            "SELECT id, payload, id % 2 = 0 AS even FROM events WHERE id % 7 <> 3",
        )
        + &kafka_sink(
            "to_csv",
            &as_csv,
            broker,
            &checkpoint("csv"),
            &format!("{alo}, 'format' 'csv', 'create_topic' 'true'"),
            "SELECT id, concat(payload, ', \"quoted\"') AS text FROM events WHERE id < 5",
        )
        + &kafka_sink(
            "to_raw",
            &as_raw,
            broker,
            &checkpoint("raw"),
            &format!("{alo}, 'format' 'raw', 'key' 'payload'"),
            "SELECT payload, CASE WHEN id = 7 THEN NULL ELSE concat('value ', id) END AS v FROM events",
        );
    let job = write_job(root.path(), "job.sql", &job);
    run_success(&job, &root.path().join("run.err"));

    // JSON: one object per row, every column; the key is the id column's text; rows
    // of one key always go to one partition (3 partitions here).
    let json = read_topic(&broker.bootstrap, &as_json, false);
    let mut expected: Vec<(Option<String>, Option<String>)> = passing_ids(30)
        .map(|id| {
            (
                Some(id.to_string()),
                Some(format!(
                    r#"{{"id":{id},"payload":"p{id}","even":{}}}"#,
                    id % 2 == 0
                )),
            )
        })
        .collect();
    let mut actual = pairs(&json);
    actual.sort();
    expected.sort();
    assert_eq!(actual, expected, "JSON records");
    assert!(
        json.iter().map(|r| r.partition).max() > Some(0),
        "keys are spread over the topic's partitions"
    );

    // CSV: one line per row, no header, quoted as CSV needs, no key; the topic was
    // created by the sink ('create_topic' 'true', 1 partition by default), in order.
    assert_eq!(partition_count(&broker.bootstrap, &as_csv), 1);
    let csv = read_topic(&broker.bootstrap, &as_csv, false);
    let expected: Vec<(Option<String>, Option<String>)> = (0..5)
        .map(|id| (None, Some(format!(r##"{id},"p{id}, ""quoted""""##))))
        .collect();
    assert_eq!(pairs(&csv), expected, "CSV records, in batch order");

    // Raw: the value column as it is; a null value is a tombstone (no value).
    let raw = read_topic(&broker.bootstrap, &as_raw, false);
    let expected: Vec<(Option<String>, Option<String>)> = (0..30)
        .map(|id| {
            let value = (id != 7).then(|| format!("value {id}"));
            (Some(format!("p{id}")), value)
        })
        .collect();
    assert_eq!(pairs(&raw), expected, "raw records, in batch order");
}

#[test]
fn update_mode_with_a_key_writes_one_record_per_changed_group() {
    let broker = shared();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    // Batch 0: a, b, a. Batch 1: b, c. Batch 2: only rows the WHERE drops.
    let words = |ws: &[&str], first: usize| -> String {
        ws.iter()
            .enumerate()
            .map(|(i, w)| format!("{{\"id\": {}, \"payload\": \"{w}\"}}\n", first + i))
            .collect()
    };
    write_atomic(&input, "f-000.json", words(&["a", "b", "a"], 0).as_bytes());
    write_atomic(&input, "f-001.json", words(&["b", "c"], 3).as_bytes());
    write_atomic(&input, "f-002.json", words(&["skip"], 5).as_bytes());
    let counts = unique("counts");
    create_topic(&broker.bootstrap, &counts, 3);
    let checkpoint = root.path().join("ckpt");
    let job = source(&input)
        + &kafka_sink(
            "counts",
            &counts,
            broker,
            &checkpoint,
            ", 'key' 'word', 'output_mode' 'update'",
            "SELECT payload AS word, count(*) AS n FROM events WHERE payload <> 'skip' GROUP BY payload",
        );
    let job = write_job(root.path(), "job.sql", &job);
    run_success(&job, &root.path().join("run.err"));

    let records = read_topic(&broker.bootstrap, &counts, true);
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (record, value) in records.iter().zip(values(&records)) {
        let key = record.key.clone().expect("keyed records");
        assert_eq!(
            value["word"].as_str(),
            Some(key.as_str()),
            "key = word column"
        );
        per_key
            .entry(key)
            .or_default()
            .push(value["n"].as_i64().unwrap());
    }
    let expected: BTreeMap<String, Vec<i64>> = [
        ("a".to_string(), vec![2]),
        ("b".to_string(), vec![1, 2]),
        ("c".to_string(), vec![1]),
    ]
    .into();
    assert_eq!(
        per_key, expected,
        "each batch writes the groups it changed, once, in order per key"
    );
    // Batches 0 and 1 had rows; batch 2 had none and wrote nothing (no transaction,
    // so the marker stays at 2).
    assert_eq!(log_ids(&checkpoint.join("commits")), vec![0, 1, 2]);
    assert_eq!(marker(broker, &checkpoint, &counts), Some(2));
}

// ---------------------------------------------------------------------------------
// Exactly-once: a crash at each point of the transaction window

/// What one crash-and-restart run left behind.
struct CrashRun {
    topic: String,
    checkpoint: PathBuf,
    /// Batch marker right after the crash.
    marker_after_crash: Option<i64>,
    /// Everything in the topic right after the crash (read_uncommitted: records of
    /// the crashed, still open or aborted, transaction included).
    after_crash: Vec<Record>,
    /// Everything in the topic after the restart drained the input (read_committed).
    after_restart: Vec<Record>,
    /// Standard error of the restarted process.
    restart_stderr: String,
    _root: tempfile::TempDir,
}

/// Three input files (three batches with rows), one JSON sink keyed by id: the first
/// run aborts at `point` (in batch 0), the second runs to the end.
fn crash_then_restart(point: &str) -> CrashRun {
    let broker = shared();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    write_inputs(&input, &[0..10, 10..20, 20..30]);
    let topic = unique("out");
    create_topic(&broker.bootstrap, &topic, 2);
    let checkpoint = root.path().join("ckpt");
    let job = source(&input)
        + &kafka_sink(
            "out",
            &topic,
            broker,
            &checkpoint,
            ", 'key' 'id', 'timeout' '10 seconds'",
            "SELECT id, payload FROM events WHERE id % 7 <> 3",
        );
    let job = write_job(root.path(), "job.sql", &job);
    run_to_crash_point(&job, point, &root.path().join("crash.err"));
    assert_eq!(
        log_ids(&checkpoint.join("offsets")),
        vec![0],
        "crashed in batch 0"
    );
    assert!(log_ids(&checkpoint.join("commits")).is_empty());
    let marker_after_crash = marker(broker, &checkpoint, &topic);
    let after_crash = read_topic(&broker.bootstrap, &topic, false);
    let (status, restart_stderr) = run_to_end(&job, &[], &root.path().join("restart.err"));
    assert!(status.success(), "restart failed: {restart_stderr}");
    assert_eq!(log_ids(&checkpoint.join("commits")), vec![0, 1, 2]);
    assert_eq!(
        marker(broker, &checkpoint, &topic),
        Some(3),
        "the marker ends at the last batch + 1"
    );
    let after_restart = read_topic(&broker.bootstrap, &topic, true);
    CrashRun {
        topic,
        checkpoint,
        marker_after_crash,
        after_crash,
        after_restart,
        restart_stderr,
        _root: root,
    }
}

fn ids(records: &[Record]) -> Vec<i64> {
    values(records)
        .iter()
        .map(|v| v["id"].as_i64().expect("id"))
        .collect()
}

/// A crash before the broker's commit (after producing, or after adding the marker):
/// the transaction is left open, the marker does not move, the restart's
/// `init_transactions` aborts it and the replay writes batch 0 again in a new
/// transaction.
fn assert_crash_before_commit(run: &CrashRun) {
    assert_eq!(
        run.marker_after_crash,
        Some(0),
        "the marker stays at 0, committed before the first transaction: the marker of \
         the uncommitted transaction is not visible"
    );
    let crashed: Vec<i64> = ids(&run.after_crash);
    assert_exactly_once(
        "records the crashed run sent (open transaction)",
        crashed.iter().copied(),
        passing_ids(10),
    );
    assert!(
        !run.restart_stderr.contains("already committed"),
        "batch 0 was not committed, so the restart must write it: {}",
        run.restart_stderr
    );
    // The crashed run's records are in the partitions (read_uncommitted) but in an
    // aborted transaction: a read_committed reader sees none of them, and every
    // record of the restarted run once.
    let crashed_positions: Vec<(i32, i64)> = run
        .after_crash
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let (aborted, committed): (Vec<Record>, Vec<Record>) = run
        .after_restart
        .iter()
        .cloned()
        .partition(|r| crashed_positions.contains(&(r.partition, r.offset)));
    assert!(
        aborted.is_empty(),
        "read_committed shows aborted records: {aborted:?}"
    );
    assert_exactly_once(
        "records seen by read_committed after the restart",
        ids(&committed),
        passing_ids(30),
    );
}

/// A crash after the broker's commit and before `commits/0`: the marker already says
/// batch 0 is in the topic, so the replay writes nothing: exactly once for
/// read_committed readers.
fn assert_crash_after_commit(run: &CrashRun) {
    assert_eq!(
        run.marker_after_crash,
        Some(1),
        "batch 0 committed with its marker"
    );
    assert!(
        run.restart_stderr.contains(&format!(
            "batch 0 is already committed to topic '{}'",
            run.topic
        )),
        "the restart must skip batch 0: {}",
        run.restart_stderr
    );
    assert_exactly_once(
        "records after the crash",
        ids(&run.after_crash),
        passing_ids(10),
    );
    assert_exactly_once(
        "records seen by read_committed after the restart",
        ids(&run.after_restart),
        passing_ids(30),
    );
    let batch0: Vec<&Record> = run
        .after_restart
        .iter()
        .filter(|r| run.after_crash.contains(r))
        .collect();
    assert_eq!(
        batch0.len(),
        run.after_crash.len(),
        "batch 0 is the crashed run's records, not a rewrite"
    );
    assert!(run.checkpoint.join("commits/0").exists());
}

#[test]
fn exactly_once_crash_after_produce_rewrites_the_batch_in_a_new_transaction() {
    assert_crash_before_commit(&crash_then_restart("kafka-after-produce"));
}

#[test]
fn exactly_once_crash_after_the_marker_is_added_rewrites_the_batch() {
    assert_crash_before_commit(&crash_then_restart("kafka-after-marker"));
}

#[test]
fn exactly_once_crash_after_the_brokers_commit_does_not_write_the_batch_again() {
    assert_crash_after_commit(&crash_then_restart("kafka-after-txn-commit"));
}

#[test]
fn exactly_once_crash_after_the_sink_before_the_commit_log_does_not_write_the_batch_again() {
    assert_crash_after_commit(&crash_then_restart("after-sink"));
}

// ---------------------------------------------------------------------------------
// Errors

fn runtime() -> Runtime {
    Runtime::new().expect("tokio runtime")
}

/// Runs `sql` statements in one session; the error of the first failing one.
fn statement_error(runtime: &Runtime, sql: &str) -> String {
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let outcome = runtime.block_on(session.execute_script(sql));
    session.stop_all();
    let _ = session.await_all();
    match outcome {
        Ok(_) => panic!("expected an error from:\n{sql}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected '{part}' in: {text}");
    }
}

#[test]
fn a_broker_that_cannot_be_reached_is_a_clear_error_when_the_sink_starts() {
    let runtime = runtime();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for delivery in ["exactly_once", "at_least_once"] {
        let sql = format!(
            "{}CREATE SINK out STORED AS KAFKA LOCATION 'out' OPTIONS ('bootstrap.servers' \
             '127.0.0.1:{port}', 'checkpoint' '{}', 'delivery' '{delivery}', 'timeout' '2 seconds') \
             AS SELECT id FROM events",
            source(&input),
            root.path().join(format!("ckpt-{delivery}")).display()
        );
        let error = statement_error(&runtime, &sql);
        assert_contains(
            &error,
            &[
                "Kafka sink for topic 'out' cannot start",
                &format!("no answer from the Kafka broker(s) at '127.0.0.1:{port}'"),
                "check 'bootstrap.servers' and that the broker is running",
            ],
        );
    }
}

#[test]
fn a_missing_topic_is_refused_unless_the_sink_may_create_it() {
    let broker = shared();
    let runtime = runtime();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    let sink = |name: &str, options: &str| {
        format!(
            "{}CREATE SINK {} STORED AS KAFKA LOCATION '{name}' OPTIONS ('bootstrap.servers' \
             '{}', 'delivery' 'at_least_once', 'trigger' 'available_now'{options}) AS SELECT id FROM events",
            source(&input),
            name.replace('-', "_"),
            broker.bootstrap
        )
    };
    let (missing, created) = (unique("missing"), unique("created"));
    let error = statement_error(&runtime, &sink(&missing, ""));
    assert_contains(
        &error,
        &[
            &format!("Kafka topic '{missing}' does not exist"),
            "OPTIONS ('create_topic' 'true'",
        ],
    );
    assert_eq!(
        partition_count(&broker.bootstrap, &missing),
        0,
        "nothing was created"
    );

    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let results = runtime
        .block_on(session.execute_script(&sink(
            &created,
            ", 'create_topic' 'true', 'create_topic_partitions' '2'",
        )))
        .expect("the sink creates its topic");
    assert!(matches!(
        results.last(),
        Some(StatementResult::QueryStarted(_))
    ));
    session.await_all().expect("the query ends");
    assert_eq!(partition_count(&broker.bootstrap, &created), 2);
}

#[test]
fn options_are_checked_before_anything_runs() {
    let runtime = runtime();
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    let cases = [
        (
            "'bootstrap.servers' 'b:1', 'color' 'red'",
            "unknown option 'color'",
        ),
        (
            "'bootstrap.servers' 'b:1', 'format' 'avro'",
            "unknown 'format' 'avro'",
        ),
        ("'format' 'json'", "needs the brokers to write to"),
        (
            "'bootstrap.servers' 'b:1', 'kafka.transactional.id' 'x'",
            "cannot be set",
        ),
        (
            "'bootstrap.servers' 'b:1', 'kafka.acks' 'some'",
            "'kafka.acks' = 'some'",
        ),
    ];
    for (options, expected) in cases {
        let sql = format!(
            "{}CREATE SINK out STORED AS KAFKA LOCATION 'out' OPTIONS ('checkpoint' '{}', {options}) \
             AS SELECT id FROM events",
            source(&input),
            root.path().join("ckpt").display()
        );
        assert_contains(&statement_error(&runtime, &sql), &[expected]);
    }
}

/// Starts a continuous file → Kafka query in this process; the first input file is
/// written and its batch committed before this returns.
fn start_continuous(
    runtime: &Runtime,
    broker: &Broker,
    root: &Path,
    delivery: &str,
) -> (Session, PathBuf, PathBuf) {
    let input = make_dir(root, "in");
    let checkpoint = root.join("ckpt");
    create_topic(&broker.bootstrap, "out", 1);
    write_atomic(&input, "f-000.json", json_rows(0..5).as_bytes());
    let sql = format!(
        "{}CREATE SINK out STORED AS KAFKA LOCATION 'out' OPTIONS ('bootstrap.servers' '{}', \
         'checkpoint' '{}', 'delivery' '{delivery}', 'timeout' '2 seconds') AS SELECT id FROM events",
        source(&input),
        broker.bootstrap,
        checkpoint.display()
    );
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    runtime
        .block_on(session.execute_script(&sql))
        .expect("the query starts");
    wait_until("batch 0 committed", DEADLINE, || {
        checkpoint.join("commits/0").exists()
    });
    (session, input, checkpoint)
}

/// The broker goes away mid-query: the next batch cannot be delivered, the query fails
/// after its bounded retries with a message saying so, and `commits/1` is not written,
/// so the batch runs again when the query is restarted.
fn assert_undeliverable_batch_fails_the_query(delivery: &str) {
    // A broker of the test's own: it is stopped.
    let broker = Broker::start();
    let runtime = runtime();
    let root = temp_dir();
    let (session, input, checkpoint) = start_continuous(&runtime, &broker, root.path(), delivery);
    broker.stop();
    // The broker is gone once `stop` returns; make sure nothing answers.
    wait_until("the broker to stop listening", DEADLINE, || {
        std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_err()
    });
    write_atomic(&input, "f-late.json", json_rows(5..8).as_bytes());
    let query = session.queries().pop().expect("the query");
    let outcome = query
        .await_termination_timeout(Duration::from_secs(120))
        .expect("the query gives up within its bounded retries");
    let error = outcome
        .expect_err("an undeliverable batch fails the query")
        .to_string();
    assert_contains(
        &error,
        &[
            "Kafka sink could not deliver batch 1 to topic 'out' (3 attempt(s))",
            "The batch is not committed: it runs again when the query restarts",
        ],
    );
    assert!(checkpoint.join("offsets/1").exists());
    assert!(
        !checkpoint.join("commits/1").exists(),
        "an undelivered batch must not be committed"
    );
}

#[test]
fn exactly_once_a_batch_the_broker_never_took_fails_the_query_uncommitted() {
    assert_undeliverable_batch_fails_the_query("exactly_once");
}

#[test]
fn at_least_once_a_batch_the_broker_never_took_fails_the_query_uncommitted() {
    assert_undeliverable_batch_fails_the_query("at_least_once");
}

#[test]
fn a_record_the_broker_cannot_take_fails_the_query_at_once_with_the_fix() {
    let broker = shared();
    let big = unique("big");
    create_topic(&broker.bootstrap, &big, 1);
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    write_inputs(&input, &[0..2, 2..4]);
    let checkpoint = root.path().join("ckpt");
    let job = source(&input)
        + &kafka_sink(
            "big",
            &big,
            broker,
            &checkpoint,
            ", 'delivery' 'at_least_once', 'format' 'raw'",
            "SELECT CASE WHEN id = 3 THEN repeat('x', 2000000) ELSE payload END AS v FROM events",
        );
    let job = write_job(root.path(), "job.sql", &job);
    let (status, stderr) = run_to_end(&job, &[], &root.path().join("run.err"));
    assert!(!status.success(), "the query must fail: {stderr}");
    assert_contains(
        &stderr,
        &[
            &format!("Kafka sink could not deliver batch 1 to topic '{big}' (1 attempt(s))"),
            "a record is larger than the broker or topic accepts",
        ],
    );
    assert_eq!(
        log_ids(&checkpoint.join("commits")),
        vec![0],
        "batch 1 is not committed"
    );
}

// ---------------------------------------------------------------------------------
// `millrace kafka produce|consume`, the examples' helpers

#[test]
fn the_kafka_helper_commands_send_lines_and_print_records() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let broker = shared();
    let lines_topic = unique("lines");
    let mut produce = Command::new(MILLRACE)
        .args(["kafka", "produce", &lines_topic, "--partitions", "2"])
        .args(["--bootstrap", &broker.bootstrap])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start millrace kafka produce");
    produce
        .stdin
        .take()
        .unwrap()
        .write_all(b"a\nb b\n\nc\n")
        .unwrap();
    let produced = produce.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(produced.status.success(), "{stderr}");
    assert_contains(
        &stderr,
        &[
            &format!("created topic '{lines_topic}' (2 partition(s))"),
            &format!("sent 4 record(s) to '{lines_topic}'"),
        ],
    );

    let consume = |topic: &str, extra: &[&str]| {
        Command::new(MILLRACE)
            .args(["kafka", "consume", topic, "--bootstrap", &broker.bootstrap])
            .args(extra)
            .output()
            .expect("run millrace kafka consume")
    };
    let consumed = consume(&lines_topic, &["--from-beginning", "--max", "4"]);
    assert!(consumed.status.success());
    let mut lines: Vec<String> = String::from_utf8_lossy(&consumed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["", "a", "b b", "c"],
        "every line once, empty ones too"
    );
    assert_eq!(
        read_topic(&broker.bootstrap, &lines_topic, false).len(),
        4,
        "the records are in the topic"
    );

    let missing = consume("nope", &["--from-beginning", "--idle", "1 second"]);
    assert!(!missing.status.success());
    assert_contains(
        &String::from_utf8_lossy(&missing.stderr),
        &["Kafka topic 'nope' does not exist"],
    );
}

// ---------------------------------------------------------------------------------
// The batch marker across a long stop (its group offsets expire)

/// Waits until the broker has deleted the marker (`offsets.retention.minutes` after
/// its last commit; the broker checks every second here).
fn wait_for_marker_expiry(broker: &Broker, checkpoint: &Path, topic: &str) {
    wait_until(
        "the batch marker to expire",
        Duration::from_secs(240),
        || marker(broker, checkpoint, topic).is_none(),
    );
}

#[test]
fn a_marker_that_expired_during_a_long_stop_is_never_guessed() {
    // A broker of the test's own that deletes group offsets 1 minute after their last
    // commit (the shortest retention Kafka takes; the default is 7 days).
    let broker = Broker::start_with(&[
        "offsets.retention.minutes=1",
        "offsets.retention.check.interval.ms=1000",
    ]);
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    create_topic(&broker.bootstrap, "out", 2);
    let checkpoint = root.path().join("ckpt");
    let job = write_job(
        root.path(),
        "job.sql",
        &(source(&input)
            + &kafka_sink(
                "out",
                "out",
                &broker,
                &checkpoint,
                ", 'key' 'id', 'timeout' '10 seconds'",
                "SELECT id, payload FROM events",
            )),
    );
    let ids_in_topic = || ids(&read_topic(&broker.bootstrap, "out", true));

    // A second query whose very first batch commits on the broker, then the process
    // dies before anything else is recorded (its expiry is awaited with the first
    // query's below).
    let first_input = make_dir(root.path(), "in-first");
    create_topic(&broker.bootstrap, "first", 1);
    let first_checkpoint = root.path().join("ckpt-first");
    let first_job = write_job(
        root.path(),
        "first.sql",
        &(source(&first_input)
            + &kafka_sink(
                "first",
                "first",
                &broker,
                &first_checkpoint,
                ", 'timeout' '10 seconds'",
                "SELECT id, payload FROM events",
            )),
    );
    write_atomic(&first_input, "f-000.json", json_rows(0..5).as_bytes());
    run_to_crash_point(
        &first_job,
        "kafka-after-txn-commit",
        &root.path().join("first-crash.err"),
    );
    assert_eq!(marker(&broker, &first_checkpoint, "first"), Some(1));

    // Batch 0, then a stop longer than the retention: the marker is gone.
    write_atomic(&input, "f-000.json", json_rows(0..10).as_bytes());
    run_success(&job, &root.path().join("run-0.err"));
    assert_eq!(marker(&broker, &checkpoint, "out"), Some(1));
    wait_for_marker_expiry(&broker, &checkpoint, "out");

    // The first query's marker expired too (committed earlier): its batch 0 may be in
    // the topic, and nothing on the broker says so any more. The sink committed marker
    // 0 before its first transaction, so its record knows a marker existed: it stops
    // instead of writing batch 0 again.
    wait_for_marker_expiry(&broker, &first_checkpoint, "first");
    let (status, stderr) = run_to_end(&first_job, &[], &root.path().join("first-refused.err"));
    assert!(
        !status.success(),
        "the sink must not guess batch 0: {stderr}"
    );
    assert!(
        stderr.contains("batch 0 was being committed when the query last stopped"),
        "{stderr}"
    );
    assert_exactly_once(
        "the first batch, once",
        ids(&read_topic(&broker.bootstrap, "first", true)),
        0..5,
    );
    // A new batch after the stop: the sink's record says batch 1 never reached its
    // commit, so it is written (once).
    write_atomic(&input, "f-001.json", json_rows(10..20).as_bytes());
    run_success(&job, &root.path().join("run-1.err"));
    assert_exactly_once("after batch 1", ids_in_topic(), 0..20);
    assert_eq!(marker(&broker, &checkpoint, "out"), Some(2));

    // Batch 2 commits on the broker, and the process dies before its commit log ...
    write_atomic(&input, "f-002.json", json_rows(20..30).as_bytes());
    run_to_crash_point(
        &job,
        "kafka-after-txn-commit",
        &root.path().join("crash.err"),
    );
    assert_eq!(marker(&broker, &checkpoint, "out"), Some(3));
    // ... and stays down until the marker expires: batch 2 may or may not be in the
    // topic as far as the sink can tell, so it stops and says how to go on.
    wait_for_marker_expiry(&broker, &checkpoint, "out");
    let (status, stderr) = run_to_end(&job, &[], &root.path().join("refused.err"));
    assert!(!status.success(), "the sink must not guess: {stderr}");
    for expected in [
        "the batch marker of consumer group 'millrace-",
        "for topic 'out' is gone",
        "batch 2 was being committed when the query last stopped",
        "--reset-offsets --to-offset X",
        "X = 3 if the batch is in the topic, 2 if it is not",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(!checkpoint.join("commits/2").exists());
    assert_exactly_once("nothing written twice", ids_in_topic(), 0..30);

    // The operator finds batch 2 in the topic and sets the marker to 3 (what
    // kafka-consumer-groups.sh --reset-offsets does); the restart skips batch 2.
    set_marker(&broker, &checkpoint, "out", 3);
    let (status, stderr) = run_to_end(&job, &[], &root.path().join("after-reset.err"));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("batch 2 is already committed to topic 'out'"),
        "{stderr}"
    );
    assert!(checkpoint.join("commits/2").exists());
    assert_exactly_once("exactly once after the reset", ids_in_topic(), 0..30);
}

/// Commits `next` as the query's batch marker, as `kafka-consumer-groups.sh
/// --reset-offsets --to-offset <next>` would.
fn set_marker(broker: &Broker, checkpoint: &Path, topic: &str, next: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let group = format!("millrace-{}", query_id(checkpoint));
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer of the marker group");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(next))
        .unwrap();
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit the marker");
}
