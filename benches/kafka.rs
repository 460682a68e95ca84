//! Criterion benchmark of the Kafka source through the whole engine, on the Apache
//! Kafka broker of `scripts/kafka-broker.sh` started on free loopback ports:
//!
//! - `kafka_to_parquet/json`: sensor readings as JSON values in a 4-partition topic →
//!   `WHERE pressure < 50` (half the rows) with a projection → Parquet, `trigger`
//!   `available_now`, `max_offsets_per_trigger` 50 000;
//! - `kafka_to_parquet/raw`: the same records without parsing (`format` `raw`,
//!   `WHERE offset % 2 = 0`), which is what reading costs on its own.
//!
//! Every iteration starts from an empty checkpoint and output directory and reads the
//! whole topic; the records are produced once, outside the timed loop. Throughput is
//! in records per second. `cargo bench --bench kafka` (release) measures;
//! `MILLRACE_BENCH_ROWS` sets the records (default 200 000). Under `cargo test
//! --benches` each benchmark runs once over 5 000 records.

use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use millrace::{Session, SessionSettings, StatementResult};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::runtime::Runtime;

/// The allocator of the `millrace` binary (see `src/main.rs`), so that these figures
/// match the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "readings";
const PARTITIONS: i32 = 4;
const DEFAULT_ROWS: usize = 200_000;
const TEST_MODE_ROWS: usize = 5_000;

#[allow(dead_code)]
#[path = "../tests/common/kafka.rs"]
mod kafka;

/// Creates the topic and produces `rows` JSON readings round-robin over its partitions.
fn produce(bootstrap: &str, rows: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in futures::executor::block_on(admin.create_topics([&topic], &options))
        .expect("create the topic")
    {
        result.expect("create the topic");
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(rows);
    for i in 0..rows {
        let value = format!(
            r#"{{"sensor": "pump-{}", "ts": "2026-01-01T00:{:02}:{:02}", "temp": {}.5, "pressure": {}}}"#,
            i % 16,
            (i / 60) % 60,
            i % 60,
            15 + i % 20,
            i % 100
        );
        let key = format!("pump-{}", i % 16);
        let record = FutureRecord::to(TOPIC)
            .partition(i as i32 % PARTITIONS)
            .key(&key)
            .payload(&value);
        deliveries.push(
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("queue record {i}: {e}")),
        );
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush the producer");
    for delivery in deliveries {
        futures::executor::block_on(delivery)
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("deliver a record: {e}"));
    }
}

/// Runs one whole read of the topic into Parquet; returns the rows written.
fn run(runtime: &Runtime, bootstrap: &str, dir: &Path, raw: bool) -> u64 {
    let (out, checkpoint) = (dir.join("out"), dir.join("checkpoint"));
    for path in [&out, &checkpoint] {
        if path.exists() {
            std::fs::remove_dir_all(path).expect("remove the previous run");
        }
    }
    let (table, select) = if raw {
        (
            format!(
                "CREATE OR REPLACE UNBOUNDED EXTERNAL TABLE readings STORED AS KAFKA \
                 LOCATION '{TOPIC}' OPTIONS ('bootstrap.servers' '{bootstrap}', \
                 'starting_offsets' 'earliest', 'max_offsets_per_trigger' '50000')"
            ),
            "SELECT partition, \"offset\", value FROM readings WHERE \"offset\" % 2 = 0",
        )
    } else {
        (
            format!(
                "CREATE OR REPLACE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR, \
                 ts TIMESTAMP, temp DOUBLE, pressure DOUBLE) STORED AS KAFKA \
                 LOCATION '{TOPIC}' OPTIONS ('bootstrap.servers' '{bootstrap}', \
                 'format' 'json', 'starting_offsets' 'earliest', \
                 'max_offsets_per_trigger' '50000')"
            ),
            "SELECT sensor, ts, temp * 1.8 + 32 AS temp_f, partition FROM readings \
             WHERE pressure < 50",
        )
    };
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let script = format!(
        "{table};
         CREATE SINK bench STORED AS PARQUET LOCATION '{}'
         OPTIONS ('checkpoint' '{}', 'trigger' 'available_now') AS {select}",
        out.display(),
        checkpoint.display()
    );
    let results = runtime
        .block_on(session.execute_script(&script))
        .expect("start the query");
    let Some(StatementResult::QueryStarted(query)) = results.last() else {
        panic!("the benchmark script did not start a query");
    };
    query.await_termination_blocking().expect("the query");
    query
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows)
        .sum()
}

fn bench_kafka(c: &mut Criterion) {
    let broker = kafka::shared();
    let measuring = std::env::args().any(|a| a == "--bench");
    let rows = if measuring {
        std::env::var("MILLRACE_BENCH_ROWS")
            .ok()
            .and_then(|v| v.trim().replace('_', "").parse().ok())
            .filter(|&r| r > 0)
            .unwrap_or(DEFAULT_ROWS)
    } else {
        TEST_MODE_ROWS
    };
    produce(&broker.bootstrap, rows);
    let runtime = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut group = c.benchmark_group("kafka_to_parquet");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(rows as u64));
    // Rows each query keeps: pressure < 50, or even offsets in each partition.
    let kept_json = (0..rows).filter(|i| i % 100 < 50).count() as u64;
    let kept_raw: u64 = (0..PARTITIONS as usize)
        .map(|p| (rows + PARTITIONS as usize - 1 - p) / PARTITIONS as usize)
        .map(|size| size.div_ceil(2) as u64)
        .sum();
    for (name, raw, kept) in [("json", false, kept_json), ("raw", true, kept_raw)] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let written = run(&runtime, &broker.bootstrap, dir.path(), raw);
                    assert_eq!(written, kept, "{name}: rows written");
                    written
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench_kafka);
criterion_main!(benches);
