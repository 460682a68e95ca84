//! Sliding windows: a row belongs to several windows (`size / slide` of them), so
//! grouping by a sliding `window()` needs one row per window, as Spark's Expand does.
//!
//! An `Aggregate` grouped by `window(ts, size, slide[, start])` with `slide < size` is
//! rewritten so its input gains the list of every window of each row
//! (`__millrace_window_list`), unnested to one row per window, and the group expression
//! becomes that unnested column, under the original expression's name so everything
//! above the aggregate reads it unchanged.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, col};

use crate::error::Result;
use crate::functions::{WINDOW_LIST, WindowListFunction, window_spec};

/// Whether `expr` is a `window()` call whose slide is smaller than its size.
fn is_sliding_window(expr: &Expr) -> bool {
    let Expr::ScalarFunction(call) = expr else {
        return false;
    };
    if call.func.name() != "window" || call.args.len() < 3 {
        return false;
    }
    let scalars: Vec<_> = call
        .args
        .iter()
        .map(|a| match a {
            Expr::Literal(value, _) => Some(value),
            _ => None,
        })
        .collect();
    matches!(window_spec(&scalars), Ok((size, slide, _)) if slide != size)
}

/// Rewrites every aggregation grouped by a sliding `window()` (see the module doc).
pub fn expand_sliding_windows(plan: LogicalPlan) -> Result<LogicalPlan> {
    let list_udf = Arc::new(ScalarUDF::from(WindowListFunction::new()));
    Ok(plan
        .transform_up(|node| {
            let LogicalPlan::Aggregate(aggregate) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(sliding) = aggregate
                .group_expr
                .iter()
                .find(|e| is_sliding_window(e))
                .cloned()
            else {
                return Ok(Transformed::no(node));
            };
            let Expr::ScalarFunction(call) = &sliding else {
                return Ok(Transformed::no(node));
            };
            let input = aggregate.input.as_ref().clone();
            let mut columns: Vec<Expr> = input
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect();
            columns.push(
                Expr::ScalarFunction(ScalarFunction::new_udf(list_udf.clone(), call.args.clone()))
                    .alias(WINDOW_LIST),
            );
            let expanded = LogicalPlanBuilder::from(input)
                .project(columns)?
                .unnest_column(WINDOW_LIST)?
                .build()?;
            let name = sliding.schema_name().to_string();
            let group_expr = aggregate
                .group_expr
                .iter()
                .map(|e| {
                    if *e == sliding {
                        col(WINDOW_LIST).alias(name.clone())
                    } else {
                        e.clone()
                    }
                })
                .collect();
            let rewritten =
                Aggregate::try_new(Arc::new(expanded), group_expr, aggregate.aggr_expr.clone())?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
        })?
        .data)
}
