//! The unsupported-operation checker (Spark's `UnsupportedOperationChecker`): refuses,
//! before a streaming query starts, the plan shapes it cannot run correctly, with a
//! message that says why and what to do instead.
//!
//! Only nodes that read a stream are checked: an aggregation over a static table inside
//! a stream-static join is fine.

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};

use super::distinct_on::is_distinct_on;
use super::{reads_stream, visit_all};
use crate::error::{Error, Result};

fn unsupported(what: &str) -> Error {
    Error::Unsupported(what.to_string())
}

/// Whether the plan has an aggregation of a stream below its root.
/// (`SELECT DISTINCT` counts: it is an aggregation without aggregate functions.)
pub fn aggregates_stream(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(matches!(
            node,
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(Distinct::All(_))
        ) && reads_stream(node))
    })
    .unwrap_or(false)
}

/// Whether the plan deduplicates a stream (`SELECT DISTINCT`, or `DISTINCT ON` after
/// its rewrite into an aggregation).
pub fn deduplicates_stream(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::Distinct(Distinct::All(_)) => reads_stream(node),
            LogicalPlan::Aggregate(aggregate) => is_distinct_on(aggregate) && reads_stream(node),
            _ => false,
        })
    })
    .unwrap_or(false)
}

/// Checks a streaming plan (after unbounded tables were swapped for batch tables).
pub fn check_supported(plan: &LogicalPlan) -> Result<()> {
    visit_all(plan, &mut |node, in_subquery| {
        if !reads_stream(node) {
            return Ok(());
        }
        if in_subquery {
            return Err(unsupported(
                "an unbounded table cannot be read inside a subquery; \
                 join it instead (the stream on the left, static tables on the right)",
            ));
        }
        if !matches!(node, LogicalPlan::Aggregate(_)) && calls_session_window(node) {
            return Err(unsupported(
                "session_window() works only in the GROUP BY of an aggregation, where the \
                 sessions of each key merge (GROUP BY user_id, session_window(ts, '5 minutes')); \
                 select the grouped column to see each session",
            ));
        }
        match node {
            LogicalPlan::Aggregate(aggregate) => {
                if aggregate
                    .group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
                {
                    return Err(unsupported(
                        "GROUPING SETS, ROLLUP and CUBE over an unbounded table are not \
                         supported yet; use one GROUP BY per query",
                    ));
                }
                Ok(())
            }
            // Streaming deduplication: the distinct rows are the state.
            LogicalPlan::Distinct(Distinct::All(_)) => Ok(()),
            // (DISTINCT ON over a stream was rewritten into an aggregation by then.)
            LogicalPlan::Window(_) => Err(unsupported(
                "window functions (OVER ...) are not supported on unbounded tables (they need \
                 state across batches); for event-time windows GROUP BY window(ts, '10 seconds') \
                 or session_window(ts, '5 minutes')",
            )),
            // After a streaming aggregation the result table is finite: sorting and
            // limiting it are fine in complete mode (checked with the output mode).
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) if aggregates_stream(node) => Ok(()),
            LogicalPlan::Sort(_) => Err(unsupported(
                "ORDER BY over an unbounded table is not supported: a stream has no end to \
                 sort to (sort the sink's output when you read it)",
            )),
            LogicalPlan::Limit(_) => Err(unsupported(
                "LIMIT over an unbounded table is not supported yet (it needs state across batches)",
            )),
            LogicalPlan::RecursiveQuery(_) => Err(unsupported(
                "recursive queries over an unbounded table are not supported",
            )),
            LogicalPlan::Join(join) => {
                let (left, right) = (reads_stream(&join.left), reads_stream(&join.right));
                if left && right {
                    return Err(unsupported(
                        "joins between two unbounded tables (stream-stream joins) are not \
                         supported yet; join a stream with static tables",
                    ));
                }
                if right {
                    return Err(unsupported(
                        "in a stream-static join the unbounded table must be on the left: \
                         write `stream JOIN static` or `stream LEFT JOIN static`",
                    ));
                }
                match join.join_type {
                    JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark => Ok(()),
                    other => Err(Error::Unsupported(format!(
                        "a {other} join with the unbounded table on the left needs state that \
                         is not kept yet; use an inner or left outer join"
                    ))),
                }
            }
            LogicalPlan::Union(union) => {
                if union.inputs.iter().all(|i| reads_stream(i)) {
                    Ok(())
                } else {
                    Err(unsupported(
                        "UNION of an unbounded table with a static table is not supported \
                         (the static rows would repeat in every batch)",
                    ))
                }
            }
            _ => Ok(()),
        }
    })
}

/// Whether an expression of `node` itself calls `session_window()`.
fn calls_session_window(node: &LogicalPlan) -> bool {
    node.expressions().iter().any(|e| {
        e.exists(|e| {
            Ok(matches!(e, Expr::ScalarFunction(f) if f.name() == crate::functions::SESSION_WINDOW))
        })
        .unwrap_or(false)
    })
}
