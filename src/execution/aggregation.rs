//! Incremental aggregation: the state of a streaming `GROUP BY` is DataFusion's own
//! partial aggregate state, kept across batches; raw rows are never kept.
//!
//! DataFusion plans an aggregation in two steps: `Partial` (rows → one state row per
//! group: counts, sums, HyperLogLog sketches, ...) and `Final` (states → values).
//! Per micro-batch this operator
//!
//! 1. runs the `Partial` step of the batch's physical plan over the batch's rows;
//! 2. merges those states into the stored ones with DataFusion's `PartialReduce` mode
//!    (states in, states out), giving the new state (one row per group);
//! 3. puts the new state (complete mode) or only the groups this batch touched (update
//!    mode) where the `Partial` step was, so the plan's own `Final` step, HAVING,
//!    projection and ORDER BY produce the batch's output rows.

use std::collections::HashSet;
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
use datafusion::physical_plan::{ExecutionPlan, collect};

use super::operator::Watermarks;
use super::sessions::merge_sessions;
use crate::error::{Error, Result};
use crate::functions::SESSION_WINDOW;
use crate::planning::{DEDUP_EXPIRES_AT, dedup_delay, is_distinct_on, reads_stream};
use crate::sink::OutputMode;

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
    /// One row per group: the group values, then the accumulators' states.
    state: Option<RecordBatch>,
}

/// What [`StreamingAggregation::find`] learns about an aggregation node.
struct Found {
    output_names: Vec<String>,
    key_columns: usize,
    dedup: bool,
    session_key: Option<usize>,
    dedup_delay_ms: Option<i64>,
}

/// What one batch did to the state (for progress and the state store).
#[derive(Debug)]
pub struct AggregationStep {
    /// The state after the batch (one row per group).
    pub state: RecordBatch,
    /// The state rows of the groups this batch updated.
    pub updated: RecordBatch,
    /// The batch's physical plan with this aggregation's part replaced by its output
    /// for the batch: running it gives the rows above the aggregation.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Groups dropped from the state because the watermark passed them.
    pub evicted: RecordBatch,
    /// Every group dropped from the state: the evicted ones and, with session windows,
    /// the sessions merged into longer ones (the state store deletes their keys).
    pub removed: RecordBatch,
    /// Partial-state rows of this batch dropped as late (their window had ended).
    pub dropped_late: usize,
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

    /// Sets the state (restored from the state store on restart).
    pub fn restore(&mut self, state: RecordBatch) {
        self.state = Some(state);
    }

    /// The current state, if any batch has run or a state was restored.
    pub fn state(&self) -> Option<&RecordBatch> {
        self.state.as_ref()
    }

    /// Folds one batch into the state and produces the batch's output in `mode`.
    /// `plan` is the batch's whole physical plan, as DataFusion planned it (with the
    /// parts of stateful operators below this one already replaced by their output);
    /// the returned step's `plan` has this aggregation replaced too.
    ///
    /// With a key that is event time (a `window()` or the watermarked column), as in
    /// Spark: this batch's partial states of groups that ended at or before the
    /// late-events watermark (the previous batch's) are dropped as late; groups that
    /// ended at or before the eviction watermark (this batch's) leave the state, and in
    /// append mode they are the batch's output (each emitted once). Complete mode keeps
    /// every group and drops no late row, except for session windows, whose late rows
    /// Spark drops in every mode. Rows whose `window()` is NULL (a NULL time) form no
    /// group, as in Spark.
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

        // Deduplication emits the rows it had never seen, and merged sessions remove
        // their old bounds: keep the old keys to tell.
        let previous = self.state.clone();
        let mut stored = self.state.clone();
        if let Some(session) = self.session_key {
            let mut inputs: Vec<RecordBatch> = stored.iter().cloned().collect();
            inputs.append(&mut batch_states);
            let mut merged = merge_sessions(&inputs, &state_schema, session, self.key_columns)?;
            if stored.is_some() {
                stored = Some(merged.remove(0));
            }
            batch_states = merged;
        }
        // Merge the stored states with this batch's: states in, states out.
        let mut inputs: Vec<RecordBatch> = stored.into_iter().collect();
        inputs.extend(batch_states.iter().cloned());
        let merged = AggregateExec::try_new(
            AggregateMode::PartialReduce,
            partial_exec.group_expr().as_final(),
            partial_exec.aggr_expr().to_vec(),
            vec![None; partial_exec.aggr_expr().len()],
            MemorySourceConfig::try_new_exec(&[inputs], state_schema.clone(), None)?,
            partial_exec.input_schema(),
        )?;
        let state = concat_batches(
            &state_schema,
            &collect(Arc::new(merged), task.clone()).await?,
        )?;
        let updated = self.rows_with_keys_of(&state, &batch_states, &state_schema)?;
        let (evicted, state) = match (watermark, time_key) {
            (Some(w), Some(key)) => split_ended(&state, key, w)?,
            _ => (RecordBatch::new_empty(state_schema.clone()), state),
        };
        let removed = match (&previous, self.session_key) {
            (Some(previous), Some(_)) => self.rows_without_keys_of(previous, &state)?,
            _ => evicted.clone(),
        };

        // Run the rest of the plan (Final step, HAVING, projection, ORDER BY) over the
        // state the output mode asks for.
        // A group this batch updated may also be evicted by it (it ended between the
        // two watermarks): update mode shows it, append mode emits it, once, as Spark.
        let shown = match mode {
            OutputMode::Complete => state.clone(),
            _ if self.dedup => match &previous {
                Some(previous) => self.rows_without_keys_of(&updated, previous)?,
                None => updated.clone(),
            },
            OutputMode::Append => evicted.clone(),
            OutputMode::Update => updated.clone(),
        };
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![shown]], state_schema.clone(), None)?;
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
        let rest = plan
            .transform_up(|node| {
                Ok(if Arc::ptr_eq(&node, &replace) {
                    Transformed::yes(replacement.clone())
                } else {
                    Transformed::no(node)
                })
            })?
            .data;
        self.state = Some(state.clone());
        Ok(AggregationStep {
            state,
            updated,
            plan: rest,
            evicted,
            removed,
            dropped_late,
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

    /// The rows of `rows` whose key is not in `known`.
    fn rows_without_keys_of(&self, rows: &RecordBatch, known: &RecordBatch) -> Result<RecordBatch> {
        let fields = (0..self.key_columns)
            .map(|i| SortField::new(rows.schema().field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let known_rows = converter.convert_columns(&known.columns()[..self.key_columns])?;
        let known: HashSet<Vec<u8>> = known_rows.iter().map(|r| r.as_ref().to_vec()).collect();
        let candidates = converter.convert_columns(&rows.columns()[..self.key_columns])?;
        let fresh: BooleanArray = candidates
            .iter()
            .map(|r| Some(!known.contains(r.as_ref())))
            .collect();
        Ok(filter_record_batch(rows, &fresh)?)
    }

    /// The rows of `state` whose key appears in `touched` (all rows for a global aggregate
    /// that this batch touched).
    fn rows_with_keys_of(
        &self,
        state: &RecordBatch,
        touched: &[RecordBatch],
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let touched_rows: usize = touched.iter().map(|b| b.num_rows()).sum();
        if self.key_columns == 0 {
            return Ok(if touched_rows > 0 {
                state.clone()
            } else {
                RecordBatch::new_empty(schema.clone())
            });
        }
        let fields = (0..self.key_columns)
            .map(|i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let mut keys = HashSet::new();
        for batch in touched {
            let rows = converter.convert_columns(&batch.columns()[..self.key_columns])?;
            keys.extend(rows.iter().map(|r| r.as_ref().to_vec()));
        }
        let rows = converter.convert_columns(&state.columns()[..self.key_columns])?;
        let mask: BooleanArray = rows
            .iter()
            .map(|r| Some(keys.contains(r.as_ref())))
            .collect();
        Ok(filter_record_batch(state, &mask)?)
    }
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

/// Splits state rows into those whose event time column `key` ended at or before
/// `watermark` (ms) — a window's `end`, or the timestamp itself — and the others.
fn split_ended(
    batch: &RecordBatch,
    key: usize,
    watermark: i64,
) -> Result<(RecordBatch, RecordBatch)> {
    let column = batch.column(key);
    let time = match column.data_type() {
        DataType::Struct(_) => column.as_struct().column(1).clone(),
        _ => column.clone(),
    };
    let millis = cast(&time, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let millis = millis.as_primitive::<TimestampMillisecondType>();
    let ended: BooleanArray = millis
        .iter()
        .map(|t| Some(t.is_some_and(|t| t <= watermark)))
        .collect();
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
