//! Criterion benchmark of Kafka → Kafka through the whole engine, on the Apache Kafka
//! broker of `scripts/kafka-broker.sh` (started on free loopback ports):
//!
//! - `kafka_pipeline/filter/{exactly_once, at_least_once}`: `WHERE
//!   pressure < 50` (half the records) with a projection, to a topic keyed by sensor;
//! - `kafka_pipeline/window/{...}`: `count(*)` and `avg(temp)` per sensor and 1-minute
//!   tumbling event-time window, watermark 10 seconds, append mode.
//!
//! The queries are those of `millrace bench --workload kafka-filter|kafka-window`
//! (`src/bench/kafka.rs`). Input: `MILLRACE_BENCH_ROWS` sensor readings (default
//! 50 000) as JSON values, produced once, outside the timed loop, into a
//! 4-partition topic; `max_offsets_per_trigger` is a tenth of the
//! input, so a run is 10 batches (11 for the window: the final watermark's no-data
//! batch). Every iteration runs the query with `trigger` `available_now`, a fresh
//! checkpoint and a fresh output topic; throughput is in input records per second.
//! Only the query is timed: after it, the output topic is read back (untimed) and its
//! records must be as many as the sink reported, the filter's exactly the records it
//! keeps, the window's counts at most the input.
//!
//! `cargo bench --bench kafka_pipeline` measures (release). Under `cargo test --benches`
//! each case runs once over 2 000 records in 2 batches (a batch costs a few hundred ms
//! in a debug build, whatever its size).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use millrace::bench::{KafkaRun, KafkaWorkload, produce_readings, rows_from_env};
use millrace::sink::kafka::KafkaDelivery;
use tokio::runtime::Runtime;

/// The allocator of the `millrace` binary (see `src/main.rs`), so that these figures
/// match the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "../tests/common/kafka.rs"]
mod kafka;
#[allow(dead_code)]
#[path = "../tests/common/topic.rs"]
mod topic;

use kafka::Broker;

const INPUT: &str = "readings";
const PARTITIONS: i32 = 4;
const DEFAULT_ROWS: usize = 50_000;
const TEST_MODE_ROWS: usize = 2_000;

/// Checks the output topic against the run's report: as many records as the sink
/// reported writing, each a JSON object; the filter's exactly the records it keeps;
/// the window's counts positive and summing to at most the input.
fn check_output(broker: &Broker, workload: KafkaWorkload, topic: &str, reported: u64, rows: u64) {
    // Uncommitted reads see the same records here: a clean run aborts nothing.
    let records = topic::read_topic(&broker.bootstrap, topic, false);
    assert_eq!(
        records.len() as u64,
        reported,
        "{}: records in '{topic}' against rows the sink reported",
        workload.name()
    );
    assert!(reported > 0, "{}: no output", workload.name());
    if let Some(expected) = workload.expected_output(rows) {
        assert_eq!(reported, expected, "{}: records kept", workload.name());
    }
    let mut counted = 0;
    for record in &records {
        let value: serde_json::Value = serde_json::from_str(
            record
                .value
                .as_deref()
                .unwrap_or_else(|| panic!("a record without value in '{topic}'")),
        )
        .unwrap_or_else(|e| panic!("a record of '{topic}' is not JSON: {e}"));
        assert!(value["sensor"].is_string(), "no sensor in {value}");
        if workload == KafkaWorkload::Window {
            let n = value["n"].as_u64().unwrap_or(0);
            assert!(n > 0, "a window without readings: {value}");
            counted += n;
        }
    }
    assert!(
        counted <= rows,
        "windows count {counted} readings of {rows}"
    );
}

fn bench_kafka_pipeline(c: &mut Criterion) {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rows, batches) = if measuring {
        (
            rows_from_env("MILLRACE_BENCH_ROWS", DEFAULT_ROWS) as u64,
            10,
        )
    } else {
        (TEST_MODE_ROWS as u64, 2)
    };
    let runtime = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut group = c.benchmark_group("kafka_pipeline");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(rows));
    let runs = AtomicU64::new(0);
    let broker = kafka::shared();
    produce_readings(&broker.bootstrap, INPUT, PARTITIONS, rows).expect("produce the input");
    for delivery in [KafkaDelivery::ExactlyOnce, KafkaDelivery::AtLeastOnce] {
        let delivery_name = millrace::bench::kafka::delivery_option(delivery);
        for workload in [KafkaWorkload::Filter, KafkaWorkload::Window] {
            let id = BenchmarkId::new(workload.name().trim_start_matches("kafka-"), delivery_name);
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iterations {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        let output = format!("out-{n}");
                        let checkpoint = dir.path().join(format!("checkpoint-{n}"));
                        let run = KafkaRun {
                            bootstrap: &broker.bootstrap,
                            workload,
                            input_topic: INPUT,
                            output_topic: &output,
                            partitions: PARTITIONS,
                            delivery,
                            max_offsets_per_trigger: rows.div_ceil(batches),
                            checkpoint: &checkpoint,
                        };
                        let started = Instant::now();
                        let report = run.run(&runtime, rows).expect("the benchmark query");
                        timed += started.elapsed();
                        check_output(broker, workload, &output, report.output_rows, rows);
                        let _ = std::fs::remove_dir_all(&checkpoint);
                    }
                    timed
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_kafka_pipeline);
criterion_main!(benches);
