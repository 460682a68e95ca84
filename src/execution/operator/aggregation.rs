//! The first operator kind: the streaming aggregation (`GROUP BY`, `SELECT DISTINCT`,
//! `DISTINCT ON`, session windows) of `execution::aggregation`, with its state store.

use std::path::Path;
use std::sync::Arc;

use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorBatch, OperatorMetrics, StatefulOperator, timed};
use crate::error::Result;
use crate::execution::aggregation::{AggregationStep, StreamingAggregation};
use crate::sink::OutputMode;
use crate::state::StateStoreConfig;

/// [`StreamingAggregation`] as a [`StatefulOperator`]: the aggregation folds each batch
/// into its state; this adds where the state is saved and what is reported.
#[derive(Debug)]
pub struct AggregationOperator {
    aggregation: StreamingAggregation,
    /// The last step, until it is committed.
    last: Option<(AggregationStep, u64)>,
}

/// The registration of this kind (see [`super::KINDS`]).
pub(super) fn from_node(node: &LogicalPlan) -> Option<Box<dyn StatefulOperator>> {
    StreamingAggregation::from_node(node).map(|aggregation| {
        Box::new(AggregationOperator {
            aggregation,
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
        self.aggregation
            .open_state(dir, plan, config.state_partitions, config, version)
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
        let aggregation = &mut self.aggregation;
        let (result, commit_ms) = timed(|| aggregation.commit(batch_id));
        result?;
        Ok(OperatorMetrics {
            operator_name: self.name().to_string(),
            num_rows_total: step.rows_total as u64,
            num_rows_updated: step.rows_updated as u64,
            all_updates_time_ms: updates_ms,
            num_rows_removed: step.rows_removed as u64,
            commit_time_ms: commit_ms,
            memory_used_bytes: (step.row_bytes + step.index_bytes) as u64,
            num_rows_dropped_by_watermark: step.dropped_late as u64,
            num_shuffle_partitions: step.partitions as u64,
            num_state_store_instances: step.partitions as u64,
            custom_metrics: step.custom_metrics(),
            ..OperatorMetrics::default()
        })
    }

    fn finish_commit(&mut self) -> Result<()> {
        self.aggregation.wait_committed()
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
