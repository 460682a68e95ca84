//! Exactly-once from Kafka to Kafka under `kill -9`, on Apache Kafka: a word count in
//! update mode (a Kafka topic → `GROUP BY` → a Kafka topic keyed by word, exactly-once)
//! is killed with `kill -9` at 50 random instants while a producer keeps adding records
//! to the input topic, and made to abort at each crash point of the transaction window
//! and of the engine (twice each), restarted every time. At the end a final
//! `available_now` run drains the input and the output topic is read back by a
//! `read_committed` consumer.
//!
//! What is asserted:
//!
//! - **exactly once**: the output holds, per word and in order, exactly one record per
//!   committed batch that saw the word, carrying the word's count after that batch
//!   (the batches' input ranges are read off the offset log and the input topic), so
//!   no record is missing, none is repeated (an aborted attempt would repeat a count)
//!   and the last record of every word carries the number of records produced;
//! - after a crash that landed after the broker's commit (`kafka-after-txn-commit`,
//!   `after-sink`), the batch marker already names the batch, a later run logs that it
//!   skipped it, and nothing written after the crash repeats a count the topic already
//!   held: the committed batch was not written again;
//! - after a crash before the broker's commit, the marker has not moved and no run
//!   ever skips that batch (it is written again in a new transaction);
//! - the marker ends at the last batch with output + 1.
//!
//! The second test takes the other way into Kafka: JSON files landing in a directory
//! (the file source), filtered, to a Kafka topic exactly-once, killed and aborted the
//! same way while files keep landing; a `read_committed` consumer of the output must
//! see every passing input row exactly once.
//!
//! The kill instants come from a seeded RNG (`MILLRACE_TEST_SEED` replays a schedule).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kafka::{Broker, shared, unique};
use common::topic::{Record, abort_open_transaction, committed_offset, create_topic, read_topic};
use common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Crash points aimed at, in turn: the Kafka sink's transaction window and the
/// engine's points around the sink.
const CRASH_POINTS: [&str; 6] = [
    "kafka-after-produce",
    "kafka-after-marker",
    "kafka-after-txn-commit",
    "after-sink",
    "after-state-commit",
    "after-offsets",
];
/// Points after the broker's commit of the batch (the replay must skip it).
const AFTER_BROKER_COMMIT: [&str; 2] = ["kafka-after-txn-commit", "after-sink"];
/// Points inside the transaction before its commit (the replay must write it).
const BEFORE_BROKER_COMMIT: [&str; 2] = ["kafka-after-produce", "kafka-after-marker"];
/// The crash points of [`CRASH_POINTS`] a stateless query passes (it commits no state).
const STATELESS_CRASH_POINTS: [&str; 5] = [
    "kafka-after-produce",
    "kafka-after-marker",
    "kafka-after-txn-commit",
    "after-sink",
    "after-offsets",
];
/// Kills at random instants.
const RANDOM_KILLS: usize = 50;
const WORDS: u64 = 12;

/// The input topic (3 partitions) and the output topic (3 partitions) of one test.
struct Topics {
    input: String,
    output: String,
}

/// Produces `{"id", "payload": <word>}` records to the input topic until stopped, in
/// bursts of 1 to 7, counting each word.
struct Generator {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<String, i64>>,
}

impl Generator {
    fn start(bootstrap: String, input: String, seed: u64) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "0")
                .create()
                .expect("input producer");
            let mut rng = XorShift::new(seed);
            let mut counts = BTreeMap::new();
            let mut id = 0u64;
            while !flag.load(Ordering::SeqCst) {
                for _ in 0..rng.range(1, 8) {
                    let word = format!("w{:02}", rng.range(0, WORDS - 1));
                    let value = format!("{{\"id\": {id}, \"payload\": \"{word}\"}}");
                    producer
                        .send(BaseRecord::<(), str>::to(&input).payload(&value))
                        .unwrap_or_else(|(e, _)| panic!("produce to {input}: {e}"));
                    *counts.entry(word).or_insert(0) += 1;
                    id += 1;
                }
                producer
                    .flush(Duration::from_secs(30))
                    .expect("the input records reach the broker");
                std::thread::sleep(Duration::from_millis(rng.range(20, 80)));
            }
            counts
        });
        Generator { stop, thread }
    }

    /// Stops the generator; returns how many records of each word it produced (all
    /// acknowledged by the broker).
    fn stop(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the input generator panicked")
    }
}

fn job(checkpoint: &Path, broker: &Broker, topics: &Topics, trigger: &str) -> String {
    let Topics { input, output } = topics;
    // The expected output is worked out from every batch's offsets/N and commits/N, so
    // the job keeps them all (a run has more than the default 100 batches).
    format!(
        "SET millrace.min_batches_to_retain = 100000;\n\
         CREATE UNBOUNDED EXTERNAL TABLE events (id BIGINT NOT NULL, payload VARCHAR)\n  \
         STORED AS KAFKA LOCATION '{input}'\n  \
         OPTIONS ('bootstrap.servers' '{}', 'format' 'json', 'starting_offsets' 'earliest',\n  \
                  'max_offsets_per_trigger' '40');\n\
         CREATE SINK counts STORED AS KAFKA LOCATION '{output}'\n  \
         OPTIONS ('bootstrap.servers' '{}', 'checkpoint' '{}', 'key' 'word',\n  \
                  'output_mode' 'update', 'timeout' '10 seconds'{})\n  \
         AS SELECT payload AS word, count(*) AS n FROM events GROUP BY payload;\n",
        broker.bootstrap,
        broker.bootstrap,
        checkpoint.display(),
        trigger_option(Some(trigger).filter(|t| !t.is_empty()))
    )
}

/// The batch left without a commit by a crash: the newest `offsets/N` with no `commits/N`.
fn pending_batch(checkpoint: &Path) -> Option<u64> {
    let last = *log_ids(&checkpoint.join("offsets")).last()?;
    (!checkpoint.join("commits").join(last.to_string()).exists()).then_some(last)
}

fn marker(broker: &Broker, checkpoint: &Path, topic: &str) -> Option<i64> {
    let id = read_json(&checkpoint.join("metadata"))["id"]
        .as_str()
        .expect("query id")
        .to_string();
    // A killed run may have left a transaction open, whose marker the broker withholds:
    // abort it first, as the next run would.
    abort_open_transaction(&broker.bootstrap, &format!("millrace-{id}"));
    committed_offset(&broker.bootstrap, &format!("millrace-{id}"), topic, 0)
}

/// (word, count) of a record.
fn word_count(record: &Record) -> (String, i64) {
    let value: serde_json::Value =
        serde_json::from_str(record.value.as_deref().expect("a value")).expect("JSON");
    let word = value["word"].as_str().expect("word").to_string();
    assert_eq!(
        record.key.as_deref(),
        Some(word.as_str()),
        "key = word column"
    );
    (word, value["n"].as_i64().expect("n"))
}

/// Batch ids some run logged as "already committed" (skipped on replay).
fn skipped_batches(logs: &Path) -> BTreeSet<u64> {
    let mut skipped = BTreeSet::new();
    for entry in std::fs::read_dir(logs).expect("logs").flatten() {
        skipped.extend(skipped_in(&entry.path()));
    }
    skipped
}

/// The batches one run's log reports skipping (already committed to the topic).
fn skipped_in(log: &Path) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let rest = line.split("Kafka sink: batch ").nth(1)?;
            rest.contains(" is already committed to topic").then(|| {
                let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
                id.parse().expect("a batch id")
            })
        })
        .collect()
}

/// Each batch a run aborted inside its transaction must be written again by the run
/// right after it: at that run's start the broker holds no commit of it, so a skip
/// there is wrong. (A later run may skip it: the run in between may have written it
/// and been killed before `commits/N`.)
fn assert_rewritten(logs: &Path, must_rewrite: &BTreeSet<(u64, usize)>) {
    for &(batch, run) in must_rewrite {
        let next = logs.join(format!("run-{:02}.err", run + 1));
        assert!(
            !skipped_in(&next).contains(&batch),
            "batch {batch} crashed before the broker's commit (run {run}), but the next run \
             skipped it"
        );
    }
}

/// What the topic held right after a crash that followed the broker's commit.
struct Snapshot {
    batch: u64,
    /// Last offset per partition at the crash.
    end: BTreeMap<i32, i64>,
    /// Largest count per word at the crash.
    max_count: BTreeMap<String, i64>,
}

/// What the topic holds now, taken when `batch` is committed to Kafka but not in the
/// commit log.
fn snapshot(broker: &Broker, topic: &str, batch: u64) -> Snapshot {
    let mut snapshot = Snapshot {
        batch,
        end: BTreeMap::new(),
        max_count: BTreeMap::new(),
    };
    for record in read_topic(&broker.bootstrap, topic, false) {
        let (word, n) = word_count(&record);
        let end = snapshot.end.entry(record.partition).or_insert(-1);
        *end = (*end).max(record.offset);
        let max = snapshot.max_count.entry(word).or_insert(0);
        *max = (*max).max(n);
    }
    snapshot
}

/// The query a crash schedule runs, and what it watches.
struct Crashes<'a> {
    /// The continuous job (no `available_now`).
    job: &'a Path,
    checkpoint: &'a Path,
    broker: &'a Broker,
    /// The output topic, whose batch marker is checked.
    output: &'a str,
    /// Where each run's standard error goes.
    logs: &'a Path,
    /// The crash points aimed at, in turn, twice each.
    points: &'a [&'a str],
}

/// What a crash schedule did, for the test's checks.
struct Schedule {
    killed: usize,
    aimed: usize,
    runs_that_committed: usize,
    /// Batches a run aborted inside the transaction, with that run's number: the next
    /// run must write them.
    must_rewrite: BTreeSet<(u64, usize)>,
    /// Batches the broker committed before the run ended (aimed or killed): a later
    /// run must skip them.
    committed_before_crash: BTreeSet<u64>,
}

/// Runs the job [`RANDOM_KILLS`] times killed with `kill -9` at a random instant and,
/// every fifth run, aborted at the next of `points` (each point twice), checking after
/// each aimed abort what the marker must say. `after_commit_crash(N)` is called when a
/// run ended after the broker committed batch N but before its commit log.
fn crash_schedule(
    crashes: &Crashes,
    rng: &mut XorShift,
    mut after_commit_crash: impl FnMut(u64),
) -> Schedule {
    let Crashes {
        job,
        checkpoint,
        broker,
        output,
        logs,
        points,
    } = *crashes;
    let aimed_runs = 2 * points.len();
    let mut schedule = Schedule {
        killed: 0,
        aimed: 0,
        runs_that_committed: 0,
        must_rewrite: BTreeSet::new(),
        committed_before_crash: BTreeSet::new(),
    };
    let commits = |c: &Path| log_ids(&c.join("commits")).last().copied();
    for run in 0..RANDOM_KILLS + aimed_runs {
        let stderr_path = logs.join(format!("run-{run:02}.err"));
        let before = commits(checkpoint);
        if run % 5 == 4 && schedule.aimed < aimed_runs {
            let point = points[schedule.aimed % points.len()];
            schedule.aimed += 1;
            let (status, stderr) = run_to_end(job, &[("MILLRACE_CRASH_AT", point)], &stderr_path);
            assert_crashed_at(status, &stderr, point);
            let batch = pending_batch(checkpoint).expect("a crash point leaves a batch pending");
            let marker = marker(broker, checkpoint, output);
            if AFTER_BROKER_COMMIT.contains(&point) {
                assert_eq!(
                    marker,
                    Some(batch as i64 + 1),
                    "{point}: the broker committed batch {batch} with its marker"
                );
            } else if BEFORE_BROKER_COMMIT.contains(&point) {
                // The run was inside batch N's transaction (so the marker it read did
                // not name N), and the transaction never committed.
                assert!(
                    marker.is_none_or(|m| m <= batch as i64),
                    "{point}: marker {marker:?} names batch {batch}, which was not committed"
                );
                schedule.must_rewrite.insert((batch, run));
            }
            // (after-offsets, after-state-commit: the batch may be a replay of one an
            // earlier, killed run had already committed to Kafka; nothing to assert.)
        } else {
            kill9_after_random_delay(job, &stderr_path, rng, (100, 1500), &format!("run {run}"));
            schedule.killed += 1;
        }
        if commits(checkpoint) > before {
            schedule.runs_that_committed += 1;
        }
        if let Some(batch) = pending_batch(checkpoint)
            && marker(broker, checkpoint, output) == Some(batch as i64 + 1)
        {
            schedule.committed_before_crash.insert(batch);
            after_commit_crash(batch);
        }
    }
    schedule
}

#[test]
fn kill_minus_nine_anywhere_keeps_the_counts_exact_and_never_rewrites_a_committed_batch() {
    let test_start = Instant::now();
    let seed = test_seed("kafka_end_to_end_crash");
    let mut rng = XorShift::new(seed);
    let broker = shared();
    let topics = Topics {
        input: unique("events"),
        output: unique("counts"),
    };
    create_topic(&broker.bootstrap, &topics.input, 3);
    create_topic(&broker.bootstrap, &topics.output, 3);
    let output = topics.output.as_str();
    let root = temp_dir();
    let checkpoint = root.path().join("ckpt");
    let logs = make_dir(root.path(), "logs");
    let continuous = write_job(
        root.path(),
        "continuous.sql",
        &job(&checkpoint, broker, &topics, ""),
    );
    let drain = write_job(
        root.path(),
        "drain.sql",
        &job(&checkpoint, broker, &topics, "available_now"),
    );

    let generator = Generator::start(
        broker.bootstrap.clone(),
        topics.input.clone(),
        rng.next_u64(),
    );
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let schedule = crash_schedule(
        &Crashes {
            job: &continuous,
            checkpoint: &checkpoint,
            broker,
            output,
            logs: &logs,
            points: &CRASH_POINTS,
        },
        &mut rng,
        // Whenever a run ended after the broker committed the pending batch, remember
        // what the topic held then.
        |batch| snapshots.push(snapshot(broker, output, batch)),
    );
    let Schedule {
        killed,
        aimed,
        runs_that_committed,
        must_rewrite,
        ..
    } = schedule;
    let expected = generator.stop();
    // The drain may have a backlog of many batches: a generous deadline, no timing asserted.
    Millrace::spawn(&drain, &[], &logs.join("drain.err")).wait_success(Duration::from_secs(600));
    assert_eq!(pending_batch(&checkpoint), None, "the drain ends committed");

    let records = read_topic(&broker.bootstrap, output, true);
    let mut per_word: BTreeMap<String, Vec<(i32, i64, i64)>> = BTreeMap::new();
    for record in &records {
        let (word, n) = word_count(record);
        per_word
            .entry(word)
            .or_default()
            .push((record.partition, record.offset, n));
    }

    // Every word's last record carries its final count; nothing else was written.
    let last: BTreeMap<String, i64> = per_word
        .iter()
        .map(|(word, seq)| (word.clone(), seq.last().expect("a record").2))
        .collect();
    assert_eq!(
        last, expected,
        "last count per word (read_committed) vs records produced"
    );

    // Exactly once: per word, one record per committed batch that saw the word, with
    // the count after that batch, in batch order, all in the word's partition.
    let expected_records = expected_outputs(broker, &topics.input, &checkpoint);
    for (word, seq) in &per_word {
        assert!(
            seq.iter().all(|(p, _, _)| *p == seq[0].0),
            "word {word} is spread over partitions"
        );
    }
    let actual_records: BTreeMap<String, Vec<i64>> = per_word
        .iter()
        .map(|(word, seq)| (word.clone(), seq.iter().map(|r| r.2).collect()))
        .collect();
    assert_eq!(
        actual_records, expected_records,
        "per word, the counts a read_committed reader sees vs one record per committed batch"
    );

    // After-commit crashes: nothing written after the crash repeats a count the topic
    // already held, and a later run logged the skip.
    let skipped = skipped_batches(&logs);
    for snapshot in &snapshots {
        for record in &records {
            let after = snapshot
                .end
                .get(&record.partition)
                .is_none_or(|end| record.offset > *end);
            let (word, n) = word_count(record);
            if after && let Some(max) = snapshot.max_count.get(&word) {
                assert!(
                    n > *max,
                    "batch {} was committed before a crash, yet {word}={n} was written again \
                     after it (the topic already had {word}={max})",
                    snapshot.batch
                );
            }
        }
        assert!(
            skipped.contains(&snapshot.batch),
            "batch {} was committed to Kafka before the crash, but no run reported skipping it",
            snapshot.batch
        );
    }
    assert_rewritten(&logs, &must_rewrite);

    // The marker ends at the newest batch that wrote records + 1.
    let last_with_output = log_ids(&checkpoint.join("commits"))
        .into_iter()
        .filter(|id| {
            read_json(&checkpoint.join("commits").join(id.to_string()))["numOutputRows"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
        .max()
        .expect("a batch with output");
    assert_eq!(
        marker(broker, &checkpoint, output),
        Some(last_with_output as i64 + 1)
    );
    assert!(
        runs_that_committed > 5,
        "only {runs_that_committed} runs committed a batch: the test exercised little"
    );
    eprintln!(
        "kafka_end_to_end_crash: {killed} kill -9 + {aimed} crash-point aborts, {runs_that_committed} \
         runs committed batches, {} batches, {} records read; {} kills after the broker's \
         commit checked, {} replays skipped as already committed, in {:?}",
        log_ids(&checkpoint.join("commits")).last().unwrap_or(&0) + 1,
        records.len(),
        snapshots.len(),
        skipped.len(),
        test_start.elapsed()
    );
}

/// The output records an exactly-once run must leave, per word in order: for every
/// committed batch (`commits/N`), the batch's input records are those between the
/// previous batch's end offsets and its own (`offsets/N`), and each word among them
/// gets one record with its running count after the batch.
fn expected_outputs(broker: &Broker, input: &str, checkpoint: &Path) -> BTreeMap<String, Vec<i64>> {
    let words: BTreeMap<(i32, i64), String> = read_topic(&broker.bootstrap, input, false)
        .into_iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_str(r.value.as_deref().expect("a value")).expect("JSON");
            let word = value["payload"].as_str().expect("payload").to_string();
            ((r.partition, r.offset), word)
        })
        .collect();
    let mut start: BTreeMap<i32, i64> = BTreeMap::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for batch in log_ids(&checkpoint.join("commits")) {
        let logged = read_json(&checkpoint.join("offsets").join(batch.to_string()));
        let ends = logged["sources"]["events"][input]
            .as_object()
            .unwrap_or_else(|| panic!("offsets/{batch} names no end offsets: {logged}"));
        let mut changed = BTreeSet::new();
        for (partition, end) in ends {
            let partition: i32 = partition.parse().expect("a partition number");
            let end = end.as_i64().expect("an end offset");
            let from = start.insert(partition, end).unwrap_or(0);
            for offset in from..end {
                let word = words
                    .get(&(partition, offset))
                    .unwrap_or_else(|| panic!("no input record at {partition}/{offset}"));
                *totals.entry(word.clone()).or_default() += 1;
                changed.insert(word.clone());
            }
        }
        for word in changed {
            expected
                .entry(word.clone())
                .or_default()
                .push(totals[&word]);
        }
    }
    expected
}

/// Lands JSON files of 1 to 20 rows (`{"id", "payload"}`, ids counting up from 0) in a
/// directory until stopped, the way producers must (hidden temporary, then rename).
struct FileLander {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<i64>,
}

impl FileLander {
    fn start(dir: PathBuf, seed: u64) -> FileLander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = XorShift::new(seed);
            let (mut next, mut file) = (0i64, 0u64);
            while !flag.load(Ordering::SeqCst) {
                let rows = rng.range(1, 20) as i64;
                write_atomic(
                    &dir,
                    &format!("{file:06}.json"),
                    json_rows(next..next + rows).as_bytes(),
                );
                next += rows;
                file += 1;
                std::thread::sleep(Duration::from_millis(rng.range(50, 250)));
            }
            next
        });
        FileLander { stop, thread }
    }

    /// Stops landing files; returns how many rows were written (ids `0..n`).
    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the file lander panicked")
    }
}

fn file_to_kafka_job(
    checkpoint: &Path,
    input: &Path,
    broker: &Broker,
    topic: &str,
    trigger: &str,
) -> String {
    format!(
        "CREATE UNBOUNDED EXTERNAL TABLE events (id BIGINT NOT NULL, payload VARCHAR)\n  \
         STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '5');\n\
         CREATE SINK filtered STORED AS KAFKA LOCATION '{topic}'\n  \
         OPTIONS ('bootstrap.servers' '{}', 'checkpoint' '{}', 'key' 'payload',\n  \
                  'timeout' '10 seconds'{})\n  \
         AS SELECT id, payload FROM events WHERE id % 7 <> 3;\n",
        input.display(),
        broker.bootstrap,
        checkpoint.display(),
        trigger_option(Some(trigger).filter(|t| !t.is_empty()))
    )
}

#[test]
fn kill_minus_nine_anywhere_on_the_file_to_kafka_path_writes_each_row_once() {
    let test_start = Instant::now();
    let seed = test_seed("kafka_end_to_end_crash_files");
    let mut rng = XorShift::new(seed);
    let broker = shared();
    let output = unique("filtered");
    create_topic(&broker.bootstrap, &output, 3);
    let root = temp_dir();
    let input = make_dir(root.path(), "input");
    let checkpoint = root.path().join("ckpt");
    let logs = make_dir(root.path(), "logs");
    let continuous = write_job(
        root.path(),
        "continuous.sql",
        &file_to_kafka_job(&checkpoint, &input, broker, &output, ""),
    );
    let drain = write_job(
        root.path(),
        "drain.sql",
        &file_to_kafka_job(&checkpoint, &input, broker, &output, "available_now"),
    );

    let lander = FileLander::start(input.clone(), rng.next_u64());
    let Schedule {
        killed,
        aimed,
        runs_that_committed,
        must_rewrite,
        committed_before_crash,
    } = crash_schedule(
        &Crashes {
            job: &continuous,
            checkpoint: &checkpoint,
            broker,
            output: &output,
            logs: &logs,
            points: &STATELESS_CRASH_POINTS,
        },
        &mut rng,
        |_| {},
    );
    let written = lander.stop();
    Millrace::spawn(&drain, &[], &logs.join("drain.err")).wait_success(Duration::from_secs(600));
    assert_eq!(pending_batch(&checkpoint), None, "the drain ends committed");

    // Exactly once, as a read_committed consumer sees the topic: every passing row once,
    // nothing else (a batch written twice would repeat its ids; an aborted attempt's
    // records would too if they were visible).
    let records = read_topic(&broker.bootstrap, &output, true);
    let ids: Vec<i64> = records
        .iter()
        .map(|record| {
            let value: serde_json::Value =
                serde_json::from_str(record.value.as_deref().expect("a value")).expect("JSON");
            let id = value["id"].as_i64().expect("id");
            assert_eq!(
                record.key.as_deref(),
                Some(format!("p{id}").as_str()),
                "key = payload column"
            );
            id
        })
        .collect();
    assert_exactly_once(
        "ids a read_committed consumer of the output sees",
        ids,
        passing_ids(written),
    );
    let skipped = skipped_batches(&logs);
    for batch in &committed_before_crash {
        assert!(
            skipped.contains(batch),
            "batch {batch} was committed to Kafka before the crash, but no run reported skipping it"
        );
    }
    assert_rewritten(&logs, &must_rewrite);
    assert!(
        runs_that_committed > 5,
        "only {runs_that_committed} runs committed a batch: the test exercised little"
    );
    eprintln!(
        "kafka_end_to_end_crash (files): {killed} kill -9 + {aimed} crash-point aborts, \
         {runs_that_committed} runs committed batches, {} batches, {written} rows landed, {} \
         records read; {} kills after the broker's commit checked, in {:?}",
        log_ids(&checkpoint.join("commits")).last().unwrap_or(&0) + 1,
        records.len(),
        committed_before_crash.len(),
        test_start.elapsed()
    );
}
