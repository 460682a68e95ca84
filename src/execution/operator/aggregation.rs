//! The first operator kind: the streaming aggregation (`GROUP BY`, `SELECT DISTINCT`,
//! `DISTINCT ON`, session windows) of `execution::aggregation`, with its state store.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorBatch, OperatorMetrics, StatefulOperator, timed};
use crate::error::Result;
use crate::execution::aggregation::{AggregationStep, StreamingAggregation};
use crate::sink::OutputMode;
use crate::state::{StateStore, StateStoreConfig};

/// [`StreamingAggregation`] as a [`StatefulOperator`]: the aggregation folds each batch
/// into its state; this adds where the state is saved and what is reported.
#[derive(Debug)]
pub struct AggregationOperator {
    aggregation: StreamingAggregation,
    /// Opened by [`StatefulOperator::open`].
    store: Option<StateStore>,
    /// The last step, until it is committed.
    last: Option<(AggregationStep, u64)>,
}

/// The registration of this kind (see [`super::KINDS`]).
pub(super) fn from_node(node: &LogicalPlan) -> Option<Box<dyn StatefulOperator>> {
    StreamingAggregation::from_node(node).map(|aggregation| {
        Box::new(AggregationOperator {
            aggregation,
            store: None,
            last: None,
        }) as Box<dyn StatefulOperator>
    })
}

#[async_trait::async_trait]
impl StatefulOperator for AggregationOperator {
    fn name(&self) -> &'static str {
        self.aggregation.operator_name()
    }

    async fn open(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        dir: &Path,
        version: Option<u64>,
        config: StateStoreConfig,
    ) -> Result<()> {
        self.aggregation.check_mergeable(plan)?;
        let schema = self.aggregation.state_schema(plan)?;
        let mut store = StateStore::open(dir, schema, self.aggregation.key_columns(), config)?;
        let restored = store.load(version)?;
        if version.is_some() {
            self.aggregation.restore(restored);
        }
        self.store = Some(store);
        Ok(())
    }

    async fn step(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        batch: &OperatorBatch,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let started = std::time::Instant::now();
        let step = self
            .aggregation
            .step(plan, batch.mode, batch.watermarks, batch.task.clone())
            .await?;
        let plan = step.plan.clone();
        self.last = Some((step, started.elapsed().as_millis() as u64));
        Ok(plan)
    }

    fn commit(&mut self, batch_id: u64) -> Result<OperatorMetrics> {
        let (step, updates_ms) = self
            .last
            .take()
            .expect("the loop commits an operator after its step");
        let commit_ms = match &mut self.store {
            Some(store) => {
                let (result, ms) =
                    timed(|| store.commit(batch_id, &step.updated, &step.removed, &step.state));
                result?;
                ms
            }
            None => 0,
        };
        Ok(OperatorMetrics {
            operator_name: self.name().to_string(),
            num_rows_total: step.state.num_rows() as u64,
            num_rows_updated: step.updated.num_rows() as u64,
            all_updates_time_ms: updates_ms,
            num_rows_removed: step.removed.num_rows() as u64,
            commit_time_ms: commit_ms,
            memory_used_bytes: memory_bytes(&step.state),
            num_rows_dropped_by_watermark: step.dropped_late as u64,
            num_shuffle_partitions: 1,
            num_state_store_instances: 1,
            ..OperatorMetrics::default()
        })
    }

    fn evicts_by_watermark(&self, mode: OutputMode) -> bool {
        mode != OutputMode::Complete
    }

    fn update_keys(&self) -> Option<Vec<String>> {
        (!self.aggregation.deduplicates()).then(|| self.aggregation.group_names())
    }

    fn revises_output(&self, mode: OutputMode) -> bool {
        !self.aggregation.deduplicates() && mode != OutputMode::Append
    }
}

fn memory_bytes(state: &RecordBatch) -> u64 {
    StateStore::memory_bytes(state) as u64
}
