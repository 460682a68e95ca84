//! Criterion benchmarks of the stateful workloads of `millrace bench`, through the real
//! engine (`millrace::bench::run_aggregation`): CSV files → streaming aggregation →
//! sink, with checkpoint, offset and commit logs and the state store.
//!
//! - `aggregation/tumbling`: `count(*), sum(x)` per key and 10-second tumbling window,
//!   1,000 keys, watermark 5 s, append mode to Parquet;
//! - `aggregation/groupby`: `count(*), sum(x)` per key with every key distinct, update
//!   mode to a `NOOP` sink (it drops the rows, so the aggregation is what is measured).
//!
//! Every iteration starts from an empty checkpoint and output; the input is written
//! once per workload, outside the timed loop. Throughput is in input rows per second.
//! The default size (20 000 rows, 4 files, 2 per batch) keeps `cargo test --benches`,
//! which runs each benchmark once in a debug build, to about a second; for figures,
//! `MILLRACE_BENCH_AGG_ROWS=1000000 cargo bench --bench aggregation`, or
//! `millrace bench --workload tumbling|groupby` (see docs/benchmarks.md).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use millrace::bench::{AggregationWorkload, run_aggregation, write_keyed_input};
use tokio::runtime::Runtime;

/// The allocator of the `millrace` binary (see `src/main.rs`), so that these figures
/// match the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Input files per workload.
const FILES: usize = 4;
/// Files per micro-batch: 2 batches (plus, for tumbling, the final no-data batch).
const FILES_PER_TRIGGER: usize = 2;
/// Default input rows per workload.
const DEFAULT_ROWS: usize = 20_000;
/// Keys of the tumbling workload (groupby uses one key per row).
const TUMBLING_KEYS: usize = 1_000;

fn rows() -> usize {
    millrace::bench::rows_from_env("MILLRACE_BENCH_AGG_ROWS", DEFAULT_ROWS)
}

/// Removes the previous iteration's output and checkpoint, keeping `dir/in`.
fn reset(dir: &Path) {
    millrace::bench::reset_run_dirs(dir).expect("remove the previous run's directories");
}

fn bench_aggregation(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let rows_per_file = rows().div_ceil(FILES);
    let mut group = c.benchmark_group("aggregation");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    for (workload, name, keys) in [
        (AggregationWorkload::Tumbling, "tumbling", TUMBLING_KEYS),
        (
            AggregationWorkload::Groupby,
            "groupby",
            rows_per_file * FILES,
        ),
    ] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let rows =
            write_keyed_input(dir.path(), FILES, rows_per_file, keys).expect("write the input");
        group.throughput(Throughput::Elements(rows));
        group.bench_function(BenchmarkId::new(name, format!("{keys}_keys")), |b| {
            b.iter_batched(
                || reset(dir.path()),
                |()| {
                    let report =
                        run_aggregation(&runtime, dir.path(), workload, FILES_PER_TRIGGER, rows)
                            .expect("aggregation run");
                    assert!(report.output_rows > 0, "{name}: no rows out");
                    black_box(report)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench_aggregation);
criterion_main!(benches);
