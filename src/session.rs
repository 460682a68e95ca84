//! A millrace session: one DataFusion `SessionContext` holding static tables, the
//! declarations of unbounded tables, memory-sink tables, and the streaming queries
//! started from it. Every front end (scripts, REPL, Rust API) drives a `Session`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNode;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use sqlparser::ast::Statement as SQLStatement;
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::execution::{
    QueryConfig, StreamingQuery, StreamingQueryListener, Trigger, WatermarkPolicy,
};
use crate::planning::{
    BatchTable, DistinctOnMode, PlanOptions, StreamTable, StreamingPlan, aggregates_stream,
    deduplicates_stream, expand_sliding_windows, is_distinct_on, plan_streaming_query,
    reads_stream, reads_stream_anywhere,
};
use crate::sink::{OutputMode, SinkSpec};
use crate::sql::ddl::{self, StatementKind};
use crate::sql::split::split_statements;
use crate::sql::{declare_stream, sink_options};
use crate::state::StatePartitions;
use crate::ui::{QueryList, UiServer};

/// What running one statement produced.
#[derive(Clone)]
pub enum StatementResult {
    /// Rows of an ordinary (bounded) query.
    Rows(Vec<RecordBatch>),
    /// A table (static or unbounded) was declared.
    Declared(String),
    /// A streaming query was started.
    QueryStarted(StreamingQuery),
    /// `STOP QUERY` stopped this query (it has ended).
    Stopped(StreamingQuery),
    /// A document to show as JSON: `DESCRIBE QUERY`'s status and latest progress.
    Json(serde_json::Value),
    /// DataFusion ran a statement with no rows to show.
    Done,
}

/// Makes the sink of a bare `SELECT` over an unbounded table from the output mode
/// the query runs in: see [`Session::execute_with_live_sink`].
pub type LiveSinkFactory = dyn Fn(OutputMode) -> SinkSpec + Send + Sync;

/// Settings that apply to every query started from the session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Print each progress report as a JSON line on standard error.
    pub print_progress: bool,
    /// Offset and commit log entries kept per checkpoint.
    pub retain_batches: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            print_progress: false,
            retain_batches: 100,
        }
    }
}

/// A session: declare tables, run statements, start and watch streaming queries.
pub struct Session {
    ctx: SessionContext,
    runtime: Handle,
    settings: SessionSettings,
    /// Every query started here, with its SQL and plan: shared with the web UI.
    queries: QueryList,
    /// The embedded web UI / REST API / metrics server, when started.
    ui: Mutex<Option<UiServer>>,
    bare_selects: Mutex<u64>,
    /// Set with `SET millrace.multiple_watermark_policy = 'min' | 'max'`; applies to
    /// the queries started after it.
    watermark_policy: Mutex<WatermarkPolicy>,
    /// Set with `SET millrace.distinct_on = 'drop_duplicates' | 'within_watermark'`;
    /// applies to the queries started after it.
    distinct_on: Mutex<DistinctOnMode>,
    /// Set with `SET millrace.state_partitions = N`; applies to the queries started
    /// after it whose checkpoint has no state yet (a checkpoint keeps its number).
    state_partitions: Mutex<Option<StatePartitions>>,
    /// Set with `SET millrace.min_batches_to_retain = N` (Spark's
    /// `spark.sql.streaming.minBatchesToRetain`): how many offset and commit log
    /// entries the queries started after it keep; `None` keeps the session default.
    retain_batches: Mutex<Option<u64>>,
    /// Set with `SET millrace.join.allow_unbounded_state = true`: stream-stream joins
    /// whose state would grow without bound are accepted (queries started after it).
    allow_unbounded_join: Mutex<bool>,
    /// Told about every query started from this session.
    listeners: Mutex<Vec<Arc<dyn StreamingQueryListener>>>,
}

impl Session {
    /// A session whose queries run on `runtime` (DataFusion executes there).
    pub fn new(runtime: Handle, settings: SessionSettings) -> Self {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        crate::functions::register(&ctx);
        let queries = QueryList::default();
        // The /metrics counters count every batch, whether or not the UI runs yet.
        let metrics: Arc<dyn StreamingQueryListener> =
            Arc::new(crate::ui::metrics::MetricsListener(queries.metrics()));
        Session {
            ctx,
            runtime,
            settings,
            queries,
            ui: Mutex::new(None),
            bare_selects: Mutex::new(0),
            watermark_policy: Mutex::new(WatermarkPolicy::default()),
            distinct_on: Mutex::new(DistinctOnMode::default()),
            state_partitions: Mutex::new(None),
            retain_batches: Mutex::new(None),
            allow_unbounded_join: Mutex::new(false),
            listeners: Mutex::new(vec![metrics]),
        }
    }

    /// The DataFusion context, for registering UDFs or tables from Rust.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    fn state(&self) -> SessionState {
        self.ctx.state()
    }

    /// Runs DataFusion's analyzer (view inlining, type coercion) over a logical plan.
    fn analyze(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let state = self.state();
        Ok(state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?)
    }

    /// Runs every statement of a script in order; stops at the first error.
    pub async fn execute_script(&self, script: &str) -> Result<Vec<StatementResult>> {
        let mut results = Vec::new();
        for statement in split_statements(script) {
            results.push(self.execute(&statement).await?);
        }
        Ok(results)
    }

    /// Runs one statement. A bare `SELECT` over an unbounded table starts a query
    /// printing to the console.
    pub async fn execute(&self, sql: &str) -> Result<StatementResult> {
        self.execute_inner(sql, None).await
    }

    /// Runs one statement like [`execute`](Self::execute), except that a bare `SELECT`
    /// over an unbounded table writes to the sink `live` makes for the query's output
    /// mode (`complete` when it aggregates, `append` otherwise) instead of the console:
    /// the shell receives the batches through a `foreach_batch` sink and shows the
    /// result in place.
    pub async fn execute_with_live_sink(
        &self,
        sql: &str,
        live: &LiveSinkFactory,
    ) -> Result<StatementResult> {
        self.execute_inner(sql, Some(live)).await
    }

    async fn execute_inner(
        &self,
        sql: &str,
        live: Option<&LiveSinkFactory>,
    ) -> Result<StatementResult> {
        if let Some((name, value)) = ddl::millrace_setting(sql) {
            return self.apply_setting(&name, &value);
        }
        match ddl::classify(sql) {
            StatementKind::ShowQueries => Ok(StatementResult::Rows(vec![self.show_queries()?])),
            StatementKind::StopQuery => {
                let name = ddl::parse_query_name(sql, "STOP")?;
                let query = self.stop_query(&name).await?;
                Ok(StatementResult::Stopped(query))
            }
            StatementKind::DescribeQuery => {
                let name = ddl::parse_query_name(sql, "DESCRIBE")?;
                Ok(StatementResult::Json(describe_query(
                    &self.find_query(&name)?,
                )))
            }
            StatementKind::CreateStream => {
                let parsed = ddl::parse_create_stream(sql)?;
                let (if_not_exists, or_replace) = (parsed.if_not_exists, parsed.or_replace);
                let def = declare_stream(&self.state(), parsed).await?;
                let name = def.name.clone();
                if or_replace {
                    self.ctx.deregister_table(name.as_str())?;
                }
                if self.ctx.table_exist(name.as_str())? {
                    if if_not_exists {
                        return Ok(StatementResult::Declared(name));
                    }
                    return Err(Error::Sql(format!(
                        "table '{name}' already exists; DROP TABLE {name} first, or use IF NOT EXISTS"
                    )));
                }
                self.ctx
                    .register_table(name.as_str(), Arc::new(StreamTable { def: Arc::new(def) }))?;
                Ok(StatementResult::Declared(name))
            }
            StatementKind::CreateSink => {
                let parsed = ddl::parse_create_sink(sql)?;
                let options = sink_options(&parsed)?;
                let plan = self
                    .state()
                    .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                        SQLStatement::Query(parsed.query.clone()),
                    )))
                    .await?;
                let plan = self.analyze(expand_sliding_windows(plan)?)?;
                let query = self
                    .start_query(
                        &parsed.name,
                        plan,
                        options.spec,
                        options.output_mode,
                        options.trigger,
                        options.checkpoint,
                    )
                    .await?;
                self.queries.set_sql(&query, sql);
                Ok(StatementResult::QueryStarted(query))
            }
            StatementKind::Other => {
                let plan = expand_sliding_windows(self.state().create_logical_plan(sql).await?)?;
                // Views are inlined by the analyzer: only then does a view over a
                // stream show its stream. Anything the analyzer cannot handle is left
                // for DataFusion to run and report as usual.
                let analyzed = self.analyze(plan.clone()).ok();
                if let Some(analyzed) = analyzed.filter(reads_stream_anywhere) {
                    match &analyzed {
                        // Declarations (CREATE VIEW over a stream, ...) are DataFusion's.
                        LogicalPlan::Ddl(_)
                        | LogicalPlan::Statement(_)
                        | LogicalPlan::DescribeTable(_) => {
                            let frame = self.ctx.execute_logical_plan(plan).await?;
                            frame.collect().await?;
                            return Ok(StatementResult::Done);
                        }
                        LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => {
                            return Err(Error::Unsupported(
                                "INSERT and COPY cannot read an unbounded table (they would never \
                                 end); write a stream with CREATE SINK ... AS SELECT instead"
                                    .to_string(),
                            ));
                        }
                        _ => {}
                    }
                    if matches!(analyzed, LogicalPlan::Explain(_)) {
                        // EXPLAIN of a streaming query: the plan each batch runs.
                        let streaming = plan_streaming_query(analyzed, self.plan_options())?;
                        // With the streaming planner, which knows millrace's nodes.
                        let ctx = SessionContext::new_with_state(streaming_state(self.state()));
                        let frame = ctx.execute_logical_plan(streaming.plan).await?;
                        return Ok(StatementResult::Rows(frame.collect().await?));
                    }
                    let plan = analyzed;
                    // A bare SELECT over a stream runs like a console sink.
                    let name = {
                        let mut n = self.bare_selects.lock().unwrap_or_else(|p| p.into_inner());
                        *n += 1;
                        format!("select_{n}")
                    };
                    // An aggregation has no final rows yet: show the whole result each batch.
                    let mode = if aggregates_stream(&plan) {
                        OutputMode::Complete
                    } else {
                        OutputMode::Append
                    };
                    let sink =
                        live.map_or_else(|| crate::sink::console::spec(20), |make| make(mode));
                    let query = self
                        .start_query(&name, plan, sink, mode, Trigger::default(), None)
                        .await?;
                    self.queries.set_sql(&query, sql);
                    return Ok(StatementResult::QueryStarted(query));
                }
                let frame = self.ctx.execute_logical_plan(plan).await?;
                let batches = frame.collect().await?;
                if batches.is_empty() {
                    Ok(StatementResult::Done)
                } else {
                    Ok(StatementResult::Rows(batches))
                }
            }
        }
    }

    /// Applies `SET millrace.<name> = <value>`: millrace's own session settings.
    fn apply_setting(&self, name: &str, value: &str) -> Result<StatementResult> {
        match name {
            "multiple_watermark_policy" => {
                *self
                    .watermark_policy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = WatermarkPolicy::parse(value)?;
                Ok(StatementResult::Done)
            }
            "distinct_on" => {
                *self.distinct_on.lock().unwrap_or_else(|p| p.into_inner()) =
                    DistinctOnMode::parse(value)?;
                Ok(StatementResult::Done)
            }
            "state_partitions" => {
                *self
                    .state_partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(StatePartitions::parse(value)?);
                Ok(StatementResult::Done)
            }
            "min_batches_to_retain" => {
                let n = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        Error::Option(format!(
                            "millrace.min_batches_to_retain must be a whole number of at \
                             least 1, got '{value}'"
                        ))
                    })?;
                *self
                    .retain_batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(n);
                Ok(StatementResult::Done)
            }
            "join.allow_unbounded_state" => {
                let allow = match value
                    .trim()
                    .trim_matches('\'')
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Error::Option(format!(
                            "millrace.join.allow_unbounded_state must be true or false, got \
                             '{value}'"
                        )));
                    }
                };
                *self
                    .allow_unbounded_join
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = allow;
                Ok(StatementResult::Done)
            }
            "ui" => self.apply_ui_setting(value),
            other => Err(Error::Option(format!(
                "unknown setting 'millrace.{other}': the settings are \
                 millrace.multiple_watermark_policy, millrace.distinct_on, \
                 millrace.state_partitions, millrace.min_batches_to_retain, \
                 millrace.join.allow_unbounded_state and millrace.ui"
            ))),
        }
    }

    /// `SET millrace.ui = 'ADDR' | 'on' | 'off'`: starts (or stops) the web UI and
    /// answers with the address it serves, as one row.
    fn apply_ui_setting(&self, value: &str) -> Result<StatementResult> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            self.stop_ui();
            return Ok(StatementResult::Done);
        }
        let addr = if value.eq_ignore_ascii_case("on") || value.is_empty() {
            crate::ui::DEFAULT_ADDR
        } else {
            value
        };
        let bound = self.start_ui(addr)?;
        let url = datafusion::arrow::array::StringArray::from(vec![format!("http://{bound}/")]);
        let schema = datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "ui",
                datafusion::arrow::datatypes::DataType::Utf8,
                false,
            ),
        ]);
        Ok(StatementResult::Rows(vec![RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(url)],
        )?]))
    }

    /// Starts the embedded web UI, REST API and `/metrics` on `addr` (`HOST:PORT`, or a
    /// bare port on 127.0.0.1; port 0 picks a free one) and returns the address bound.
    /// It serves every query of this session until [`stop_ui`](Self::stop_ui) or the
    /// session is dropped; a running UI is replaced.
    pub fn start_ui(&self, addr: &str) -> Result<std::net::SocketAddr> {
        let mut ui = self.ui.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = ui.take() {
            old.shutdown();
        }
        let server = UiServer::start(addr, self.queries.clone(), &self.runtime)?;
        let bound = server.address();
        *ui = Some(server);
        Ok(bound)
    }

    /// The address the web UI serves, if it runs.
    pub fn ui_address(&self) -> Option<std::net::SocketAddr> {
        self.ui
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(UiServer::address)
    }

    /// Stops the web UI, if it runs.
    pub fn stop_ui(&self) {
        if let Some(server) = self.ui.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.shutdown();
        }
    }

    /// Starts a streaming query from a logical plan as DataFusion's `DataFrame` builds
    /// it (the DataFrame API): sliding windows are expanded and views inlined first, as
    /// for SQL.
    pub async fn start_plan(
        &self,
        name: &str,
        plan: LogicalPlan,
        sink: SinkSpec,
        output_mode: OutputMode,
        trigger: Trigger,
        checkpoint: Option<std::path::PathBuf>,
    ) -> Result<StreamingQuery> {
        let plan = self.analyze(expand_sliding_windows(plan)?)?;
        self.start_query(name, plan, sink, output_mode, trigger, checkpoint)
            .await
    }

    /// Registers a listener told when each query started from now on starts, makes
    /// progress and ends (Spark's `streams.addListener`).
    pub fn add_listener(&self, listener: Arc<dyn StreamingQueryListener>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// The planning settings for the next query started.
    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            distinct_on: *self.distinct_on.lock().unwrap_or_else(|p| p.into_inner()),
            allow_unbounded_join: *self
                .allow_unbounded_join
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Starts a streaming query from a logical plan over unbounded tables.
    pub async fn start_query(
        &self,
        name: &str,
        plan: datafusion::logical_expr::LogicalPlan,
        sink: SinkSpec,
        output_mode: OutputMode,
        trigger: Trigger,
        checkpoint: Option<std::path::PathBuf>,
    ) -> Result<StreamingQuery> {
        if self
            .queries()
            .iter()
            .any(|q| q.name() == name && q.is_active())
        {
            return Err(Error::Sql(format!(
                "a streaming query named '{name}' is already running; stop it or choose another name"
            )));
        }
        let plan = plan_streaming_query(plan, self.plan_options())?;
        check_output_mode(&plan, output_mode)?;
        // The memory sink's table is the session's: the one sink a front end knows of.
        let memory_table = match sink.fills_session_table() {
            true => {
                // Replace an earlier memory sink's table of the same name, never
                // another table.
                if let Some(existing) = self.ctx.table_provider(name).await.ok()
                    && existing
                        .downcast_ref::<BatchTable>()
                        .is_none_or(|t| t.is_stream_input())
                {
                    return Err(Error::Sql(format!(
                        "a memory sink's results become table '{name}', but a table of that name \
                         already exists; choose another sink name"
                    )));
                }
                let table = BatchTable::new(plan.schema.clone());
                self.ctx.deregister_table(name)?;
                self.ctx.register_table(name, table.clone())?;
                Some(table)
            }
            false => None,
        };
        let config = QueryConfig {
            name: name.to_string(),
            plan,
            sink,
            output_mode,
            trigger,
            checkpoint,
            state: {
                let mut state = streaming_state(self.state());
                let partitions = *self
                    .state_partitions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(partitions) = partitions {
                    state
                        .config_mut()
                        .set_extension(std::sync::Arc::new(partitions));
                }
                state
            },
            print_progress: self.settings.print_progress,
            memory_table,
            retain_batches: self
                .retain_batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(self.settings.retain_batches),
            watermark_policy: *self
                .watermark_policy
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            listeners: self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let plan_text = config.plan.plan.display_indent().to_string();
        // Opening sources and sinks talks to external systems with blocking calls
        // (librdkafka: metadata, `init_transactions`): off tokio's worker threads.
        // The query is recorded on that thread too: if this statement is abandoned
        // while the query starts (a signal), the start goes on, and the session must
        // still know the query to stop it and wait for it.
        let runtime = self.runtime.clone();
        let (queries, ticket) = (self.queries.clone(), self.queries.begin_start());
        let query = tokio::task::spawn_blocking(move || {
            let query = StreamingQuery::start(config, runtime)?;
            queries.push(ticket, query.clone(), plan_text);
            Ok::<_, Error>(query)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        Ok(query)
    }

    /// Every query started from this session, running or ended.
    pub fn queries(&self) -> Vec<StreamingQuery> {
        self.queries.queries()
    }

    /// The query called `name`: the running one, else the latest one started.
    pub fn find_query(&self, name: &str) -> Result<StreamingQuery> {
        let queries = self.queries();
        queries
            .iter()
            .rev()
            .find(|q| q.name() == name && q.is_active())
            .or_else(|| queries.iter().rev().find(|q| q.name() == name))
            .cloned()
            .ok_or_else(|| {
                Error::Sql(format!(
                    "no streaming query named '{name}' (SHOW QUERIES lists them)"
                ))
            })
    }

    /// `STOP QUERY name`: asks the running query `name` to stop after its current
    /// batch and waits until it has ended. A failure that ended it is not this
    /// statement's error: `SHOW QUERIES` and `DESCRIBE QUERY` show it.
    async fn stop_query(&self, name: &str) -> Result<StreamingQuery> {
        let query = self.find_query(name)?;
        if !query.is_active() {
            return Err(Error::Sql(format!(
                "streaming query '{name}' is not running (it {})",
                query_state(&query)
            )));
        }
        query.stop();
        let _ = query.await_termination().await;
        Ok(query)
    }

    /// `SHOW QUERIES`: one row per query started in this session, in start order:
    /// its state (`active`, `stopped`, `failed`), what it is doing or why it failed,
    /// and a summary of its last progress report.
    fn show_queries(&self) -> Result<RecordBatch> {
        use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, UInt64Array};
        use datafusion::arrow::datatypes::{Field, Schema};
        let queries = self.queries();
        let progress: Vec<_> = queries.iter().map(|q| q.last_progress()).collect();
        let text = |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef {
            Arc::new((0..queries.len()).map(f).collect::<StringArray>())
        };
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("name", text(&|i| Some(queries[i].name().to_string()))),
            (
                "state",
                text(&|i| Some(query_state(&queries[i]).to_string())),
            ),
            (
                "detail",
                text(&|i| {
                    let query = &queries[i];
                    if query.is_active() {
                        Some(query.status().message)
                    } else {
                        query.exception()
                    }
                }),
            ),
            (
                "last_batch",
                Arc::new(
                    progress
                        .iter()
                        .map(|p| p.as_ref().map(|p| p.batch_id))
                        .collect::<UInt64Array>(),
                ),
            ),
            (
                "input_rows_per_sec",
                Arc::new(
                    progress
                        .iter()
                        .map(|p| {
                            p.as_ref()
                                .map(|p| (p.input_rows_per_second * 10.0).round() / 10.0)
                        })
                        .collect::<Float64Array>(),
                ),
            ),
            (
                "watermark",
                text(&|i| {
                    progress[i]
                        .as_ref()
                        .and_then(|p| p.event_time.watermark.clone())
                }),
            ),
            (
                "state_rows",
                Arc::new(
                    progress
                        .iter()
                        .map(|p| p.as_ref().and_then(state_rows))
                        .collect::<UInt64Array>(),
                ),
            ),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        Ok(RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, array)| array).collect(),
        )?)
    }

    /// Asks every query to stop after its current batch, including one still starting
    /// for a statement that was abandoned (see [`QueryList`]).
    pub fn stop_all(&self) {
        self.queries.stop_all();
    }

    /// Blocks until every query has ended, including those still starting; returns
    /// the first failure, if any.
    pub fn await_all(&self) -> Result<()> {
        self.queries.wait_for_starts(None);
        let mut first_error = None;
        for query in self.queries() {
            if let Err(e) = query.await_termination_blocking() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Blocks until every query has ended or `timeout` passed; `false` on timeout.
    pub fn await_all_timeout(&self, timeout: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        if !self.queries.wait_for_starts(Some(timeout)) {
            return Ok(false);
        }
        for query in self.queries() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match query.await_termination_timeout(left) {
                None => return Ok(false),
                Some(outcome) => outcome?,
            }
        }
        Ok(true)
    }

    /// Runs a bounded query (for example over a memory sink's table) and returns its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        match self.execute(sql).await? {
            StatementResult::Rows(rows) => Ok(rows),
            StatementResult::QueryStarted(q) => {
                q.stop();
                Err(Error::Sql(format!(
                    "'{sql}' reads an unbounded table; use a memory sink to query a stream"
                )))
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// `active`, `failed` or `stopped`: where a query is in its life.
pub fn query_state(query: &StreamingQuery) -> &'static str {
    if query.is_active() {
        "active"
    } else if query.exception().is_some() {
        "failed"
    } else {
        "stopped"
    }
}

/// Rows in the state of a progress report's stateful operators (`numRowsTotal`
/// summed), `None` for a stateless query.
pub fn state_rows(progress: &crate::execution::QueryProgress) -> Option<u64> {
    if progress.state_operators.is_empty() {
        return None;
    }
    Some(
        progress
            .state_operators
            .iter()
            .filter_map(|op| op.get("numRowsTotal").and_then(serde_json::Value::as_u64))
            .sum(),
    )
}

/// `DESCRIBE QUERY`'s document: identity, state, status, failure and the latest
/// progress report (`null` before the first batch), with Spark's field names.
fn describe_query(query: &StreamingQuery) -> serde_json::Value {
    serde_json::json!({
        "name": query.name(),
        "id": query.id(),
        "runId": query.run_id(),
        "sources": query.source_tables(),
        "state": query_state(query),
        "status": query.status(),
        "exception": query.exception(),
        "lastProgress": query.last_progress(),
    })
}

/// Spark's output-mode rules, checked before a query starts.
fn check_output_mode(streaming: &StreamingPlan, mode: OutputMode) -> Result<()> {
    let plan = &streaming.plan;
    // A stream-stream join emits each joined row once, final: append only (Spark's
    // rule), unless an operator above it (an aggregation) emits in the query's mode.
    if mode != OutputMode::Append
        && crate::execution::operator::find_operators(plan)
            .last()
            .is_some_and(|top| top.name() == "symmetricHashJoin")
    {
        return Err(Error::Unsupported(format!(
            "a join between two unbounded tables emits each joined row once, when it is \
             found (and each unmatched outer row once, when the watermark passes it): \
             output_mode '{}' is not supported for it, use 'append' (or aggregate its \
             output)",
            format!("{mode:?}").to_lowercase()
        )));
    }
    let aggregates = aggregates_stream(plan);
    match (aggregates, mode) {
        // Deduplication emits each distinct row once, when first seen: every mode works.
        (true, OutputMode::Append | OutputMode::Update) if only_deduplicates(plan) => {
            if sorts_or_limits(plan) {
                return Err(Error::Unsupported(
                    "ORDER BY or LIMIT after a streaming aggregation needs output_mode 'complete'"
                        .to_string(),
                ));
            }
            Ok(())
        }
        (true, OutputMode::Append) if groups_by_event_time(streaming) => {
            if sorts_or_limits(plan) {
                return Err(Error::Unsupported(
                    "ORDER BY or LIMIT after a streaming aggregation needs output_mode 'complete'"
                        .to_string(),
                ));
            }
            Ok(())
        }
        (false, OutputMode::Complete) => Err(Error::Unsupported(
            "output_mode 'complete' needs a streaming aggregation (the whole result table is \
             re-emitted each batch); this query has none: use 'append'"
                .to_string(),
        )),
        (true, OutputMode::Append) => Err(Error::Unsupported(
            "output_mode 'append' with an aggregation over an unbounded table needs an \
             event-time window and a watermark: GROUP BY window(ts, ...) (or the watermarked \
             column) of a table declared WITH a `WATERMARK FOR ts AS ts - INTERVAL ...` clause, \
             so each group is emitted once, when the watermark passes it; otherwise use \
             output_mode 'update' or 'complete'"
                .to_string(),
        )),
        (true, OutputMode::Update) if sorts_or_limits(plan) => Err(Error::Unsupported(
            "ORDER BY or LIMIT after a streaming aggregation needs output_mode 'complete'"
                .to_string(),
        )),
        _ => Ok(()),
    }
}

/// Whether every streaming aggregation of the plan is a deduplication (`SELECT
/// DISTINCT`, `DISTINCT ON`), which emits each row once in any mode.
fn only_deduplicates(plan: &LogicalPlan) -> bool {
    deduplicates_stream(plan) && streaming_aggregates(plan).iter().all(|a| is_distinct_on(a))
}

/// The streaming plan's `Aggregate` nodes that read a stream (deduplications by
/// `DISTINCT ON` included, `SELECT DISTINCT` not: it is no `Aggregate` node).
fn streaming_aggregates(plan: &LogicalPlan) -> Vec<&datafusion::logical_expr::Aggregate> {
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node
            && reads_stream(node)
        {
            found.push(aggregate);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// Whether every streaming aggregation that is not a deduplication groups by event
/// time of a watermarked stream: a `window()` call or the watermarked column itself
/// (Spark's condition for append mode; in a chain, e.g. a window of windows, each
/// aggregation must close its groups by the watermark).
fn groups_by_event_time(streaming: &StreamingPlan) -> bool {
    let watermarks: Vec<&str> = streaming
        .inputs
        .values()
        .filter_map(|(def, _)| def.watermark.as_ref().map(|w| w.column.as_str()))
        .collect();
    if watermarks.is_empty() {
        return false;
    }
    let aggregations: Vec<_> = streaming_aggregates(&streaming.plan)
        .into_iter()
        .filter(|a| !is_distinct_on(a))
        .collect();
    !aggregations.is_empty()
        && aggregations.iter().all(|aggregate| {
            aggregate.group_expr.iter().any(|e| match e {
                Expr::ScalarFunction(f) => {
                    f.name() == "window" || f.name() == crate::functions::SESSION_WINDOW
                }
                Expr::Column(c) => watermarks.contains(&c.name.as_str()),
                // A sliding window(), expanded (see planning::sliding_windows).
                Expr::Alias(alias) => matches!(
                    alias.expr.as_ref(),
                    Expr::Column(c) if c.name == crate::functions::WINDOW_LIST
                ),
                _ => false,
            })
        })
}

fn sorts_or_limits(plan: &LogicalPlan) -> bool {
    plan.exists(|node| Ok(matches!(node, LogicalPlan::Sort(_) | LogicalPlan::Limit(_))))
        .unwrap_or(false)
}

/// The session state a streaming query runs with: DataFusion's, less two optimizer
/// rules that answer an aggregation from one batch alone, plus the planner of
/// millrace's own plan nodes (`flat_map_groups_with_state`).
///
/// - `single_distinct_aggregation_to_group_by` rewrites `count(DISTINCT x)` into two
///   aggregation levels; the inner one would keep distinct values per micro-batch
///   only, while the distinct accumulator's own state merges correctly across batches.
/// - `aggregate_statistics` (physical) replaces a global `count(*)`, `min` or `max`
///   by a constant taken from the batch table's exact statistics: the streaming
///   aggregation, and the state it merges, would be gone.
fn streaming_state(state: SessionState) -> SessionState {
    let rules = state
        .optimizers()
        .iter()
        .filter(|rule| rule.name() != "single_distinct_aggregation_to_group_by")
        .cloned()
        .collect();
    let physical_rules = state
        .physical_optimizers()
        .iter()
        .filter(|rule| rule.name() != "aggregate_statistics")
        .cloned()
        .collect();
    SessionStateBuilder::new_from_existing(state)
        .with_optimizer_rules(rules)
        .with_physical_optimizer_rules(physical_rules)
        .with_query_planner(Arc::new(crate::execution::operator::StreamingQueryPlanner))
        .build()
}
