//! Criterion benchmark of files → filter → Kafka sink through the whole engine:
//!
//! - `kafka_sink/exactly_once`: one transaction per batch, with the batch marker;
//! - `kafka_sink/at_least_once`: idempotent producer, flushed per batch.
//!
//! Input: `MILLRACE_BENCH_ROWS` CSV sensor readings (default 50 000) in 16 files, 4 per
//! batch; the query keeps about half (`WHERE pressure < 50`) and writes them as JSON
//! records keyed by sensor to a fresh 3-partition topic each iteration. Throughput is
//! in input rows per second. The Apache Kafka broker is started on free loopback ports
//! through `scripts/kafka-broker.sh` (installed on first use).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use millrace::bench::{BenchFormat, write_input};
use millrace::{Session, SessionSettings, StatementResult};
use tokio::runtime::Runtime;

/// The allocator of the `millrace` binary (see `src/main.rs`), so that these figures
/// match the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "../tests/common/kafka.rs"]
mod kafka;

use kafka::Broker;

const FILES: usize = 16;
const FILES_PER_TRIGGER: usize = 4;
const DEFAULT_ROWS: usize = 50_000;

fn rows() -> usize {
    std::env::var("MILLRACE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .filter(|&rows| rows > 0)
        .unwrap_or(DEFAULT_ROWS)
}

/// Runs the query once to its end (`available_now`) into topic `topic`; returns the
/// rows written.
fn run(runtime: &Runtime, dir: &Path, broker: &Broker, delivery: &str, topic: &str) -> u64 {
    let checkpoint = dir.join(format!("checkpoint-{topic}"));
    let script = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR, ts TIMESTAMP, temp DOUBLE, pressure DOUBLE) \
         STORED AS CSV LOCATION '{}' OPTIONS ('max_files_per_trigger' '{FILES_PER_TRIGGER}');
         CREATE SINK bench STORED AS KAFKA LOCATION '{topic}' \
         OPTIONS ('bootstrap.servers' '{}', 'checkpoint' '{}', 'trigger' 'available_now', \
                  'delivery' '{delivery}', 'key' 'sensor', 'create_topic' 'true', \
                  'create_topic_partitions' '3') \
         AS SELECT sensor, ts, temp * 1.8 + 32 AS temp_f FROM readings WHERE pressure < 50",
        dir.join("in").display(),
        broker.bootstrap,
        checkpoint.display()
    );
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let results = runtime
        .block_on(session.execute_script(&script))
        .expect("the benchmark query starts");
    let Some(StatementResult::QueryStarted(query)) = results.last() else {
        panic!("the benchmark script did not start a query");
    };
    query
        .await_termination_blocking()
        .expect("the benchmark query runs");
    let _ = std::fs::remove_dir_all(&checkpoint);
    query
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows)
        .sum()
}

fn bench_kafka_sink(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let rows = write_input(dir.path(), BenchFormat::Csv, FILES, rows().div_ceil(FILES))
        .expect("write input");
    let mut group = c.benchmark_group("kafka_sink");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(rows));
    let topics = AtomicU64::new(0);
    let broker = kafka::shared();
    for delivery in ["exactly_once", "at_least_once"] {
        group.bench_function(BenchmarkId::new(delivery, "kafka"), |b| {
            b.iter_batched(
                || format!("bench-{}", topics.fetch_add(1, Ordering::SeqCst)),
                |topic| {
                    let written = run(&runtime, dir.path(), broker, delivery, &topic);
                    assert!(written > 0, "the filter kept no rows");
                    written
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench_kafka_sink);
criterion_main!(benches);
