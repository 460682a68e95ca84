//! `millrace bench`: workloads run through the whole engine (file source, offset and
//! commit logs with fsync, DataFusion, state store, sink), each reporting rows/s and
//! per-batch latency from the query's own progress reports.
//!
//! - [`filter`]: files (JSON lines, CSV) → filter/project → Parquet, stateless;
//! - [`aggregation`]: a tumbling event-time window and a plain `GROUP BY`, stateful;
//! - [`kafka`]: Kafka → filter → Kafka and Kafka → window aggregation → Kafka, on a
//!   broker given with `--bootstrap`;
//! - [`kafka_latency`]: end-to-end latency of Kafka → Kafka at a steady input rate;
//! - [`join`]: impressions joined with clicks (stream-stream inner and left outer join).
//!
//! Figures and how they were taken: `docs/benchmarks.md`.

pub mod aggregation;
pub mod filter;
pub mod join;
pub mod kafka;
pub mod kafka_latency;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use tokio::runtime::Runtime;

pub use aggregation::{AggregationWorkload, run_aggregation, write_keyed_input};
pub use filter::{BenchFormat, SensorReading, run_pipeline, write_input};
pub use join::{JoinWorkload, run_join, write_join_input};
pub use kafka::{KafkaRun, KafkaWorkload, check_reachable, produce_readings};
pub use kafka_latency::{LatencyReport, LatencyRun};

use crate::error::{Error, Result};
use crate::execution::QueryProgress;
use crate::session::{Session, SessionSettings, StatementResult};

/// Writes one input file of a workload and flushes it to disk, as the files of a
/// landing directory are by the time a query reads them. Left dirty, the input (a few
/// hundred MB) would be written back while the timed run goes, and the run's own
/// `fsync`s of its checkpoint would wait behind it: the figures would measure the
/// benchmark's input generation as much as the engine.
pub fn write_input_file(path: &std::path::Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(Error::io(path))?;
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(Error::io(path))
}

/// Which query `millrace bench` measures; one value per workload so the command line
/// and the criterion benchmarks name them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// Files → filter/project → Parquet, JSON lines then CSV (the stateless pipeline).
    #[default]
    Filter,
    /// `count(*), sum(x)` per key and 10-second tumbling window, watermark 5 s,
    /// append mode to Parquet.
    Tumbling,
    /// `count(*), sum(x)` per key without a window, update mode to a `NOOP` sink.
    Groupby,
    /// Kafka → `WHERE`/projection → Kafka, on one broker (`--bootstrap`).
    KafkaFilter,
    /// Kafka → count/avg per sensor and 1-minute tumbling window → Kafka, append mode.
    KafkaWindow,
    /// Produce → Kafka → query → Kafka → `read_committed` consumer latency at a steady rate.
    KafkaLatency,
    /// Impressions JOIN clicks within 10 minutes (stream-stream inner join), `NOOP` sink.
    Join,
    /// The same as a LEFT OUTER join (NULL rows for impressions without a click).
    JoinOuter,
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Filter => "filter",
            Workload::Tumbling => "tumbling",
            Workload::Groupby => "groupby",
            Workload::KafkaFilter => "kafka-filter",
            Workload::KafkaWindow => "kafka-window",
            Workload::KafkaLatency => "kafka-latency",
            Workload::Join => "join",
            Workload::JoinOuter => "join-outer",
        }
    }
}

impl FromStr for Workload {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "filter" => Ok(Workload::Filter),
            "tumbling" => Ok(Workload::Tumbling),
            "groupby" | "group_by" | "group-by" => Ok(Workload::Groupby),
            "kafka-filter" | "kafka_filter" => Ok(Workload::KafkaFilter),
            "kafka-window" | "kafka_window" => Ok(Workload::KafkaWindow),
            "kafka-latency" | "kafka_latency" => Ok(Workload::KafkaLatency),
            "join" => Ok(Workload::Join),
            "join-outer" | "join_outer" => Ok(Workload::JoinOuter),
            _ => Err(Error::Option(format!(
                "unknown workload '{value}': use filter, tumbling, groupby, kafka-filter, \
                 kafka-window, kafka-latency, join or join-outer"
            ))),
        }
    }
}

/// The size of a streaming aggregation's state, from the `stateOperators` entry of the
/// progress reports; bytes per group is what memory planning needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// Most groups held at the end of any batch (`numRowsTotal`).
    pub rows: u64,
    /// Most bytes held at the end of any batch (`memoryUsedBytes`: rows and index).
    pub memory_bytes: u64,
    /// Of those, the state rows' Arrow arrays at their largest (`stateRowBytes`).
    pub row_bytes: u64,
    /// Of those, the key index at its largest (`stateIndexBytes`).
    pub index_bytes: u64,
    /// Most state rows one batch read to merge (`numStateRowsRead`).
    pub rows_read: u64,
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Workload and input format, e.g. `filter JSON`, `groupby CSV`.
    pub label: String,
    /// Input rows.
    pub rows: u64,
    /// Rows the sink received over all batches.
    pub output_rows: u64,
    /// Micro-batches run (including a final no-data batch that emits windows).
    pub batches: usize,
    /// Wall-clock seconds from the script's start to the query's end.
    pub seconds: f64,
    /// Median, 95th percentile and maximum `triggerExecution` per batch, in ms.
    pub latency_ms: (u64, u64, u64),
    /// `triggerExecution` of each batch, in order (of the last 100).
    pub batch_ms: Vec<u64>,
    /// CPU seconds (user + system) the process used over the run, all threads.
    pub cpu_seconds: f64,
    /// The aggregation's state at its largest, for stateful workloads.
    pub state: Option<StateSize>,
}

impl BenchReport {
    /// Input rows per second of wall-clock time.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {:>10} rows in {:>3} batches: {:>8.3} s, CPU {:.3} s ({:.2} cores), {:>12.0} rows/s; batch latency p50 {} ms, p95 {} ms, max {} ms ({} rows out)",
            self.label,
            self.rows,
            self.batches,
            self.seconds,
            self.cpu_seconds,
            self.cpu_seconds / self.seconds.max(1e-9),
            self.rows_per_second(),
            self.latency_ms.0,
            self.latency_ms.1,
            self.latency_ms.2,
            self.output_rows
        )?;
        if let Some(state) = self.state {
            let per = |bytes: u64| bytes as f64 / state.rows.max(1) as f64;
            write!(
                f,
                "; state up to {} groups, {} bytes ({:.1} per group: rows {:.1}, index {:.1}), \
                 up to {} state rows read by a batch",
                state.rows,
                state.memory_bytes,
                per(state.memory_bytes),
                per(state.row_bytes),
                per(state.index_bytes),
                state.rows_read
            )?;
        }
        let batches: Vec<String> = self.batch_ms.iter().map(u64::to_string).collect();
        write!(f, "; batch ms: {}", batches.join(" "))?;
        Ok(())
    }
}

/// Runs a script whose last statement starts a query with `trigger` `available_now`,
/// waits for the query's end, and builds the report from its progress reports.
///
/// The clock starts before the script, so declaring the table and planning the query
/// count, as they do for a user.
fn run_to_end(runtime: &Runtime, script: &str, label: String, rows: u64) -> Result<BenchReport> {
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    let results = runtime.block_on(session.execute_script(script))?;
    let Some(StatementResult::QueryStarted(query)) = results.last() else {
        return Err(Error::Sql(
            "the benchmark script did not start a query".into(),
        ));
    };
    query.await_termination_blocking()?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_started;
    let mut report = report(label, rows, seconds, &query.recent_progress());
    report.cpu_seconds = cpu;
    Ok(report)
}

/// CPU seconds (user + system) this process has used so far, over all its threads.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Summarises progress reports (the engine keeps the newest 100, so runs of more
/// batches report the latency of their last 100).
fn report(label: String, rows: u64, seconds: f64, progress: &[QueryProgress]) -> BenchReport {
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
    let state_figure = |p: &QueryProgress, field: &str| {
        p.state_operators
            .first()
            .and_then(|s| s.get(field).or_else(|| s.get("customMetrics")?.get(field)))
            .and_then(serde_json::Value::as_u64)
    };
    let state = progress
        .iter()
        .filter_map(|p| {
            Some(StateSize {
                rows: state_figure(p, "numRowsTotal")?,
                memory_bytes: state_figure(p, "memoryUsedBytes")?,
                row_bytes: state_figure(p, "stateRowBytes").unwrap_or(0),
                index_bytes: state_figure(p, "stateIndexBytes").unwrap_or(0),
                rows_read: state_figure(p, "numStateRowsRead").unwrap_or(0),
            })
        })
        .reduce(|a, b| StateSize {
            rows: a.rows.max(b.rows),
            memory_bytes: a.memory_bytes.max(b.memory_bytes),
            row_bytes: a.row_bytes.max(b.row_bytes),
            index_bytes: a.index_bytes.max(b.index_bytes),
            rows_read: a.rows_read.max(b.rows_read),
        });
    BenchReport {
        label,
        rows,
        output_rows: progress.iter().map(|p| p.sink.num_output_rows).sum(),
        batches: progress.len(),
        seconds,
        latency_ms: (pick(0.5), pick(0.95), pick(1.0)),
        batch_ms: progress
            .iter()
            .map(|p| p.duration_ms.trigger_execution)
            .collect(),
        cpu_seconds: 0.0,
        state,
    }
}

/// Input rows for a criterion benchmark: the environment variable `var` (digits,
/// `_` allowed) when set to a positive number, else `default`.
pub fn rows_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .filter(|&rows| rows > 0)
        .unwrap_or(default)
}

/// Removes a benchmark iteration's `out` and `checkpoint` directories under `dir`,
/// keeping its input, so the next iteration runs the same job from scratch.
pub fn reset_run_dirs(dir: &std::path::Path) -> Result<()> {
    for name in ["out", "checkpoint"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_by_name() {
        for workload in [
            Workload::Filter,
            Workload::Tumbling,
            Workload::Groupby,
            Workload::KafkaFilter,
            Workload::KafkaWindow,
            Workload::KafkaLatency,
            Workload::Join,
            Workload::JoinOuter,
        ] {
            assert_eq!(workload.name().parse::<Workload>().unwrap(), workload);
        }
        assert_eq!("GROUP-BY".parse::<Workload>().unwrap(), Workload::Groupby);
        let error = "joins".parse::<Workload>().unwrap_err().to_string();
        assert!(
            error.contains("kafka-latency, join or join-outer"),
            "{error}"
        );
        assert_eq!(
            "KAFKA_WINDOW".parse::<Workload>().unwrap(),
            Workload::KafkaWindow
        );
        assert_eq!(
            KafkaWorkload::of(Workload::KafkaFilter),
            Some(KafkaWorkload::Filter)
        );
        assert_eq!(KafkaWorkload::of(Workload::Tumbling), None);
        assert_eq!(AggregationWorkload::of(Workload::KafkaWindow), None);
    }
}
