//! Criterion benchmarks of the whole pipeline and of file decoding.
//!
//! - `pipeline/<format>`: files (JSON lines, CSV) → filter/project → Parquet through the
//!   real engine (`millrace::bench::run_pipeline`): checkpoint, offset and commit logs,
//!   DataFusion, file sink. Every iteration starts from an empty output and checkpoint
//!   directory; the input is written once per format, outside the timed loop.
//! - `decode/<format>`: `FileFormat::read_file` on one input file, nothing else.
//!
//! Throughput is reported in input rows per second. Run with `cargo bench` (release);
//! `MILLRACE_BENCH_ROWS` changes the number of input rows per format of the pipeline
//! group (default 200 000).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use millrace::bench::{BenchFormat, run_pipeline, write_input};
use millrace::source::format::{Encoding, FileFormat, MalformedMode};
use tokio::runtime::Runtime;

/// The allocator of the `millrace` binary (see `src/main.rs`), so that these figures
/// match the command's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Input files per format for the pipeline group.
const FILES: usize = 16;
/// Files per micro-batch (`max_files_per_trigger`): 4 batches with the default sizes.
const FILES_PER_TRIGGER: usize = 4;
/// Default input rows per format for the pipeline group.
const DEFAULT_ROWS: usize = 200_000;
/// Rows of the single file decoded by the decode group.
const DECODE_ROWS: usize = 50_000;

const FORMATS: [(BenchFormat, &str); 2] = [(BenchFormat::Json, "json"), (BenchFormat::Csv, "csv")];

fn pipeline_rows() -> usize {
    millrace::bench::rows_from_env("MILLRACE_BENCH_ROWS", DEFAULT_ROWS)
}

/// Removes the previous iteration's output and checkpoint, keeping `dir/in`.
fn reset(dir: &Path) {
    millrace::bench::reset_run_dirs(dir).expect("remove the previous run's directories");
}

fn bench_pipeline(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let rows_per_file = pipeline_rows().div_ceil(FILES);
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    for (format, name) in FORMATS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let rows = write_input(dir.path(), format, FILES, rows_per_file).expect("write input");
        group.throughput(Throughput::Elements(rows));
        group.bench_function(BenchmarkId::new("files_to_parquet", name), |b| {
            b.iter_batched(
                || reset(dir.path()),
                |()| {
                    let report =
                        run_pipeline(&runtime, dir.path(), format, FILES_PER_TRIGGER, rows)
                            .expect("pipeline run");
                    assert!(report.output_rows > 0, "the filter kept no rows");
                    black_box(report)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// The schema `run_pipeline` declares (`sensor VARCHAR, ts TIMESTAMP, temp DOUBLE,
/// pressure DOUBLE`), with the types DataFusion gives those SQL types.
fn readings_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Utf8View, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("temp", DataType::Float64, true),
        Field::new("pressure", DataType::Float64, true),
    ]))
}

fn bench_decode(c: &mut Criterion) {
    let schema = readings_schema();
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(DECODE_ROWS as u64));
    for (format, name) in FORMATS {
        let dir = tempfile::tempdir().expect("temporary directory");
        write_input(dir.path(), format, 1, DECODE_ROWS).expect("write input");
        let path = dir.path().join("in").join(format!("part-00000.{name}"));
        let file_format = FileFormat {
            encoding: match format {
                BenchFormat::Json => Encoding::Json,
                BenchFormat::Csv => Encoding::Csv {
                    has_header: false,
                    delimiter: b',',
                },
            },
            mode: MalformedMode::Permissive,
        };
        let decoded = file_format.read_file(&path, &schema).expect("decode");
        assert_eq!(decoded.batch.num_rows(), DECODE_ROWS, "{name}: rows lost");
        group.bench_function(BenchmarkId::new("read_file", name), |b| {
            b.iter(|| black_box(file_format.read_file(&path, &schema).expect("decode")));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pipeline, bench_decode);
criterion_main!(benches);
