//! Execution: the micro-batch loop that turns a [`StreamingPlan`](crate::planning::StreamingPlan)
//! into a running query, and the handle users hold on it.
//!
//! Batch life cycle (see `docs/ARCHITECTURE.md`):
//! offsets → `offsets/N` fsynced → read sources → plan + run in DataFusion →
//! sink commit → `commits/N` → sources told → progress.

mod aggregation;
mod progress;
mod query;
mod sessions;
mod trigger;

pub use aggregation::{AggregationStep, StreamingAggregation};
pub use progress::{DurationMs, EventTime, QueryProgress, SinkProgress, SourceProgress};
pub use query::{QueryConfig, QueryStatus, StreamingQuery, StreamingQueryListener};
pub use trigger::{Trigger, WatermarkPolicy};

/// Test-only crash injection: if the environment variable `MILLRACE_CRASH_AT` names
/// this point (e.g. `after-sink-manifest`), the process aborts here, as a `kill -9`
/// at exactly that instant would. Lets crash tests hit the narrow windows between a
/// sink's commit point and the commit log on purpose, not only by chance.
pub fn crash_point(name: &str) {
    if let Some(target) = std::env::var_os("MILLRACE_CRASH_AT")
        && target == name
    {
        eprintln!("millrace: crash point '{name}' reached (MILLRACE_CRASH_AT), aborting");
        std::process::abort();
    }
}
