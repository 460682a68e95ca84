//! The stateful-operator layer: what the batch loop knows about an operator that keeps
//! state between micro-batches (aggregation, deduplication, session merge, ...).

/// The two event-time watermarks a stateful operator works with in one batch (Spark
/// 3.4+, `eventTimeWatermarkForLateEvents` / `eventTimeWatermarkForEviction`), in ms
/// since the epoch; `None` until the query has a watermark.
///
/// Why two: an operator evicts (and, in append mode, emits) the groups that ended at
/// or before the *current* batch's watermark. Those rows are behind that watermark, so
/// an operator above it must not call them late; rows are late only when their group
/// ended at or before the *previous* batch's watermark, which every operator of the
/// chain had already applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Rows whose group ended at or before this are late: the previous batch's watermark.
    pub late_events: Option<i64>,
    /// Groups that ended at or before this close and leave the state: this batch's watermark.
    pub eviction: Option<i64>,
}

mod aggregation;
mod flat_map_groups;
mod stream_join;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateStoreConfig;

pub use aggregation::AggregationOperator;
pub(crate) use flat_map_groups::FlatMapGroupsSpec;
pub use flat_map_groups::{
    FlatMapGroupsExec, FlatMapGroupsNode, FlatMapGroupsOperator, GroupState, GroupStateTimeout,
    Row, StreamingQueryPlanner, resolve_event_time,
};
pub use stream_join::{
    Bound, SideSpec, StreamJoinExec, StreamJoinNode, StreamJoinOperator, StreamJoinSpec,
    WatermarkOf, rewrite_stream_joins,
};

/// A stateful operator of a streaming query, as the batch loop drives it.
///
/// The contract, per micro-batch `N` (the loop calls the operators bottom-up, each
/// seeing the plan as the one below left it):
///
/// - **reads** its input rows by running, in the batch's physical plan, the part below
///   its own node (which holds the output of the operators below it);
/// - **writes** its output for the batch into the plan: [`step`](Self::step) returns
///   the plan with its node replaced by the rows it emits, so the operator above (or
///   the sink) reads them;
/// - **late rows and eviction**: rows whose group ended at or before
///   `watermarks.late_events` are dropped (counted in `numRowsDroppedByWatermark`);
///   groups that ended at or before `watermarks.eviction` leave the state;
/// - **saves** version `N` of its state in [`commit`](Self::commit), under its own
///   directory `state/<operator id>/`, before the sink sees the batch, durably by the
///   time [`finish_commit`](Self::finish_commit) returns (before the batch commits);
/// - **restores**, in [`open`](Self::open), the version of the last committed batch,
///   deleting versions a batch that never committed wrote.
///
/// Adding a kind of operator is a module implementing this trait plus one line in
/// [`KINDS`]; the loop has no per-kind code.
#[async_trait::async_trait]
pub trait StatefulOperator: Send + std::fmt::Debug {
    /// Spark's short name of the operator (`stateStoreSave`, `dedupe`, ...), shown in
    /// progress reports.
    fn name(&self) -> &'static str;

    /// Checks the operator against the query's physical plan, opens its state store in
    /// `dir` and restores the state of batch `version` (`None`: nothing committed yet).
    async fn open(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        dir: &Path,
        version: Option<u64>,
        config: StateStoreConfig,
    ) -> Result<()>;

    /// Runs one batch (see the trait's contract) and returns the rewritten plan.
    async fn step(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        batch: &OperatorBatch,
    ) -> Result<Arc<dyn ExecutionPlan>>;

    /// Saves the state after the last [`step`](Self::step) as version `batch_id`;
    /// returns the operator's metrics for the batch. The files may be written in the
    /// background: the version is durable once [`finish_commit`](Self::finish_commit)
    /// has returned.
    fn commit(&mut self, batch_id: u64) -> Result<OperatorMetrics>;

    /// Waits until the version the last [`commit`](Self::commit) saved is durable. The
    /// loop calls it before the batch's commit-log entry, and may fold the next batch
    /// before it (the operators' stores write their files on threads of their own
    /// meanwhile, [`StateStore::start_commit`](crate::state::StateStore::start_commit));
    /// an operator whose `commit` writes before it returns keeps this default.
    fn finish_commit(&mut self) -> Result<()> {
        Ok(())
    }

    /// The watermarks the operator above this one gets (Spark's
    /// `produceOutputWatermark`): by default the input ones, as for aggregations and
    /// deduplication, whose output rows are never behind their input watermark.
    fn output_watermarks(&self, input: Watermarks) -> Watermarks {
        input
    }

    /// Whether the operator closes groups by the watermark in `mode`, so that a batch
    /// must run when the watermark moves even without new data (Spark's
    /// `shouldRunAnotherBatch`).
    fn evicts_by_watermark(&self, mode: OutputMode) -> bool;

    /// Whether a processing-time timeout the operator holds has passed at `now_ms`
    /// (ms since the epoch), so that a batch must run without new data to fire it. Spark
    /// runs a no-data batch at every trigger while processing-time timeouts are
    /// configured; the loop runs one only when this says a timeout is due, which fires
    /// the same timeouts without empty batches in between.
    fn timeout_due(&self, _now_ms: i64) -> bool {
        false
    }

    /// For a memory sink in update mode: the output columns rows are upserted by (the
    /// group columns); `None` when every output row is new (deduplication).
    fn update_keys(&self) -> Option<Vec<String>>;

    /// Whether the rows this operator emitted once may be emitted again, changed, in
    /// `mode` (an aggregation in update or complete mode): such an operator cannot
    /// feed another stateful operator.
    fn revises_output(&self, mode: OutputMode) -> bool;
}

/// What an operator is given for one batch.
pub struct OperatorBatch {
    /// The batch id.
    pub batch_id: u64,
    /// The output mode this operator emits in: the query's for the topmost operator,
    /// append for those below it (each row emitted once, when final).
    pub mode: OutputMode,
    /// The late-events and eviction watermarks of this operator's input.
    pub watermarks: Watermarks,
    /// The DataFusion task context the batch runs in.
    pub task: Arc<TaskContext>,
    /// The batch's timestamp from the offset log (ms since the epoch): the same on a
    /// replay, so processing-time decisions (timeouts) replay the same way.
    pub batch_timestamp_ms: i64,
}

/// One operator's entry in a progress report's `stateOperators` (Spark's
/// `StateOperatorProgress`, plus the operator's id).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorMetrics {
    /// Spark's short name of the operator.
    pub operator_name: String,
    /// The operator's id: its position among the query's stateful operators, bottom-up
    /// (its state is under `state/<operator id>/`).
    pub operator_id: usize,
    /// Rows (groups) in the state after the batch.
    pub num_rows_total: u64,
    /// State rows this batch created or changed.
    pub num_rows_updated: u64,
    /// Milliseconds spent folding the batch into the state.
    pub all_updates_time_ms: u64,
    /// State rows this batch removed (evicted, or merged away).
    pub num_rows_removed: u64,
    /// Milliseconds spent removing rows (counted within the updates here).
    pub all_removals_time_ms: u64,
    /// Milliseconds spent writing the state version.
    pub commit_time_ms: u64,
    /// Bytes of memory the state holds.
    pub memory_used_bytes: u64,
    /// Input rows dropped as late (behind the late-events watermark).
    pub num_rows_dropped_by_watermark: u64,
    /// Partitions of the state (1 until the state is partitioned).
    pub num_shuffle_partitions: u64,
    /// State store instances (one per partition).
    pub num_state_store_instances: u64,
    /// Operator-specific figures (Spark's `customMetrics`): for the aggregation,
    /// `numStateRowsRead`, `stateRowBytes`, `stateIndexBytes`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom_metrics: std::collections::BTreeMap<String, u64>,
}

/// A kind of stateful operator: how to recognise one in a logical plan.
pub struct OperatorKind {
    /// The kind's name, for messages.
    pub name: &'static str,
    /// The operator for `node`, if `node` is one of this kind.
    pub from_node: fn(&LogicalPlan) -> Option<Box<dyn StatefulOperator>>,
}

/// Every kind of stateful operator: the registration an operator module adds itself to.
pub const KINDS: &[OperatorKind] = &[
    OperatorKind {
        name: "aggregation",
        from_node: aggregation::from_node,
    },
    OperatorKind {
        name: "flatMapGroupsWithState",
        from_node: flat_map_groups::from_node,
    },
    OperatorKind {
        name: "stream-stream join",
        from_node: stream_join::from_node,
    },
];

/// The stateful operators of a streaming plan, bottom-up (post-order, children left to
/// right): the index in this list is the operator id, stable for the same query
/// across restarts, as Spark numbers its stateful operators.
pub fn find_operators(plan: &LogicalPlan) -> Vec<Box<dyn StatefulOperator>> {
    let mut found = Vec::new();
    collect_post_order(plan, &mut found);
    found
}

fn collect_post_order(node: &LogicalPlan, found: &mut Vec<Box<dyn StatefulOperator>>) {
    for input in node.inputs() {
        collect_post_order(input, found);
    }
    if let Some(operator) = KINDS.iter().find_map(|kind| (kind.from_node)(node)) {
        found.push(operator);
    }
}

/// Refuses, before the first batch, a chain of stateful operators whose result would
/// be wrong: an operator that may emit a row and later a revised one (an aggregation
/// in update or complete mode) cannot feed another stateful operator, which would count
/// every revision (Spark refuses several aggregations outside append mode for the same
/// reason, and its global-watermark check refuses operators that emit rows behind the
/// watermark into another one).
pub fn check_chain(operators: &[Box<dyn StatefulOperator>], mode: OutputMode) -> Result<()> {
    let Some((_, below)) = operators.split_last() else {
        return Ok(());
    };
    for (id, operator) in below.iter().enumerate() {
        if operator.revises_output(mode) {
            return Err(Error::Unsupported(format!(
                "stateful operator {id} ({}) feeds another stateful operator, but in \
                 output_mode '{}' it emits rows that later change (updated groups), which \
                 the operator above would count again: use output_mode 'append', where each \
                 group is emitted once, when the watermark closes it",
                operator.name(),
                format!("{mode:?}").to_lowercase(),
            )));
        }
    }
    Ok(())
}

/// Times `f`, in whole milliseconds.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed().as_millis() as u64)
}
