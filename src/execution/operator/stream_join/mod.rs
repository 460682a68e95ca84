//! Stream-stream joins (Spark's `StreamingSymmetricHashJoinExec`): INNER, LEFT / RIGHT /
//! FULL OUTER, LEFT SEMI and LEFT ANTI joins of two unbounded inputs, with the state of
//! each side bounded by the watermark and the time condition of the join.
//!
//! Pieces, along the data path:
//! - [`plan`]: a DataFusion `Join` of two streams becomes a [`StreamJoinNode`] with its
//!   [`StreamJoinSpec`] (keys, pre-join filters, residual condition, per side the
//!   [`Bound`] derived by interval arithmetic), or is refused with what to add;
//! - [`StreamJoinExec`]: the node's physical placeholder (two children, the inputs); it
//!   cannot run on its own;
//! - [`StreamJoinOperator`]: the [`StatefulOperator`] the batch loop drives. Per batch:
//!   drop late rows (late-events watermark), set aside rows that can never match
//!   (NULL key, failing a one-side predicate: emitted at once by an outer or anti
//!   join, "early state exclusion"), split the rest by state partition (a hash of the
//!   equality key), then in each partition the batch has rows for or that may evict,
//!   in parallel: match the new left rows with the stored right rows, store them,
//!   match the new right rows with the stored left rows (which now include this
//!   batch's, so a pair arriving in one batch is found once), store them, then evict
//!   the rows the eviction watermark has passed on each side, emitting the
//!   never-matched ones of an outer or anti side;
//! - [`partitions`]: the state split into `millrace.state_partitions` partitions, the
//!   same hash on both sides (versions under `state/<operator id>/left/<p>/` and
//!   `.../right/<p>/`; the single-partition layout of earlier versions is read in
//!   place);
//! - [`side`]: one side's state in one partition (rows bucketed by expiry, key index,
//!   matched flags, its versions).

mod partitions;
mod plan;
mod side;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, prep_null_mask_filter, take,
};
use datafusion::arrow::datatypes::{
    DataType, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, create_physical_expr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};

use super::{OperatorBatch, OperatorMetrics, StatefulOperator, Watermarks, timed};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateStoreConfig;
use crate::state::partitioned::par_map;
use partitions::{JoinPartition, JoinState, partition_of};
pub(crate) use plan::event_time_column;
pub use plan::{
    Bound, SideSpec, StreamJoinNode, StreamJoinSpec, WatermarkOf, rewrite_stream_joins,
};
use side::{Loc, NewRows, SideState};

/// Spark's name of the operator in progress reports.
const NAME: &str = "symmetricHashJoin";

/// The physical placeholder of a [`StreamJoinNode`]: its children are the two inputs;
/// the operator replaces it by its output every batch.
#[derive(Debug)]
pub struct StreamJoinExec {
    spec: Arc<StreamJoinSpec>,
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl StreamJoinExec {
    fn new(
        spec: Arc<StreamJoinSpec>,
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
    ) -> Self {
        let schema: SchemaRef = Arc::new(spec.output_schema.as_arrow().clone());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        StreamJoinExec {
            spec,
            left,
            right,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StreamJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamJoinExec: type={}", self.spec.join_type)
    }
}

impl ExecutionPlan for StreamJoinExec {
    fn name(&self) -> &'static str {
        "StreamJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let right = children.swap_remove(1);
        let left = children.swap_remove(0);
        Ok(Arc::new(StreamJoinExec::new(
            self.spec.clone(),
            left,
            right,
        )))
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        Err(datafusion::error::DataFusionError::Plan(
            "a stream-stream join runs only inside a streaming query".to_string(),
        ))
    }
}

/// Plans a [`StreamJoinNode`] (called by the streaming query planner).
pub(crate) fn plan_node(
    node: &dyn UserDefinedLogicalNode,
    physical_inputs: &[Arc<dyn ExecutionPlan>],
) -> Option<Arc<dyn ExecutionPlan>> {
    let node = node.as_any().downcast_ref::<StreamJoinNode>()?;
    Some(Arc::new(StreamJoinExec::new(
        node.spec.clone(),
        physical_inputs[0].clone(),
        physical_inputs[1].clone(),
    )))
}

/// The registration of this kind (see [`super::KINDS`]).
pub(super) fn from_node(node: &LogicalPlan) -> Option<Box<dyn StatefulOperator>> {
    let LogicalPlan::Extension(extension) = node else {
        return None;
    };
    let node = extension.node.as_any().downcast_ref::<StreamJoinNode>()?;
    Some(Box::new(StreamJoinOperator {
        spec: node.spec.clone(),
        compiled: None,
        state: None,
        pending: None,
    }))
}

/// The [`StatefulOperator`] of a stream-stream join.
#[derive(Debug)]
pub struct StreamJoinOperator {
    spec: Arc<StreamJoinSpec>,
    compiled: Option<Compiled>,
    state: Option<JoinState>,
    pending: Option<Pending>,
}

/// The join's expressions, compiled against the physical inputs.
#[derive(Debug)]
struct Compiled {
    left_keys: Vec<Arc<dyn PhysicalExpr>>,
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    converter: RowConverter,
    left_filter: Option<Arc<dyn PhysicalExpr>>,
    right_filter: Option<Arc<dyn PhysicalExpr>>,
    residual: Option<Arc<dyn PhysicalExpr>>,
    combined_schema: SchemaRef,
    output_schema: SchemaRef,
}

/// What the last step did, until it is committed.
#[derive(Debug, Default)]
struct Pending {
    dropped_left: u64,
    dropped_right: u64,
    outer_rows: u64,
    updates_ms: u64,
}

/// One side's new rows, after late rows were dropped.
struct Prepared {
    /// Rows that may match (stored).
    rows: RecordBatch,
    keys: Vec<Box<[u8]>>,
    expires: Vec<Option<i64>>,
    /// Rows that can never match (NULL key, failing the side's own predicate, no event
    /// time on a bounded side).
    excluded: RecordBatch,
    dropped: u64,
}

fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
}

fn mask(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let array = evaluate(expr, batch)?;
    let Some(array) = array.as_boolean_opt() else {
        return Err(Error::Data(format!(
            "the join condition {expr} is not boolean"
        )));
    };
    // NULL (unknown) counts as false.
    Ok(if array.null_count() > 0 {
        prep_null_mask_filter(array)
    } else {
        array.clone()
    })
}

/// A timestamp column as ns since the epoch (time zone ignored: the stored instant).
fn timestamps_ns(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let scale = |values: Box<dyn Iterator<Item = Option<i64>> + '_>, per: i64| {
        values.map(|v| v.map(|v| v.saturating_mul(per))).collect()
    };
    Ok(match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => scale(
            Box::new(array.as_primitive::<TimestampSecondType>().iter()),
            1_000_000_000,
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => scale(
            Box::new(array.as_primitive::<TimestampMillisecondType>().iter()),
            1_000_000,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => scale(
            Box::new(array.as_primitive::<TimestampMicrosecondType>().iter()),
            1_000,
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => scale(
            Box::new(array.as_primitive::<TimestampNanosecondType>().iter()),
            1,
        ),
        DataType::Struct(_) => {
            // An event-time window: its end.
            let window = array.as_struct();
            let ends = timestamps_ns(window.column(1))?;
            ends.into_iter()
                .enumerate()
                .map(|(i, e)| e.filter(|_| window.is_valid(i)))
                .collect()
        }
        other => {
            return Err(Error::Data(format!(
                "the join's event-time column has type {other}, not a timestamp"
            )));
        }
    })
}

fn ceil_ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000) + i64::from(ns.rem_euclid(1_000_000) != 0)
}

impl StreamJoinOperator {
    /// The placeholder of this operator in `plan`.
    fn locate(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let mut found = None;
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<StreamJoinExec>()
                && Arc::ptr_eq(&exec.spec, &self.spec)
            {
                found = Some(node.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        found.ok_or_else(|| {
            Error::Unsupported(
                "stream-stream join: its node is missing from the physical plan".to_string(),
            )
        })
    }

    fn compile(&self, left: &SchemaRef, right: &SchemaRef) -> Result<Compiled> {
        let spec = &self.spec;
        let props = ExecutionProps::new();
        let physical = |e: &Expr, schema| -> Result<Arc<dyn PhysicalExpr>> {
            Ok(create_physical_expr(
                e,
                schema,
                &props,
                &PhysicalPlanningContext::default(),
            )?)
        };
        let left_keys = spec
            .left_keys
            .iter()
            .map(|e| physical(e, &spec.left_schema))
            .collect::<Result<Vec<_>>>()?;
        let right_keys = spec
            .right_keys
            .iter()
            .map(|e| physical(e, &spec.right_schema))
            .collect::<Result<Vec<_>>>()?;
        let key_types = left_keys
            .iter()
            .map(|k| Ok(k.data_type(left)?))
            .collect::<Result<Vec<_>>>()?;
        for (k, t) in right_keys.iter().zip(&key_types) {
            let rt = k.data_type(right)?;
            if rt != *t && !datafusion::arrow::compute::can_cast_types(&rt, t) {
                return Err(Error::Unsupported(format!(
                    "stream-stream join: the keys {k} ({rt}) and its left counterpart ({t}) \
                     cannot be compared"
                )));
            }
        }
        let converter = RowConverter::new(
            key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let optional = |e: &Option<Expr>, schema| -> Result<Option<Arc<dyn PhysicalExpr>>> {
            e.as_ref().map(|e| physical(e, schema)).transpose()
        };
        Ok(Compiled {
            left_filter: optional(&spec.left_filter, &spec.left_schema)?,
            right_filter: optional(&spec.right_filter, &spec.right_schema)?,
            residual: optional(&spec.residual, &spec.combined_schema)?,
            left_keys,
            right_keys,
            key_types,
            converter,
            combined_schema: Arc::new(spec.combined_schema.as_arrow().clone()),
            output_schema: Arc::new(spec.output_schema.as_arrow().clone()),
        })
    }

    fn side_spec(&self, left: bool) -> &SideSpec {
        if left {
            &self.spec.left
        } else {
            &self.spec.right
        }
    }
}

/// Each row's encoded key, and whether the row can match at all.
type EncodedKeys = (Vec<Box<[u8]>>, Vec<bool>);

impl Compiled {
    /// Each row's encoded key, and whether it can match at all (no NULL in a key
    /// compared with `=`).
    fn keys(&self, left: bool, batch: &RecordBatch, null_equal: &[bool]) -> Result<EncodedKeys> {
        let exprs = if left {
            &self.left_keys
        } else {
            &self.right_keys
        };
        let columns = exprs
            .iter()
            .zip(&self.key_types)
            .map(|(e, t)| {
                let array = evaluate(e, batch)?;
                Ok(if array.data_type() == t {
                    array
                } else {
                    cast(&array, t)?
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = self.converter.convert_columns(&columns)?;
        let valid = (0..batch.num_rows())
            .map(|i| {
                columns
                    .iter()
                    .zip(null_equal)
                    .all(|(c, n)| *n || c.is_valid(i))
            })
            .collect();
        let keys = rows.iter().map(|r| r.as_ref().into()).collect();
        Ok((keys, valid))
    }
}

#[async_trait::async_trait]
impl StatefulOperator for StreamJoinOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn open(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        dir: &Path,
        version: Option<u64>,
        config: StateStoreConfig,
    ) -> Result<()> {
        let exec = self.locate(plan)?;
        let (left_schema, right_schema) =
            (exec.children()[0].schema(), exec.children()[1].schema());
        let compiled = self.compile(&left_schema, &right_schema)?;
        let null_equal = &self.spec.null_equal;
        let state = JoinState::open(
            dir,
            version,
            config,
            (left_schema, right_schema),
            &|left, rows| Ok(compiled.keys(left, rows, null_equal)?.0),
        )?;
        self.compiled = Some(compiled);
        self.state = Some(state);
        Ok(())
    }

    async fn step(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        batch: &OperatorBatch,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let started = std::time::Instant::now();
        let exec = self.locate(&plan)?;
        let left_input = exec.children()[0].clone();
        let right_input = exec.children()[1].clone();
        let left_rows = concat_batches(
            &left_input.schema(),
            &collect(left_input.clone(), batch.task.clone()).await?,
        )?;
        let right_rows = concat_batches(
            &right_input.schema(),
            &collect(right_input.clone(), batch.task.clone()).await?,
        )?;
        let out = self.join(left_rows, right_rows, batch.watermarks)?;
        let compiled = self.compiled.as_ref().expect("opened");
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![out]], compiled.output_schema.clone(), None)?;
        let rest = plan
            .transform_up(|node| {
                Ok(if Arc::ptr_eq(&node, &exec) {
                    Transformed::yes(source.clone())
                } else {
                    Transformed::no(node)
                })
            })?
            .data;
        if let Some(pending) = &mut self.pending {
            pending.updates_ms = started.elapsed().as_millis() as u64;
        }
        Ok(rest)
    }

    fn finish_commit(&mut self) -> Result<()> {
        self.state
            .as_mut()
            .map_or(Ok(()), |state| state.wait_committed())
    }

    fn commit(&mut self, batch_id: u64) -> Result<OperatorMetrics> {
        let pending = self
            .pending
            .take()
            .expect("the loop commits an operator after its step");
        let state = self.state.as_mut().expect("opened");
        let (result, commit_ms) = timed(|| state.commit(batch_id));
        let (left, right) = result?;
        let (left_rows, right_rows) = (state.rows(true), state.rows(false));
        let (left_bytes, right_bytes) = (state.memory_bytes(true), state.memory_bytes(false));
        let partitions = state.len() as u64;
        let mut custom = BTreeMap::new();
        let mut put = |name: &str, value: usize| {
            custom.insert(name.to_string(), value as u64);
        };
        put("leftNumRowsTotal", left_rows);
        put("rightNumRowsTotal", right_rows);
        put("leftNumRowsUpdated", left.updated);
        put("rightNumRowsUpdated", right.updated);
        put("leftNumRowsRemoved", left.removed);
        put("rightNumRowsRemoved", right.removed);
        put("leftStateBytes", left_bytes);
        put("rightStateBytes", right_bytes);
        put(
            "leftNumRowsDroppedByWatermark",
            pending.dropped_left as usize,
        );
        put(
            "rightNumRowsDroppedByWatermark",
            pending.dropped_right as usize,
        );
        put("numOuterRowsEmitted", pending.outer_rows as usize);
        if self.spec.left.bound.is_none() {
            put("leftStateUnbounded", 1);
        }
        if self.spec.right.bound.is_none() {
            put("rightStateUnbounded", 1);
        }
        Ok(OperatorMetrics {
            operator_name: NAME.to_string(),
            num_rows_total: (left_rows + right_rows) as u64,
            num_rows_updated: (left.updated + right.updated) as u64,
            all_updates_time_ms: pending.updates_ms,
            num_rows_removed: (left.removed + right.removed) as u64,
            commit_time_ms: commit_ms,
            memory_used_bytes: (left_bytes + right_bytes) as u64,
            num_rows_dropped_by_watermark: pending.dropped_left + pending.dropped_right,
            // Spark's figures: shuffle partitions, and a store per side per partition.
            num_shuffle_partitions: partitions,
            num_state_store_instances: 2 * partitions,
            custom_metrics: custom,
            ..OperatorMetrics::default()
        })
    }

    fn output_watermarks(&self, input: Watermarks) -> Watermarks {
        // Spark's produceOutputWatermark: min(input, left state, right state)
        // watermarks; a row this join emits is never behind it.
        let shift = [self.spec.left.bound, self.spec.right.bound]
            .into_iter()
            .flatten()
            .map(|b| b.state_offset_ms())
            .fold(0, i64::min);
        Watermarks {
            late_events: input.late_events.map(|w| w.saturating_add(shift)),
            eviction: input.eviction.map(|w| w.saturating_add(shift)),
        }
    }

    fn evicts_by_watermark(&self, _mode: OutputMode) -> bool {
        self.spec.left.bound.is_some() || self.spec.right.bound.is_some()
    }

    fn update_keys(&self) -> Option<Vec<String>> {
        None
    }

    fn revises_output(&self, mode: OutputMode) -> bool {
        mode != OutputMode::Append
    }
}

impl StreamJoinOperator {
    /// Drops late rows, sets aside rows that can never match, computes keys and
    /// expiry of one side's new rows.
    fn prepare(&self, left: bool, input: RecordBatch, late: Option<i64>) -> Result<Prepared> {
        let compiled = self.compiled.as_ref().expect("opened");
        let side = self.side_spec(left);
        let mut dropped = 0;
        let input = match (late, side.late_column()) {
            (Some(w), Some(column)) if input.num_rows() > 0 => {
                let times = timestamps_ns(input.column(column))?;
                let limit = (w as i128) * 1_000_000;
                let keep: BooleanArray = times
                    .iter()
                    .map(|t| Some(t.is_none_or(|t| (t as i128) > limit)))
                    .collect();
                dropped = keep.false_count() as u64;
                filter_record_batch(&input, &keep)?
            }
            _ => input,
        };
        let (keys, valid) = compiled.keys(left, &input, &self.spec.null_equal)?;
        let own_filter = if left {
            &compiled.left_filter
        } else {
            &compiled.right_filter
        };
        let passes = match own_filter {
            Some(filter) if input.num_rows() > 0 => Some(mask(filter, &input)?),
            _ => None,
        };
        let expires: Vec<Option<i64>> = match side.bound {
            None => vec![None; input.num_rows()],
            Some(Bound::Key { column }) => timestamps_ns(input.column(column))?
                .into_iter()
                .map(|t| t.map(ceil_ms))
                .collect(),
            Some(Bound::Value { column, offset_ns }) => timestamps_ns(input.column(column))?
                .into_iter()
                .map(|t| t.map(|t| t.saturating_sub(offset_ns).div_euclid(1_000_000) + 1))
                .collect(),
        };
        let accept: Vec<bool> = (0..input.num_rows())
            .map(|i| {
                valid[i]
                    && passes.as_ref().is_none_or(|p| p.value(i))
                    && (side.bound.is_none() || expires[i].is_some())
            })
            .collect();
        let excluded = filter_record_batch(
            &input,
            &BooleanArray::from(accept.iter().map(|a| !a).collect::<Vec<_>>()),
        )?;
        let rows = filter_record_batch(&input, &BooleanArray::from(accept.clone()))?;
        Ok(Prepared {
            rows,
            keys: pick(keys, &accept),
            expires: pick(expires, &accept),
            excluded,
            dropped,
        })
    }

    /// One batch: both inputs in, the join's output rows out (see the module docs).
    /// The stored rows are matched per state partition: a key's rows of both sides are
    /// in one partition, so partitions share nothing and run in parallel; a partition
    /// is worked on only if the batch has rows for it or it may evict.
    fn join(
        &mut self,
        left_rows: RecordBatch,
        right_rows: RecordBatch,
        watermarks: Watermarks,
    ) -> Result<RecordBatch> {
        let new_left = self.prepare(true, left_rows, watermarks.late_events)?;
        let new_right = self.prepare(false, right_rows, watermarks.late_events)?;
        let joiner = Joiner {
            spec: &self.spec,
            compiled: self.compiled.as_ref().expect("opened"),
        };
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut outer_rows = 0u64;

        // Rows that can never match: an outer or anti side emits them now.
        for (left, excluded) in [(true, &new_left.excluded), (false, &new_right.excluded)] {
            if joiner.spec.emits_unmatched(left) && excluded.num_rows() > 0 {
                outer_rows += excluded.num_rows() as u64;
                out.push(joiner.unmatched(left, excluded)?);
            }
        }

        let state = self.state.as_mut().expect("opened");
        let n = state.len();
        let (dropped_left, dropped_right) = (new_left.dropped, new_right.dropped);
        let left_parts = new_left.split(n)?;
        let right_parts = new_right.split(n)?;
        let eviction = watermarks.eviction;
        let bounded = (
            joiner.spec.left.bound.is_some(),
            joiner.spec.right.bound.is_some(),
        );
        let work: Vec<(&mut JoinPartition, NewRows, NewRows)> = state
            .partitions
            .iter_mut()
            .zip(left_parts.into_iter().zip(right_parts))
            .filter(|(part, (l, r))| {
                l.data.num_rows() > 0
                    || r.data.num_rows() > 0
                    || eviction.is_some_and(|w| {
                        (bounded.0 && part.left.may_evict(w))
                            || (bounded.1 && part.right.may_evict(w))
                    })
            })
            .map(|(part, (l, r))| (part, l, r))
            .collect();
        let done = par_map(work, |(part, l, r)| {
            joiner.join_partition(part, l, r, eviction)
        })?;
        for (rows, outer) in done {
            out.extend(rows);
            outer_rows += outer;
        }

        self.pending = Some(Pending {
            dropped_left,
            dropped_right,
            outer_rows,
            updates_ms: 0,
        });
        Ok(concat_batches(&joiner.compiled.output_schema, &out)?)
    }
}

impl Prepared {
    /// The stored-to-be rows split by state partition (element `p`: partition `p`'s, in
    /// their order), not matched yet.
    fn split(self, n: usize) -> Result<Vec<NewRows>> {
        let new = |data, keys, expires: Vec<Option<i64>>| NewRows {
            matched: vec![false; expires.len()],
            data,
            keys,
            expires,
        };
        if n == 1 {
            return Ok(vec![new(self.rows, self.keys, self.expires)]);
        }
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, key) in self.keys.iter().enumerate() {
            members[partition_of(key, n)].push(row as u32);
        }
        let mut keys: Vec<Option<Box<[u8]>>> = self.keys.into_iter().map(Some).collect();
        members
            .into_iter()
            .map(|rows| {
                let part_keys = rows
                    .iter()
                    .map(|&r| keys[r as usize].take().expect("each row once"))
                    .collect();
                let expires = rows.iter().map(|&r| self.expires[r as usize]).collect();
                Ok(new(take_rows(&self.rows, &rows)?, part_keys, expires))
            })
            .collect()
    }
}

/// What matching needs, shared by the partitions while they run.
struct Joiner<'a> {
    spec: &'a StreamJoinSpec,
    compiled: &'a Compiled,
}

impl Joiner<'_> {
    /// One partition's share of a batch: (1) the new left rows against the stored
    /// right rows, then stored; (2) the new right rows against the stored left rows,
    /// this batch's included (so a pair arriving in one batch is found once), then
    /// stored; (3) eviction at the eviction watermark, emitting the never-matched rows
    /// of an outer or anti side. Returns the output rows and how many were outer.
    fn join_partition(
        &self,
        part: &mut JoinPartition,
        mut new_left: NewRows,
        mut new_right: NewRows,
        eviction: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, u64)> {
        let join_type = self.spec.join_type;
        let semi = join_type == JoinType::LeftSemi;
        let anti = join_type == JoinType::LeftAnti;
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut outer_rows = 0u64;

        // 1. The new left rows against the stored right rows.
        if new_left.data.num_rows() > 0 {
            let (probe, locs) = probe(&new_left.keys, &part.right);
            let probe_rows = take_rows(&new_left.data, &probe)?;
            let build_rows = part.right.gather(&locs)?;
            let (pairs, keep) = self.pairs(&probe_rows, &build_rows)?;
            for (i, (&p, &loc)) in probe.iter().zip(&locs).enumerate() {
                if keep.value(i) {
                    new_left.matched[p as usize] = true;
                    part.right.mark_matched(loc);
                }
            }
            if semi {
                let first: Vec<u32> = (0..new_left.matched.len() as u32)
                    .filter(|&i| new_left.matched[i as usize])
                    .collect();
                out.push(self.left_only(&take_rows(&new_left.data, &first)?)?);
            } else if !anti {
                out.push(self.output(&filter_record_batch(&pairs, &keep)?)?);
            }
            part.left.insert(new_left)?;
        }

        // 2. The new right rows against the stored left rows, this batch's included.
        if new_right.data.num_rows() > 0 {
            let (probe, locs) = probe(&new_right.keys, &part.left);
            let probe_rows = take_rows(&new_right.data, &probe)?;
            let build_rows = part.left.gather(&locs)?;
            let (pairs, keep) = self.pairs(&build_rows, &probe_rows)?;
            let mut first_matches: Vec<Loc> = Vec::new();
            for (i, (&p, &loc)) in probe.iter().zip(&locs).enumerate() {
                if keep.value(i) {
                    new_right.matched[p as usize] = true;
                    if part.left.mark_matched(loc) {
                        first_matches.push(loc);
                    }
                }
            }
            if semi {
                let rows = part.left.gather(&first_matches)?;
                out.push(self.left_only(&rows)?);
            } else if !anti {
                out.push(self.output(&filter_record_batch(&pairs, &keep)?)?);
            }
            part.right.insert(new_right)?;
        }

        // 3. Eviction: rows the watermark has passed leave; an outer or anti side
        //    emits those that never matched.
        if let Some(watermark) = eviction {
            for left in [true, false] {
                let bound = if left {
                    &self.spec.left.bound
                } else {
                    &self.spec.right.bound
                };
                if bound.is_none() {
                    continue;
                }
                let side = if left {
                    &mut part.left
                } else {
                    &mut part.right
                };
                let evicted = side.evict(watermark)?;
                if self.spec.emits_unmatched(left) && evicted.unmatched.num_rows() > 0 {
                    outer_rows += evicted.unmatched.num_rows() as u64;
                    out.push(self.unmatched(left, &evicted.unmatched)?);
                }
            }
        }
        Ok((out, outer_rows))
    }

    /// Left and right rows side by side (aligned), and which pairs pass the residual
    /// condition.
    fn pairs(
        &self,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<(RecordBatch, BooleanArray)> {
        let compiled = self.compiled;
        let mut columns = left.columns().to_vec();
        columns.extend(right.columns().iter().cloned());
        let combined = RecordBatch::try_new_with_options(
            compiled.combined_schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(left.num_rows())),
        )?;
        let keep = match &compiled.residual {
            Some(residual) if combined.num_rows() > 0 => mask(residual, &combined)?,
            _ => BooleanArray::from(vec![true; combined.num_rows()]),
        };
        Ok((combined, keep))
    }

    /// Joined rows in the output schema.
    fn output(&self, combined: &RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new_with_options(
            self.compiled.output_schema.clone(),
            combined.columns().to_vec(),
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(combined.num_rows())),
        )?)
    }

    /// Left rows alone in the output schema (semi and anti joins).
    fn left_only(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        self.output(rows)
    }

    /// Rows of one side that never matched, as the join emits them: NULL-padded
    /// (outer), or alone (anti).
    fn unmatched(&self, left: bool, rows: &RecordBatch) -> Result<RecordBatch> {
        if self.spec.join_type == JoinType::LeftAnti {
            return self.left_only(rows);
        }
        let compiled = self.compiled;
        let n = rows.num_rows();
        let left_width = self.spec.left_schema.fields().len();
        let fields = compiled.output_schema.fields();
        let nulls = |range: std::ops::Range<usize>| -> Vec<ArrayRef> {
            fields[range]
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect()
        };
        let mut columns = Vec::with_capacity(fields.len());
        if left {
            columns.extend(rows.columns().iter().cloned());
            columns.extend(nulls(left_width..fields.len()));
        } else {
            columns.extend(nulls(0..left_width));
            columns.extend(rows.columns().iter().cloned());
        }
        Ok(RecordBatch::try_new_with_options(
            compiled.output_schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }
}

/// Candidate pairs: for each probe row (by position), the stored rows with its key.
fn probe(keys: &[Box<[u8]>], state: &SideState) -> (Vec<u32>, Vec<Loc>) {
    let mut rows = Vec::new();
    let mut locs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for loc in state.lookup(key) {
            rows.push(i as u32);
            locs.push(*loc);
        }
    }
    (rows, locs)
}

fn take_rows(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let indices = UInt32Array::from(rows.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

/// The items of `values` whose `accept` flag is set.
fn pick<T>(values: Vec<T>, accept: &[bool]) -> Vec<T> {
    values
        .into_iter()
        .zip(accept)
        .filter(|(_, a)| **a)
        .map(|(x, _)| x)
        .collect()
}
