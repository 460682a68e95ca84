//! The stateless workload of `millrace bench` (`--workload filter`, the default): files
//! (JSON lines or CSV) → filter/project → Parquet, the cost of moving rows through the
//! engine without state.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use tokio::runtime::Runtime;

use super::{BenchReport, run_to_end};
use crate::error::{Error, Result};

/// Input file format of a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchFormat {
    /// JSON lines.
    Json,
    /// CSV without header.
    Csv,
}

impl BenchFormat {
    /// The `STORED AS` name, also used in report labels.
    pub fn name(self) -> &'static str {
        match self {
            BenchFormat::Json => "JSON",
            BenchFormat::Csv => "CSV",
        }
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
    run_to_end(runtime, &script, format!("filter {}", format.name()), rows)
}
