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
use datafusion::physical_expr::Distribution;
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
/// evaluates them. When an operator above `top` in `plan` relies on `top`'s hash
/// partitioning (a join on the group key, an aggregate by the same key, say), the rows
/// are put into `top`'s output partitions with DataFusion's own partitioner, so that
/// operator sees them where it expects them; otherwise they all go to the first
/// partition and the others stay empty, which saves hashing every output row again.
pub fn final_output(
    plan: &Arc<dyn ExecutionPlan>,
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
    if !hash_partitioning_used_above(plan, top) {
        parts[0].push(output);
        return Ok(Some(parts));
    }
    let Ok(mut partitioner) = BatchPartitioner::try_new(partitioning, Time::new(), 0, 1) else {
        return Ok(None);
    };
    partitioner.partition(output, |p, batch| {
        parts[p].push(batch);
        Ok(())
    })?;
    Ok(Some(parts))
}

/// Whether an operator on the path from `plan` down to `node` requires its input there
/// to be hash-partitioned (a partitioned join or aggregate, a window partitioned by a
/// key): only then must `node`'s rows stay in the partitions its declared output
/// partitioning names. `false` when `node` is not in `plan`.
fn hash_partitioning_used_above(
    plan: &Arc<dyn ExecutionPlan>,
    node: &Arc<dyn ExecutionPlan>,
) -> bool {
    if Arc::ptr_eq(plan, node) {
        return false;
    }
    let required = plan.input_distribution_requirements();
    plan.children().into_iter().enumerate().any(|(i, child)| {
        let by_key = !matches!(
            required.child_distribution(i),
            None | Some(Distribution::UnspecifiedDistribution | Distribution::SinglePartition)
        );
        path_reaches(child, node) && (by_key || hash_partitioning_used_above(child, node))
    })
}

/// Whether `node` is `plan` or below it.
fn path_reaches(plan: &Arc<dyn ExecutionPlan>, node: &Arc<dyn ExecutionPlan>) -> bool {
    Arc::ptr_eq(plan, node) || plan.children().into_iter().any(|c| path_reaches(c, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// The physical plan of `sql` over two tables `t(k, x)` and `u(k, y)`, on two
    /// partitions, with hash joins always partitioned (never built from one side).
    async fn physical(sql: &str) -> Arc<dyn ExecutionPlan> {
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .set_usize(
                "datafusion.optimizer.hash_join_single_partition_threshold",
                0,
            )
            .set_usize(
                "datafusion.optimizer.hash_join_single_partition_threshold_rows",
                0,
            );
        let ctx = SessionContext::new_with_config(config);
        for (table, value) in [("t", "x"), ("u", "y")] {
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, false),
                Field::new(value, DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(vec![1, 2, 3])),
                    Arc::new(Int64Array::from(vec![10, 20, 30])),
                ],
            )
            .unwrap();
            ctx.register_batch(table, batch).unwrap();
        }
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    /// Every final aggregate step in `plan`.
    fn final_steps(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
        let mut found = Vec::new();
        if let Some(exec) = plan.downcast_ref::<AggregateExec>()
            && exec.mode() == &AggregateMode::FinalPartitioned
        {
            found.push(plan.clone());
        }
        for child in plan.children() {
            found.extend(final_steps(child));
        }
        found
    }

    #[tokio::test]
    async fn a_join_on_the_group_key_keeps_the_aggregates_hash_partitions() {
        let plan = physical(
            "SELECT a.k, a.n, b.m FROM (SELECT k, count(*) AS n FROM t GROUP BY k) a \
             JOIN (SELECT k, count(*) AS m FROM u GROUP BY k) b ON a.k = b.k",
        )
        .await;
        let steps = final_steps(&plan);
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true);
        assert_eq!(steps.len(), 2, "{shown}");
        for step in &steps {
            assert!(hash_partitioning_used_above(&plan, step), "{shown}");
        }
    }

    #[tokio::test]
    async fn a_projection_and_a_filter_above_the_aggregate_need_no_hash_partitions() {
        let plan = physical(
            "SELECT k + 1 AS k1, n FROM (SELECT k, count(*) AS n FROM t GROUP BY k) WHERE n > 0",
        )
        .await;
        let steps = final_steps(&plan);
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true);
        assert_eq!(steps.len(), 1, "{shown}");
        assert!(!hash_partitioning_used_above(&plan, &steps[0]), "{shown}");
        let unrelated = physical("SELECT k, count(*) AS n FROM u GROUP BY k").await;
        assert!(!hash_partitioning_used_above(&unrelated, &steps[0]));
    }
}
