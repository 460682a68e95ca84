//! Planning: from a `SELECT` over unbounded tables to a plan the micro-batch loop can
//! run again and again.
//!
//! The session registers every unbounded table as a [`StreamTable`], a placeholder
//! that DataFusion can plan against but not scan. When a streaming query starts,
//! DataFusion turns its SQL into a logical plan once; [`plan_streaming_query`] then
//! swaps each `StreamTable` scan for a scan of a fresh [`BatchTable`] owned by this
//! query, and [`check_supported`] refuses the shapes a stateless micro-batch engine
//! cannot run correctly, with Spark's reasons.

mod batch_table;
mod distinct_on;
mod sliding_windows;
mod unsupported;

pub use batch_table::BatchTable;
pub use distinct_on::{
    DEDUP_EXPIRES_AT, DISTINCT_ON_PREFIX, DistinctOnMode, dedup_delay, is_distinct_on,
    rewrite_distinct_on,
};
pub use sliding_windows::expand_sliding_windows;
pub use unsupported::{aggregates_stream, check_supported, deduplicates_stream};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan, TableScanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{Error, Result};
use crate::source::StreamDef;

/// The session's entry for an unbounded table: plannable, not scannable on its own.
#[derive(Debug)]
pub struct StreamTable {
    /// The table's declaration.
    pub def: Arc<StreamDef>,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(Error::Unsupported(format!(
            "'{}' is an unbounded table: read it with a streaming query \
             (CREATE SINK ... AS SELECT ...), or with a bare SELECT in a script",
            self.def.name
        ))
        .into())
    }
}

/// Returns the stream declaration behind a table scan, if it scans an unbounded table.
pub fn scanned_stream(scan: &TableScan) -> Option<Arc<StreamDef>> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider
        .downcast_ref::<StreamTable>()
        .map(|t| t.def.clone())
}

/// Whether a plan reads any unbounded table.
pub fn reads_stream(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::TableScan(scan) => scanned_stream(scan).is_some() || is_batch_scan(scan),
            _ => false,
        })
    })
    .unwrap_or(false)
}

/// Whether a plan reads any unbounded table, also inside subqueries (which
/// [`reads_stream`] does not look into).
pub fn reads_stream_anywhere(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        found = matches!(node, LogicalPlan::TableScan(scan)
            if scanned_stream(scan).is_some() || is_batch_scan(scan));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

fn is_batch_scan(scan: &TableScan) -> bool {
    source_as_provider(&scan.source)
        .map(|p| {
            p.downcast_ref::<BatchTable>()
                .is_some_and(|t| t.is_stream_input())
        })
        .unwrap_or(false)
}

/// A streaming query's plan, ready for the micro-batch loop.
#[derive(Debug, Clone)]
pub struct StreamingPlan {
    /// The logical plan, with unbounded tables replaced by this query's batch tables.
    pub plan: LogicalPlan,
    /// Each unbounded table the query reads, with the batch table that feeds it.
    pub inputs: BTreeMap<String, (Arc<StreamDef>, Arc<BatchTable>)>,
    /// The result schema.
    pub schema: SchemaRef,
}

impl StreamingPlan {
    /// The columns of input `name` the query reads, as indices into its schema, in
    /// order: those DataFusion's optimizer leaves in the scans of its batch table, plus
    /// the watermark's event-time column. `None` (read everything) when a scan reads
    /// every column or the plan cannot be optimized here. Sources use it to skip
    /// decoding the rest ([`crate::source::StreamSource::read_columns`]).
    pub fn columns_read(
        &self,
        name: &str,
        state: &datafusion::execution::SessionState,
    ) -> Option<Vec<usize>> {
        let (def, table) = self.inputs.get(name)?;
        let optimized = state.optimize(&self.plan).ok()?;
        let mut columns = std::collections::BTreeSet::new();
        let mut every = false;
        let mut found = false;
        let walked = optimized.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(provider) = source_as_provider(&scan.source)
                && provider
                    .downcast_ref::<BatchTable>()
                    .is_some_and(|scanned| std::ptr::eq(scanned, table.as_ref()))
            {
                found = true;
                match &scan.projection {
                    Some(projection) => columns.extend(projection.iter().copied()),
                    None => every = true,
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if walked.is_err() || every || !found {
            return None;
        }
        if let Some(watermark) = &def.watermark {
            columns.insert(def.schema.index_of(&watermark.column).ok()?);
        }
        Some(columns.into_iter().collect())
    }
}

/// The session settings that change how a streaming query is planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// How long `DISTINCT ON` over a stream remembers its keys.
    pub distinct_on: DistinctOnMode,
    /// `SET millrace.join.allow_unbounded_state`: whether a stream-stream join whose
    /// state would grow without bound is accepted.
    pub allow_unbounded_join: bool,
}

/// Turns the logical plan of a query over unbounded tables into a [`StreamingPlan`].
/// Fails if the plan reads no unbounded table, or has a shape that is not supported.
/// Joins of two unbounded inputs become stream-stream join nodes (or are refused).
pub fn plan_streaming_query(plan: LogicalPlan, options: PlanOptions) -> Result<StreamingPlan> {
    let plan = decorrelate_stream_subqueries(plan)?;
    let mut inputs: BTreeMap<String, (Arc<StreamDef>, Arc<BatchTable>)> = BTreeMap::new();
    let rewritten = plan
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(def) = scanned_stream(scan) else {
                return Ok(Transformed::no(node));
            };
            let table = inputs
                .entry(def.name.clone())
                .or_insert_with(|| (def.clone(), BatchTable::stream_input(def.schema.clone())))
                .1
                .clone();
            let replaced =
                TableScanBuilder::new(scan.table_name.clone(), provider_as_source(table))
                    .with_projection(scan.projection.clone())
                    .with_filters(scan.filters.clone())
                    .with_fetch(scan.fetch)
                    .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
        })?
        .data;
    let streams: Vec<Arc<StreamDef>> = inputs.values().map(|(def, _)| def.clone()).collect();
    let rewritten = distinct_on::rewrite_distinct_on(rewritten, options.distinct_on, &streams)?;
    let watermark_of = |table: &str| -> Option<String> {
        streams
            .iter()
            .find(|def| def.name == table)
            .and_then(|def| def.watermark.as_ref())
            .map(|w| w.column.clone())
    };
    let rewritten = crate::execution::operator::rewrite_stream_joins(
        rewritten,
        &watermark_of,
        options.allow_unbounded_join,
    )?;
    let rewritten = crate::execution::operator::resolve_event_time(rewritten, &watermark_of)?;
    // First, so a stream read only inside a subquery (not swapped above) gets the
    // subquery message rather than "must read at least one unbounded table".
    check_supported(&rewritten)?;
    if inputs.is_empty() {
        return Err(Error::Sql(
            "a streaming query must read at least one unbounded table \
             (declared with CREATE UNBOUNDED EXTERNAL TABLE)"
                .to_string(),
        ));
    }
    let schema = Arc::new(rewritten.schema().as_arrow().clone());
    Ok(StreamingPlan {
        plan: rewritten,
        inputs,
        schema,
    })
}

/// `WHERE [NOT] EXISTS (SELECT ... FROM stream ...)` and `[NOT] IN (SELECT ... FROM
/// stream)`: DataFusion's own rule (`DecorrelatePredicateSubquery`) turns them into
/// semi and anti joins, which become stream-stream joins like `LEFT SEMI JOIN` /
/// `LEFT ANTI JOIN`. Only applied when a subquery reads a stream (a subquery over
/// static tables is left to DataFusion, as before); a subquery it cannot turn into a
/// join stays and is refused by [`check_supported`].
fn decorrelate_stream_subqueries(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut streams_in_subqueries = false;
    visit_all(&plan, &mut |node, in_subquery| {
        if in_subquery && reads_stream(node) {
            streams_in_subqueries = true;
        }
        Ok(())
    })?;
    if !streams_in_subqueries {
        return Ok(plan);
    }
    use datafusion::optimizer::decorrelate_predicate_subquery::DecorrelatePredicateSubquery;
    use datafusion::optimizer::{OptimizerContext, OptimizerRule};
    let rule = DecorrelatePredicateSubquery::new();
    let context = OptimizerContext::new();
    Ok(plan
        .transform_down(|node| rule.rewrite(node, &context))?
        .data)
}

/// Visits every node of `plan`, including those inside subqueries.
pub(crate) fn visit_all(
    plan: &LogicalPlan,
    f: &mut dyn FnMut(&LogicalPlan, bool) -> Result<()>,
) -> Result<()> {
    fn walk(
        plan: &LogicalPlan,
        in_subquery: bool,
        f: &mut dyn FnMut(&LogicalPlan, bool) -> Result<()>,
    ) -> Result<()> {
        f(plan, in_subquery)?;
        let mut error = None;
        plan.apply_subqueries(|sub| {
            if let Err(e) = walk(sub, true, f) {
                error = Some(e);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Jump)
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        for input in plan.inputs() {
            walk(input, in_subquery, f)?;
        }
        Ok(())
    }
    walk(plan, false, f)
}
