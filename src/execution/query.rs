//! A running streaming query: the micro-batch loop on its own thread, and the
//! [`StreamingQuery`] handle to watch and stop it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone, Utc};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::collect;
use futures::FutureExt;
use serde_json::Value;
use tokio::runtime::Handle;
use tracing::Instrument;

use super::operator::{
    OperatorBatch, OperatorMetrics, StatefulOperator, Watermarks, check_chain, find_operators,
};
use super::progress::{DurationMs, EventTime, QueryProgress, SinkProgress, SourceProgress};
use super::{Trigger, WatermarkPolicy};
use crate::checkpoint::{Checkpoint, CommitEntry, OffsetEntry};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::planning::{BatchTable, StreamingPlan};
use crate::sink::{OutputMode, Sink, SinkContext, SinkSpec};
use crate::source::{StreamDef, StreamSource};
use crate::state::StateStoreConfig;

/// How long a query with the default trigger waits before looking for new data again.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Progress reports kept in memory per query.
const RECENT_PROGRESS: usize = 100;

/// Everything needed to start a streaming query.
pub struct QueryConfig {
    /// The query's name (the sink's name).
    pub name: String,
    /// The planned query.
    pub plan: StreamingPlan,
    /// Where results go.
    pub sink: SinkSpec,
    /// Which rows the sink receives.
    pub output_mode: OutputMode,
    /// When batches run.
    pub trigger: Trigger,
    /// The checkpoint directory; `None` uses a temporary one (console and memory sinks only).
    pub checkpoint: Option<PathBuf>,
    /// The DataFusion session state the plan runs in.
    pub state: SessionState,
    /// Print each progress report to standard error.
    pub print_progress: bool,
    /// The session table a memory sink fills.
    pub memory_table: Option<Arc<BatchTable>>,
    /// Offset and commit log entries kept in the checkpoint.
    pub retain_batches: u64,
    /// How the watermarks of several watermarked inputs combine.
    pub watermark_policy: WatermarkPolicy,
    /// Told when the query starts, makes progress and ends.
    pub listeners: Vec<Arc<dyn StreamingQueryListener>>,
}

/// Receives a query's life events (Spark's `StreamingQueryListener`), for monitoring:
/// register one on the session or the [`crate::dataframe::StreamingContext`].
///
/// Calls come from the query's own thread, between batches: keep them short.
pub trait StreamingQueryListener: Send + Sync {
    /// The query has started (its checkpoint is open, recovery done).
    fn on_query_started(&self, _query: &StreamingQuery) {}
    /// A batch has committed; `progress` is its report.
    fn on_query_progress(&self, _query: &StreamingQuery, _progress: &QueryProgress) {}
    /// The query has ended; `error` is the failure that ended it, if any.
    fn on_query_terminated(&self, _query: &StreamingQuery, _error: Option<&str>) {}
}

/// What a query is doing right now (Spark's `StreamingQueryStatus`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryStatus {
    /// A human-readable description of the current activity.
    pub message: String,
    /// Whether the last look at the sources found new data.
    pub is_data_available: bool,
    /// Whether a trigger (a batch or a look for data) is running.
    pub is_trigger_active: bool,
}

impl Default for QueryStatus {
    fn default() -> Self {
        QueryStatus {
            message: "Initializing sources".to_string(),
            is_data_available: false,
            is_trigger_active: false,
        }
    }
}

/// A handle on a running (or ended) streaming query, cheap to clone.
#[derive(Clone)]
pub struct StreamingQuery {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    id: String,
    run_id: String,
    /// The unbounded tables the query reads.
    tables: Vec<String>,
    state: Mutex<RunState>,
    changed: Condvar,
    listeners: Vec<Arc<dyn StreamingQueryListener>>,
}

#[derive(Default)]
struct RunState {
    stop_requested: bool,
    /// How the loop ended; the failure keeps its type (shared: several waiters get it).
    outcome: Option<Result<(), Arc<Error>>>,
    progress: VecDeque<QueryProgress>,
    status: QueryStatus,
    /// Triggers that found no new data so far: `process_all_available` waits for one
    /// that started after it was called.
    idle_triggers: u64,
}

impl StreamingQuery {
    /// Opens the checkpoint, sources and sink, recovers from the checkpoint, and starts
    /// the micro-batch loop on its own thread. Errors in any of that are returned here,
    /// before anything runs.
    pub fn start(config: QueryConfig, runtime: Handle) -> Result<StreamingQuery> {
        let (root, temporary) = match &config.checkpoint {
            Some(path) => (path.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "millrace-{}-{}",
                    config.name,
                    uuid::Uuid::new_v4()
                )),
                true,
            ),
        };
        let identities = config
            .plan
            .inputs
            .iter()
            .map(|(name, (def, _))| (name.clone(), def.identity()))
            .collect();
        let checkpoint = Checkpoint::open(&root, identities)?;
        let mut sources = Vec::new();
        for (name, (def, table)) in &config.plan.inputs {
            let source = def.open(&checkpoint.source_dir(name))?;
            sources.push(OpenSource {
                name: name.clone(),
                def: def.clone(),
                source,
                table: table.clone(),
            });
        }
        // The query's stateful operators, bottom-up; the position is the operator id.
        let operators = find_operators(&config.plan.plan);
        check_chain(&operators, config.output_mode)?;
        let sink = config.sink.open(&SinkContext {
            query_id: checkpoint.query_id(),
            checkpoint_dir: checkpoint.root(),
            schema: &config.plan.schema,
            output_mode: config.output_mode,
            upsert_keys: upsert_keys(&config, operators.last().map(|o| o.as_ref())),
            memory_table: config.memory_table.clone(),
        })?;
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            id: checkpoint.query_id().to_string(),
            run_id: uuid::Uuid::new_v4().to_string(),
            tables: config.plan.inputs.keys().cloned().collect(),
            state: Mutex::new(RunState::default()),
            changed: Condvar::new(),
            listeners: config.listeners.clone(),
        });
        let mut runner = Runner {
            shared: shared.clone(),
            plan: config.plan,
            trigger: config.trigger,
            state: config.state,
            print_progress: config.print_progress,
            retain_batches: config.retain_batches.max(2),
            checkpoint,
            sources,
            sink,
            output_mode: config.output_mode,
            operators,
            last_committed: None,
            last_watermark: None,
            watermark_policy: config.watermark_policy,
            next_batch: 0,
            committed: BTreeMap::new(),
            pending: None,
            polled: None,
            max_event_ms: BTreeMap::new(),
            last_data_ms: BTreeMap::new(),
            last_trigger_start: None,
            last_batch_start: None,
        };
        for open in &mut runner.sources {
            if let Some(columns) = runner.plan.columns_read(&open.name, &runner.state) {
                open.source.read_columns(&columns);
            }
        }
        runner.recover()?;
        if runner.trigger == Trigger::AvailableNow {
            for open in &mut runner.sources {
                open.source.prepare_for_available_now()?;
            }
        }
        let thread_shared = shared.clone();
        // Every log event of the query's thread (batches, sources, sinks) is inside
        // this span, so `RUST_LOG` output says which query it is about.
        let span = tracing::info_span!(
            "query",
            name = %shared.name,
            id = %shared.id,
            run_id = %shared.run_id
        );
        let query = StreamingQuery { shared };
        for listener in &query.shared.listeners {
            listener.on_query_started(&query);
        }
        std::thread::Builder::new()
            .name(format!("stream-{}", config.name))
            .spawn(move || {
                let outcome = runtime.block_on(
                    async {
                        tracing::info!("query started");
                        // A panic (a user's closure, a bug) ends the query with an
                        // error: unwinding past here would leave it running forever
                        // for everyone waiting on it.
                        let outcome = std::panic::AssertUnwindSafe(runner.run())
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|panic| Err(Error::Panic(panic_message(&*panic))));
                        // The failure goes back to the caller (await_termination, the
                        // shell, SHOW QUERIES); the log only records it.
                        match &outcome {
                            Ok(()) => tracing::info!("query stopped"),
                            Err(e) => tracing::info!(error = %e, "query failed"),
                        }
                        outcome
                    }
                    .instrument(span),
                );
                if temporary {
                    let _ = std::fs::remove_dir_all(&root);
                }
                let outcome = outcome.map_err(Arc::new);
                let ended = StreamingQuery {
                    shared: thread_shared.clone(),
                };
                let message = outcome.as_ref().err().map(|e| e.to_string());
                for listener in &thread_shared.listeners {
                    listener.on_query_terminated(&ended, message.as_deref());
                }
                let mut state = thread_shared.lock();
                state.status = QueryStatus {
                    message: "Stopped".to_string(),
                    is_data_available: false,
                    is_trigger_active: false,
                };
                state.outcome = Some(outcome);
                thread_shared.changed.notify_all();
            })
            .map_err(|e| Error::Network(format!("cannot start the query thread: {e}")))?;
        Ok(query)
    }

    /// The query's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The stable query id stored in the checkpoint.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The id of this run.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The unbounded tables the query reads (views resolved to their tables), so a
    /// front end can say which queries depend on a table.
    pub fn source_tables(&self) -> &[String] {
        &self.shared.tables
    }

    /// Asks the query to stop after the batch in progress has committed.
    pub fn stop(&self) {
        self.shared.lock().stop_requested = true;
        self.shared.changed.notify_all();
    }

    /// Whether the loop is still running.
    pub fn is_active(&self) -> bool {
        self.shared.lock().outcome.is_none()
    }

    /// Waits until the query ends; `Err` carries the failure that ended it.
    pub async fn await_termination(&self) -> Result<()> {
        let query = self.clone();
        tokio::task::spawn_blocking(move || query.await_termination_blocking())
            .await
            .map_err(|e| Error::Stopped(format!("waiting for the query failed: {e}")))?
    }

    /// Blocks the thread until the query ends (for code outside an async runtime);
    /// `Err` carries the failure that ended it.
    pub fn await_termination_blocking(&self) -> Result<()> {
        let mut state = self.shared.lock();
        while state.outcome.is_none() {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        Self::outcome(&self.shared.name, &state)
    }

    /// The failure that ended the query, if it failed (Spark's `exception()`), as text.
    pub fn exception(&self) -> Option<String> {
        self.error().map(|e| e.to_string())
    }

    /// The failure that ended the query, if it failed, with its type (e.g.
    /// [`Error::Checkpoint`], [`Error::Io`]).
    pub fn error(&self) -> Option<Arc<Error>> {
        match &self.shared.lock().outcome {
            Some(Err(error)) => Some(error.clone()),
            _ => None,
        }
    }

    /// What the query is doing now.
    pub fn status(&self) -> QueryStatus {
        self.shared.lock().status.clone()
    }

    /// Waits until every row available in the sources when this is called has been
    /// processed and committed (or the query ended): for tests and examples, as
    /// Spark's `processAllAvailable`. Returns the query's failure if it failed.
    pub async fn process_all_available(&self) -> Result<()> {
        let query = self.clone();
        tokio::task::spawn_blocking(move || query.process_all_available_blocking())
            .await
            .map_err(|e| Error::Stopped(format!("waiting for the query failed: {e}")))?
    }

    /// [`process_all_available`](Self::process_all_available) for code outside an
    /// async runtime.
    pub fn process_all_available_blocking(&self) -> Result<()> {
        let mut state = self.shared.lock();
        // A trigger already looking when this was called may have missed the newest
        // data: wait for a second one, which started after the call.
        let target = state.idle_triggers + 2;
        while state.outcome.is_none() && state.idle_triggers < target {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        match &state.outcome {
            Some(_) => Self::outcome(&self.shared.name, &state),
            None => Ok(()),
        }
    }

    /// Like [`await_termination`](Self::await_termination), giving up after `timeout`
    /// (`None`: still running).
    pub fn await_termination_timeout(&self, timeout: Duration) -> Option<Result<()>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(Self::outcome(&self.shared.name, &state))
    }

    fn outcome(name: &str, state: &RunState) -> Result<()> {
        match &state.outcome {
            Some(Err(cause)) => Err(Error::Query {
                name: name.to_string(),
                cause: cause.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The most recent progress reports (up to 100), oldest first.
    pub fn recent_progress(&self) -> Vec<QueryProgress> {
        self.shared.lock().progress.iter().cloned().collect()
    }

    /// The newest progress report.
    pub fn last_progress(&self) -> Option<QueryProgress> {
        self.shared.lock().progress.back().cloned()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, change: impl FnOnce(&mut QueryStatus)) {
        change(&mut self.lock().status);
    }

    /// Counts a trigger that found no new data, waking `process_all_available`.
    fn note_idle_trigger(&self) {
        self.lock().idle_triggers += 1;
        self.changed.notify_all();
    }

    fn stop_requested(&self) -> bool {
        self.lock().stop_requested
    }

    /// Sleeps up to `duration`; returns early (true) if a stop is requested.
    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut state = self.lock();
        while !state.stop_requested {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

struct OpenSource {
    name: String,
    def: Arc<StreamDef>,
    source: Box<dyn StreamSource>,
    table: Arc<BatchTable>,
}

/// The micro-batch loop's state, owned by the query thread.
struct Runner {
    shared: Arc<Shared>,
    plan: StreamingPlan,
    trigger: Trigger,
    state: SessionState,
    print_progress: bool,
    retain_batches: u64,
    checkpoint: Checkpoint,
    sources: Vec<OpenSource>,
    sink: Box<dyn Sink>,
    output_mode: OutputMode,
    /// The query's stateful operators, bottom-up: the index is the operator id, and the
    /// operator's state is under `<checkpoint>/state/<id>/`.
    operators: Vec<Box<dyn StatefulOperator>>,
    /// The last batch whose commit is in the commit log (the state version to restore).
    last_committed: Option<u64>,
    /// The watermark the last committed batch ran with: the next batch's late-events
    /// watermark (Spark's `eventTimeWatermarkForLateEvents`).
    last_watermark: Option<i64>,
    /// How several inputs' watermarks combine.
    watermark_policy: WatermarkPolicy,
    /// The id the next new batch gets.
    next_batch: u64,
    /// End offsets of the last committed batch, per source.
    committed: BTreeMap<String, Value>,
    /// A batch found in the offset log without a commit: run it again first.
    pending: Option<OffsetEntry>,
    /// The next batch's end offsets, when they were asked for before the last batch's
    /// state was written (see [`Runner::deliver`]).
    polled: Option<Polled>,
    /// Largest event time seen per watermarked source (ms since epoch).
    max_event_ms: BTreeMap<String, i64>,
    /// When each source last delivered rows (batch timestamp, ms; the query's start
    /// until it does): a table with `watermark_idle_timeout` idle longer than that no
    /// longer holds the watermark back. Not in the checkpoint: after a restart an input
    /// counts as active until it has been idle for the timeout again.
    last_data_ms: BTreeMap<String, i64>,
    /// When the last trigger started (batch or idle poll): paces interval triggers.
    last_trigger_start: Option<Instant>,
    /// When the last batch that ran started: the base of `inputRowsPerSecond`.
    last_batch_start: Option<Instant>,
}

/// What one batch did, for its progress report.
struct BatchOutcome {
    entry: OffsetEntry,
    start: BTreeMap<String, Value>,
    rows_per_source: BTreeMap<String, u64>,
    malformed_per_source: BTreeMap<String, u64>,
    /// Source-specific progress metrics (`SourceBatch::metrics`).
    metrics_per_source: BTreeMap<String, BTreeMap<String, String>>,
    /// Event times per source too far in the future to move the watermark.
    future_per_source: BTreeMap<String, u64>,
    output_rows: u64,
    /// Spark's `stateOperators` entries of this batch.
    state_operators: Vec<OperatorMetrics>,
    /// Largest event time in this batch's input (ms), over watermarked sources.
    max_event_ms: Option<i64>,
    /// Largest event time seen per watermarked source up to this batch, for its
    /// commit-log entry (the next batch may have seen more by the time it commits).
    commit_max_event_ms: BTreeMap<String, i64>,
    /// Seconds since the previous batch started (the base of `inputRowsPerSecond`).
    since_last: f64,
    durations: DurationMs,
}

/// The end offsets of every source for the next batch ([`Runner::poll_offsets`]).
struct Polled {
    ends: BTreeMap<String, Value>,
    /// Whether any source has data beyond the previous batch's end.
    new_data: bool,
    /// How long asking took (`latestOffset` in progress reports).
    ms: u64,
}

/// A batch whose output is computed and nothing written yet (see [`Runner::execute`]).
struct Executed {
    /// Whether its offset-log entry is written already (a replay's).
    logged: bool,
    results: Vec<RecordBatch>,
    outcome: BatchOutcome,
}

/// A batch that reached its sink and is not committed yet: its offset-log entry and
/// its sink output are written, its state files may still be being written. The loop
/// computes the next batch (reads its sources and folds it into the state, in memory)
/// before it commits this one, so that the state's disk writes overlap that work;
/// the files on disk come in the same order as without it — state, sink and commit
/// log of batch `N` before the offset-log entry of `N + 1` — so recovery is unchanged.
/// If the next batch cannot run, this one commits all the same.
struct InFlight {
    outcome: BatchOutcome,
    /// The batch's tracing span, for what its commit logs.
    span: tracing::Span,
}

impl Runner {
    /// Reads the checkpoint's logs: where to resume, and which batch (if any) to re-run.
    fn recover(&mut self) -> Result<()> {
        let Some((last, entry)) = self.checkpoint.offsets.latest()? else {
            return Ok(());
        };
        let previous = match last.checked_sub(1) {
            Some(id) => self.checkpoint.offsets.get(id)?,
            None => None,
        };
        self.last_watermark = entry.batch_watermark_ms;
        if let Some(commit) = self.checkpoint.commits.get(last)? {
            self.last_committed = Some(last);
            self.committed = entry.sources;
            self.max_event_ms = commit.source_max_event_time_ms;
            self.next_batch = last + 1;
        } else {
            if last > 0 && previous.is_none() {
                return Err(Error::Checkpoint(format!(
                    "offsets/{} is missing from {}: the checkpoint is damaged",
                    last - 1,
                    self.checkpoint.root().display()
                )));
            }
            self.last_committed = last.checked_sub(1);
            // The replayed batch's late-events watermark is the one before it.
            self.last_watermark = previous.as_ref().and_then(|e| e.batch_watermark_ms);
            self.committed = previous.map(|e| e.sources).unwrap_or_default();
            self.max_event_ms = entry.source_max_event_time_ms.clone();
            self.next_batch = last;
            self.pending = Some(entry);
        }
        Ok(())
    }

    /// Runs batches until the trigger says to stop, a stop is asked for, or a batch
    /// fails. A batch that reached its sink but is not committed yet (see
    /// [`InFlight`]) is committed however the loop ends, unless committing it fails.
    async fn run(mut self) -> Result<()> {
        self.open_state().await?;
        let started = Utc::now().timestamp_millis();
        for open in &self.sources {
            self.last_data_ms.insert(open.name.clone(), started);
        }
        let mut in_flight = None;
        let outcome = self.run_triggers(&mut in_flight).await;
        match in_flight {
            Some(batch) => {
                self.finish(batch)?;
                outcome
            }
            None => outcome,
        }
    }

    async fn run_triggers(&mut self, in_flight: &mut Option<InFlight>) -> Result<()> {
        loop {
            if self.shared.stop_requested() {
                return Ok(());
            }
            if let Trigger::ProcessingTime(interval) = self.trigger
                && let Some(last) = self.last_trigger_start
            {
                let wait = (last + interval).saturating_duration_since(Instant::now());
                if !wait.is_zero()
                    && let Some(batch) = in_flight.take()
                {
                    // No batch follows at once: commit this one before waiting.
                    self.finish(batch)?;
                }
                if self.shared.sleep_unless_stopped(wait) {
                    return Ok(());
                }
            }
            let trigger_start = Instant::now();
            let replay = self.pending.is_some();
            self.shared.set_status(|s| {
                s.is_trigger_active = true;
                s.message = "Getting offsets from the sources".to_string();
            });
            let batch_id = self
                .pending
                .as_ref()
                .map_or(self.next_batch, |e| e.batch_id);
            let span = tracing::info_span!("batch", batch_id);
            let ran = self
                .run_batch(trigger_start, in_flight)
                .instrument(span)
                .await?;
            self.shared.set_status(|s| {
                s.is_trigger_active = false;
                s.is_data_available = ran;
                s.message = "Waiting for data to arrive".to_string();
            });
            if ran {
                self.last_trigger_start = Some(trigger_start);
                if self.trigger == Trigger::Once && !replay {
                    return Ok(());
                }
            } else if self.trigger.is_finite() {
                return Ok(());
            } else {
                self.shared.note_idle_trigger();
                self.last_trigger_start = Some(trigger_start);
                let idle = match self.trigger {
                    Trigger::ProcessingTime(interval) if !interval.is_zero() => Duration::ZERO,
                    _ => IDLE_POLL,
                };
                if self.shared.sleep_unless_stopped(idle) {
                    return Ok(());
                }
            }
        }
    }

    /// Opens every stateful operator's state under `<checkpoint>/state/<operator id>/`
    /// and restores the state of the last committed batch. (A checkpoint written before
    /// state was partitioned, with version files directly in `state/0/`, is refused
    /// with a message to start a new checkpoint.)
    async fn open_state(&mut self) -> Result<()> {
        if self.operators.is_empty() {
            return Ok(());
        }
        let physical = self.state.create_physical_plan(&self.plan.plan).await?;
        let config = StateStoreConfig {
            retain_versions: self.retain_batches,
            state_partitions: self
                .state
                .config()
                .get_extension::<crate::state::StatePartitions>()
                .map(|p| *p),
            ..StateStoreConfig::default()
        };
        for (id, operator) in self.operators.iter_mut().enumerate() {
            let dir = self.checkpoint.root().join("state").join(id.to_string());
            operator
                .open(&physical, &dir, self.last_committed, config)
                .await?;
        }
        Ok(())
    }

    /// The output mode operator `id` emits in: the query's for the topmost operator;
    /// append below it, so each row reaches the operator above once, final.
    fn operator_mode(&self, id: usize) -> OutputMode {
        if id + 1 == self.operators.len() {
            self.output_mode
        } else {
            OutputMode::Append
        }
    }

    /// Whether a stateful query's watermark has moved past the last batch's, so a
    /// no-data batch must run to evict what it passed (as Spark does).
    fn watermark_advanced(&self) -> bool {
        self.operators
            .iter()
            .enumerate()
            .any(|(id, operator)| operator.evicts_by_watermark(self.operator_mode(id)))
            && self
                .watermark_ms()
                .is_some_and(|next| self.last_watermark.is_none_or(|last| next > last))
    }

    /// Whether an operator's processing-time timeout is due, so a no-data batch must run
    /// to fire it. Not for `once` and `available_now`, which end when their data is
    /// processed (a timeout set again at every call would otherwise keep them running).
    fn timeout_due(&self) -> bool {
        let now = Utc::now().timestamp_millis();
        !self.trigger.is_finite() && self.operators.iter().any(|o| o.timeout_due(now))
    }

    /// The watermark for a batch planned now: min over watermarked sources of
    /// (max event time - delay); none until every watermarked source has seen data.
    /// A source with `watermark_idle_timeout` that has delivered no rows for that long
    /// is left out (unless every watermarked source is); the watermark never goes back.
    fn watermark_ms(&self) -> Option<i64> {
        let now = Utc::now().timestamp_millis();
        let idle = |open: &OpenSource| {
            open.def
                .watermark
                .as_ref()
                .and_then(|spec| spec.idle_timeout)
                .is_some_and(|timeout| {
                    let since = self.last_data_ms.get(&open.name).copied();
                    since.is_some_and(|since| now - since >= timeout.as_millis() as i64)
                })
        };
        let watermarked = self.sources.iter().filter(|o| o.def.watermark.is_some());
        let all_idle = watermarked.clone().all(&idle);
        let computed = self.combined_watermark(|open| !all_idle && idle(open));
        match (computed, self.last_watermark) {
            (Some(w), Some(last)) => Some(w.max(last)),
            (w, _) => w,
        }
    }

    /// [`watermark_ms`](Self::watermark_ms) over the watermarked sources not `skipped`.
    fn combined_watermark(&self, skipped: impl Fn(&OpenSource) -> bool) -> Option<i64> {
        let mut watermark: Option<i64> = None;
        for open in &self.sources {
            if skipped(open) {
                continue;
            }
            if let Some(spec) = &open.def.watermark {
                let value = match self.max_event_ms.get(&open.name) {
                    Some(max) => max - spec.delay.as_millis() as i64,
                    // An input without data holds a `min` watermark back entirely.
                    None if self.watermark_policy == WatermarkPolicy::Min => return None,
                    None => continue,
                };
                watermark = Some(match (watermark, self.watermark_policy) {
                    (None, _) => value,
                    (Some(w), WatermarkPolicy::Min) => w.min(value),
                    (Some(w), WatermarkPolicy::Max) => w.max(value),
                });
            }
        }
        watermark
    }

    /// Runs one batch (a replay first, if recovery found one) up to its sink, leaving
    /// it in `in_flight`; `false`: no new data. The batch already in flight is
    /// committed once this one's rows are computed (or could not be), before this
    /// one is written anywhere: see [`InFlight`].
    async fn run_batch(
        &mut self,
        trigger_start: Instant,
        in_flight: &mut Option<InFlight>,
    ) -> Result<bool> {
        // A panic in this batch (a user's closure) must not keep the batch before it
        // from committing: it is caught here and carried on once that one is done.
        let executed = std::panic::AssertUnwindSafe(self.execute())
            .catch_unwind()
            .await;
        let finishing = Instant::now();
        let finished = match in_flight.take() {
            Some(previous) => self.finish(previous),
            None => Ok(()),
        };
        let executed = executed.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        finished?;
        let finishing = finishing.elapsed();
        let Some(executed) = executed? else {
            return Ok(false);
        };
        *in_flight = Some(self.deliver(executed, trigger_start, finishing)?);
        Ok(true)
    }

    /// Decides the next batch (a replay first, if recovery found one) and computes its
    /// output: reads the sources, plans, and runs every stateful operator's step. Only
    /// memory changes: the offset-log entry of a new batch is written by
    /// [`deliver`](Self::deliver). `None`: no new data.
    async fn execute(&mut self) -> Result<Option<Executed>> {
        let mut durations = DurationMs::default();
        let (entry, logged) = match self.pending.take() {
            Some(entry) => (entry, true),
            None => {
                let Polled {
                    mut ends,
                    new_data,
                    ms,
                } = match self.polled.take() {
                    Some(polled) => polled,
                    None => self.poll_offsets(&self.committed.clone())?,
                };
                durations.latest_offset = ms;
                if !new_data {
                    if !self.watermark_advanced() && !self.timeout_due() {
                        return Ok(None);
                    }
                    // A no-data batch: the watermark moved, so groups it passed are
                    // evicted (and, in append mode, emitted) without waiting for data;
                    // or a processing-time timeout is due and fires.
                    ends = self.committed.clone();
                }
                let entry = OffsetEntry {
                    batch_id: self.next_batch,
                    batch_timestamp_ms: Utc::now().timestamp_millis(),
                    batch_watermark_ms: self.watermark_ms(),
                    source_max_event_time_ms: self.max_event_ms.clone(),
                    sources: ends,
                };
                (entry, false)
            }
        };

        // Read every source's rows for the batch.
        let started = Instant::now();
        let mut rows_per_source = BTreeMap::new();
        let mut malformed_per_source = BTreeMap::new();
        let mut metrics_per_source = BTreeMap::new();
        let mut batch_max_event = None;
        let mut future_per_source = BTreeMap::new();
        for open in &mut self.sources {
            let start = self.committed.get(&open.name);
            let batch = match entry.sources.get(&open.name) {
                Some(end) if Some(end) != start => open.source.get_batch(start, end)?,
                _ => Default::default(),
            };
            rows_per_source.insert(open.name.clone(), batch.num_rows());
            if batch.num_rows() > 0 {
                self.last_data_ms
                    .insert(open.name.clone(), entry.batch_timestamp_ms);
            }
            malformed_per_source.insert(open.name.clone(), batch.malformed_dropped);
            metrics_per_source.insert(open.name.clone(), batch.metrics);
            if let Some(spec) = &open.def.watermark {
                // Event times too far ahead of the batch's clock (from the offset log,
                // so a replay agrees) do not move the watermark.
                let limit = entry.batch_timestamp_ms + spec.max_future.as_millis() as i64;
                let (max, future) = max_event_time(&batch.batches, &spec.column, limit)?;
                future_per_source.insert(open.name.clone(), future);
                if let Some(max) = max {
                    let seen = self.max_event_ms.entry(open.name.clone()).or_insert(max);
                    *seen = (*seen).max(max);
                    batch_max_event = Some(batch_max_event.map_or(max, |m: i64| m.max(max)));
                }
            }
            open.table.replace(batch.batches);
        }
        durations.get_batch = elapsed_ms(started);

        // Plan and run the batch in DataFusion. The batch timestamp from the offset log
        // is the query start time, so now() gives the same answer on a replay.
        let started = Instant::now();
        let mut state = self.state.clone();
        state.execution_props_mut().query_execution_start_time =
            Utc.timestamp_millis_opt(entry.batch_timestamp_ms).single();
        let physical = state.create_physical_plan(&self.plan.plan).await?;
        durations.query_planning = elapsed_ms(started);
        let started = Instant::now();
        // Each stateful operator, bottom-up, folds the batch into its state and leaves
        // its output in the plan for the one above; the last plan gives the batch's rows.
        let mut plan = physical;
        let mut watermarks = Watermarks {
            late_events: self.last_watermark,
            eviction: entry.batch_watermark_ms,
        };
        for id in 0..self.operators.len() {
            let batch = OperatorBatch {
                batch_id: entry.batch_id,
                mode: self.operator_mode(id),
                watermarks,
                task: state.task_ctx(),
                batch_timestamp_ms: entry.batch_timestamp_ms,
            };
            let operator = &mut self.operators[id];
            plan = operator.step(plan, &batch).await?;
            watermarks = operator.output_watermarks(watermarks);
        }
        let results = collect(plan, state.task_ctx()).await?;
        durations.add_batch = elapsed_ms(started);
        Ok(Some(Executed {
            logged,
            results,
            outcome: BatchOutcome {
                entry,
                start: BTreeMap::new(),
                rows_per_source,
                malformed_per_source,
                metrics_per_source,
                future_per_source,
                output_rows: 0,
                state_operators: Vec::new(),
                max_event_ms: batch_max_event,
                commit_max_event_ms: self.max_event_ms.clone(),
                since_last: 0.0,
                durations,
            },
        }))
    }

    /// Asks every source how far a batch starting at `starts` may read.
    fn poll_offsets(&mut self, starts: &BTreeMap<String, Value>) -> Result<Polled> {
        let started = Instant::now();
        let mut ends: BTreeMap<String, Value> = BTreeMap::new();
        let mut new_data = false;
        for open in &mut self.sources {
            let start = starts.get(&open.name);
            if let Some(end) = open.source.latest_offset(start)? {
                new_data |= Some(&end) != start;
                ends.insert(open.name.clone(), end);
            }
        }
        Ok(Polled {
            ends,
            new_data,
            ms: elapsed_ms(started),
        })
    }

    /// Writes an executed batch: its offset-log entry (a new batch's), its state
    /// (started: durable by [`finish`](Self::finish)), and its rows to the sink; the
    /// batch is then in flight. `finishing`: time spent meanwhile committing the batch
    /// before it, left out of this one's duration.
    fn deliver(
        &mut self,
        executed: Executed,
        trigger_start: Instant,
        finishing: Duration,
    ) -> Result<InFlight> {
        let Executed {
            logged,
            results,
            mut outcome,
        } = executed;
        let batch_id = outcome.entry.batch_id;
        if !logged {
            let started = Instant::now();
            self.checkpoint.offsets.add(batch_id, &outcome.entry)?;
            outcome.durations.wal_commit = elapsed_ms(started);
        }
        crash_point("after-offsets");
        // The next batch's offsets are asked for now when it follows at once: a source
        // may sync a file to decide them (the file source's log), and a sync behind the
        // state files this batch is about to write would wait for them.
        let next_trigger_due = match self.trigger {
            Trigger::AvailableNow => true,
            Trigger::Once => false,
            Trigger::ProcessingTime(interval) => trigger_start + interval <= Instant::now(),
        };
        if next_trigger_due && !self.operators.is_empty() {
            // A failure to ask is the next batch's, not this one's: that batch asks
            // again (after this one commits) and fails with it there.
            match self.poll_offsets(&outcome.entry.sources) {
                Ok(polled) => self.polled = Some(polled),
                Err(e) => {
                    tracing::debug!(error = %e, "asking for the next batch's offsets early failed")
                }
            }
        }
        let started = Instant::now();
        // The state of this batch is saved before the batch can commit; a replay after a
        // crash restores the previous version and recomputes this one.
        for (id, operator) in self.operators.iter_mut().enumerate() {
            let mut metrics = operator.commit(batch_id)?;
            metrics.operator_id = id;
            outcome.state_operators.push(metrics);
        }
        outcome.output_rows = results.iter().map(|b| b.num_rows() as u64).sum();
        self.sink.add_batch(batch_id, &self.plan.schema, &results)?;
        outcome.durations.add_batch += elapsed_ms(started);
        for open in &self.sources {
            open.table.replace(Vec::new());
        }
        crash_point("after-sink");

        // The next batch starts where this one ends.
        self.last_watermark = outcome.entry.batch_watermark_ms;
        outcome.start = std::mem::replace(&mut self.committed, outcome.entry.sources.clone());
        self.next_batch = batch_id + 1;
        outcome.since_last = self
            .last_batch_start
            .map_or(0.0, |t| trigger_start.duration_since(t).as_secs_f64());
        self.last_batch_start = Some(trigger_start);
        outcome.durations.trigger_execution =
            elapsed_ms(trigger_start).saturating_sub(finishing.as_millis() as u64);
        Ok(InFlight {
            outcome,
            span: tracing::Span::current(),
        })
    }

    /// Commits a batch in flight: waits until every operator's state of it is durable,
    /// writes its commit-log entry, tells the sources, and reports its progress.
    fn finish(&mut self, in_flight: InFlight) -> Result<()> {
        let InFlight { mut outcome, span } = in_flight;
        let _entered = span.enter();
        let started = Instant::now();
        for (operator, metrics) in self.operators.iter_mut().zip(&mut outcome.state_operators) {
            let waited = Instant::now();
            operator.finish_commit()?;
            metrics.commit_time_ms += elapsed_ms(waited);
        }
        if !self.operators.is_empty() {
            crash_point("after-state-commit");
        }
        let batch_id = outcome.entry.batch_id;
        let committing = Instant::now();
        self.checkpoint.commits.add(
            batch_id,
            &CommitEntry {
                batch_id,
                num_output_rows: outcome.output_rows,
                source_max_event_time_ms: outcome.commit_max_event_ms.clone(),
            },
        )?;
        outcome.durations.commit_offsets = elapsed_ms(committing);
        crash_point("after-commit");
        self.last_committed = Some(batch_id);
        for open in &mut self.sources {
            if let Some(end) = outcome.entry.sources.get(&open.name) {
                open.source.commit(end)?;
            }
        }
        self.checkpoint.purge(self.retain_batches)?;
        outcome.durations.trigger_execution += elapsed_ms(started);
        self.report(outcome)
    }

    fn report(&mut self, outcome: BatchOutcome) -> Result<()> {
        let since_last = outcome.since_last;
        let processing = outcome.durations.trigger_execution as f64 / 1000.0;
        let rate = |rows: u64, seconds: f64| {
            if seconds > 0.0 {
                rows as f64 / seconds
            } else {
                0.0
            }
        };
        let sources = self
            .sources
            .iter()
            .map(|open| {
                let rows = outcome
                    .rows_per_source
                    .get(&open.name)
                    .copied()
                    .unwrap_or(0);
                let mut metrics = outcome
                    .metrics_per_source
                    .get(&open.name)
                    .cloned()
                    .unwrap_or_default();
                metrics.insert(
                    "numMalformedRowsDropped".to_string(),
                    outcome
                        .malformed_per_source
                        .get(&open.name)
                        .copied()
                        .unwrap_or(0)
                        .to_string(),
                );
                if let Some(future) = outcome.future_per_source.get(&open.name) {
                    metrics.insert(
                        "numEventTimesBeyondMaxFuture".to_string(),
                        future.to_string(),
                    );
                }
                let end = outcome
                    .entry
                    .sources
                    .get(&open.name)
                    .cloned()
                    .unwrap_or(Value::Null);
                SourceProgress {
                    description: open.source.describe(),
                    start_offset: outcome
                        .start
                        .get(&open.name)
                        .cloned()
                        .unwrap_or(Value::Null),
                    latest_offset: end.clone(),
                    end_offset: end,
                    num_input_rows: rows,
                    input_rows_per_second: rate(rows, since_last),
                    processed_rows_per_second: rate(rows, processing),
                    metrics,
                }
            })
            .collect();
        let num_input_rows = outcome.rows_per_source.values().sum();
        let progress = QueryProgress {
            id: self.shared.id.clone(),
            run_id: self.shared.run_id.clone(),
            name: self.shared.name.clone(),
            timestamp: iso_ms(outcome.entry.batch_timestamp_ms),
            batch_id: outcome.entry.batch_id,
            num_input_rows,
            input_rows_per_second: rate(num_input_rows, since_last),
            processed_rows_per_second: rate(num_input_rows, processing),
            duration_ms: outcome.durations,
            event_time: EventTime {
                watermark: outcome.entry.batch_watermark_ms.map(iso_ms),
                max: outcome.max_event_ms.map(iso_ms),
            },
            state_operators: outcome
                .state_operators
                .iter()
                .map(serde_json::to_value)
                .collect::<std::result::Result<_, _>>()?,
            sources,
            sink: SinkProgress {
                description: self.sink.describe(),
                num_output_rows: outcome.output_rows,
            },
        };
        let json = serde_json::to_string(&progress)?;
        self.checkpoint.append_progress(&json)?;
        tracing::info!(
            num_input_rows = progress.num_input_rows,
            num_output_rows = progress.sink.num_output_rows,
            trigger_execution_ms = progress.duration_ms.trigger_execution,
            watermark = progress.event_time.watermark.as_deref(),
            "batch committed"
        );
        tracing::debug!(durations = ?progress.duration_ms, "batch phases");
        if self.print_progress {
            // `--progress` output the user asked for (not a log line); a closed
            // stderr must not fail the query.
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "{json}");
        }
        if !self.shared.listeners.is_empty() {
            let query = StreamingQuery {
                shared: self.shared.clone(),
            };
            for listener in &self.shared.listeners {
                listener.on_query_progress(&query, &progress);
            }
        }
        let mut state = self.shared.lock();
        state.progress.push_back(progress);
        while state.progress.len() > RECENT_PROGRESS {
            state.progress.pop_front();
        }
        self.shared.changed.notify_all();
        Ok(())
    }
}

/// In update mode, the topmost stateful operator's update keys (none for a
/// deduplication, which emits each key once, so there is nothing to update): the output
/// columns holding the GROUP BY keys, and the group names, for sinks that upsert
/// (memory, PostgreSQL).
fn upsert_keys(
    config: &QueryConfig,
    top: Option<&dyn StatefulOperator>,
) -> Option<(Vec<usize>, Vec<String>)> {
    match (config.output_mode, top) {
        (OutputMode::Update, Some(operator)) => {
            let groups = operator.update_keys()?;
            Some((output_keys(&config.plan.plan, &groups), groups))
        }
        _ => None,
    }
}

/// Positions of the output columns that carry the GROUP BY columns `groups`, as
/// themselves or renamed with `AS` in the query's final projection.
fn output_keys(plan: &LogicalPlan, groups: &[String]) -> Vec<usize> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(projection) => {
                return projection
                    .expr
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        let inner = match e {
                            Expr::Alias(alias) => alias.expr.as_ref(),
                            other => other,
                        };
                        matches!(inner, Expr::Column(c) if groups.contains(&c.name))
                    })
                    .map(|(i, _)| i)
                    .collect();
            }
            LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_) => node = node.inputs()[0],
            // No projection: the aggregate's own output, keys first.
            other => {
                return other
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| groups.contains(f.name()))
                    .map(|(i, _)| i)
                    .collect();
            }
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn iso_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Largest value (ms since epoch) of a timestamp column over some batches, leaving out
/// values after `limit`, and how many were left out.
fn max_event_time(batches: &[RecordBatch], column: &str, limit: i64) -> Result<(Option<i64>, u64)> {
    let mut result: Option<i64> = None;
    let mut beyond = 0;
    for batch in batches {
        let Some(array) = batch.column_by_name(column) else {
            continue;
        };
        let millis = cast(
            array.as_ref(),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let Some(millis) = millis
            .as_any()
            .downcast_ref::<datafusion::arrow::array::PrimitiveArray<TimestampMillisecondType>>()
        else {
            return Err(Error::Data(format!(
                "watermark column '{column}' did not cast to a timestamp"
            )));
        };
        for m in millis.iter().flatten() {
            if m > limit {
                beyond += 1;
            } else {
                result = Some(result.map_or(m, |r| r.max(m)));
            }
        }
    }
    Ok((result, beyond))
}

/// The text a panic was raised with (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
