//! A user-defined stateful operator (Spark's `flatMapGroupsWithState`): a Rust closure
//! called once per key and batch with the key's new rows and a typed, checkpointed
//! state handle, plus event-time and processing-time timeouts.
//!
//! Pieces, along the data path:
//! - [`FlatMapGroupsNode`], a DataFusion logical extension node that
//!   [`StreamFrame::group_by_key`](crate::dataframe::StreamFrame::group_by_key) puts on
//!   top of the frame's plan; it carries the closure;
//! - [`FlatMapGroupsExec`], its physical placeholder (planned by
//!   [`StreamingExtensionPlanner`]): it marks where the operator's input ends in the
//!   batch's physical plan and cannot run on its own;
//! - [`FlatMapGroupsOperator`], the [`StatefulOperator`] the batch loop drives: it
//!   runs the input, groups the rows by key, calls the closure per key (and per timed-out
//!   key), replaces the placeholder by the rows the closure returned, and saves the state
//!   under `state/<operator id>/` like every operator.
//!
//! The state of a key is kept as JSON text (serde) in the state store, one row per key:
//! the key columns, `state` and `timeout_ms`. Since it is versioned with the batch, a
//! replay after a crash starts from the previous batch's state and never applies a
//! batch twice.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session as DataFusionSession;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, collect,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::stream_join::event_time_column;
use super::{OperatorBatch, OperatorMetrics, StatefulOperator, WatermarkOf, timed};
use crate::error::{Error, Result};
use crate::execution::aggregation::split_ended;
use crate::sink::OutputMode;
use crate::state::{StateStore, StateStoreConfig};

/// Which timeouts a [`GroupState`] may set (Spark's `GroupStateTimeout`), fixed per
/// operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupStateTimeout {
    /// Keys are called only when they have new rows.
    NoTimeout,
    /// [`GroupState::set_timeout_timestamp`]: a key times out once the watermark (the
    /// current batch's, the one that evicts) passes the timestamp; needs a watermark.
    /// As in Spark, input rows at or before the late-events watermark (the previous
    /// batch's) are then dropped and counted instead of being passed to the closure.
    EventTimeTimeout,
    /// [`GroupState::set_timeout_duration`]: a key times out once a batch's timestamp
    /// (from the offset log, so a replay agrees) is past the call's batch timestamp
    /// plus the duration. Checked whenever a batch runs.
    ProcessingTimeTimeout,
}

/// One output row of the closure: a value per column of the operator's output schema.
pub type Row = Vec<ScalarValue>;

/// The state of one key, as the closure sees it (Spark's `GroupState[S]`). The value is
/// serialized with serde (JSON) into the operator's state store after the batch.
///
/// Timeouts are not carried over between calls: a call that wants its key to time out
/// sets the timeout again (as in Spark). A key without state has no timeout.
pub struct GroupState<S> {
    value: Option<S>,
    changed: bool,
    timed_out: bool,
    timeout_ms: Option<i64>,
    conf: GroupStateTimeout,
    watermark_ms: Option<i64>,
    batch_timestamp_ms: i64,
}

impl<S> GroupState<S> {
    /// The key's state, if it has one.
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }

    /// Whether the key has a state.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// Sets the key's state (saved with the batch).
    pub fn update(&mut self, value: S) {
        self.value = Some(value);
        self.changed = true;
    }

    /// Removes the key's state (and its timeout).
    pub fn remove(&mut self) {
        self.value = None;
        self.changed = true;
    }

    /// Whether this call is for a key whose timeout passed with no new rows (the rows
    /// given are then empty).
    pub fn has_timed_out(&self) -> bool {
        self.timed_out
    }

    /// Times the key out once the event-time watermark passes `timestamp_ms` (ms since
    /// the epoch). Only with [`GroupStateTimeout::EventTimeTimeout`].
    pub fn set_timeout_timestamp(&mut self, timestamp_ms: i64) -> Result<()> {
        if self.conf != GroupStateTimeout::EventTimeTimeout {
            return Err(Error::Unsupported(format!(
                "set_timeout_timestamp needs GroupStateTimeout::EventTimeTimeout; this \
                 operator was declared with {:?}",
                self.conf
            )));
        }
        self.timeout_ms = Some(timestamp_ms);
        Ok(())
    }

    /// Times the key out `duration` after this batch's timestamp. Only with
    /// [`GroupStateTimeout::ProcessingTimeTimeout`].
    pub fn set_timeout_duration(&mut self, duration: Duration) -> Result<()> {
        if self.conf != GroupStateTimeout::ProcessingTimeTimeout {
            return Err(Error::Unsupported(format!(
                "set_timeout_duration needs GroupStateTimeout::ProcessingTimeTimeout; this \
                 operator was declared with {:?}",
                self.conf
            )));
        }
        self.timeout_ms = Some(self.batch_timestamp_ms + duration.as_millis() as i64);
        Ok(())
    }

    /// The event-time watermark of this batch (the eviction one), ms since the epoch.
    pub fn current_watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// This batch's timestamp (ms since the epoch), from the offset log.
    pub fn current_processing_time_ms(&self) -> i64 {
        self.batch_timestamp_ms
    }
}

/// A key's state between calls, untyped.
#[derive(Debug, Clone)]
struct StoredState {
    key: Vec<ScalarValue>,
    json: String,
    timeout_ms: Option<i64>,
}

/// What a call is given besides the key and the rows, untyped.
struct CallContext {
    json: Option<String>,
    timed_out: bool,
    conf: GroupStateTimeout,
    watermark_ms: Option<i64>,
    batch_timestamp_ms: i64,
}

/// What a call left, untyped: the new JSON state (`None`: no state) and timeout.
struct CallResult {
    rows: Vec<Row>,
    json: Option<String>,
    changed: bool,
    timeout_ms: Option<i64>,
}

type ErasedFn =
    dyn Fn(&[ScalarValue], &RecordBatch, CallContext) -> Result<CallResult> + Send + Sync;

/// Wraps a typed closure into the untyped form the node carries.
fn erase<S, F>(f: F) -> Arc<ErasedFn>
where
    S: Serialize + DeserializeOwned + 'static,
    F: Fn(&[ScalarValue], &RecordBatch, &mut GroupState<S>) -> Result<Vec<Row>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(move |key, rows, ctx| {
        let value = match &ctx.json {
            Some(json) => Some(serde_json::from_str::<S>(json).map_err(|e| {
                Error::Checkpoint(format!(
                    "flat_map_groups_with_state: the saved state of key {key:?} does not \
                     deserialize into the closure's state type ({e}); was the state type \
                     changed? Start with a new checkpoint"
                ))
            })?),
            None => None,
        };
        let mut state = GroupState {
            value,
            changed: false,
            timed_out: ctx.timed_out,
            timeout_ms: None,
            conf: ctx.conf,
            watermark_ms: ctx.watermark_ms,
            batch_timestamp_ms: ctx.batch_timestamp_ms,
        };
        let rows = f(key, rows, &mut state)?;
        let json = match (&state.value, state.changed) {
            (Some(value), true) => Some(serde_json::to_string(value)?),
            (Some(_), false) => ctx.json,
            (None, _) => None,
        };
        Ok(CallResult {
            rows,
            timeout_ms: state.timeout_ms.filter(|_| json.is_some()),
            json,
            changed: state.changed,
        })
    })
}

/// What the user declared: shared by the logical node, its physical placeholder and
/// the operator (matched by pointer).
pub struct FlatMapGroupsSpec {
    /// Names of the key columns in the input.
    pub keys: Vec<String>,
    /// The schema of the rows the closure returns.
    pub output_schema: SchemaRef,
    /// The output mode the operator was declared for.
    pub output_mode: OutputMode,
    /// Which timeouts keys may set.
    pub timeout: GroupStateTimeout,
    function: Arc<ErasedFn>,
}

impl FlatMapGroupsSpec {
    /// A declaration (see [`StreamFrame::group_by_key`](crate::dataframe::StreamFrame::group_by_key)).
    pub(crate) fn new<S, F>(
        keys: Vec<String>,
        output_schema: SchemaRef,
        output_mode: OutputMode,
        timeout: GroupStateTimeout,
        f: F,
    ) -> Self
    where
        S: Serialize + DeserializeOwned + 'static,
        F: Fn(&[ScalarValue], &RecordBatch, &mut GroupState<S>) -> Result<Vec<Row>>
            + Send
            + Sync
            + 'static,
    {
        FlatMapGroupsSpec {
            keys,
            output_schema,
            output_mode,
            timeout,
            function: erase(f),
        }
    }
}

impl fmt::Debug for FlatMapGroupsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatMapGroupsSpec")
            .field("keys", &self.keys)
            .field("output_mode", &self.output_mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The logical plan node of a `flat_map_groups_with_state` (a DataFusion extension).
#[derive(Debug, Clone)]
pub struct FlatMapGroupsNode {
    spec: Arc<FlatMapGroupsSpec>,
    input: LogicalPlan,
    schema: DFSchemaRef,
    /// The position of the input's watermarked event-time column, set when a query is
    /// planned ([`resolve_event_time`]): with an event-time timeout, rows at or before
    /// the late-events watermark are dropped before the closure sees them.
    event_time: Option<usize>,
}

impl FlatMapGroupsNode {
    /// The node over `input`; fails if a key column is missing.
    pub(crate) fn try_new(spec: FlatMapGroupsSpec, input: LogicalPlan) -> Result<LogicalPlan> {
        if spec.keys.is_empty() {
            return Err(Error::Sql(
                "group_by_key: name at least one key column".to_string(),
            ));
        }
        for key in &spec.keys {
            if input.schema().field_with_unqualified_name(key).is_err() {
                return Err(Error::Sql(format!(
                    "group_by_key: the frame has no column '{key}' (columns: {})",
                    input
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let schema = Arc::new(DFSchema::try_from(spec.output_schema.as_ref().clone())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(FlatMapGroupsNode {
                spec: Arc::new(spec),
                input,
                schema,
                event_time: None,
            }),
        }))
    }
}

impl PartialEq for FlatMapGroupsNode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.spec, &other.spec)
            && self.input == other.input
            && self.event_time == other.event_time
    }
}

impl Eq for FlatMapGroupsNode {}

impl PartialOrd for FlatMapGroupsNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl Hash for FlatMapGroupsNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.spec) as usize).hash(state);
        self.input.hash(state);
        self.event_time.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for FlatMapGroupsNode {
    fn name(&self) -> &str {
        "FlatMapGroupsWithState"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "FlatMapGroupsWithState: keys={:?}, timeout={:?}",
            self.spec.keys, self.spec.timeout
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        Ok(FlatMapGroupsNode {
            spec: self.spec.clone(),
            input: inputs.swap_remove(0),
            schema: self.schema.clone(),
            event_time: self.event_time,
        })
    }
}

/// Records, in every [`FlatMapGroupsNode`] of `plan`, which input column is the
/// watermarked event time (followed through projections and filters to the table that
/// declared the watermark). Called once when a streaming query is planned, since the
/// watermark is declared on the table, not on the frame the node was built from.
pub fn resolve_event_time(plan: LogicalPlan, watermark_of: WatermarkOf) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up(|node| {
            let LogicalPlan::Extension(extension) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(flat_map) = extension.node.as_any().downcast_ref::<FlatMapGroupsNode>() else {
                return Ok(Transformed::no(node));
            };
            let event_time = event_time_column(&flat_map.input, watermark_of);
            Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                node: Arc::new(FlatMapGroupsNode {
                    spec: flat_map.spec.clone(),
                    input: flat_map.input.clone(),
                    schema: flat_map.schema.clone(),
                    event_time,
                }),
            })))
        })?
        .data)
}

/// The physical placeholder of a [`FlatMapGroupsNode`]: its child is the operator's
/// input; the operator replaces it by its output every batch. It never runs itself.
#[derive(Debug)]
pub struct FlatMapGroupsExec {
    spec: Arc<FlatMapGroupsSpec>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl FlatMapGroupsExec {
    fn new(spec: Arc<FlatMapGroupsSpec>, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(spec.output_schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        FlatMapGroupsExec {
            spec,
            input,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for FlatMapGroupsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FlatMapGroupsWithStateExec: keys={:?}", self.spec.keys)
    }
}

impl ExecutionPlan for FlatMapGroupsExec {
    fn name(&self) -> &'static str {
        "FlatMapGroupsWithStateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(FlatMapGroupsExec::new(
            self.spec.clone(),
            children.swap_remove(0),
        )))
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        Err(datafusion::error::DataFusionError::Plan(
            "flat_map_groups_with_state runs only inside a streaming query (write_stream)"
                .to_string(),
        ))
    }
}

/// Plans millrace's logical extension nodes ([`FlatMapGroupsNode`], and the
/// stream-stream join's [`super::StreamJoinNode`]).
#[derive(Debug)]
pub struct StreamingExtensionPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for StreamingExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn DataFusionSession,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(join) = super::stream_join::plan_node(node, physical_inputs) {
            return Ok(Some(join));
        }
        Ok(node
            .as_any()
            .downcast_ref::<FlatMapGroupsNode>()
            .map(|node| {
                Arc::new(FlatMapGroupsExec::new(
                    node.spec.clone(),
                    physical_inputs[0].clone(),
                )) as Arc<dyn ExecutionPlan>
            }))
    }
}

/// DataFusion's physical planner plus [`StreamingExtensionPlanner`]: the query planner
/// of a streaming query's session state.
#[derive(Debug)]
pub struct StreamingQueryPlanner;

#[async_trait::async_trait]
impl QueryPlanner for StreamingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn DataFusionSession,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(StreamingExtensionPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

/// The [`StatefulOperator`] of a `flat_map_groups_with_state`.
#[derive(Debug)]
pub struct FlatMapGroupsOperator {
    spec: Arc<FlatMapGroupsSpec>,
    store: Option<StateStore>,
    /// Key converter (built in `open`, from the input's key types).
    converter: Option<RowConverter>,
    key_fields: Vec<Field>,
    /// The state of every key, by its row encoding.
    states: HashMap<Vec<u8>, StoredState>,
    /// What the last step changed, until it is committed.
    pending: Option<Pending>,
    /// The input's watermarked event-time column (see [`FlatMapGroupsNode`]).
    event_time: Option<usize>,
    /// With processing-time timeouts: the earliest timeout any key has set, so the loop
    /// can ask cheaply whether a batch must run without new data.
    earliest_timeout_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Pending {
    updated: Vec<Vec<u8>>,
    removed: Vec<Vec<ScalarValue>>,
    updates_ms: u64,
    dropped_late: u64,
}

/// The registration of this kind (see [`super::KINDS`]).
pub(super) fn from_node(node: &LogicalPlan) -> Option<Box<dyn StatefulOperator>> {
    let LogicalPlan::Extension(extension) = node else {
        return None;
    };
    let node = extension
        .node
        .as_any()
        .downcast_ref::<FlatMapGroupsNode>()?;
    Some(Box::new(FlatMapGroupsOperator {
        spec: node.spec.clone(),
        store: None,
        converter: None,
        key_fields: Vec::new(),
        states: HashMap::new(),
        pending: None,
        event_time: node.event_time,
        earliest_timeout_ms: None,
    }))
}

impl FlatMapGroupsOperator {
    /// The placeholder of this operator in `plan`.
    fn locate(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let mut found = None;
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<FlatMapGroupsExec>()
                && Arc::ptr_eq(&exec.spec, &self.spec)
            {
                found = Some(node.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        found.ok_or_else(|| {
            Error::Unsupported(
                "flat_map_groups_with_state: its node is missing from the physical plan"
                    .to_string(),
            )
        })
    }

    fn state_schema(&self) -> SchemaRef {
        let mut fields = self.key_fields.clone();
        fields.push(Field::new("state", DataType::Utf8, false));
        fields.push(Field::new("timeout_ms", DataType::Int64, true));
        Arc::new(Schema::new(fields))
    }

    fn key_indices(&self, schema: &SchemaRef) -> Result<Vec<usize>> {
        self.spec
            .keys
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    Error::Unsupported(format!(
                        "flat_map_groups_with_state: key column '{k}' is missing from its input"
                    ))
                })
            })
            .collect()
    }

    /// Remembers the earliest processing-time timeout set by any key (see
    /// [`StatefulOperator::timeout_due`]).
    fn note_earliest_timeout(&mut self) {
        self.earliest_timeout_ms = match self.spec.timeout {
            GroupStateTimeout::ProcessingTimeTimeout => {
                self.states.values().filter_map(|s| s.timeout_ms).min()
            }
            _ => None,
        };
    }

    /// Calls the closure and checks what it returned.
    fn call(
        &self,
        key: &[ScalarValue],
        rows: &RecordBatch,
        ctx: CallContext,
    ) -> Result<CallResult> {
        let result = (self.spec.function)(key, rows, ctx)?;
        let width = self.spec.output_schema.fields().len();
        if let Some(bad) = result.rows.iter().find(|r| r.len() != width) {
            return Err(Error::Data(format!(
                "flat_map_groups_with_state: the closure returned a row of {} values for \
                 key {key:?}, but the output schema has {width} columns",
                bad.len()
            )));
        }
        Ok(result)
    }

    /// Builds the output batch from the closure's rows.
    fn output_batch(&self, rows: &[Row]) -> Result<RecordBatch> {
        let schema = self.spec.output_schema.clone();
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(c, field)| {
                if rows.is_empty() {
                    return Ok(new_empty_array(field.data_type()));
                }
                let mut array = ScalarValue::iter_to_array(rows.iter().map(|r| r[c].clone()))?;
                // A key handed to the closure may be a string view (DataFusion reads
                // text as such): strings convert to the declared string type.
                if array.data_type() != field.data_type()
                    && is_text(array.data_type())
                    && is_text(field.data_type())
                {
                    array = cast(&array, field.data_type())?;
                }
                if array.data_type() != field.data_type() {
                    return Err(Error::Data(format!(
                        "flat_map_groups_with_state: output column '{}' is declared {}, but \
                         the closure returned {} values",
                        field.name(),
                        field.data_type(),
                        array.data_type()
                    )));
                }
                Ok(array)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(schema, columns).map_err(|e| {
            Error::Data(format!(
                "flat_map_groups_with_state: the closure's rows do not fit the output \
                 schema: {e}"
            ))
        })
    }

    fn keys_batch(&self, keys: &[&Vec<ScalarValue>]) -> Result<Vec<ArrayRef>> {
        self.key_fields
            .iter()
            .enumerate()
            .map(|(c, field)| {
                if keys.is_empty() {
                    return Ok(new_empty_array(field.data_type()));
                }
                Ok(ScalarValue::iter_to_array(
                    keys.iter().map(|k| k[c].clone()),
                )?)
            })
            .collect()
    }

    /// The state rows of `entries`, in the state schema.
    fn state_rows(&self, entries: &[&StoredState]) -> Result<RecordBatch> {
        let keys: Vec<&Vec<ScalarValue>> = entries.iter().map(|e| &e.key).collect();
        let mut columns = self.keys_batch(&keys)?;
        columns.push(Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.json.as_str()),
        )));
        columns.push(Arc::new(Int64Array::from_iter(
            entries.iter().map(|e| e.timeout_ms),
        )));
        Ok(RecordBatch::try_new(self.state_schema(), columns)?)
    }
}

#[async_trait::async_trait]
impl StatefulOperator for FlatMapGroupsOperator {
    fn name(&self) -> &'static str {
        "flatMapGroupsWithState"
    }

    async fn open(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        dir: &Path,
        version: Option<u64>,
        config: StateStoreConfig,
    ) -> Result<()> {
        let exec = self.locate(plan)?;
        let input_schema = exec.children()[0].schema();
        let indices = self.key_indices(&input_schema)?;
        self.key_fields = indices
            .iter()
            .map(|&i| input_schema.field(i).as_ref().clone().with_nullable(true))
            .collect();
        self.converter = Some(RowConverter::new(
            self.key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?);
        let mut store = StateStore::open(dir, self.state_schema(), self.key_fields.len(), config)?;
        let restored = store.load(version)?;
        self.states.clear();
        if restored.num_rows() > 0 {
            let n = self.key_fields.len();
            let encoded = self
                .converter
                .as_ref()
                .expect("set above")
                .convert_columns(&restored.columns()[..n])?;
            let json = restored
                .column(n)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("the state schema's state column is text");
            let timeouts = restored
                .column(n + 1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("the state schema's timeout column is Int64");
            for row in 0..restored.num_rows() {
                let key = (0..n)
                    .map(|c| ScalarValue::try_from_array(restored.column(c), row))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                self.states.insert(
                    encoded.row(row).as_ref().to_vec(),
                    StoredState {
                        key,
                        json: json.value(row).to_string(),
                        timeout_ms: (!timeouts.is_null(row)).then(|| timeouts.value(row)),
                    },
                );
            }
        }
        self.store = Some(store);
        self.note_earliest_timeout();
        Ok(())
    }

    async fn step(
        &mut self,
        plan: Arc<dyn ExecutionPlan>,
        batch: &OperatorBatch,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let started = std::time::Instant::now();
        if batch.mode != self.spec.output_mode {
            return Err(Error::Unsupported(format!(
                "flat_map_groups_with_state was declared with output mode {:?}, but the query \
                 writes in {:?}: declare the same mode in both (append or update)",
                self.spec.output_mode, batch.mode
            )));
        }
        let exec = self.locate(&plan)?;
        let input = exec.children()[0].clone();
        let input_schema = input.schema();
        let mut rows = concat_batches(&input_schema, &collect(input, batch.task.clone()).await?)?;
        // As in Spark: with an event-time timeout, rows at or before the late-events
        // watermark (the previous batch's) are dropped and counted, never passed on;
        // without one, the closure sees every row.
        let mut dropped_late = 0;
        if let (GroupStateTimeout::EventTimeTimeout, Some(column), Some(watermark)) = (
            self.spec.timeout,
            self.event_time,
            batch.watermarks.late_events,
        ) {
            let (late, kept) = split_ended(&rows, column, watermark)?;
            dropped_late = late.num_rows() as u64;
            rows = kept;
        }
        let indices = self.key_indices(&input_schema)?;
        let key_columns: Vec<ArrayRef> = indices.iter().map(|&i| rows.column(i).clone()).collect();
        let encoded = self
            .converter
            .as_ref()
            .expect("the loop opens an operator before its step")
            .convert_columns(&key_columns)?;

        // The batch's rows of each key, keys in order of first arrival.
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut by_key: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        for row in 0..rows.num_rows() {
            let key = encoded.row(row).as_ref().to_vec();
            by_key
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(row as u32);
        }

        let mut pending = Pending {
            dropped_late,
            ..Pending::default()
        };
        let mut output: Vec<Row> = Vec::new();
        let context = |json: Option<String>, timed_out: bool| CallContext {
            json,
            timed_out,
            conf: self.spec.timeout,
            watermark_ms: batch.watermarks.eviction,
            batch_timestamp_ms: batch.batch_timestamp_ms,
        };
        let mut results: Vec<(Vec<u8>, Vec<ScalarValue>, CallResult)> = Vec::new();
        for key in &order {
            let take = UInt32Array::from(by_key[key].clone());
            let key_rows = take_record_batch(&rows, &take)?;
            let first = by_key[key][0] as usize;
            let key_values = key_columns
                .iter()
                .map(|c| ScalarValue::try_from_array(c, first))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let json = self.states.get(key).map(|s| s.json.clone());
            let result = self.call(&key_values, &key_rows, context(json, false))?;
            results.push((key.clone(), key_values, result));
        }
        // Keys whose timeout passed without new rows, in key order (deterministic).
        let timed_out: BTreeMap<&Vec<u8>, &StoredState> = self
            .states
            .iter()
            .filter(|(key, state)| {
                !by_key.contains_key(*key)
                    && state.timeout_ms.is_some_and(|t| match self.spec.timeout {
                        GroupStateTimeout::EventTimeTimeout => {
                            batch.watermarks.eviction.is_some_and(|w| t < w)
                        }
                        GroupStateTimeout::ProcessingTimeTimeout => t < batch.batch_timestamp_ms,
                        GroupStateTimeout::NoTimeout => false,
                    })
            })
            .collect();
        let empty = RecordBatch::new_empty(input_schema.clone());
        for (key, state) in timed_out {
            let result = self.call(&state.key, &empty, context(Some(state.json.clone()), true))?;
            results.push((key.clone(), state.key.clone(), result));
        }

        for (key, key_values, result) in results {
            output.extend(result.rows);
            match result.json {
                Some(json) => {
                    let previous = self.states.insert(
                        key.clone(),
                        StoredState {
                            key: key_values,
                            json,
                            timeout_ms: result.timeout_ms,
                        },
                    );
                    let same = previous
                        .as_ref()
                        .is_some_and(|p| !result.changed && p.timeout_ms == result.timeout_ms);
                    if !same {
                        pending.updated.push(key);
                    }
                }
                None => {
                    if let Some(previous) = self.states.remove(&key) {
                        pending.removed.push(previous.key);
                    }
                }
            }
        }

        let out = self.output_batch(&output)?;
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![out]], self.spec.output_schema.clone(), None)?;
        let rest = plan
            .transform_up(|node| {
                Ok(if Arc::ptr_eq(&node, &exec) {
                    Transformed::yes(source.clone())
                } else {
                    Transformed::no(node)
                })
            })?
            .data;
        pending.updates_ms = started.elapsed().as_millis() as u64;
        self.pending = Some(pending);
        self.note_earliest_timeout();
        Ok(rest)
    }

    fn commit(&mut self, batch_id: u64) -> Result<OperatorMetrics> {
        let pending = self
            .pending
            .take()
            .expect("the loop commits an operator after its step");
        let updated: Vec<&StoredState> = pending
            .updated
            .iter()
            .filter_map(|k| self.states.get(k))
            .collect();
        let updated = self.state_rows(&updated)?;
        let removed_keys: Vec<&Vec<ScalarValue>> = pending.removed.iter().collect();
        let key_schema = Arc::new(Schema::new(self.key_fields.clone()));
        let removed = RecordBatch::try_new_with_options(
            key_schema,
            self.keys_batch(&removed_keys)?,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(removed_keys.len())),
        )?;
        let all: Vec<&StoredState> = self.states.values().collect();
        let current = self.state_rows(&all)?;
        let commit_ms = match &mut self.store {
            Some(store) => {
                let (result, ms) = timed(|| {
                    store.start_commit(batch_id, &updated, &removed, || Ok(current.clone()))
                });
                result?;
                ms
            }
            None => 0,
        };
        Ok(OperatorMetrics {
            operator_name: self.name().to_string(),
            num_rows_total: current.num_rows() as u64,
            num_rows_updated: updated.num_rows() as u64,
            all_updates_time_ms: pending.updates_ms,
            num_rows_removed: removed.num_rows() as u64,
            commit_time_ms: commit_ms,
            memory_used_bytes: StateStore::memory_bytes(&current) as u64,
            num_rows_dropped_by_watermark: pending.dropped_late,
            num_shuffle_partitions: 1,
            num_state_store_instances: 1,
            ..OperatorMetrics::default()
        })
    }

    fn finish_commit(&mut self) -> Result<()> {
        self.store
            .as_mut()
            .map_or(Ok(()), |store| store.wait_committed())
    }

    fn timeout_due(&self, now_ms: i64) -> bool {
        self.earliest_timeout_ms.is_some_and(|t| t < now_ms)
    }

    fn evicts_by_watermark(&self, _mode: OutputMode) -> bool {
        self.spec.timeout == GroupStateTimeout::EventTimeTimeout
    }

    fn update_keys(&self) -> Option<Vec<String>> {
        None
    }

    fn revises_output(&self, mode: OutputMode) -> bool {
        mode != OutputMode::Append
    }
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}
