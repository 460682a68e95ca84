//! The planning side of a stream-stream join: a DataFusion `Join` whose two inputs read
//! unbounded tables becomes a [`StreamJoinNode`] (a logical extension node) carrying a
//! [`StreamJoinSpec`]: the equality keys, the one-side and two-side parts of the
//! condition, and, per side, how long a stored row can still find a partner (its
//! [`Bound`]), derived from the condition by DataFusion's interval arithmetic. Joins the
//! engine cannot run with bounded state and correct output are refused here, before
//! the first batch, each with a message saying what to add.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DFSchemaRef, NullEquality, ScalarValue};
use datafusion::logical_expr::expr::BinaryExpr;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Expr, Extension, JoinType, LogicalPlan, Operator, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::intervals::cp_solver::{ExprIntervalGraph, PropagationResult};
use datafusion::physical_expr::intervals::utils::check_support;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::error::{Error, Result};
use crate::planning::reads_stream;

/// How the rows of one side leave the join's state (Spark's state watermarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// *State key watermark*: the column is an equality key holding event time (an
    /// event-time window, compared by its `end`); a row leaves once the watermark
    /// reaches that time, since every later row of the other side is in a later window.
    Key {
        /// The key column in the side's schema.
        column: usize,
    },
    /// *State value watermark*: the condition bounds this side's event time from below
    /// by the other side's: with the other side's rows all after watermark `W`, a row
    /// of this side can match only if its event time is at least `W + offset_ns`.
    Value {
        /// The side's event-time column.
        column: usize,
        /// The offset (ns) from the watermark to the earliest time that can match.
        offset_ns: i64,
    },
}

impl Bound {
    /// The state watermark's offset (ms) from the query's watermark: rows at or before
    /// `watermark + offset` have left the state (Spark's left/right state watermark).
    pub fn state_offset_ms(self) -> i64 {
        match self {
            Bound::Key { .. } => 0,
            Bound::Value { offset_ns, .. } => {
                offset_ns.div_euclid(1_000_000) - 1
                    + i64::from(offset_ns.rem_euclid(1_000_000) != 0)
            }
        }
    }
}

/// What the join knows about one of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SideSpec {
    /// The input's watermarked event-time column (ts of `WATERMARK FOR ts ...`), if the
    /// input carries it.
    pub event_time: Option<usize>,
    /// How its rows leave the state; `None`: they never do (unbounded state).
    pub bound: Option<Bound>,
}

impl SideSpec {
    /// The column late rows are judged by: the event time, else the end of the
    /// event-time window the state is keyed by.
    pub fn late_column(&self) -> Option<usize> {
        self.event_time.or(match self.bound {
            Some(Bound::Key { column }) => Some(column),
            _ => None,
        })
    }
}

/// Everything the operator needs, shared by the logical node, its physical placeholder
/// and the operator (matched by pointer).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StreamJoinSpec {
    /// Inner, Left, Right, Full, LeftSemi or LeftAnti.
    pub join_type: JoinType,
    /// Equality keys, over the left input.
    pub left_keys: Vec<Expr>,
    /// Equality keys, over the right input (same order).
    pub right_keys: Vec<Expr>,
    /// Per key: whether NULL matches NULL (`<=>` / `IS NOT DISTINCT FROM`).
    pub null_equal: Vec<bool>,
    /// Conjuncts of the condition over left columns only: a left row failing them can
    /// never match (Spark's pre-join filter).
    pub left_filter: Option<Expr>,
    /// The same for the right side.
    pub right_filter: Option<Expr>,
    /// The rest of the condition (over both sides), checked on each candidate pair.
    pub residual: Option<Expr>,
    /// The left input.
    pub left: SideSpec,
    /// The right input.
    pub right: SideSpec,
    /// Schemas of the left and right inputs, of both side by side (what the
    /// condition is evaluated over) and of the join's output.
    pub left_schema: DFSchemaRef,
    /// See `left_schema`.
    pub right_schema: DFSchemaRef,
    /// See `left_schema`.
    pub combined_schema: DFSchemaRef,
    /// See `left_schema`.
    pub output_schema: DFSchemaRef,
}

impl StreamJoinSpec {
    /// Whether some rows wait in the state to be emitted at eviction on `side`
    /// (outer, semi-never, anti).
    pub fn emits_unmatched(&self, left: bool) -> bool {
        match self.join_type {
            JoinType::Left | JoinType::LeftAnti => left,
            JoinType::Right => !left,
            JoinType::Full => true,
            _ => false,
        }
    }

    /// Whether either side's state is unbounded (allowed only by the session setting).
    pub fn unbounded(&self) -> bool {
        self.left.bound.is_none() || self.right.bound.is_none()
    }

    fn describe_bound(&self, left: bool) -> String {
        let (side, schema) = if left {
            (&self.left, &self.left_schema)
        } else {
            (&self.right, &self.right_schema)
        };
        match side.bound {
            None => "UNBOUNDED".to_string(),
            Some(Bound::Key { column }) => format!(
                "rows leave when the watermark reaches {}.end",
                schema.field(column).name()
            ),
            Some(bound @ Bound::Value { column, .. }) => format!(
                "rows leave when {} <= watermark {} {} ms",
                schema.field(column).name(),
                if bound.state_offset_ms() < 0 {
                    "-"
                } else {
                    "+"
                },
                bound.state_offset_ms().abs()
            ),
        }
    }
}

/// The logical node of a stream-stream join (a DataFusion extension node replacing the
/// `Join`); planned into [`super::StreamJoinExec`].
#[derive(Debug, Clone)]
pub struct StreamJoinNode {
    pub(super) spec: Arc<StreamJoinSpec>,
    left: LogicalPlan,
    right: LogicalPlan,
}

impl PartialEq for StreamJoinNode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.spec, &other.spec) && self.left == other.left && self.right == other.right
    }
}

impl Eq for StreamJoinNode {}

impl PartialOrd for StreamJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl Hash for StreamJoinNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.spec) as usize).hash(state);
        self.left.hash(state);
        self.right.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for StreamJoinNode {
    fn name(&self) -> &str {
        "StreamJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.spec.output_schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let spec = &self.spec;
        let on: Vec<String> = spec
            .left_keys
            .iter()
            .zip(&spec.right_keys)
            .zip(&spec.null_equal)
            .map(|((l, r), n)| format!("{l} {} {r}", if *n { "<=>" } else { "=" }))
            .collect();
        let filter: Vec<String> = [&spec.left_filter, &spec.right_filter, &spec.residual]
            .into_iter()
            .flatten()
            .map(|e| e.to_string())
            .collect();
        write!(
            f,
            "StreamJoin: type={}, on=[{}]{}, left state: {}, right state: {}",
            spec.join_type,
            on.join(", "),
            if filter.is_empty() {
                String::new()
            } else {
                format!(", filter={}", filter.join(" AND "))
            },
            spec.describe_bound(true),
            spec.describe_bound(false)
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let right = inputs.swap_remove(1);
        let left = inputs.swap_remove(0);
        Ok(StreamJoinNode {
            spec: self.spec.clone(),
            left,
            right,
        })
    }
}

/// The name of a table's watermarked column, by table name (for the lineage of event
/// time through the plan).
pub type WatermarkOf<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replaces every join of two unbounded inputs in `plan` by a [`StreamJoinNode`], or
/// refuses it (see the module documentation). `allow_unbounded` is the session setting
/// `millrace.join.allow_unbounded_state`.
pub fn rewrite_stream_joins(
    plan: LogicalPlan,
    watermark_of: WatermarkOf,
    allow_unbounded: bool,
) -> Result<LogicalPlan> {
    let mut failure = None;
    let rewritten = plan
        .transform_up(|node| {
            let LogicalPlan::Join(join) = &node else {
                return Ok(Transformed::no(node));
            };
            if !(reads_stream(&join.left) && reads_stream(&join.right)) {
                return Ok(Transformed::no(node));
            }
            match build(join, watermark_of, allow_unbounded) {
                Ok(spec) => Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(StreamJoinNode {
                        spec: Arc::new(spec),
                        left: join.left.as_ref().clone(),
                        right: join.right.as_ref().clone(),
                    }),
                }))),
                Err(e) => {
                    failure.get_or_insert(e);
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

/// Which inputs an expression's columns come from.
#[derive(Debug, PartialEq, Eq)]
enum Sides {
    Neither,
    Left,
    Right,
    Both,
}

fn sides(expr: &Expr, left: &DFSchema, right: &DFSchema) -> Sides {
    let (mut l, mut r) = (false, false);
    for column in expr.column_refs() {
        if left.has_column(column) {
            l = true;
        } else if right.has_column(column) {
            r = true;
        } else {
            // An outer reference: treat as both (never a pre-join filter).
            l = true;
            r = true;
        }
    }
    match (l, r) {
        (false, false) => Sides::Neither,
        (true, false) => Sides::Left,
        (false, true) => Sides::Right,
        (true, true) => Sides::Both,
    }
}

fn refuse(message: String) -> Error {
    Error::Unsupported(message)
}

fn build(
    join: &datafusion::logical_expr::Join,
    watermark_of: WatermarkOf,
    allow_unbounded: bool,
) -> Result<StreamJoinSpec> {
    let kind = match join.join_type {
        JoinType::Inner => "inner",
        JoinType::Left => "LEFT OUTER",
        JoinType::Right => "RIGHT OUTER",
        JoinType::Full => "FULL OUTER",
        JoinType::LeftSemi => "LEFT SEMI",
        JoinType::LeftAnti => "LEFT ANTI",
        other => {
            return Err(refuse(format!(
                "a {other} join between two unbounded tables is not supported; write it as \
                 a LEFT SEMI or LEFT ANTI join with the sides swapped"
            )));
        }
    };
    if join.null_aware {
        return Err(refuse(
            "NOT IN (SELECT ... FROM <unbounded table>) is not supported (its NULL rule \
             needs the whole right side): write NOT EXISTS (SELECT ... WHERE r.k = l.k ...) \
             or a LEFT ANTI JOIN"
                .to_string(),
        ));
    }
    let left_schema = join.left.schema().clone();
    let right_schema = join.right.schema().clone();
    let mut left_keys = Vec::new();
    let mut right_keys = Vec::new();
    let mut null_equal = Vec::new();
    for (l, r) in &join.on {
        left_keys.push(l.clone());
        right_keys.push(r.clone());
        null_equal.push(join.null_equality == NullEquality::NullEqualsNull);
    }
    let (mut left_only, mut right_only, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for conjunct in join
        .filter
        .clone()
        .map(split_conjunction_owned)
        .unwrap_or_default()
    {
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &conjunct
            && matches!(op, Operator::Eq | Operator::IsNotDistinctFrom)
        {
            let (a, b) = (
                sides(left, &left_schema, &right_schema),
                sides(right, &left_schema, &right_schema),
            );
            let pair = match (a, b) {
                (Sides::Left, Sides::Right) => Some((left.as_ref(), right.as_ref())),
                (Sides::Right, Sides::Left) => Some((right.as_ref(), left.as_ref())),
                _ => None,
            };
            if let Some((l, r)) = pair {
                left_keys.push(l.clone());
                right_keys.push(r.clone());
                null_equal.push(*op == Operator::IsNotDistinctFrom);
                continue;
            }
        }
        match sides(&conjunct, &left_schema, &right_schema) {
            Sides::Left => left_only.push(conjunct),
            Sides::Right => right_only.push(conjunct),
            Sides::Both | Sides::Neither => both.push(conjunct),
        }
    }
    if left_keys.is_empty() {
        return Err(refuse(format!(
            "a {kind} join between two unbounded tables needs at least one equality between \
             the two sides (as in Spark): add one to the ON condition, e.g. `ON l.id = r.id AND \
             ...` (an equality of event-time windows, `l.w = r.w`, counts too)"
        )));
    }

    let mut left = SideSpec {
        event_time: event_time_column(&join.left, watermark_of),
        bound: None,
    };
    let mut right = SideSpec {
        event_time: event_time_column(&join.right, watermark_of),
        bound: None,
    };

    // State key watermark: equal event-time windows, at least one of them over its
    // side's watermarked column (then every later row of either side is in a window
    // ending after the watermark: the other side's rows at or before it are dropped
    // as late by that window's end).
    let left_windows = event_time_windows(&join.left, watermark_of);
    let right_windows = event_time_windows(&join.right, watermark_of);
    for (l, r) in left_keys.iter().zip(&right_keys) {
        if let (Some(lc), Some(rc)) = (window_key(l, &left_schema), window_key(r, &right_schema))
            && (left_windows.contains(&lc) || right_windows.contains(&rc))
        {
            left.bound.get_or_insert(Bound::Key { column: lc });
            right.bound.get_or_insert(Bound::Key { column: rc });
        }
    }
    // State value watermark: the time conditions between the two event-time columns
    // (ranges, and equality of the watermarked columns).
    if let (Some(lt), Some(rt)) = (left.event_time, right.event_time) {
        let lcol = Column::from(left_schema.qualified_field(lt));
        let rcol = Column::from(right_schema.qualified_field(rt));
        let mut time_conjuncts: Vec<Expr> = both
            .iter()
            .filter(|c| {
                let refs = c.column_refs();
                !refs.is_empty() && refs.iter().all(|col| **col == lcol || **col == rcol)
            })
            .cloned()
            .collect();
        for (l, r) in left_keys.iter().zip(&right_keys) {
            if l.try_as_col() == Some(&lcol) && r.try_as_col() == Some(&rcol) {
                time_conjuncts.push(l.clone().eq(r.clone()));
            }
        }
        if let Some(condition) = conjunction(time_conjuncts) {
            let bounds = TimeBounds::new(&condition, &lcol, &rcol)?;
            if left.bound.is_none()
                && let Some(offset_ns) = bounds.offset(true)
            {
                left.bound = Some(Bound::Value {
                    column: lt,
                    offset_ns,
                });
            }
            if right.bound.is_none()
                && let Some(offset_ns) = bounds.offset(false)
            {
                right.bound = Some(Bound::Value {
                    column: rt,
                    offset_ns,
                });
            }
        }
    }

    let how = "declare a watermark on both tables (`WATERMARK FOR ts AS ts - INTERVAL ...`) \
               and bound the time between matching rows in the ON condition, e.g. `AND l.ts \
               BETWEEN r.ts - INTERVAL '5' MINUTE AND r.ts + INTERVAL '10' MINUTE`, or join \
               on equal event-time windows (`l.w = r.w` with `window(ts, ...)` on both sides)";
    let waiting = |name: &str, side: &SideSpec| -> Result<()> {
        if side.bound.is_some() {
            return Ok(());
        }
        let what = if join.join_type == JoinType::LeftSemi {
            "keeps each left row, waiting for its first match, until no right row can match \
             it any more"
                .to_string()
        } else {
            format!(
                "emits a {name} row without a match only once no row of the other side can \
                 match it any more"
            )
        };
        Err(refuse(format!(
            "a {kind} join between two unbounded tables {what}, so it needs to know when \
             that is: {how}"
        )))
    };
    match join.join_type {
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => waiting("left", &left)?,
        JoinType::Right => waiting("right", &right)?,
        JoinType::Full => {
            if left.bound.is_some() != right.bound.is_some() {
                return Err(refuse(format!(
                    "a FULL OUTER join between two unbounded tables needs a time bound on both \
                     sides (millrace is stricter than Spark here: with one side unbounded, that \
                     side's rows would wait for ever and their NULL rows never appear); the \
                     condition bounds only the {} side: bound both, e.g. `l.ts BETWEEN r.ts - \
                     INTERVAL '5' MINUTE AND r.ts + INTERVAL '5' MINUTE`",
                    if left.bound.is_some() {
                        "left"
                    } else {
                        "right"
                    }
                )));
            }
            waiting("left or right", &left)?;
        }
        _ => {}
    }
    if (left.bound.is_none() || right.bound.is_none()) && !allow_unbounded {
        let which = match (left.bound.is_none(), right.bound.is_none()) {
            (true, true) => "left and right",
            (true, false) => "left",
            _ => "right",
        };
        return Err(refuse(format!(
            "the state of this {kind} join between two unbounded tables would grow without \
             bound: its {which} rows never leave it. To bound it, {how}. If the inputs are \
             small or finite, allow it with `SET millrace.join.allow_unbounded_state = true`"
        )));
    }

    let combined_schema = Arc::new(left_schema.join(&right_schema)?);
    Ok(StreamJoinSpec {
        join_type: join.join_type,
        left_keys,
        right_keys,
        null_equal,
        left_filter: conjunction(left_only),
        right_filter: conjunction(right_only),
        residual: conjunction(both),
        left,
        right,
        left_schema,
        right_schema,
        combined_schema,
        output_schema: join.schema.clone(),
    })
}

/// The position in `plan`'s output of the watermarked event-time column of the table it
/// reads, followed through projections (as itself or renamed), aliases, filters and
/// stream-stream joins.
pub(crate) fn event_time_column(plan: &LogicalPlan, watermark_of: WatermarkOf) -> Option<usize> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let column = watermark_of(scan.table_name.table())?;
            scan.projected_schema
                .fields()
                .iter()
                .position(|f| *f.name() == column)
        }
        LogicalPlan::Projection(projection) => {
            let below = event_time_column(&projection.input, watermark_of)?;
            let below = Column::from(projection.input.schema().qualified_field(below));
            projection.expr.iter().position(|e| {
                let inner = match e {
                    Expr::Alias(alias) => alias.expr.as_ref(),
                    other => other,
                };
                inner.try_as_col() == Some(&below)
            })
        }
        LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_) => event_time_column(plan.inputs()[0], watermark_of),
        LogicalPlan::Extension(extension) => {
            let node = extension.node.as_any().downcast_ref::<StreamJoinNode>()?;
            let spec = &node.spec;
            match spec.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => spec.left.event_time,
                _ => spec.left.event_time.or(spec
                    .right
                    .event_time
                    .map(|i| i + spec.left_schema.fields().len())),
            }
        }
        _ => None,
    }
}

/// The positions in `plan`'s output of event-time windows over the watermarked column
/// of the table it reads: `window(ts, ...)` in a projection or a `GROUP BY`, followed
/// through projections, aliases, filters and stream-stream joins.
fn event_time_windows(plan: &LogicalPlan, watermark_of: WatermarkOf) -> Vec<usize> {
    let is_window_of = |expr: &Expr, input: &LogicalPlan, below: &[usize]| -> bool {
        let inner = match expr {
            Expr::Alias(alias) => alias.expr.as_ref(),
            other => other,
        };
        match inner {
            Expr::ScalarFunction(f) if f.name() == "window" => {
                let Some(ts) = event_time_column(input, watermark_of) else {
                    return false;
                };
                let ts = Column::from(input.schema().qualified_field(ts));
                f.args.first().and_then(|a| a.try_as_col()) == Some(&ts)
            }
            Expr::Column(c) => input
                .schema()
                .maybe_index_of_column(c)
                .is_some_and(|i| below.contains(&i)),
            _ => false,
        }
    };
    match plan {
        LogicalPlan::Projection(projection) => {
            let below = event_time_windows(&projection.input, watermark_of);
            (0..projection.expr.len())
                .filter(|&i| is_window_of(&projection.expr[i], &projection.input, &below))
                .collect()
        }
        LogicalPlan::Aggregate(aggregate) => {
            let below = event_time_windows(&aggregate.input, watermark_of);
            (0..aggregate.group_expr.len())
                .filter(|&i| is_window_of(&aggregate.group_expr[i], &aggregate.input, &below))
                .collect()
        }
        LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_) => event_time_windows(plan.inputs()[0], watermark_of),
        LogicalPlan::Extension(extension) => {
            let Some(node) = extension.node.as_any().downcast_ref::<StreamJoinNode>() else {
                return Vec::new();
            };
            let mut windows = event_time_windows(&node.left, watermark_of);
            if !matches!(node.spec.join_type, JoinType::LeftSemi | JoinType::LeftAnti) {
                let offset = node.left.schema().fields().len();
                windows.extend(
                    event_time_windows(&node.right, watermark_of)
                        .into_iter()
                        .map(|i| i + offset),
                );
            }
            windows
        }
        _ => Vec::new(),
    }
}

/// Whether a column type is an event-time window: a `{start, end}` struct of timestamps.
pub(super) fn is_window_struct(data_type: &DataType) -> bool {
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

/// The column of `schema` a key expression is, if it is an event-time window column.
fn window_key(expr: &Expr, schema: &DFSchema) -> Option<usize> {
    let index = schema.maybe_index_of_column(expr.try_as_col()?)?;
    is_window_struct(schema.field(index).data_type()).then_some(index)
}

/// The time conditions between the two event-time columns, as DataFusion's interval
/// graph (`ExprIntervalGraph`, the constraint propagation behind its symmetric hash
/// join): given the other side's times after the watermark, propagating "the
/// condition holds" gives the earliest time of this side that can still match.
struct TimeBounds {
    expr: Option<Arc<dyn PhysicalExpr>>,
    schema: Arc<Schema>,
}

const LEFT_TIME: &str = "__left_time";
const RIGHT_TIME: &str = "__right_time";

/// A fixed duration literal in ns (`None`: not a duration; `Some(None)`: a duration of
/// variable length, months or years).
fn duration_ns(value: &ScalarValue) -> Option<Option<i64>> {
    const DAY: i64 = 86_400_000_000_000;
    Some(match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            (v.months == 0).then(|| i64::from(v.days) * DAY + v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * DAY + i64::from(v.milliseconds) * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(_)) => None,
        ScalarValue::DurationSecond(Some(v)) => Some(v * 1_000_000_000),
        ScalarValue::DurationMillisecond(Some(v)) => Some(v * 1_000_000),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(v * 1_000),
        ScalarValue::DurationNanosecond(Some(v)) => Some(*v),
        _ => return None,
    })
}

impl TimeBounds {
    /// The conjunction of time conditions between the columns `left` and `right`,
    /// with both event times taken as ns since the epoch (`Int64`) and durations as ns,
    /// which DataFusion's interval arithmetic handles.
    fn new(condition: &Expr, left: &Column, right: &Column) -> Result<Self> {
        let mut variable = false;
        let renamed = condition
            .clone()
            .transform(|e| {
                Ok(match &e {
                    Expr::Column(c) if c == left => {
                        Transformed::yes(Expr::Column(Column::new_unqualified(LEFT_TIME)))
                    }
                    Expr::Column(c) if c == right => {
                        Transformed::yes(Expr::Column(Column::new_unqualified(RIGHT_TIME)))
                    }
                    Expr::Literal(value, _) => match duration_ns(value) {
                        Some(Some(ns)) => {
                            Transformed::yes(Expr::Literal(ScalarValue::Int64(Some(ns)), None))
                        }
                        Some(None) => {
                            variable = true;
                            Transformed::no(e)
                        }
                        None => Transformed::no(e),
                    },
                    _ => Transformed::no(e),
                })
            })?
            .data;
        if variable {
            return Err(refuse(
                "the time bound of this stream-stream join is not a fixed duration (it \
                 uses months or years, whose length varies): write it in days, hours, \
                 minutes or seconds"
                    .to_string(),
            ));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new(LEFT_TIME, DataType::Int64, true),
            Field::new(RIGHT_TIME, DataType::Int64, true),
        ]));
        let dfschema = DFSchema::try_from(schema.as_ref().clone())?;
        // An expression interval arithmetic cannot follow gives no bound.
        let expr = create_physical_expr(
            &renamed,
            &dfschema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .ok()
        .filter(|e| check_support(e, &schema));
        Ok(TimeBounds { expr, schema })
    }

    /// The earliest time (ns) of one side that can match a row of the other side at or
    /// after `watermark_ms`, if the condition bounds it.
    fn earliest(&self, left: bool, watermark_ms: i64) -> Option<i64> {
        let expr = self.expr.clone()?;
        let mut graph = ExprIntervalGraph::try_new(expr, self.schema.as_ref()).ok()?;
        let columns: Vec<Arc<dyn PhysicalExpr>> = vec![
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                LEFT_TIME, 0,
            )),
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                RIGHT_TIME, 1,
            )),
        ];
        let indices = graph.gather_node_indices(&columns);
        if indices.iter().any(|(_, i)| *i == usize::MAX) {
            return None;
        }
        let (this, other) = if left { (0, 1) } else { (1, 0) };
        // As Spark, the other side's later rows are taken to be at or after the
        // watermark (they are after it: rows at it are late; Spark keeps that margin).
        let after = Interval::try_new(
            ScalarValue::Int64(Some(watermark_ms.checked_mul(1_000_000)?)),
            ScalarValue::Int64(None),
        )
        .ok()?;
        let mut bounds = vec![
            (
                indices[this].1,
                Interval::make_unbounded(&DataType::Int64).ok()?,
            ),
            (indices[other].1, after),
        ];
        match graph.update_ranges(&mut bounds, Interval::TRUE) {
            Ok(PropagationResult::Success) => match bounds[0].1.lower() {
                ScalarValue::Int64(v) => *v,
                _ => None,
            },
            _ => None,
        }
    }

    /// The offset of one side's bound from the watermark (see [`Bound::Value`]).
    fn offset(&self, left: bool) -> Option<i64> {
        const AT: i64 = 1_700_000_000_000;
        self.earliest(left, AT).map(|ns| ns - AT * 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn bounds(condition: Expr) -> TimeBounds {
        TimeBounds::new(&condition, &Column::from_name("l"), &Column::from_name("r")).unwrap()
    }

    fn seconds(n: i64) -> Expr {
        lit(ScalarValue::new_interval_mdn(0, 0, n * 1_000_000_000))
    }

    #[test]
    fn a_range_bounds_both_sides() {
        // l BETWEEN r - 10s AND r + 5s: later r >= W, so l >= W - 10s; r >= l - 5s.
        let b = bounds(
            col("l")
                .gt_eq(col("r") - seconds(10))
                .and(col("l").lt_eq(col("r") + seconds(5))),
        );
        assert_eq!(b.offset(true), Some(-10_000_000_000));
        assert_eq!(b.offset(false), Some(-5_000_000_000));
        let left = Bound::Value {
            column: 0,
            offset_ns: b.offset(true).unwrap(),
        };
        // Spark: left rows before W - 10 s leave ("slightly less than" W - 10 s).
        assert_eq!(left.state_offset_ms(), -10_001);
    }

    #[test]
    fn a_one_sided_range_bounds_one_side() {
        // l < r - 5s: r > l + 5s bounds the right side; nothing bounds the left.
        // Right rows at or before W + 5 s leave (Spark: right state watermark W + 5 s).
        let b = bounds(col("l").lt(col("r") - seconds(5)));
        assert_eq!(b.offset(true), None);
        let right = b.offset(false).unwrap();
        let bound = Bound::Value {
            column: 0,
            offset_ns: right,
        };
        assert_eq!(bound.state_offset_ms(), 5_000);
    }

    #[test]
    fn equal_event_times_bound_both_sides_at_the_watermark() {
        let b = bounds(col("l").eq(col("r")));
        let bound = Bound::Value {
            column: 0,
            offset_ns: b.offset(true).unwrap(),
        };
        assert_eq!(bound.state_offset_ms(), -1);
    }
}
