//! Progress reports with Spark's `StreamingQueryProgress` field names, so dashboards
//! and habits built for Spark read them unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One batch's report, appended to `<checkpoint>/progress.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueryProgress {
    /// Stable query id (from the checkpoint).
    pub id: String,
    /// Id of this run of the query (new at every start).
    pub run_id: String,
    /// The query's name (the sink's name).
    pub name: String,
    /// When the trigger started (ISO 8601).
    pub timestamp: String,
    /// The batch.
    pub batch_id: u64,
    /// Rows read from all sources in this batch.
    pub num_input_rows: u64,
    /// Rows read per second of wall-clock time since the previous trigger started.
    pub input_rows_per_second: f64,
    /// Rows read per second of this batch's processing time.
    pub processed_rows_per_second: f64,
    /// Time spent in each phase.
    pub duration_ms: DurationMs,
    /// Event-time statistics.
    pub event_time: EventTime,
    /// Stateful operators (none for stateless queries).
    pub state_operators: Vec<serde_json::Value>,
    /// Per-source figures.
    pub sources: Vec<SourceProgress>,
    /// Sink figures.
    pub sink: SinkProgress,
}

/// Milliseconds per phase of a trigger.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DurationMs {
    /// Asking sources for their latest offsets.
    pub latest_offset: u64,
    /// Reading the batch's rows from the sources.
    pub get_batch: u64,
    /// Physical planning in DataFusion.
    pub query_planning: u64,
    /// Running the plan and committing the sink.
    pub add_batch: u64,
    /// Writing the offset log entry.
    pub wal_commit: u64,
    /// Writing the commit log entry.
    pub commit_offsets: u64,
    /// The whole trigger.
    pub trigger_execution: u64,
}

/// Event-time statistics (Spark's `eventTime` map).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventTime {
    /// The watermark in force for the batch (ISO 8601), if the query has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Largest event time in the batch's input (over the watermarked columns), ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// One source's part of a progress report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// The source's description.
    pub description: String,
    /// Offset the batch started after (null for the first batch).
    pub start_offset: serde_json::Value,
    /// Offset the batch read up to.
    pub end_offset: serde_json::Value,
    /// Latest offset known when the batch was planned.
    pub latest_offset: serde_json::Value,
    /// Rows read from this source.
    pub num_input_rows: u64,
    /// See [`QueryProgress::input_rows_per_second`].
    pub input_rows_per_second: f64,
    /// See [`QueryProgress::processed_rows_per_second`].
    pub processed_rows_per_second: f64,
    /// Source-specific counters, e.g. `numMalformedRowsDropped`.
    pub metrics: BTreeMap<String, String>,
}

/// The sink's part of a progress report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// The sink's description.
    pub description: String,
    /// Rows written by this batch.
    pub num_output_rows: u64,
}
