//! Incremental aggregation: the state of a streaming `GROUP BY` is DataFusion's own
//! partial aggregate state, kept across batches; raw rows are never kept.
//!
//! DataFusion plans an aggregation in two steps: `Partial` (rows → one state row per
//! group: counts, sums, HyperLogLog sketches, ...) and `Final` (states → values).
//! Per micro-batch this operator
//!
//! 1. runs the `Partial` step of the batch's physical plan over the batch's rows;
//! 2. splits those states by state partition (a hash of the key) and, the partitions
//!    in parallel, looks each key up once in the partition's index, which numbers the
//!    groups the batch touches; merges the touched groups' held rows with the batch's
//!    states by group number with DataFusion's `GroupsAccumulator`s
//!    (`super::group_merge`), and writes the merged rows back through the same lookup
//!    (session windows, whose sessions of one key merge with each other, are merged by
//!    DataFusion's `PartialReduce` step instead);
//! 3. evaluates the whole state (complete mode) or only the groups this batch touched
//!    (update mode) by group number in place of the plan's `Final` step, so the rest of
//!    the plan (HAVING, projection, ORDER BY) produces the batch's output rows.
//!
//! Untouched groups are neither read nor copied (see `crate::state::keyed`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, new_empty_array,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect, collect_partitioned};

use super::group_merge::{GroupMerge, final_output};
use super::operator::Watermarks;
use super::sessions::merge_sessions;
use crate::error::{Error, Result};
use crate::functions::SESSION_WINDOW;
use crate::planning::{DEDUP_EXPIRES_AT, dedup_delay, is_distinct_on, reads_stream};
use crate::sink::OutputMode;
use crate::state::partitioned::StatePartition;
use crate::state::partitioned::par_map;
use crate::state::{KeyedRows, PartitionedState, StatePartitions, StateStoreConfig};

/// The streaming aggregation of a query, with its state.
#[derive(Debug)]
pub struct StreamingAggregation {
    /// Output column names of the logical aggregate: how its physical step is found.
    output_names: Vec<String>,
    /// Number of group-by columns (the state's key columns, first in the state).
    key_columns: usize,
    /// A deduplication (`SELECT DISTINCT`, `DISTINCT ON`): each key is emitted once,
    /// when first seen.
    dedup: bool,
    /// The group column that is a `session_window()`, whose sessions merge per key.
    session_key: Option<usize>,
    /// For a `DISTINCT ON` within the watermark: the watermark delay (ms) between a
    /// key's first event time and its expiry, kept in the state.
    dedup_delay_ms: Option<i64>,
    /// One row per group (the group values, then the accumulators' states), split
    /// into partitions and indexed by key; opened by [`Self::open_state`].
    state: Option<PartitionedState>,
    /// The watermark up to which held groups were last evicted: held groups need a
    /// scan for eviction only when the watermark has moved past it.
    evicted_up_to: Option<i64>,
}

/// What [`StreamingAggregation::find`] learns about an aggregation node.
struct Found {
    output_names: Vec<String>,
    key_columns: usize,
    dedup: bool,
    session_key: Option<usize>,
    dedup_delay_ms: Option<i64>,
}

/// What one batch did to the state, for the batch's output and its progress report.
#[derive(Debug)]
pub struct AggregationStep {
    /// The batch's physical plan with this aggregation's part replaced by its output
    /// for the batch: running it gives the rows above the aggregation.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Groups held after the batch.
    pub rows_total: usize,
    /// Groups this batch created or changed.
    pub rows_updated: usize,
    /// Groups dropped from the state: evicted, or (session windows) merged into others.
    pub rows_removed: usize,
    /// Held state rows the batch read to merge with its own: the rows of the keys it
    /// touched (session windows: their partitions' whole state).
    pub rows_read: usize,
    /// Groups the watermark passed (in append mode, the output).
    pub evicted: usize,
    /// Partial-state rows of this batch dropped as late (their window had ended).
    pub dropped_late: usize,
    /// Bytes of the state rows (rows replaced but not yet compacted away included).
    pub row_bytes: usize,
    /// Bytes of the partitions' key indexes.
    pub index_bytes: usize,
    /// Number of state partitions.
    pub partitions: usize,
}

impl AggregationStep {
    /// The progress report's `customMetrics` of the aggregation: the held state rows
    /// the batch read to merge, and the state's bytes split into rows and index.
    pub fn custom_metrics(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::from([
            ("numStateRowsRead".to_string(), self.rows_read as u64),
            ("stateRowBytes".to_string(), self.row_bytes as u64),
            ("stateIndexBytes".to_string(), self.index_bytes as u64),
        ])
    }
}

/// What one batch reads from one session-window partition to merge.
struct Read {
    /// The held sessions to merge, with their merged bounds.
    held: RecordBatch,
    /// The batch's partial states of this partition, with their merged bounds.
    new: RecordBatch,
    /// The held sessions of the batch's keys, as they were.
    original: RecordBatch,
}

/// What one batch did to one partition.
#[derive(Debug)]
struct PartitionChange {
    /// The merged rows of the touched groups still held.
    updated: RecordBatch,
    /// The groups the watermark passed.
    evicted: RecordBatch,
    /// Every group dropped from the partition.
    removed: RecordBatch,
    /// For a deduplication: the updated rows whose key was not held before.
    fresh: Option<RecordBatch>,
    /// Held state rows read to merge with the batch's.
    read: usize,
}

impl StreamingAggregation {
    /// The aggregation `node` is, if it is an aggregation (or `SELECT DISTINCT`, or a
    /// rewritten `DISTINCT ON`) that reads a stream: the operator kind's registration
    /// (see `execution::operator`) asks this of every node of a streaming plan.
    pub fn from_node(node: &LogicalPlan) -> Option<Self> {
        let names = || -> Vec<String> {
            node.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        let found = match node {
            // A `DISTINCT ON` arrives here rewritten into an aggregation.
            LogicalPlan::Aggregate(aggregate) if reads_stream(node) => {
                let session_key = aggregate.group_expr.iter().position(
                    |e| matches!(e, Expr::ScalarFunction(f) if f.name() == SESSION_WINDOW),
                );
                Found {
                    output_names: names(),
                    key_columns: aggregate.group_expr.len(),
                    dedup: is_distinct_on(aggregate),
                    session_key,
                    dedup_delay_ms: dedup_delay(aggregate),
                }
            }
            // SELECT DISTINCT: an aggregation by every column, with no functions.
            LogicalPlan::Distinct(Distinct::All(_)) if reads_stream(node) => Found {
                output_names: names(),
                key_columns: node.schema().fields().len(),
                dedup: true,
                session_key: None,
                dedup_delay_ms: None,
            },
            _ => return None,
        };
        Some(StreamingAggregation {
            output_names: found.output_names,
            key_columns: found.key_columns,
            dedup: found.dedup,
            session_key: found.session_key,
            dedup_delay_ms: found.dedup_delay_ms,
            state: None,
            evicted_up_to: None,
        })
    }

    /// Spark's name for this operator in progress reports: `stateStoreSave` for an
    /// aggregation, `dedupe` / `dedupeWithinWatermark` for a deduplication,
    /// `sessionWindowStateStoreSaveExec` for session windows.
    pub fn operator_name(&self) -> &'static str {
        match (self.dedup, self.dedup_delay_ms, self.session_key) {
            (true, Some(_), _) => "dedupeWithinWatermark",
            (true, None, _) => "dedupe",
            (false, _, Some(_)) => "sessionWindowStateStoreSaveExec",
            (false, _, None) => "stateStoreSave",
        }
    }

    /// Names of the group-by columns in the aggregate's output.
    pub fn group_names(&self) -> Vec<String> {
        self.output_names[..self.key_columns].to_vec()
    }

    /// Whether this is a deduplication, which emits each key once.
    pub fn deduplicates(&self) -> bool {
        self.dedup
    }

    /// Number of key (group-by) columns at the front of the state.
    pub fn key_columns(&self) -> usize {
        self.key_columns
    }

    /// Opens the keyed state in `dir` (today `<checkpoint>/state/0`; its partitions are
    /// `dir/<partition>/`) and restores version `committed`, the last committed batch
    /// (`None`: empty, every version deleted). `plan` is a physical plan of the query, to
    /// read the state schema off; `partitions` the `millrace.state_partitions` setting.
    pub fn open_state(
        &mut self,
        dir: &Path,
        plan: &Arc<dyn ExecutionPlan>,
        partitions: Option<StatePartitions>,
        config: StateStoreConfig,
        committed: Option<u64>,
    ) -> Result<()> {
        let schema = self.state_schema(plan)?;
        // A key's sessions must meet in one partition: route by the other key columns.
        let route_columns = (0..self.key_columns)
            .filter(|&c| Some(c) != self.session_key)
            .collect();
        self.state = Some(PartitionedState::open(
            dir,
            schema,
            self.key_columns,
            route_columns,
            partitions,
            config,
            committed,
        )?);
        self.evicted_up_to = None;
        Ok(())
    }

    /// The state, once [`open_state`](Self::open_state) has run.
    pub fn state(&self) -> Option<&PartitionedState> {
        self.state.as_ref()
    }

    /// Starts writing what the last [`step`](Self::step) changed as state version
    /// `batch_id` ([`PartitionedState::start_commit`]); the batch may commit once
    /// [`wait_committed`](Self::wait_committed) has returned. A replay of the batch
    /// after a crash reopens the state at the previous version and writes this one anew.
    pub fn commit(&mut self, batch_id: u64) -> Result<()> {
        match &mut self.state {
            Some(state) => state.start_commit(batch_id),
            None => Err(Error::Unsupported(
                "the aggregation's state was not opened before its first batch".into(),
            )),
        }
    }

    /// Waits until the version the last [`commit`](Self::commit) started is durable.
    pub fn wait_committed(&mut self) -> Result<()> {
        match &mut self.state {
            Some(state) => state.wait_committed(),
            None => Ok(()),
        }
    }

    /// Folds one batch into the state and produces the batch's output in `mode`.
    /// `plan` is the batch's whole physical plan, as DataFusion planned it.
    ///
    /// Only the keys the batch touches are read from the state and merged: the batch's
    /// partial states are split by partition; in each partition (in parallel) every key
    /// is looked up once, the touched groups' held rows are merged with the batch's by
    /// group number ([`GroupMerge`]), and the merged rows replace the old ones through
    /// the same lookup. Session windows read the held sessions of the batch's other key
    /// values and merge with DataFusion's `PartialReduce` step (`fold_sessions`).
    ///
    /// With a `watermark` (ms) and a key that is event time (a `window()` or the
    /// watermarked column), as in Spark: this batch's partial states of groups that
    /// ended at or before the watermark are dropped as late; groups that ended are
    /// evicted from the state, and in append mode they are the batch's output (each
    /// emitted once). Complete mode keeps every group.
    pub async fn step(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        mode: OutputMode,
        watermarks: Watermarks,
        task: Arc<TaskContext>,
    ) -> Result<AggregationStep> {
        let Located {
            top,
            partial,
            replace,
        } = self.locate(&plan)?;
        let top_exec = top
            .downcast_ref::<AggregateExec>()
            .expect("locate returns AggregateExecs");
        let partial_exec = partial
            .downcast_ref::<AggregateExec>()
            .expect("a partial AggregateExec");
        let state_schema = partial.schema();
        let mut batch_states = collect(partial.clone(), task.clone()).await?;
        for batch in &mut batch_states {
            *batch = drop_null_windows(batch, self.key_columns)?;
        }
        // Complete mode keeps every group; session windows still drop late rows in it.
        let late_events = watermarks
            .late_events
            .filter(|_| mode != OutputMode::Complete || self.session_key.is_some());
        let watermark = watermarks.eviction.filter(|_| mode != OutputMode::Complete);
        let time_key = self.time_column(&state_schema);
        let mut dropped_late = 0;
        if let (Some(w), Some(key)) = (late_events, time_key) {
            // A row is late when its event time is at or before the late-events
            // watermark; a deduplication within the watermark keeps event time + delay.
            let late_before = w + self.dedup_delay_ms.unwrap_or(0);
            for batch in &mut batch_states {
                let (ended, open) = split_ended(batch, key, late_before)?;
                dropped_late += ended.num_rows();
                *batch = open;
            }
        }
        let Some(state) = self.state.as_mut() else {
            return Err(Error::Unsupported(
                "the aggregation's state was not opened before its first batch".into(),
            ));
        };
        let routed = state.split_all(&batch_states)?;
        let evict_held = match (watermark, self.evicted_up_to) {
            (Some(w), Some(done)) => w > done,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let fold = Fold {
            schema: state_schema.clone(),
            key_columns: self.key_columns,
            ended_at: watermark.zip(time_key),
            evict_held,
            dedup: self.dedup,
        };
        let changes = match self.session_key {
            Some(session) => {
                let routed = routed
                    .iter()
                    .map(|pieces| concat_batches(&state_schema, pieces))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                fold_sessions(state, routed, partial_exec, session, &fold, task.clone()).await?
            }
            None => {
                let merge = GroupMerge::new(
                    state_schema.clone(),
                    self.key_columns,
                    partial_exec.aggr_expr(),
                )?;
                let work: Vec<_> = state.partitions.iter_mut().zip(routed).collect();
                par_map(work, |(partition, pieces)| {
                    let batch = concat_batches(&state_schema, &pieces)?;
                    fold.keyed(partition, batch, &merge)
                })?
            }
        };
        let rows_read: usize = changes.iter().map(|c| c.read).sum();
        if evict_held {
            self.evicted_up_to = watermark;
        }

        let parts = |pick: fn(&PartitionChange) -> &RecordBatch| -> Result<RecordBatch> {
            let batches: Vec<RecordBatch> = changes.iter().map(|c| pick(c).clone()).collect();
            Ok(concat_batches(&state_schema, &batches)?)
        };
        let updated = parts(|c| &c.updated)?;
        let evicted = parts(|c| &c.evicted)?;
        let removed_rows: usize = changes.iter().map(|c| c.removed.num_rows()).sum();

        // Run the rest of the plan (Final step, HAVING, projection, ORDER BY) over the
        // state the output mode asks for.
        // `updated` is never evicted in the same batch: its rows passed the same
        // watermark test that eviction applies (late ones were dropped above).
        let shown = match mode {
            OutputMode::Complete => concat_batches(&state_schema, &state.live_rows()?)?,
            _ if self.dedup => {
                let fresh: Vec<RecordBatch> =
                    changes.iter().filter_map(|c| c.fresh.clone()).collect();
                concat_batches(&state_schema, &fresh)?
            }
            OutputMode::Append => evicted.clone(),
            OutputMode::Update => updated.clone(),
        };
        // The aggregate's output over them: evaluated here by group number when the
        // top step allows it (see `group_merge::final_output`), else by DataFusion's
        // Final step over the states.
        let (target, replacement): (_, Arc<dyn ExecutionPlan>) =
            match final_output(&plan, &top, &shown, self.key_columns)? {
                Some(parts) => (
                    top.clone(),
                    MemorySourceConfig::try_new_exec(&parts, top.schema(), None)?,
                ),
                None => {
                    let source: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
                        &[vec![shown]],
                        state_schema.clone(),
                        None,
                    )?;
                    let replacement: Arc<dyn ExecutionPlan> = if Arc::ptr_eq(&replace, &partial) {
                        source
                    } else {
                        Arc::new(AggregateExec::try_new(
                            AggregateMode::Final,
                            top_exec.group_expr().as_final(),
                            top_exec.aggr_expr().to_vec(),
                            vec![None; top_exec.aggr_expr().len()],
                            source,
                            top_exec.input_schema(),
                        )?)
                    };
                    (replace.clone(), replacement)
                }
            };
        let rest = plan
            .transform_down(|node| {
                Ok(if Arc::ptr_eq(&node, &target) {
                    Transformed::new(
                        replacement.clone(),
                        true,
                        datafusion::common::tree_node::TreeNodeRecursion::Jump,
                    )
                } else {
                    Transformed::no(node)
                })
            })?
            .data;
        Ok(AggregationStep {
            plan: rest,
            rows_total: state.num_rows(),
            rows_updated: updated.num_rows(),
            rows_removed: removed_rows,
            rows_read,
            evicted: evicted.num_rows(),
            dropped_late,
            row_bytes: state.row_bytes(),
            index_bytes: state.index_bytes(),
            partitions: state.len(),
        })
    }

    /// The state column that decides, against the watermark, whether a batch's row is
    /// late and whether a kept row has expired: the event-time key for aggregations and
    /// `DISTINCT ON` by event time; the expiry time for a `DISTINCT ON` within the
    /// watermark.
    fn time_column(&self, schema: &SchemaRef) -> Option<usize> {
        if self.session_key.is_some() {
            return self.session_key;
        }
        if self.dedup_delay_ms.is_some() {
            return schema.fields().iter().position(|f| {
                f.name().starts_with(DEDUP_EXPIRES_AT)
                    && matches!(f.data_type(), DataType::Timestamp(_, _))
            });
        }
        event_time_key(schema, self.key_columns)
    }

    /// Refuses, before any batch runs, an aggregate function whose partial states cannot
    /// be merged (a user-defined aggregate without `merge_batch`): the streaming state
    /// is exactly such merges, batch after batch. Each accumulator is asked to merge an
    /// empty state.
    pub fn check_mergeable(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
        let located = self.locate(plan)?;
        let partial = located
            .partial
            .downcast_ref::<AggregateExec>()
            .expect("a partial AggregateExec");
        for aggregate in partial.aggr_expr() {
            let empty: Vec<ArrayRef> = aggregate
                .state_fields()?
                .iter()
                .map(|f| new_empty_array(f.data_type()))
                .collect();
            let merged = aggregate
                .create_accumulator()
                .and_then(|mut accumulator| accumulator.merge_batch(&empty));
            if let Err(e) = merged {
                return Err(Error::Unsupported(format!(
                    "the aggregate {} cannot merge partial states, so it cannot run over an \
                     unbounded table (its state must combine across micro-batches): {e}",
                    aggregate.name()
                )));
            }
        }
        Ok(())
    }

    /// The schema of the state rows (group columns, then accumulator states) in `plan`.
    pub fn state_schema(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<SchemaRef> {
        Ok(self.locate(plan)?.partial.schema())
    }

    /// Finds, in a batch's physical plan, the aggregate's top step and the step whose
    /// output is partial state: the Partial step under a Final one or, when DataFusion
    /// combined both into one Single step, a Partial step made from it.
    fn locate(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Located> {
        let top = self.find_physical(plan)?;
        let top_exec = top
            .downcast_ref::<AggregateExec>()
            .expect("find_physical returns an AggregateExec");
        let (partial, replace): (Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>) =
            match top_exec.mode() {
                AggregateMode::Single | AggregateMode::SinglePartitioned => {
                    let partial = AggregateExec::try_new(
                        AggregateMode::Partial,
                        top_exec.group_expr().clone(),
                        top_exec.aggr_expr().to_vec(),
                        top_exec.filter_expr().to_vec(),
                        top_exec.input().clone(),
                        top_exec.input_schema(),
                    )?;
                    (Arc::new(partial), top.clone())
                }
                _ => {
                    let partial = find_partial(&top).ok_or_else(|| {
                        Error::Unsupported(
                            "this aggregation's plan has no partial step millrace can keep \
                             state for"
                                .to_string(),
                        )
                    })?;
                    (partial.clone(), partial)
                }
            };
        Ok(Located {
            top,
            partial,
            replace,
        })
    }

    /// The physical aggregate step producing the logical aggregate's output.
    fn find_physical(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        // Every final step, with its output column names.
        let mut finals: Vec<(Arc<dyn ExecutionPlan>, Vec<String>)> = Vec::new();
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<AggregateExec>()
                && !matches!(
                    exec.mode(),
                    AggregateMode::Partial | AggregateMode::PartialReduce
                )
            {
                let names = exec
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                finals.push((node.clone(), names));
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        if let Some((node, _)) = finals.iter().find(|(_, names)| *names == self.output_names) {
            return Ok(node.clone());
        }
        // The optimizer drops aggregates nothing above uses: then the step is the one
        // with the same group columns (and no more columns than planned).
        let groups = &self.output_names[..self.key_columns];
        let mut candidates = finals.iter().filter(|(_, names)| {
            names.len() <= self.output_names.len() && names.starts_with(groups)
        });
        match (candidates.next(), candidates.next()) {
            (Some((node, _)), None) if self.key_columns > 0 => Ok(node.clone()),
            _ => Err(Error::Unsupported(format!(
                "could not find the streaming aggregation (columns {:?}) in the physical plan:\n{}",
                self.output_names,
                datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
            ))),
        }
    }
}

/// What every partition's fold of one batch needs to know.
struct Fold {
    schema: SchemaRef,
    key_columns: usize,
    /// The eviction watermark (ms) and the event-time key column, when both exist:
    /// groups that ended at or before it leave the state.
    ended_at: Option<(i64, usize)>,
    /// Whether held groups must be scanned for eviction (the watermark moved).
    evict_held: bool,
    /// A deduplication: the batch's output is the groups not held before.
    dedup: bool,
}

impl Fold {
    fn empty(&self) -> RecordBatch {
        RecordBatch::new_empty(self.schema.clone())
    }

    /// The held groups the watermark passed since the last eviction, removed from
    /// `rows` (a scan of their event-time column, only when the watermark moved).
    fn evict_passed(&self, rows: &mut KeyedRows) -> Result<RecordBatch> {
        match (self.evict_held, self.ended_at) {
            (true, Some((w, key))) => {
                let passed = rows.live_rows_where(|b| ended_mask(b, key, w))?;
                rows.remove(&passed)?;
                Ok(passed)
            }
            _ => Ok(self.empty()),
        }
    }

    /// Folds one partition's share of the batch (`batch`: partial states) into its
    /// state: each key looked up once ([`KeyedRows::touch`]), the touched groups' held
    /// rows merged with the batch's by group number ([`GroupMerge`]), the result
    /// written back through the same lookup ([`KeyedRows::settle`]).
    fn keyed(
        &self,
        partition: &mut StatePartition,
        batch: RecordBatch,
        merge: &GroupMerge,
    ) -> Result<PartitionChange> {
        let rows = &mut partition.rows;
        let touched = rows.touch(&batch)?;
        let merged = (|| -> Result<_> {
            let (held, held_groups) = rows.held_rows(&touched)?;
            let merged = merge.merge(&held, &held_groups, &batch, &touched)?;
            let ended = match self.ended_at {
                Some((w, key)) => Some(ended_mask(&merged, key, w)?),
                None => None,
            };
            Ok((held.num_rows(), merged, ended))
        })();
        let (read, merged, ended) = match merged {
            Ok(merged) => merged,
            Err(e) => {
                rows.abandon(touched);
                return Err(e);
            }
        };
        let fresh = if self.dedup {
            let new: BooleanArray = (0..touched.groups())
                .map(|g| Some(!touched.was_held(g)))
                .collect();
            Some(filter_record_batch(&merged, &new)?)
        } else {
            None
        };
        // Every touched group is updated. One that also ended with this batch (between
        // the two watermarks) is shown by update mode, emitted by append, and leaves
        // the state.
        let updated = merged.clone();
        let (ended, keep) = match ended {
            Some(ended) => (filter_record_batch(&merged, &ended)?, Some(not(&ended)?)),
            None => (self.empty(), None),
        };
        rows.settle(touched, merged, keep.as_ref())?;
        let passed = self.evict_passed(rows)?;
        let evicted = concat_batches(&self.schema, &[ended, passed])?;
        rows.maybe_compact()?;
        partition.set_pending(updated.clone(), evicted.clone());
        Ok(PartitionChange {
            updated,
            removed: evicted.clone(),
            evicted,
            fresh,
            read,
        })
    }
}

/// Folds a batch's partial states into session-window state: per partition, the held
/// sessions of the batch's other key values are read, sessions that overlap are merged
/// (`merge_sessions`), and DataFusion's `PartialReduce` step merges the states of the
/// sessions that became one; the touched sessions are written back.
async fn fold_sessions(
    state: &mut PartitionedState,
    routed: Vec<RecordBatch>,
    partial_exec: &AggregateExec,
    session: usize,
    fold: &Fold,
    task: Arc<TaskContext>,
) -> Result<Vec<PartitionChange>> {
    let (schema, key_columns) = (&fold.schema, fold.key_columns);
    // 1. Per partition, the held sessions of the batch's other key values, and the
    //    sessions of both rewritten to their merged bounds.
    let reads = par_map(
        state.partitions.iter().zip(&routed).collect(),
        |(partition, batch)| -> Result<Read> {
            let original = sessions_of_keys_of(&partition.rows, batch, session, key_columns)?;
            let merged = merge_sessions(
                &[original.clone(), batch.clone()],
                batch.schema_ref(),
                session,
                key_columns,
            )?;
            Ok(Read {
                held: merged[0].clone(),
                new: merged[1].clone(),
                original,
            })
        },
    )?;

    // 2. Merge held and new states, partitions in parallel: states in, states out.
    let inputs: Vec<Vec<RecordBatch>> = reads
        .iter()
        .map(|r| vec![r.held.clone(), r.new.clone()])
        .collect();
    let merged = AggregateExec::try_new(
        AggregateMode::PartialReduce,
        partial_exec.group_expr().as_final(),
        partial_exec.aggr_expr().to_vec(),
        vec![None; partial_exec.aggr_expr().len()],
        MemorySourceConfig::try_new_exec(&inputs, schema.clone(), None)?,
        partial_exec.input_schema(),
    )?;
    let merged = collect_partitioned(Arc::new(merged), task).await?;
    if merged.len() != state.partitions.len() {
        return Err(Error::Unsupported(format!(
            "the merge of the state produced {} partitions for {} state partitions",
            merged.len(),
            state.partitions.len()
        )));
    }

    // 3. Per partition: split off the ended sessions, write the merged ones back,
    //    evict the held sessions the watermark passed.
    let work: Vec<_> = state.partitions.iter_mut().zip(merged).zip(reads).collect();
    par_map(work, |((partition, merged), read)| {
        let merged = concat_batches(schema, &merged)?;
        let (ended, open) = match fold.ended_at {
            Some((w, key)) => split_ended(&merged, key, w)?,
            None => (fold.empty(), merged),
        };
        let rows = &mut partition.rows;
        // The touched sessions' new rows are `open` (and `ended`); the updated groups
        // are those with keys of this batch's (merged) sessions. The touched held
        // sessions' own bounds, before merging, are the keys to drop; untouched held
        // sessions stay unless the watermark passed them.
        let updated = rows_with_keys_of(&open, &read.new, key_columns)?;
        let merged_away = rows_without_keys_of(&read.original, &open, key_columns)?;
        rows.remove(&read.original)?;
        rows.upsert(open)?;
        let passed = fold.evict_passed(rows)?;
        let removed = concat_batches(schema, &[merged_away, passed.clone()])?;
        let evicted = concat_batches(schema, &[ended, passed])?;
        rows.maybe_compact()?;
        partition.set_pending(updated.clone(), removed.clone());
        Ok(PartitionChange {
            updated,
            evicted,
            removed,
            fresh: None,
            read: read.held.num_rows(),
        })
    })
}

/// The key column that is event time: a `window()` struct (`{start, end}` timestamps)
/// or a timestamp, the first of either among the group columns.
pub fn event_time_key(schema: &SchemaRef, key_columns: usize) -> Option<usize> {
    (0..key_columns).find(|&i| {
        let data_type = schema.field(i).data_type();
        is_window_struct(data_type) || matches!(data_type, DataType::Timestamp(_, _))
    })
}

/// Leaves out the rows whose `window()` group column (a `{start, end}` struct) is NULL:
/// a NULL event time falls in no window, so, as in Spark, it forms no group.
fn drop_null_windows(batch: &RecordBatch, key_columns: usize) -> Result<RecordBatch> {
    let schema = batch.schema();
    let windows: Vec<usize> = (0..key_columns)
        .filter(|&i| is_window_struct(schema.field(i).data_type()))
        .filter(|&i| batch.column(i).null_count() > 0)
        .collect();
    if windows.is_empty() {
        return Ok(batch.clone());
    }
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|row| Some(windows.iter().all(|&i| batch.column(i).is_valid(row))))
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

/// Whether a column type is an event-time window: a `{start, end}` struct of timestamps.
fn is_window_struct(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(fields) => {
            fields.len() == 2
                && fields[0].name() == "start"
                && fields[1].name() == "end"
                && matches!(fields[1].data_type(), DataType::Timestamp(_, _))
        }
        _ => false,
    }
}

/// The rows of `rows` whose key (first `key_columns` columns) is not in `known`.
fn rows_without_keys_of(
    rows: &RecordBatch,
    known: &RecordBatch,
    key_columns: usize,
) -> Result<RecordBatch> {
    if key_columns == 0 {
        return Ok(if known.num_rows() > 0 {
            rows.slice(0, 0)
        } else {
            rows.clone()
        });
    }
    let converter = RowConverter::new(
        (0..key_columns)
            .map(|i| SortField::new(rows.schema().field(i).data_type().clone()))
            .collect(),
    )?;
    let known_rows = converter.convert_columns(&known.columns()[..key_columns])?;
    let known: HashSet<&[u8]> = known_rows.iter().map(|r| r.data()).collect();
    let candidates = converter.convert_columns(&rows.columns()[..key_columns])?;
    let fresh: BooleanArray = candidates
        .iter()
        .map(|r| Some(!known.contains(r.data())))
        .collect();
    Ok(filter_record_batch(rows, &fresh)?)
}

/// The rows of `state` whose key appears in `touched` (all rows for a global aggregate
/// that this batch touched).
fn rows_with_keys_of(
    state: &RecordBatch,
    touched: &RecordBatch,
    key_columns: usize,
) -> Result<RecordBatch> {
    if key_columns == 0 {
        return Ok(if touched.num_rows() > 0 {
            state.clone()
        } else {
            state.slice(0, 0)
        });
    }
    let converter = RowConverter::new(
        (0..key_columns)
            .map(|i| SortField::new(state.schema().field(i).data_type().clone()))
            .collect(),
    )?;
    let touched_rows = converter.convert_columns(&touched.columns()[..key_columns])?;
    let keys: HashSet<&[u8]> = touched_rows.iter().map(|r| r.data()).collect();
    let rows = converter.convert_columns(&state.columns()[..key_columns])?;
    let mask: BooleanArray = rows.iter().map(|r| Some(keys.contains(r.data()))).collect();
    Ok(filter_record_batch(state, &mask)?)
}

/// The held sessions that may merge with `batch`'s: those with the same values in the
/// key columns other than the session column (`session`). Found by a scan of those
/// columns (there is no index on part of a key), so only these sessions are read,
/// merged and written again; with no other key column, every held session.
fn sessions_of_keys_of(
    rows: &KeyedRows,
    batch: &RecordBatch,
    session: usize,
    key_columns: usize,
) -> Result<RecordBatch> {
    let others: Vec<usize> = (0..key_columns).filter(|&i| i != session).collect();
    if others.is_empty() {
        return rows.live_rows();
    }
    if batch.num_rows() == 0 || rows.is_empty() {
        return Ok(RecordBatch::new_empty(rows.schema().clone()));
    }
    let converter = RowConverter::new(
        others
            .iter()
            .map(|&i| SortField::new(batch.schema().field(i).data_type().clone()))
            .collect(),
    )?;
    let encode = |b: &RecordBatch| {
        let columns: Vec<ArrayRef> = others.iter().map(|&i| b.column(i).clone()).collect();
        converter.convert_columns(&columns)
    };
    let batch_keys = encode(batch)?;
    let wanted: HashSet<&[u8]> = batch_keys.iter().map(|r| r.data()).collect();
    rows.live_rows_where(|chunk| {
        let keys = encode(chunk)?;
        Ok(keys
            .iter()
            .map(|r| Some(wanted.contains(r.data())))
            .collect())
    })
}

/// Which rows' event time column `key` ended at or before `watermark` (ms).
fn ended_mask(batch: &RecordBatch, key: usize, watermark: i64) -> Result<BooleanArray> {
    let column = batch.column(key);
    let time = match column.data_type() {
        DataType::Struct(_) => column.as_struct().column(1).clone(),
        _ => column.clone(),
    };
    let millis = cast(&time, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let millis = millis.as_primitive::<TimestampMillisecondType>();
    Ok(millis
        .iter()
        .map(|t| Some(t.is_some_and(|t| t <= watermark)))
        .collect())
}

/// Splits state rows into those whose event time column `key` ended at or before
/// `watermark` (ms) — a window's `end`, or the timestamp itself — and the others.
pub(crate) fn split_ended(
    batch: &RecordBatch,
    key: usize,
    watermark: i64,
) -> Result<(RecordBatch, RecordBatch)> {
    let ended = ended_mask(batch, key, watermark)?;
    let open = not(&ended)?;
    Ok((
        filter_record_batch(batch, &ended)?,
        filter_record_batch(batch, &open)?,
    ))
}

/// Where the aggregation sits in one batch's physical plan.
struct Located {
    /// The step producing the aggregate's output (Final, FinalPartitioned or Single).
    top: Arc<dyn ExecutionPlan>,
    /// A step producing this batch's partial state.
    partial: Arc<dyn ExecutionPlan>,
    /// The node to replace with the kept state: `partial` itself, or `top` when it is
    /// a Single step (then a Final step over the state takes its place).
    replace: Arc<dyn ExecutionPlan>,
}

/// The Partial aggregate step under a Final one (through repartitioning).
fn find_partial(top: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let mut node = top.children().first().map(|c| (*c).clone())?;
    loop {
        if let Some(exec) = node.downcast_ref::<AggregateExec>() {
            return (*exec.mode() == AggregateMode::Partial).then_some(node);
        }
        let next = node.children().first().map(|c| (*c).clone())?;
        node = next;
    }
}
