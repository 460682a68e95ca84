//! The stream-stream join workloads of `millrace bench`: impressions joined with
//! clicks, the click within 10 minutes after the impression (Spark's guide example).
//!
//! Two JSON-lines inputs of `rows` rows each, written in event-time order, 100
//! impressions per second of event time (`2026-01-01 00:00:00` + `n × 10 ms`):
//! impression `n` has id `n`; click row `n` clicks impression `n` `n mod 600` seconds
//! after it when `n mod 10 = 0` (10 % of the impressions), and otherwise names no
//! impression (id `-n`). Both tables have a 1-minute watermark delay. The query goes
//! to a `NOOP` sink, so the figures are the join's (sources, state, checkpoint), not a
//! sink's:
//!
//! - [`JoinWorkload::Inner`]: `impressions JOIN clicks ON c.impression = i.id AND c.ts
//!   BETWEEN i.ts AND i.ts + INTERVAL '10' MINUTE`: one row per click that clicks;
//! - [`JoinWorkload::LeftOuter`]: the same as `LEFT JOIN`: also a NULL-padded row per
//!   impression without a click, when the watermark passes it plus 10 minutes.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use chrono::{NaiveDate, TimeDelta};
use tokio::runtime::Runtime;

use super::{BenchReport, Workload, run_to_end};
use crate::error::{Error, Result};

/// A join workload (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinWorkload {
    /// Inner join.
    Inner,
    /// Left outer join.
    LeftOuter,
}

impl JoinWorkload {
    /// The join workload a [`Workload`] names, if it is one.
    pub fn of(workload: Workload) -> Option<Self> {
        match workload {
            Workload::Join => Some(JoinWorkload::Inner),
            Workload::JoinOuter => Some(JoinWorkload::LeftOuter),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            JoinWorkload::Inner => "join",
            JoinWorkload::LeftOuter => "join-outer",
        }
    }
}

/// Writes `files` files of `rows_per_file` impressions into `dir/impressions/` and as
/// many click rows into `dir/clicks/` (see the module doc); returns the rows written
/// (both inputs together).
pub fn write_join_input(dir: &Path, files: usize, rows_per_file: usize) -> Result<u64> {
    let start = NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    let stamp = |ms: i64| {
        (start + TimeDelta::milliseconds(ms))
            .format("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string()
    };
    for side in ["impressions", "clicks"] {
        let input = dir.join(side);
        fs::create_dir_all(&input).map_err(Error::io(&input))?;
        let mut text = String::new();
        for file in 0..files {
            text.clear();
            for row in 0..rows_per_file {
                let n = (file * rows_per_file + row) as i64;
                let shown = n * 10;
                if side == "impressions" {
                    let _ = writeln!(text, "{{\"id\":{n},\"ts\":\"{}\"}}", stamp(shown));
                } else if n % 10 == 0 {
                    let clicked = shown + (n % 600) * 1_000;
                    let _ = writeln!(text, "{{\"impression\":{n},\"ts\":\"{}\"}}", stamp(clicked));
                } else {
                    let _ = writeln!(
                        text,
                        "{{\"impression\":{},\"ts\":\"{}\"}}",
                        -n,
                        stamp(shown)
                    );
                }
            }
            let path = input.join(format!("part-{file:05}.json"));
            super::write_input_file(&path, &text)?;
        }
    }
    Ok((2 * files * rows_per_file) as u64)
}

/// Runs `workload` over the input written by [`write_join_input`] in `dir`, with its
/// checkpoint under `dir`.
pub fn run_join(
    runtime: &Runtime,
    dir: &Path,
    workload: JoinWorkload,
    files_per_trigger: usize,
    rows: u64,
) -> Result<BenchReport> {
    let table = |name: &str, columns: &str| {
        format!(
            "CREATE UNBOUNDED EXTERNAL TABLE {name} ({columns}, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE) STORED AS JSON LOCATION '{}' \
             OPTIONS ('max_files_per_trigger' '{files_per_trigger}')",
            dir.join(name).display()
        )
    };
    let join = match workload {
        JoinWorkload::Inner => "JOIN",
        JoinWorkload::LeftOuter => "LEFT JOIN",
    };
    let script = format!(
        "{};\n{};\nCREATE SINK bench STORED AS NOOP \
         OPTIONS ('checkpoint' '{}', 'trigger' 'available_now') \
         AS SELECT i.id, i.ts AS shown, c.ts AS clicked FROM impressions i {join} clicks c \
         ON c.impression = i.id AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10' MINUTE",
        table("impressions", "id BIGINT"),
        table("clicks", "impression BIGINT"),
        dir.join("checkpoint").display()
    );
    run_to_end(runtime, &script, format!("{} JSON", workload.name()), rows)
}
