//! The whole-pipeline benchmark behind `millrace bench`: files (JSON lines or CSV) →
//! filter/project → Parquet, through the real engine, reporting rows/s and per-batch
//! latency from the queries' own progress reports.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Instant;

use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::session::{Session, SessionSettings, StatementResult};

/// Input file format of a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchFormat {
    /// JSON lines.
    Json,
    /// CSV without header.
    Csv,
}

impl BenchFormat {
    fn name(self) -> &'static str {
        match self {
            BenchFormat::Json => "JSON",
            BenchFormat::Csv => "CSV",
        }
    }
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Input format.
    pub format: BenchFormat,
    /// Input rows.
    pub rows: u64,
    /// Rows that passed the filter and were written.
    pub output_rows: u64,
    /// Micro-batches run.
    pub batches: usize,
    /// Wall-clock seconds from query start to its end.
    pub seconds: f64,
    /// Median, 95th percentile and maximum `triggerExecution` per batch, in ms.
    pub latency_ms: (u64, u64, u64),
}

impl BenchReport {
    /// Input rows per second of wall-clock time.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<5} {:>10} rows in {:>3} batches: {:>8.3} s, {:>12.0} rows/s; batch latency p50 {} ms, p95 {} ms, max {} ms ({} rows out)",
            self.format.name(),
            self.rows,
            self.batches,
            self.seconds,
            self.rows_per_second(),
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.output_rows
        )
    }
}

/// Writes `files` input files of `rows_per_file` sensor readings into `dir/in/`.
pub fn write_input(
    dir: &Path,
    format: BenchFormat,
    files: usize,
    rows_per_file: usize,
) -> Result<u64> {
    let input = dir.join("in");
    fs::create_dir_all(&input).map_err(Error::io(&input))?;
    let mut text = String::new();
    for file in 0..files {
        text.clear();
        for row in 0..rows_per_file {
            let n = file * rows_per_file + row;
            let (sensor, second) = (n % 97, n / 10);
            let (temp, pressure) = (15.0 + (n % 200) as f64 / 10.0, (n % 100) as f64);
            let ts = format!(
                "2026-01-01T{:02}:{:02}:{:02}",
                (second / 3600) % 24,
                (second / 60) % 60,
                second % 60
            );
            let _ = match format {
                BenchFormat::Json => writeln!(
                    text,
                    r#"{{"sensor":"s{sensor}","ts":"{ts}","temp":{temp},"pressure":{pressure}}}"#
                ),
                BenchFormat::Csv => writeln!(text, "s{sensor},{ts},{temp},{pressure}"),
            };
        }
        let path = input.join(format!("part-{file:05}.{}", format.name().to_lowercase()));
        fs::write(&path, &text).map_err(Error::io(&path))?;
    }
    Ok((files * rows_per_file) as u64)
}

/// Runs the pipeline over the input written by [`write_input`] in `dir`.
pub fn run_pipeline(
    runtime: &Runtime,
    dir: &Path,
    format: BenchFormat,
    files_per_trigger: usize,
    rows: u64,
) -> Result<BenchReport> {
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let (input, output, checkpoint) = (dir.join("in"), dir.join("out"), dir.join("checkpoint"));
    let script = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR, ts TIMESTAMP, temp DOUBLE, pressure DOUBLE) \
         STORED AS {} LOCATION '{}' OPTIONS ('max_files_per_trigger' '{files_per_trigger}');
         CREATE SINK bench STORED AS PARQUET LOCATION '{}' \
         OPTIONS ('checkpoint' '{}', 'trigger' 'available_now') \
         AS SELECT sensor, ts, temp * 1.8 + 32 AS temp_f, upper(sensor) AS id FROM readings WHERE pressure < 50",
        format.name(),
        input.display(),
        output.display(),
        checkpoint.display()
    );
    let started = Instant::now();
    let results = runtime.block_on(session.execute_script(&script))?;
    let Some(StatementResult::QueryStarted(query)) = results.last() else {
        return Err(Error::Sql(
            "the benchmark script did not start a query".into(),
        ));
    };
    query.await_termination_blocking()?;
    let seconds = started.elapsed().as_secs_f64();
    let progress = query.recent_progress();
    let mut latencies: Vec<u64> = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(BenchReport {
        format,
        rows,
        output_rows: progress.iter().map(|p| p.sink.num_output_rows).sum(),
        batches: progress.len(),
        seconds,
        latency_ms: (pick(0.5), pick(0.95), pick(1.0)),
    })
}
