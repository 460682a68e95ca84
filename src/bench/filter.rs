//! The stateless workload of `millrace bench` (`--workload filter`, the default): files
//! (JSON lines or CSV) → filter/project → Parquet, the cost of moving rows through the
//! engine without state.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use chrono::{NaiveDate, TimeDelta};
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

/// Reading `n` of the sensor-readings workloads (file and Kafka alike), so that every
/// benchmark's input is the same data whatever carries it.
///
/// `sensor` is `s{n % 97}`, 10 readings per second of event time starting at
/// 2026-01-01 00:00:00 (in order, so a watermark drops nothing), `temp` cycles through
/// 15.0–34.9 and `pressure` through 0–99: `WHERE pressure < 50` keeps exactly the
/// readings with `n % 100 < 50`.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReading {
    /// The sensor's name, one of 97.
    pub sensor: String,
    /// Event time, `YYYY-MM-DDTHH:MM:SS`.
    pub ts: String,
    /// Temperature.
    pub temp: f64,
    /// Pressure, `n % 100`.
    pub pressure: f64,
}

impl SensorReading {
    /// Reading number `n` (see the type's doc).
    pub fn new(n: usize) -> Self {
        let start = NaiveDate::from_ymd_opt(2026, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("a valid date");
        let ts = start + TimeDelta::seconds((n / 10) as i64);
        SensorReading {
            sensor: format!("s{}", n % 97),
            ts: ts.format("%Y-%m-%dT%H:%M:%S").to_string(),
            temp: 15.0 + (n % 200) as f64 / 10.0,
            pressure: (n % 100) as f64,
        }
    }

    /// The reading as one JSON object (a JSON-lines line or a Kafka record value).
    pub fn json(&self) -> String {
        format!(
            r#"{{"sensor":"{}","ts":"{}","temp":{},"pressure":{}}}"#,
            self.sensor, self.ts, self.temp, self.pressure
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
            let reading = SensorReading::new(file * rows_per_file + row);
            let _ = match format {
                BenchFormat::Json => writeln!(text, "{}", reading.json()),
                BenchFormat::Csv => writeln!(
                    text,
                    "{},{},{},{}",
                    reading.sensor, reading.ts, reading.temp, reading.pressure
                ),
            };
        }
        let path = input.join(format!("part-{file:05}.{}", format.name().to_lowercase()));
        super::write_input_file(&path, &text)?;
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
