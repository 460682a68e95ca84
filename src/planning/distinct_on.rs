//! `SELECT DISTINCT ON (cols) ...` over a stream: Spark's `dropDuplicates(cols)` and,
//! with `SET millrace.distinct_on = 'within_watermark'`, `dropDuplicatesWithinWatermark(cols)`.
//!
//! The first row seen for each key is emitted once, when it arrives; later rows with
//! the same key are dropped. A stream has no end to sort to, so which row is "first"
//! is the arrival order (within one batch, the first of the batch), not an `ORDER BY`.
//!
//! The node is rewritten here, before DataFusion's optimizer sees it, into the shape
//! DataFusion's own `replace_distinct_aggregate` rule produces — an aggregation by the
//! `ON` columns with `first_value` of each selected expression, under a projection back
//! to the selected names — so the streaming aggregation operator keeps the keys as its
//! state and emits only the keys it had not seen. The aggregates get names with
//! [`DISTINCT_ON_PREFIX`] so the operator can tell this aggregation is a deduplication.
//!
//! State is evicted as in Spark:
//! - `drop_duplicates` (default): when an `ON` column is the watermarked event-time
//!   column, a key is forgotten once the watermark passes its event time (and rows
//!   older than the watermark are dropped as late); otherwise keys are kept for ever.
//! - `within_watermark`: the event-time column need not be among the keys. A key is
//!   forgotten once the watermark passes the event time of its first row plus the
//!   watermark delay, so duplicates that arrive within the delay of each other are
//!   dropped with bounded state. One extra aggregate, [`DEDUP_EXPIRES_AT`], carries
//!   the first row's event time plus the delay; the operator reads the delay back from
//!   that expression (see [`dedup_delay`]) to tell late rows. A key whose first row
//!   has no event time (NULL) is never emitted.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::functions_aggregate::first_last::first_value_udaf;
use datafusion::logical_expr::{
    Aggregate, Distinct, DistinctOn, Expr, LogicalPlan, LogicalPlanBuilder, col, lit,
};

use super::reads_stream;
use crate::error::{Error, Result};
use crate::source::StreamDef;

/// Name prefix of the `first_value` aggregates a rewritten `DISTINCT ON` keeps.
pub const DISTINCT_ON_PREFIX: &str = "__millrace_distinct_on_";
/// Name of the aggregate holding when a key's state expires: its first event time
/// plus the watermark delay (`within_watermark` only).
pub const DEDUP_EXPIRES_AT: &str = "__millrace_dedup_expires_at";

/// How long `DISTINCT ON` over a stream remembers a key (`SET millrace.distinct_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DistinctOnMode {
    /// Spark's `dropDuplicates`: for ever, or until the watermark passes the key's
    /// event time when the watermarked column is one of the keys.
    #[default]
    DropDuplicates,
    /// Spark's `dropDuplicatesWithinWatermark`: until the watermark passes the first
    /// row's event time plus the watermark delay.
    WithinWatermark,
}

impl DistinctOnMode {
    /// Reads the setting's value.
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "drop_duplicates" => Ok(DistinctOnMode::DropDuplicates),
            "within_watermark" => Ok(DistinctOnMode::WithinWatermark),
            _ => Err(Error::Option(format!(
                "unknown millrace.distinct_on '{value}': use 'drop_duplicates' (keys kept \
                 until the watermark passes them, when the event-time column is a key) or \
                 'within_watermark' (keys kept for the watermark delay after their first row)"
            ))),
        }
    }
}

/// Whether `aggregate` is a rewritten `DISTINCT ON` (every aggregate is one of ours).
pub fn is_distinct_on(aggregate: &Aggregate) -> bool {
    !aggregate.aggr_expr.is_empty()
        && aggregate.aggr_expr.iter().all(|e| match e {
            Expr::Alias(alias) => {
                alias.name.starts_with(DISTINCT_ON_PREFIX) || alias.name == DEDUP_EXPIRES_AT
            }
            _ => false,
        })
}

/// The watermark delay (ms) of a rewritten `DISTINCT ON` within the watermark: the
/// interval its [`DEDUP_EXPIRES_AT`] aggregate adds to the event time.
pub fn dedup_delay(aggregate: &Aggregate) -> Option<i64> {
    aggregate.aggr_expr.iter().find_map(|e| {
        let Expr::Alias(alias) = e else { return None };
        let Expr::AggregateFunction(function) = alias.expr.as_ref() else {
            return None;
        };
        if alias.name != DEDUP_EXPIRES_AT {
            return None;
        }
        match function.params.args.first() {
            Some(Expr::BinaryExpr(sum)) => match sum.right.as_ref() {
                Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(delay)), _) => {
                    Some(delay.nanoseconds / 1_000_000)
                }
                _ => None,
            },
            _ => None,
        }
    })
}

/// Rewrites every `DISTINCT ON` that reads a stream (see the module documentation).
/// `streams` are the unbounded tables the query reads, for their watermarks.
pub fn rewrite_distinct_on(
    plan: LogicalPlan,
    mode: DistinctOnMode,
    streams: &[Arc<StreamDef>],
) -> Result<LogicalPlan> {
    let mut failure = None;
    let rewritten = plan
        .transform_up(|node| {
            let LogicalPlan::Distinct(Distinct::On(on)) = &node else {
                return Ok(Transformed::no(node));
            };
            if !reads_stream(&node) {
                return Ok(Transformed::no(node));
            }
            match rewrite_one(on, mode, streams) {
                Ok(plan) => Ok(Transformed::yes(plan)),
                Err(e) => {
                    failure = Some(e);
                    Ok(Transformed::no(node))
                }
            }
        })?
        .data;
    match failure {
        Some(e) => Err(e),
        None => Ok(rewritten),
    }
}

fn rewrite_one(
    on: &DistinctOn,
    mode: DistinctOnMode,
    streams: &[Arc<StreamDef>],
) -> Result<LogicalPlan> {
    if on.sort_expr.is_some() {
        return Err(Error::Unsupported(
            "SELECT DISTINCT ON ... ORDER BY over an unbounded table is not supported: the \
             row to keep cannot be chosen by an order before the stream ends. millrace keeps \
             the first row that arrives for each key (Spark's dropDuplicates); remove the \
             ORDER BY"
                .to_string(),
        ));
    }
    let mut aggregates: Vec<Expr> = on
        .select_expr
        .iter()
        .enumerate()
        .map(|(i, e)| {
            first_value_udaf()
                .call(vec![e.clone()])
                .alias(format!("{DISTINCT_ON_PREFIX}{i}"))
        })
        .collect();
    if mode == DistinctOnMode::WithinWatermark {
        let (time, delay) = watermarked_column(on, streams)?;
        let delay = ScalarValue::new_interval_mdn(0, 0, delay.as_nanos() as i64);
        aggregates.push(
            first_value_udaf()
                .call(vec![Expr::Column(time) + lit(delay)])
                .alias(DEDUP_EXPIRES_AT),
        );
    }
    let aggregate = LogicalPlan::Aggregate(Aggregate::try_new(
        on.input.clone(),
        on.on_expr.clone(),
        aggregates,
    )?);
    let projection = on
        .schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            col(Column::new_unqualified(format!("{DISTINCT_ON_PREFIX}{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect::<Vec<_>>();
    let mut builder = LogicalPlanBuilder::from(aggregate);
    if mode == DistinctOnMode::WithinWatermark {
        // A row without an event time cannot be placed against the watermark: it is
        // not emitted. (The filter also keeps the expiry aggregate alive: unused by the
        // projection, the optimizer would remove it from the state.)
        builder = builder.filter(col(DEDUP_EXPIRES_AT).is_not_null())?;
    }
    Ok(builder.project(projection)?.build()?)
}

/// The watermarked event-time column visible in the input of `on`, and its delay.
fn watermarked_column(
    on: &DistinctOn,
    streams: &[Arc<StreamDef>],
) -> Result<(Column, std::time::Duration)> {
    let mut found = Vec::new();
    for def in streams {
        let Some(watermark) = &def.watermark else {
            continue;
        };
        for (qualifier, field) in on.input.schema().iter() {
            if field.name() == &watermark.column {
                found.push((
                    Column::new(qualifier.cloned(), field.name()),
                    watermark.delay,
                ));
            }
        }
    }
    found.dedup_by(|a, b| a.0 == b.0);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Unsupported(
            "millrace.distinct_on = 'within_watermark' needs a watermark: declare the table \
             with `WATERMARK FOR ts AS ts - INTERVAL ...` and keep the event-time column in \
             the rows DISTINCT ON reads"
                .to_string(),
        )),
        _ => Err(Error::Unsupported(format!(
            "millrace.distinct_on = 'within_watermark' found several watermarked columns \
             ({}); deduplicate one stream at a time",
            found
                .iter()
                .map(|(c, _)| c.flat_name())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
