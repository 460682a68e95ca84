//! `/metrics`: the progress reports' figures in Prometheus' text format, per query
//! (labels `query`, the name, and `id`, the checkpoint's query id) and per stateful
//! operator (`operator_id`, its index in `stateOperators`, and `operator`, its
//! `operatorName`).
//!
//! Counters (`*_total`) and the batch-duration histogram are fed by
//! [`MetricsListener`], which every session registers, so they count every batch of
//! the session's queries; gauges hold the latest report's value. Names follow
//! Prometheus' conventions: base units (seconds, bytes), `_total` for counters.

use std::sync::Arc;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::TrackedQuery;
use crate::execution::{QueryProgress, StreamingQuery, StreamingQueryListener};

const QUERY: &[&str] = &["query", "id"];
const PHASE: &[&str] = &["query", "id", "phase"];
const OPERATOR: &[&str] = &["query", "id", "operator_id", "operator"];

/// The session's Prometheus registry and the metrics in it.
pub struct Metrics {
    registry: Registry,
    batches: IntCounterVec,
    input_rows: IntCounterVec,
    output_rows: IntCounterVec,
    batch_duration: HistogramVec,
    last_batch_id: IntGaugeVec,
    input_rate: GaugeVec,
    process_rate: GaugeVec,
    phase_seconds: GaugeVec,
    watermark: GaugeVec,
    active: IntGaugeVec,
    state_rows: IntGaugeVec,
    state_memory: IntGaugeVec,
    state_rows_updated: IntCounterVec,
    dropped_late: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every millrace metric registered (and no series yet).
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric names are distinct");
            m
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Metrics {
            batches: counter(
                "millrace_query_batches_total",
                "Micro-batches committed.",
                QUERY,
            ),
            input_rows: counter(
                "millrace_query_input_rows_total",
                "Rows read from the sources (numInputRows).",
                QUERY,
            ),
            output_rows: counter(
                "millrace_query_output_rows_total",
                "Rows written to the sink (sink.numOutputRows).",
                QUERY,
            ),
            batch_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "millrace_query_batch_duration_seconds",
                        "Duration of each batch's trigger (durationMs.triggerExecution).",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                    QUERY,
                )
                .expect("valid metric"),
            ),
            last_batch_id: int_gauge(
                "millrace_query_last_batch_id",
                "Id of the last committed batch (batchId).",
                QUERY,
            ),
            input_rate: gauge(
                "millrace_query_input_rows_per_second",
                "inputRowsPerSecond of the last batch.",
                QUERY,
            ),
            process_rate: gauge(
                "millrace_query_processed_rows_per_second",
                "processedRowsPerSecond of the last batch.",
                QUERY,
            ),
            phase_seconds: gauge(
                "millrace_query_last_batch_phase_seconds",
                "Time the last batch spent in each phase (durationMs, phase = its field name).",
                PHASE,
            ),
            watermark: gauge(
                "millrace_query_watermark_timestamp_seconds",
                "The watermark in force (eventTime.watermark), as Unix time.",
                QUERY,
            ),
            active: int_gauge(
                "millrace_query_active",
                "1 while the query runs, 0 once it has stopped or failed.",
                QUERY,
            ),
            state_rows: int_gauge(
                "millrace_state_operator_rows",
                "Rows in the operator's state (numRowsTotal).",
                OPERATOR,
            ),
            state_memory: int_gauge(
                "millrace_state_operator_memory_bytes",
                "Memory the operator's state uses (memoryUsedBytes).",
                OPERATOR,
            ),
            state_rows_updated: counter(
                "millrace_state_operator_rows_updated_total",
                "State rows written by batches (numRowsUpdated).",
                OPERATOR,
            ),
            dropped_late: counter(
                "millrace_state_operator_rows_dropped_by_watermark_total",
                "Input rows dropped as later than the watermark (numRowsDroppedByWatermark).",
                OPERATOR,
            ),
            registry,
        }
    }

    /// Takes one batch's progress report into the metrics.
    pub fn record(&self, progress: &QueryProgress) {
        let query = [progress.name.as_str(), progress.id.as_str()];
        self.batches.with_label_values(&query).inc();
        self.input_rows
            .with_label_values(&query)
            .inc_by(progress.num_input_rows);
        self.output_rows
            .with_label_values(&query)
            .inc_by(progress.sink.num_output_rows);
        let durations = &progress.duration_ms;
        self.batch_duration
            .with_label_values(&query)
            .observe(durations.trigger_execution as f64 / 1000.0);
        self.last_batch_id
            .with_label_values(&query)
            .set(i64::try_from(progress.batch_id).unwrap_or(i64::MAX));
        self.input_rate
            .with_label_values(&query)
            .set(progress.input_rows_per_second);
        self.process_rate
            .with_label_values(&query)
            .set(progress.processed_rows_per_second);
        for (phase, ms) in [
            ("latestOffset", durations.latest_offset),
            ("getBatch", durations.get_batch),
            ("queryPlanning", durations.query_planning),
            ("addBatch", durations.add_batch),
            ("walCommit", durations.wal_commit),
            ("commitOffsets", durations.commit_offsets),
            ("triggerExecution", durations.trigger_execution),
        ] {
            self.phase_seconds
                .with_label_values(&[query[0], query[1], phase])
                .set(ms as f64 / 1000.0);
        }
        if let Some(watermark) = progress
            .event_time
            .watermark
            .as_deref()
            .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
        {
            self.watermark
                .with_label_values(&query)
                .set(watermark.timestamp_millis() as f64 / 1000.0);
        }
        for (index, operator) in progress.state_operators.iter().enumerate() {
            let index = index.to_string();
            let name = operator
                .get("operatorName")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("stateful");
            let labels = [query[0], query[1], index.as_str(), name];
            let figure = |field: &str| {
                operator
                    .get(field)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.state_rows
                .with_label_values(&labels)
                .set(as_gauge(figure("numRowsTotal")));
            self.state_memory
                .with_label_values(&labels)
                .set(as_gauge(figure("memoryUsedBytes")));
            self.state_rows_updated
                .with_label_values(&labels)
                .inc_by(figure("numRowsUpdated"));
            self.dropped_late
                .with_label_values(&labels)
                .inc_by(figure("numRowsDroppedByWatermark"));
        }
    }

    /// The text exposition of every metric, with `millrace_query_active` refreshed
    /// from the queries' current state.
    pub fn render(&self, queries: &[TrackedQuery]) -> String {
        for tracked in queries {
            let query = &tracked.query;
            self.active
                .with_label_values(&[query.name(), query.id()])
                .set(i64::from(query.is_active()));
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Feeds every progress report of the session's queries into [`Metrics`].
pub struct MetricsListener(pub Arc<Metrics>);

impl StreamingQueryListener for MetricsListener {
    fn on_query_progress(&self, _query: &StreamingQuery, progress: &QueryProgress) {
        self.0.record(progress);
    }
}
