//! A stream frame: a DataFusion `DataFrame` over unbounded tables, with the
//! transformations of Spark's streaming `DataFrame`.
//!
//! Each method builds on DataFusion's own `DataFrame` (the plan is only built here;
//! nothing runs until [`StreamFrame::write_stream`] starts a query), so what can be
//! expressed is what DataFusion can plan; what cannot run incrementally is refused when
//! the query starts, with the same messages as SQL.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder, TableScanBuilder};
use datafusion::prelude::{DataFrame, col};

use super::{DataStreamWriter, StreamingContext, streams_of};
use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::execution::operator::{
    FlatMapGroupsNode, FlatMapGroupsSpec, GroupState, GroupStateTimeout, Row,
};
use crate::functions::SESSION_WINDOW;
use crate::planning::{DistinctOnMode, StreamTable, rewrite_distinct_on, scanned_stream};
use crate::sink::OutputMode;
use crate::source::{DEFAULT_WATERMARK_MAX_FUTURE, WatermarkSpec};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;

/// A streaming `DataFrame`: transformations return new frames; `write_stream` runs it.
#[derive(Clone)]
pub struct StreamFrame {
    ctx: StreamingContext,
    frame: DataFrame,
}

impl StreamFrame {
    pub(super) fn new(ctx: StreamingContext, frame: DataFrame) -> Self {
        StreamFrame { ctx, frame }
    }

    fn with(&self, frame: DataFrame) -> Self {
        StreamFrame::new(self.ctx.clone(), frame)
    }

    /// The DataFusion frame underneath (its logical plan reads the unbounded tables).
    pub fn data_frame(&self) -> &DataFrame {
        &self.frame
    }

    /// The frame's columns.
    pub fn schema(&self) -> datafusion::arrow::datatypes::Schema {
        self.frame.schema().as_arrow().clone()
    }

    /// Keeps the given expressions as columns (Spark's `select`).
    pub fn select(&self, exprs: Vec<Expr>) -> Result<Self> {
        Ok(self.with(self.frame.clone().select(exprs)?))
    }

    /// Keeps the rows for which `predicate` is true (Spark's `filter`).
    pub fn filter(&self, predicate: Expr) -> Result<Self> {
        Ok(self.with(self.frame.clone().filter(predicate)?))
    }

    /// Same as [`filter`](Self::filter) (Spark's `where`).
    pub fn r#where(&self, predicate: Expr) -> Result<Self> {
        self.filter(predicate)
    }

    /// Adds (or replaces) a column computed by `expr`.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<Self> {
        Ok(self.with(self.frame.clone().with_column(name, expr)?))
    }

    /// Removes columns by name.
    pub fn drop(&self, columns: &[&str]) -> Result<Self> {
        Ok(self.with(self.frame.clone().drop_columns(columns)?))
    }

    /// One row per element of the list column `column` (Spark's `explode`), e.g.
    /// words from `string_to_array(line, ' ')`.
    pub fn unnest(&self, column: &str) -> Result<Self> {
        Ok(self.with(self.frame.clone().unnest_columns(&[column])?))
    }

    /// Declares `column` the event time of the stream it comes from, with a watermark
    /// `delay` behind the largest event time seen (Spark's `withWatermark`), e.g.
    /// `with_watermark("ts", "10 seconds")`. The column must be a timestamp column of
    /// one unbounded table this frame reads.
    pub fn with_watermark(&self, column: &str, delay: &str) -> Result<Self> {
        let delay = parse_duration(delay)?;
        let plan = self.frame.logical_plan().clone();
        let owners: Vec<_> = streams_of(&plan)
            .into_iter()
            .filter(|def| def.schema.field_with_name(column).is_ok())
            .collect();
        let def = match owners.as_slice() {
            [def] => def.clone(),
            [] => {
                return Err(Error::Sql(format!(
                    "with_watermark: no unbounded table read by this frame has a column \
                     '{column}'; name a timestamp column of the stream"
                )));
            }
            _ => {
                return Err(Error::Sql(format!(
                    "with_watermark: several unbounded tables have a column '{column}'; call \
                     with_watermark on each stream before combining them"
                )));
            }
        };
        let field = def.schema.field_with_name(column)?;
        if !matches!(
            field.data_type(),
            datafusion::arrow::datatypes::DataType::Timestamp(_, _)
        ) {
            return Err(Error::Sql(format!(
                "with_watermark: column '{column}' is {}, not a timestamp",
                field.data_type()
            )));
        }
        let mut watermarked = (*def).clone();
        watermarked.watermark = Some(WatermarkSpec {
            column: column.to_string(),
            delay,
            max_future: def
                .watermark
                .as_ref()
                .map(|w| w.max_future)
                .unwrap_or(DEFAULT_WATERMARK_MAX_FUTURE),
            idle_timeout: def.watermark.as_ref().and_then(|w| w.idle_timeout),
        });
        let table = Arc::new(StreamTable {
            def: Arc::new(watermarked),
        });
        let plan = plan
            .transform_up(|node| {
                let LogicalPlan::TableScan(scan) = &node else {
                    return Ok(Transformed::no(node));
                };
                match scanned_stream(scan) {
                    Some(d) if d.name == def.name => {
                        let replaced = TableScanBuilder::new(
                            scan.table_name.clone(),
                            provider_as_source(table.clone()),
                        )
                        .with_projection(scan.projection.clone())
                        .with_filters(scan.filters.clone())
                        .with_fetch(scan.fetch)
                        .build()?;
                        Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
                    }
                    _ => Ok(Transformed::no(node)),
                }
            })?
            .data;
        Ok(self.with_plan(plan))
    }

    /// Groups by `exprs` (columns, [`window`](super::window) or
    /// [`session_window`](super::session_window)) for [`GroupedStream::agg`].
    pub fn group_by(&self, exprs: Vec<Expr>) -> GroupedStream {
        GroupedStream {
            frame: self.clone(),
            groups: exprs,
        }
    }

    /// Groups the rows by the values of `columns` for a user-defined stateful operator
    /// ([`KeyedStream::flat_map_groups_with_state`]), as Spark's `groupByKey`.
    pub fn group_by_key(&self, columns: &[&str]) -> KeyedStream {
        KeyedStream {
            frame: self.clone(),
            keys: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Joins with a static DataFusion frame on equal columns (a stream-static join;
    /// the stream stays on the left): inner, left outer, left semi or left anti.
    pub fn join(
        &self,
        right: DataFrame,
        join_type: JoinType,
        left_columns: &[&str],
        right_columns: &[&str],
    ) -> Result<Self> {
        Ok(self.with(self.frame.clone().join(
            right,
            join_type,
            left_columns,
            right_columns,
            None,
        )?))
    }

    /// Joins with another stream (a stream-stream join, Spark's `join` of two
    /// streaming frames): `join_type` Inner, Left, Right, Full, LeftSemi or LeftAnti;
    /// `condition` needs an equality between the two sides and, except for an inner
    /// join allowed to keep unbounded state, a time bound between their watermarked
    /// event times (`l.ts BETWEEN r.ts - interval AND r.ts + interval`) or equal
    /// event-time windows. Name the frames with [`alias`](Self::alias) to tell their
    /// columns apart. The same checks as SQL apply when the query starts.
    pub fn join_stream(
        &self,
        other: &StreamFrame,
        join_type: JoinType,
        condition: Expr,
    ) -> Result<Self> {
        Ok(self.with(
            self.frame
                .clone()
                .join_on(other.frame.clone(), join_type, [condition])?,
        ))
    }

    /// Names the frame, so its columns can be referred to as `name.column` (e.g. on
    /// both sides of [`join_stream`](Self::join_stream)).
    pub fn alias(&self, name: &str) -> Result<Self> {
        Ok(self.with(self.frame.clone().alias(name)?))
    }

    /// The rows of both streams (Spark's `union`, keeping duplicates).
    pub fn union(&self, other: &StreamFrame) -> Result<Self> {
        Ok(self.with(self.frame.clone().union(other.frame.clone())?))
    }

    /// Drops rows seen before (Spark's `dropDuplicates`): by every column with `None`,
    /// else by the named columns, keeping the first row that arrives for each key.
    /// With the watermarked column among the keys, keys are forgotten once the
    /// watermark passes them; otherwise they are kept for ever.
    pub fn drop_duplicates(&self, columns: Option<&[&str]>) -> Result<Self> {
        match columns {
            None => Ok(self.with(self.frame.clone().distinct()?)),
            Some(columns) => Ok(self.with_plan(self.distinct_on(columns)?)),
        }
    }

    /// Drops rows whose key was seen within the watermark delay before (Spark's
    /// `dropDuplicatesWithinWatermark`): a key is remembered until the watermark
    /// passes its first row's event time plus the delay. Needs
    /// [`with_watermark`](Self::with_watermark) first.
    pub fn drop_duplicates_within_watermark(&self, columns: &[&str]) -> Result<Self> {
        let plan = self.distinct_on(columns)?;
        let streams = streams_of(&plan);
        let rewritten = rewrite_distinct_on(plan, DistinctOnMode::WithinWatermark, &streams)?;
        Ok(self.with_plan(rewritten))
    }

    /// `SELECT DISTINCT ON (columns) *` over this frame.
    fn distinct_on(&self, columns: &[&str]) -> Result<LogicalPlan> {
        let on: Vec<Expr> = columns.iter().map(|c| col(*c)).collect();
        let all: Vec<Expr> = self
            .frame
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        Ok(LogicalPlanBuilder::from(self.frame.logical_plan().clone())
            .distinct_on(on, all, None)?
            .build()?)
    }

    fn with_plan(&self, plan: LogicalPlan) -> Self {
        let state = self.ctx.session().context().state();
        self.with(DataFrame::new(state, plan))
    }

    /// Registers this frame as a view usable from SQL in the same context (a SQL
    /// `CREATE SINK ... AS SELECT ... FROM name` then runs it incrementally).
    pub fn create_or_replace_temp_view(&self, name: &str) -> Result<()> {
        let context = self.ctx.session().context();
        context.deregister_table(name)?;
        context.register_table(name, self.frame.clone().into_view())?;
        Ok(())
    }

    /// Starts describing where and how the results go (Spark's `writeStream`).
    pub fn write_stream(&self) -> DataStreamWriter {
        DataStreamWriter::new(self.ctx.clone(), self.frame.logical_plan().clone())
    }
}

/// A frame grouped by keys, waiting for its aggregates.
pub struct GroupedStream {
    frame: StreamFrame,
    groups: Vec<Expr>,
}

impl GroupedStream {
    /// Aggregates each group (DataFusion's aggregate functions: `count`, `sum`, `avg`,
    /// `min`, `max`, `approx_distinct`, ...). A [`window`](super::window) or
    /// [`session_window`](super::session_window) key comes out as a column named
    /// `window` or `session_window`, as in Spark.
    pub fn agg(self, aggregates: Vec<Expr>) -> Result<StreamFrame> {
        // The aggregate's output starts with the group columns, in order.
        let renames: Vec<(usize, &str)> = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Expr::ScalarFunction(f) if f.name() == "window" => Some((i, "window")),
                Expr::ScalarFunction(f) if f.name() == SESSION_WINDOW => Some((i, SESSION_WINDOW)),
                _ => None,
            })
            .collect();
        let aggregated = self
            .frame
            .frame
            .clone()
            .aggregate(self.groups, aggregates)?;
        if renames.is_empty() {
            return Ok(self.frame.with(aggregated));
        }
        let columns: Vec<Expr> = aggregated
            .schema()
            .columns()
            .into_iter()
            .enumerate()
            .map(|(i, c)| match renames.iter().find(|(at, _)| *at == i) {
                Some((_, to)) => Expr::Column(c).alias(*to),
                None => Expr::Column(c),
            })
            .collect();
        Ok(self.frame.with(aggregated.select(columns)?))
    }
}

/// A frame grouped by key columns, waiting for its user-defined stateful operator.
pub struct KeyedStream {
    frame: StreamFrame,
    keys: Vec<String>,
}

impl KeyedStream {
    /// Spark's `flatMapGroupsWithState`: each batch, `f` is called once per key that
    /// has new rows, with the key's values, those rows (an Arrow `RecordBatch` of the
    /// frame's columns, in arrival order) and the key's [`GroupState`]; then once per
    /// key whose timeout passed without new rows (empty rows,
    /// [`GroupState::has_timed_out`] true). The rows `f` returns (values in the order
    /// of `output_schema`'s columns) form the frame's output.
    ///
    /// The state (any serde type) is saved as JSON with the batch under the
    /// checkpoint's `state/<operator id>/`, so a restart continues from it and a replay
    /// after a crash never applies a batch twice. `output_mode` must be the query's
    /// (append or update). With [`GroupStateTimeout::EventTimeTimeout`] the frame needs
    /// a watermark, and a batch runs when it moves even without data, so that keys time
    /// out; processing-time timeouts are checked when a batch runs.
    pub fn flat_map_groups_with_state<S, F>(
        self,
        output_schema: SchemaRef,
        output_mode: OutputMode,
        timeout: GroupStateTimeout,
        f: F,
    ) -> Result<StreamFrame>
    where
        S: serde::Serialize + serde::de::DeserializeOwned + 'static,
        F: Fn(&[ScalarValue], &RecordBatch, &mut GroupState<S>) -> Result<Vec<Row>>
            + Send
            + Sync
            + 'static,
    {
        if output_mode == OutputMode::Complete {
            return Err(Error::Unsupported(
                "flat_map_groups_with_state emits rows in output mode 'append' or 'update', \
                 not 'complete'"
                    .to_string(),
            ));
        }
        let spec = FlatMapGroupsSpec::new(self.keys, output_schema, output_mode, timeout, f);
        let plan = FlatMapGroupsNode::try_new(spec, self.frame.frame.logical_plan().clone())?;
        Ok(self.frame.with_plan(plan))
    }
}
