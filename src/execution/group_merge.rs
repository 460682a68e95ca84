//! Merging partial aggregate states into the groups a batch touched, by group number,
//! with DataFusion's own `GroupsAccumulator`s: no hash table is built, because the
//! state's index ([`crate::state::KeyedRows::touch`]) has already numbered the groups.
//!
//! DataFusion's `PartialReduce` step would do the same merge, but it hashes every held
//! and new row again to find their groups; here each row's group is known, so each
//! accumulator's `merge_batch` runs straight over the state columns (held rows first,
//! then the batch's, the order `PartialReduce` would see them in).
//!
//! The same holds for the aggregation's output: the rows it shows hold one state row
//! per group, so [`final_output`] evaluates them by group number too, in place of
//! DataFusion's `Final` step (which would repartition and hash them once more).

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::InputOrderMode;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;

use crate::error::{Error, Result};
use crate::state::Touched;

/// How to merge the state rows of one aggregation: its aggregate functions and which
/// state columns each one owns.
#[derive(Debug)]
pub struct GroupMerge {
    schema: SchemaRef,
    key_columns: usize,
    /// Each aggregate, with the range of state columns holding its state.
    aggregates: Vec<(Arc<AggregateFunctionExpr>, Range<usize>)>,
}

impl GroupMerge {
    /// The merge of state rows of `schema` (`key_columns` key columns, then each
    /// aggregate's state fields in order, as DataFusion's `Partial` step writes them).
    pub fn new(
        schema: SchemaRef,
        key_columns: usize,
        aggregates: &[Arc<AggregateFunctionExpr>],
    ) -> Result<Self> {
        let mut next = key_columns;
        let mut owned = Vec::with_capacity(aggregates.len());
        for aggregate in aggregates {
            let width = aggregate.state_fields()?.len();
            owned.push((aggregate.clone(), next..next + width));
            next += width;
        }
        if next != schema.fields().len() {
            return Err(Error::Unsupported(format!(
                "internal error: the aggregation's state has {} columns, not {} key columns \
                 and {} state fields",
                schema.fields().len(),
                key_columns,
                next - key_columns
            )));
        }
        Ok(GroupMerge {
            schema,
            key_columns,
            aggregates: owned,
        })
    }

    /// One state row per touched group, in group order: `held` (the groups' held rows,
    /// `held_groups` giving each one's group) merged with `new` (the batch's state rows,
    /// `touched.group_of_row` giving each one's group). The keys are taken from the
    /// batch's row that first named each group.
    pub fn merge(
        &self,
        held: &RecordBatch,
        held_groups: &[usize],
        new: &RecordBatch,
        touched: &Touched,
    ) -> Result<RecordBatch> {
        let groups = touched.groups();
        if groups == 0 {
            // Some accumulators (row accumulators behind the adapter) cannot emit zero groups.
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let first = UInt32Array::from(touched.first_row.clone());
        let mut columns: Vec<ArrayRef> = new.columns()[..self.key_columns]
            .iter()
            .map(|key| take(key.as_ref(), &first, None))
            .collect::<std::result::Result<_, _>>()?;
        for (aggregate, range) in &self.aggregates {
            let mut accumulator = groups_accumulator(aggregate)?;
            if held.num_rows() > 0 {
                accumulator.merge_batch(&held.columns()[range.clone()], held_groups, groups)?;
            }
            accumulator.merge_batch(
                &new.columns()[range.clone()],
                &touched.group_of_row,
                groups,
            )?;
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The aggregate's `GroupsAccumulator`, or its row `Accumulator` behind DataFusion's
/// adapter when it has none (as DataFusion's hash aggregation does).
fn groups_accumulator(
    aggregate: &Arc<AggregateFunctionExpr>,
) -> Result<Box<dyn GroupsAccumulator>> {
    if aggregate.groups_accumulator_supported() {
        return Ok(aggregate.create_groups_accumulator()?);
    }
    let aggregate = aggregate.clone();
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
        aggregate.create_accumulator()
    })))
}

/// The output of the aggregate step `top` over `states` (state rows, one per group:
/// key columns, then the aggregates' states), split as `top` splits its output, or
/// `None` when `top` is a step this shortcut does not cover (grouping sets, sorted
/// input, an output schema the evaluation does not match): then DataFusion's own step
/// runs over the states.
///
/// Each aggregate's accumulator merges the states with group `i` for row `i` and
/// evaluates them. The rows are put into `top`'s output partitions with DataFusion's
/// own partitioner, so an operator above that relies on `top`'s hash partitioning
/// (a join on the group key, say) sees the rows where it expects them.
pub fn final_output(
    top: &Arc<dyn ExecutionPlan>,
    states: &RecordBatch,
    key_columns: usize,
) -> Result<Option<Vec<Vec<RecordBatch>>>> {
    let Some(exec) = top.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let covered = matches!(
        exec.mode(),
        AggregateMode::Final
            | AggregateMode::FinalPartitioned
            | AggregateMode::Single
            | AggregateMode::SinglePartitioned
    ) && exec.group_expr().is_single()
        && exec.group_expr().expr().len() == key_columns
        && *exec.input_order_mode() == InputOrderMode::Linear;
    if !covered {
        return Ok(None);
    }
    let rows = states.num_rows();
    let mut columns: Vec<ArrayRef> = states.columns()[..key_columns].to_vec();
    if rows > 0 {
        let groups: Vec<usize> = (0..rows).collect();
        let mut next = key_columns;
        for aggregate in exec.aggr_expr() {
            let width = aggregate.state_fields()?.len();
            let mut accumulator = groups_accumulator(aggregate)?;
            accumulator.merge_batch(&states.columns()[next..next + width], &groups, rows)?;
            columns.push(accumulator.evaluate(EmitTo::All)?);
            next += width;
        }
    } else {
        columns = top
            .schema()
            .fields()
            .iter()
            .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
            .collect();
    }
    let Ok(output) = RecordBatch::try_new(top.schema(), columns) else {
        return Ok(None);
    };
    let partitioning = top.properties().output_partitioning().clone();
    let partitions = partitioning.partition_count();
    if partitions <= 1 {
        return Ok(Some(vec![vec![output]]));
    }
    let mut parts = vec![Vec::new(); partitions];
    let Ok(mut partitioner) = BatchPartitioner::try_new(partitioning, Time::new(), 0, 1) else {
        return Ok(None);
    };
    partitioner.partition(output, |p, batch| {
        parts[p].push(batch);
        Ok(())
    })?;
    Ok(Some(parts))
}
