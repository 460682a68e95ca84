//! Execution: the micro-batch loop that turns a [`StreamingPlan`](crate::planning::StreamingPlan)
//! into a running query, and the handle users hold on it.
//!
//! Batch life cycle (see `docs/ARCHITECTURE.md`):
//! offsets → `offsets/N` fsynced → read sources → plan + run in DataFusion →
//! sink commit → `commits/N` → sources told → progress.

mod aggregation;
mod group_merge;
pub mod operator;
mod progress;
mod query;
mod sessions;
mod trigger;

pub use aggregation::{AggregationStep, StreamingAggregation};
pub use operator::{OperatorMetrics, StatefulOperator, Watermarks};
pub use progress::{DurationMs, EventTime, QueryProgress, SinkProgress, SourceProgress};
pub use query::{QueryConfig, QueryStatus, StreamingQuery, StreamingQueryListener};
pub use trigger::{Trigger, WatermarkPolicy};

/// Kept here for code that named it `execution::crash_point`; it lives in
/// [`crate::crash_point`].
pub use crate::crash_point::crash_point;
