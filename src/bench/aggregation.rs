//! The stateful workloads of `millrace bench`: streaming aggregations whose cost grows
//! with their state, not only with their input.
//!
//! Both read CSV files of `key BIGINT, ts TIMESTAMP, x BIGINT` where row `n` has
//! `key = n % keys`, `ts = 2026-01-01 00:00:00 + n ms` (1,000 rows per second of event
//! time, in order) and `x = n % 100`:
//!
//! - [`AggregationWorkload::Tumbling`]: `count(*), sum(x)` per key and 10-second
//!   tumbling window, `WATERMARK ... - INTERVAL '5' SECOND`, append mode to Parquet.
//!   Each window is emitted once, when the watermark passes it, and leaves the state,
//!   so the state stays near `keys × (windows per batch + 1)` groups.
//! - [`AggregationWorkload::Groupby`]: `count(*), sum(x)` per key with no window, update
//!   mode to a `NOOP` sink; every key stays in the state for good. The sink drops the
//!   rows because any real one would be measured too: a memory sink's upsert rescans
//!   its whole table every batch (5–60 % more batch time at 1,000,000 keys, see
//!   docs/benchmarks.md), and file sinks take only append mode.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use chrono::{NaiveDate, TimeDelta};
use tokio::runtime::Runtime;

use super::{BenchReport, Workload, run_to_end};
use crate::error::{Error, Result};

/// A stateful workload (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregationWorkload {
    /// Tumbling event-time windows, watermark, append mode to Parquet.
    Tumbling,
    /// A plain `GROUP BY key`, update mode to a `NOOP` sink.
    Groupby,
}

impl AggregationWorkload {
    /// The stateful workload a [`Workload`] names, if it is one.
    pub fn of(workload: Workload) -> Option<Self> {
        match workload {
            Workload::Filter
            | Workload::KafkaFilter
            | Workload::KafkaWindow
            | Workload::KafkaLatency
            | Workload::Join
            | Workload::JoinOuter => None,
            Workload::Tumbling => Some(AggregationWorkload::Tumbling),
            Workload::Groupby => Some(AggregationWorkload::Groupby),
        }
    }

    /// Distinct keys when none are asked for: 1,000 keys make many small windows;
    /// 1,000,000 keys make a large state that every batch touches.
    pub fn default_keys(self) -> usize {
        match self {
            AggregationWorkload::Tumbling => 1_000,
            AggregationWorkload::Groupby => 1_000_000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AggregationWorkload::Tumbling => "tumbling",
            AggregationWorkload::Groupby => "groupby",
        }
    }
}

/// Writes `files` CSV files of `rows_per_file` rows over `keys` distinct keys into
/// `dir/in/` (see the module doc for the rows); returns the rows written.
pub fn write_keyed_input(
    dir: &Path,
    files: usize,
    rows_per_file: usize,
    keys: usize,
) -> Result<u64> {
    if keys == 0 {
        return Err(Error::Option("the benchmark needs at least one key".into()));
    }
    let input = dir.join("in");
    fs::create_dir_all(&input).map_err(Error::io(&input))?;
    let start = NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    let mut text = String::new();
    for file in 0..files {
        text.clear();
        for row in 0..rows_per_file {
            let n = file * rows_per_file + row;
            let ts = start + TimeDelta::milliseconds(n as i64);
            let _ = writeln!(
                text,
                "{},{},{}",
                n % keys,
                ts.format("%Y-%m-%dT%H:%M:%S%.3f"),
                n % 100
            );
        }
        let path = input.join(format!("part-{file:05}.csv"));
        super::write_input_file(&path, &text)?;
    }
    Ok((files * rows_per_file) as u64)
}

/// Runs `workload` over the input written by [`write_keyed_input`] in `dir`, with its
/// checkpoint (and, for `tumbling`, its Parquet output) under `dir`.
pub fn run_aggregation(
    runtime: &Runtime,
    dir: &Path,
    workload: AggregationWorkload,
    files_per_trigger: usize,
    rows: u64,
) -> Result<BenchReport> {
    let (input, output, checkpoint) = (dir.join("in"), dir.join("out"), dir.join("checkpoint"));
    let watermark = match workload {
        AggregationWorkload::Tumbling => ", WATERMARK FOR ts AS ts - INTERVAL '5' SECOND",
        AggregationWorkload::Groupby => "",
    };
    let table = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE events (key BIGINT, ts TIMESTAMP, x BIGINT{watermark}) \
         STORED AS CSV LOCATION '{}' OPTIONS ('max_files_per_trigger' '{files_per_trigger}')",
        input.display()
    );
    let sink = match workload {
        AggregationWorkload::Tumbling => format!(
            "CREATE SINK bench STORED AS PARQUET LOCATION '{}' \
             OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'append') \
             AS SELECT key, window(ts, '10 seconds') AS window, count(*) AS n, sum(x) AS total \
             FROM events GROUP BY key, window(ts, '10 seconds')",
            output.display(),
            checkpoint.display()
        ),
        AggregationWorkload::Groupby => format!(
            "CREATE SINK bench STORED AS NOOP \
             OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'update') \
             AS SELECT key, count(*) AS n, sum(x) AS total FROM events GROUP BY key",
            checkpoint.display()
        ),
    };
    run_to_end(
        runtime,
        &format!("{table};\n{sink}"),
        format!("{} CSV", workload.name()),
        rows,
    )
}
