//! The reliability campaign (issue 13), in-process: panics reachable from the public
//! API are errors, a failed query keeps its error type, overflowing durations are
//! refused, the rate source's per-trigger limit, the socket source's reader stops
//! with its query, and I/O faults under the checkpoint (full disk, read-only, no
//! permission, failing reads, damaged files) stop the query with a message naming
//! the file and what to do, lose nothing committed, and resume once repaired.
//!
//! Faults are injected below millrace's file operations
//! (`millrace::checkpoint::fault`): the tests run as root, where permission bits do
//! not stop anything, so the operating system's own errors are injected instead.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use millrace::checkpoint::fault::{self, Op};
use millrace::prelude::*;
use millrace::{Error, StreamingQuery};

/// How long a test waits for something that should happen at once (a debug build on
/// a busy machine); reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(120);

fn query(ctx: &StreamingContext, name: &str) -> StreamingQuery {
    ctx.queries()
        .into_iter()
        .rev()
        .find(|q| q.name() == name)
        .unwrap_or_else(|| panic!("no query {name}"))
}

// ---------------------------------------------------------------------------
// Panics reachable from the public API, typed failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreach_batch_format_without_a_function_is_an_error_not_a_panic() {
    let ctx = StreamingContext::new();
    let ticks = ctx.read_stream().format("rate").load("").await.unwrap();
    let error = ticks
        .write_stream()
        .format("foreach_batch")
        .start()
        .await
        .err()
        .expect("an error");
    assert!(matches!(error, Error::Option(_)), "{error:?}");
    assert!(error.to_string().contains(".foreach_batch(f)"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_sink_without_its_table_in_query_config_is_an_error_not_a_panic() {
    let tmp = temp_dir();
    let ctx = StreamingContext::new();
    let ticks = ctx.read_stream().format("rate").load("").await.unwrap();
    let plan = ticks.data_frame().logical_plan().clone();
    let plan = millrace::planning::plan_streaming_query(plan, Default::default()).unwrap();
    let config = millrace::execution::QueryConfig {
        name: "mem".to_string(),
        plan,
        sink: millrace::sink::memory::spec(),
        output_mode: OutputMode::Append,
        trigger: Trigger::default(),
        checkpoint: Some(tmp.path().join("ckpt")),
        state: ctx.session().context().state(),
        print_progress: false,
        memory_table: None,
        retain_batches: 10,
        watermark_policy: Default::default(),
        listeners: Vec::new(),
    };
    let error = StreamingQuery::start(config, tokio::runtime::Handle::current())
        .err()
        .expect("an error");
    assert!(error.to_string().contains("memory_table"), "{error}");
}

/// `await_termination` returns the failure with its own variant (here bad data in
/// `fail_fast` mode), wrapped as Spark wraps it in a `StreamingQueryException`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_keeps_its_error_type() {
    let tmp = temp_dir();
    let input = make_dir(tmp.path(), "in");
    write_atomic(&input, "1.csv", b"1\nnot a number\n");
    let ctx = StreamingContext::new();
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE strict (n BIGINT) STORED AS CSV LOCATION '{}' \
         OPTIONS ('mode' 'fail_fast')",
        input.display()
    ))
    .await
    .unwrap();
    ctx.sql("CREATE SINK copy STORED AS MEMORY OPTIONS ('trigger' 'available_now') AS SELECT n FROM strict")
        .await
        .unwrap();
    let q = query(&ctx, "copy");
    let error = q.await_termination().await.expect_err("the query fails");
    match &error {
        Error::Query { name, cause } => {
            assert_eq!(name, "copy");
            assert!(matches!(cause.as_ref(), Error::Data(_)), "{cause:?}");
        }
        other => panic!("not a query failure: {other:?}"),
    }
    assert!(matches!(error.root_cause(), Error::Data(_)));
    assert!(
        error
            .to_string()
            .contains("streaming query 'copy' failed: data error")
    );
    assert!(matches!(q.error().as_deref(), Some(Error::Data(_))));
}

// ---------------------------------------------------------------------------
// Silent wrong answers: overflowing durations

async fn sql_error(ctx: &StreamingContext, sql: &str) -> String {
    match ctx.session().query(sql).await {
        Ok(rows) => panic!(
            "{sql} gave rows instead of an error:\n{}",
            datafusion::arrow::util::pretty::pretty_format_batches(&rows).unwrap()
        ),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_window_durations_are_refused() {
    let ctx = StreamingContext::new();
    let ts = "TIMESTAMP '2026-01-01T10:00:00'";
    for size in [
        "'99999999999 days'",
        "'106752 days'",
        "INTERVAL '2000000000' DAY",
        "INTERVAL '200000' DAY",
    ] {
        let error = sql_error(&ctx, &format!("SELECT window({ts}, {size}) AS w")).await;
        assert!(error.contains("too long"), "{size}: {error}");
    }
    // A window whose end is past the last timestamp (year 2262) is an error, not a
    // window that ends before it starts.
    let error = sql_error(
        &ctx,
        "SELECT window(TIMESTAMP '2262-04-11T00:00:00', '2 days') AS w",
    )
    .await;
    assert!(error.contains("last representable timestamp"), "{error}");
    // The longest accepted window still gives end > start.
    let rows = ctx
        .session()
        .query(&format!(
            "SELECT w['end'] > w['start'] AS ok FROM (SELECT window({ts}, '50000 days') AS w)"
        ))
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    assert!(text.contains("true"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_watermark_and_trigger_durations_are_refused() {
    let tmp = temp_dir();
    let input = make_dir(tmp.path(), "in");
    let ctx = StreamingContext::new();
    let error = ctx
        .sql(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE r (ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '99999999999' DAY) STORED AS CSV LOCATION '{}'",
            input.display()
        ))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("too long"), "{error}");
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE r (ts TIMESTAMP) STORED AS CSV LOCATION '{}'",
        input.display()
    ))
    .await
    .unwrap();
    let error = ctx
        .sql("CREATE SINK s STORED AS MEMORY OPTIONS ('trigger' '99999999999 days') AS SELECT ts FROM r")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("too long"), "{error}");
    let frame = ctx.table("r").await.unwrap();
    let error = frame
        .with_watermark("ts", "99999999999 days")
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("too long"), "{error}");
}

// ---------------------------------------------------------------------------
// The rate source's per-trigger limit

/// A rate source that has been "paused" for an hour (its start time fixed an hour
/// ago in the checkpoint) delivers the waiting rows in batches of at most
/// `max_rows_per_trigger`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_source_limits_rows_per_trigger_after_a_pause() {
    let tmp = temp_dir();
    let ckpt = tmp.path().join("ckpt");
    let state = make_dir(&ckpt, "sources/ticks");
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    std::fs::write(
        state.join("start.json"),
        format!("{{\"startTimeMs\": {hour_ago}}}"),
    )
    .unwrap();
    let ctx = StreamingContext::new();
    ctx.sql(
        "CREATE UNBOUNDED EXTERNAL TABLE ticks STORED AS RATE \
         OPTIONS ('rows_per_second' '100', 'max_rows_per_trigger' '5000')",
    )
    .await
    .unwrap();
    ctx.sql(&format!(
        "CREATE SINK n STORED AS NOOP OPTIONS ('checkpoint' '{}', 'trigger' 'once') \
         AS SELECT value FROM ticks",
        ckpt.display()
    ))
    .await
    .unwrap();
    let q = query(&ctx, "n");
    q.await_termination().await.unwrap();
    let progress = q.last_progress().expect("one batch");
    assert_eq!(
        progress.num_input_rows, 5000,
        "not the 360,000 rows waiting"
    );
    let error = ctx
        .sql(
            "CREATE UNBOUNDED EXTERNAL TABLE t0 STORED AS RATE \
             OPTIONS ('max_rows_per_trigger' '0')",
        )
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("max_rows_per_trigger"), "{error}");
}

// ---------------------------------------------------------------------------
// The socket source's reader thread stops with its query

/// Accepts the next connection (the query connects while it starts).
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "millrace never connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Whether the peer closed `stream`: a read returns end-of-stream. A reader thread
/// that outlived its query keeps the connection open, and the read times out.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(0))
}

/// Runs `query` until its Parquet output under `out` holds `n` rows.
async fn until_rows(q: &StreamingQuery, out: &Path, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        q.process_all_available().await.unwrap();
        let rows: usize = read_parquet_dir(out).iter().map(|b| b.num_rows()).sum();
        if rows >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{rows} of {n} rows arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_query_restarted_in_process_has_one_reader() {
    let tmp = temp_dir();
    let out = tmp.path().join("out");
    let ckpt = tmp.path().join("ckpt");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let ctx = StreamingContext::new();
    let lines = ctx
        .read_stream()
        .format("socket")
        .load(&address)
        .await
        .unwrap();
    let start = || async {
        lines
            .write_stream()
            .format("parquet")
            .option("path", out.to_str().unwrap())
            .option("checkpoint", ckpt.to_str().unwrap())
            .query_name("lines")
            .start()
            .await
            .unwrap()
    };

    let first = start().await;
    let mut c1 = accept(&listener);
    c1.write_all(b"a\nb\nc\n").unwrap();
    until_rows(&first, &out, 3).await;
    first.stop();
    first.await_termination().await.unwrap();
    assert!(
        closed_by_peer(&mut c1),
        "the stopped query's reader still holds its connection"
    );

    let second = start().await;
    let mut c2 = accept(&listener);
    // With two readers, this line would go into the WAL through the old one.
    let _ = c1.write_all(b"ghost\n");
    c2.write_all(b"d\ne\n").unwrap();
    until_rows(&second, &out, 5).await;
    second.stop();
    second.await_termination().await.unwrap();
    assert!(closed_by_peer(&mut c2));
    let values: Vec<String> = string_column(&read_parquet_dir(&out), "value")
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    assert_exactly_once(
        "socket lines",
        values,
        ["a", "b", "c", "d", "e"].map(String::from),
    );
}

// ---------------------------------------------------------------------------
// I/O faults under the checkpoint and the sink

/// A context with table `ev` over the JSON files landing in `root/in`, one per batch.
async fn events_in(root: &Path) -> Result<StreamingContext, Error> {
    let ctx = StreamingContext::new();
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE ev (id BIGINT NOT NULL, payload VARCHAR) \
         STORED AS JSON LOCATION '{}' OPTIONS ('max_files_per_trigger' '1')",
        root.join("in").display()
    ))
    .await?;
    Ok(ctx)
}

/// A file → Parquet job over `root/in`, run with `trigger = available_now`: its
/// outcome, with the checkpoint in `root/ckpt` and the output in `root/out`.
async fn run_files_job(root: &Path) -> Result<(), Error> {
    let ctx = events_in(root).await?;
    ctx.sql(&format!(
        "CREATE SINK out STORED AS PARQUET LOCATION '{}' \
         OPTIONS ('checkpoint' '{}', 'trigger' 'available_now') AS SELECT id FROM ev",
        root.join("out").display(),
        root.join("ckpt").display()
    ))
    .await?;
    query(&ctx, "out").await_termination().await
}

/// Lands input file `n` holding ids `10n .. 10n + 10`.
fn land_ids(root: &Path, n: i64) {
    write_atomic(
        &root.join("in"),
        &format!("{n:03}.json"),
        json_rows(n * 10..n * 10 + 10).as_bytes(),
    );
}

fn assert_output_ids(root: &Path, files: i64) {
    assert_exactly_once(
        "output ids",
        i64_column(&read_parquet_dir(&root.join("out")), "id"),
        0..files * 10,
    );
}

/// Batch 0 runs; with `fault` injected on `root/<under>` batch 1 fails with a
/// message naming a file under it and containing `hint`; once repaired, the query
/// resumes and every id arrives exactly once.
async fn fault_then_repair(under: &str, op: Op, errno: i32, hint: &str) {
    let tmp = temp_dir();
    let root = tmp.path();
    make_dir(root, "in");
    land_ids(root, 0);
    run_files_job(root).await.unwrap();
    land_ids(root, 1);
    {
        let _fault = fault::inject(&root.join(under), op, errno);
        let error = run_files_job(root)
            .await
            .expect_err("the fault stops the query");
        let text = error.to_string();
        assert!(
            matches!(error.root_cause(), Error::Io { .. }),
            "{under}: {error:?}"
        );
        assert!(
            text.contains(&root.join(under).display().to_string()),
            "the message names the file: {text}"
        );
        assert!(text.contains(hint), "{under}: {text}");
        // Nothing committed is lost: batch 0's output is intact.
        let ids = i64_column(&read_parquet_dir(&root.join("out")), "id");
        assert!((0..10).all(|id| ids.contains(&id)), "{ids:?}");
    }
    land_ids(root, 2);
    run_files_job(root).await.unwrap();
    assert_output_ids(root, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_commit_log_stops_and_resumes() {
    fault_then_repair("ckpt/commits", Op::Write, libc::ENOSPC, "free space").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_offset_log_stops_and_resumes() {
    fault_then_repair("ckpt/offsets", Op::Write, libc::EROFS, "read-only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_on_the_sink_manifest_stops_and_resumes() {
    fault_then_repair(
        "out/_millrace_sink",
        Op::Write,
        libc::EACCES,
        "read and write access",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_output_files_stops_and_resumes() {
    fault_then_repair("out", Op::Write, libc::ENOSPC, "free space").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_of_the_file_source_log_stops_and_resumes() {
    fault_then_repair(
        "ckpt/sources/ev/files",
        Op::Read,
        libc::EIO,
        "Input/output error",
    )
    .await;
}

/// A count per `id % 2` over `root/in` (complete mode, one file per batch,
/// `available_now`), with the checkpoint in `root/ckpt`: the counts, in key order.
async fn run_parity_counts(root: &Path) -> Result<Vec<i64>, Error> {
    let ctx = events_in(root).await?;
    ctx.sql(&format!(
        "CREATE SINK counts STORED AS MEMORY OPTIONS ('checkpoint' '{}', \
         'output_mode' 'complete', 'trigger' 'available_now') AS \
         SELECT id % 2 AS k, count(*) AS n FROM ev GROUP BY id % 2",
        root.join("ckpt").display()
    ))
    .await?;
    query(&ctx, "counts").await_termination().await?;
    let rows = ctx
        .session()
        .query("SELECT k, n FROM counts ORDER BY k")
        .await?;
    Ok(i64_column(&rows, "n"))
}

/// Batch 0 of `run_parity_counts` commits; then files 1 to `pending` land and the
/// state directory fails writes with `errno`: the query stops with an error naming it
/// and containing `hint`, batch 1 is not committed and batch 2 is not logged. Once
/// repaired, with one more file, every row is counted once.
async fn state_fault_then_repair(pending: i64, errno: i32, hint: &str) {
    let tmp = temp_dir();
    let root = tmp.path();
    make_dir(root, "in");
    let ckpt = root.join("ckpt");
    land_ids(root, 0);
    assert_eq!(run_parity_counts(root).await.unwrap(), vec![5, 5]);
    for n in 1..=pending {
        land_ids(root, n);
    }
    {
        let _fault = fault::inject(&ckpt.join("state"), Op::Write, errno);
        let error = run_parity_counts(root)
            .await
            .expect_err("the fault stops the query")
            .to_string();
        assert!(
            error.contains(&ckpt.join("state").display().to_string()),
            "{error}"
        );
        assert!(error.contains(hint), "{error}");
        assert!(ckpt.join("offsets/1").exists(), "batch 1 ran");
        assert!(!ckpt.join("commits/1").exists(), "batch 1 must not commit");
        assert!(
            !ckpt.join("offsets/2").exists(),
            "batch 2 must not be logged"
        );
    }
    land_ids(root, pending + 1);
    let rows_per_key = 5 * (pending + 2);
    assert_eq!(
        run_parity_counts(root).await.unwrap(),
        vec![rows_per_key, rows_per_key]
    );
}

/// An aggregation whose state directory becomes unwritable: the query stops, and
/// after the repair the counts (complete mode) are those of every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_stops_and_resumes_with_exact_counts() {
    state_fault_then_repair(1, libc::EACCES, "read and write access").await;
}

/// The state of batch 1 is written in the background while batch 2 is read and
/// folded; when that write fails, batch 1 does not commit and batch 2 is not logged,
/// and after the repair both run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_failing_behind_the_next_batch_commits_neither() {
    state_fault_then_repair(2, libc::ENOSPC, "free space").await;
}

/// A damaged (torn or overwritten) file in `offsets/`, `commits/`, `state/` or the
/// sink's manifest: starting the query fails with a message naming the file and
/// saying what to do; once the file is restored the query resumes exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_checkpoint_files_are_named_and_the_query_resumes_once_restored() {
    for damaged in [
        "ckpt/offsets/1",
        "ckpt/commits/1",
        "out/_millrace_sink/1",
        "ckpt/sources/ev/files/1",
    ] {
        let tmp = temp_dir();
        let root = tmp.path();
        make_dir(root, "in");
        land_ids(root, 0);
        land_ids(root, 1);
        run_files_job(root).await.unwrap();
        let path = root.join(damaged);
        let good = std::fs::read(&path).unwrap();
        for bad in [&good[..good.len() / 2], b"\0\0garbage", b""] {
            std::fs::write(&path, bad).unwrap();
            land_ids(root, 2);
            let error = run_files_job(root).await.expect_err("refused").to_string();
            assert!(
                error.contains(&path.display().to_string()),
                "{damaged}: {error}"
            );
            assert!(error.contains("restore"), "{damaged}: {error}");
        }
        std::fs::write(&path, &good).unwrap();
        run_files_job(root).await.unwrap();
        assert_output_ids(root, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_named_and_the_query_resumes_once_restored() {
    let tmp = temp_dir();
    let root = tmp.path();
    make_dir(root, "in");
    let ckpt = root.join("ckpt");
    let run = || run_parity_counts(root);
    land_ids(root, 0);
    land_ids(root, 1);
    assert_eq!(run().await.unwrap(), vec![10, 10]);
    let state_dir = ckpt.join("state");
    let delta = walk(&state_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("1.delta.arrow"))
        .expect("the delta of version 1");
    let good = std::fs::read(&delta).unwrap();
    std::fs::write(&delta, &good[..good.len() / 2]).unwrap();
    land_ids(root, 2);
    let error = run().await.expect_err("refused").to_string();
    assert!(error.contains(&delta.display().to_string()), "{error}");
    assert!(error.contains("restore"), "{error}");
    std::fs::write(&delta, &good).unwrap();
    assert_eq!(run().await.unwrap(), vec![15, 15]);
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The soak test, short: 60 batches, restarted every 20 (scripts/soak.py runs the
// long one by hand; its figures are in docs/benchmarks.md).

/// A windowed aggregation from files to Parquet through the real binary, restarted
/// every 20 batches: every row is counted once, and the file source's log and the
/// sink's manifest stay bounded (at most one compaction plus 10 entries).
#[test]
fn a_short_soak_stays_exactly_once_with_bounded_logs() {
    let tmp = temp_dir();
    let done = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.py"))
        .args(["--bin", env!("CARGO_BIN_EXE_millrace")])
        .args([
            "--batches",
            "60",
            "--restart-every",
            "20",
            "--report-at",
            "20,60",
        ])
        .args(["--dir", tmp.path().to_str().unwrap(), "--json"])
        .output()
        .expect("run python3 scripts/soak.py");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "soak failed: {stdout}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(result["outputCheck"], true, "{stdout}");
    let reports = result["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 2, "{stdout}");
    for report in reports {
        assert!(report["sourceLogFiles"].as_u64().unwrap() <= 11, "{report}");
        assert!(
            report["sinkManifestFiles"].as_u64().unwrap() <= 11,
            "{report}"
        );
    }
}

/// A statement that starts a query may be abandoned while the start runs (a script
/// stopped by SIGTERM drops it); the start goes on, on its own thread, so the session
/// must still know that query: `stop_all` stops it and `await_all` waits for it,
/// and its first batch ends committed, not cut off by the process's exit.
#[test]
fn a_query_whose_starting_statement_was_abandoned_is_still_stopped_and_awaited() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = temp_dir();
    let root = tmp.path();
    make_dir(root, "in");
    for n in 0..4 {
        land_ids(root, n);
    }
    let session = millrace::Session::new(
        runtime.handle().clone(),
        millrace::SessionSettings::default(),
    );
    runtime
        .block_on(session.execute(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE ev (id BIGINT NOT NULL, payload VARCHAR) \
             STORED AS JSON LOCATION '{}' OPTIONS ('max_files_per_trigger' '1')",
            root.join("in").display()
        )))
        .unwrap();
    let start = format!(
        "CREATE SINK out STORED AS PARQUET LOCATION '{}' \
         OPTIONS ('checkpoint' '{}') AS SELECT id FROM ev",
        root.join("out").display(),
        root.join("ckpt").display()
    );
    let metadata = root.join("ckpt/metadata");
    runtime.block_on(async {
        let mut statement = std::pin::pin!(session.execute(&start));
        let deadline = Instant::now() + PATIENCE;
        // Poll the statement until its query's start has written the checkpoint's
        // metadata, then drop it, as a signal would.
        while !metadata.exists() {
            assert!(Instant::now() < deadline, "the query never started");
            if let std::task::Poll::Ready(outcome) = futures::poll!(&mut statement) {
                // The start ended between the check and the poll: nothing was
                // abandoned this time, but the assertions below still hold.
                outcome.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    session.stop_all();
    session.await_all().unwrap();
    let queries = session.queries();
    assert_eq!(
        queries.len(),
        1,
        "the session lost the query whose starting statement was abandoned"
    );
    assert!(!queries[0].is_active(), "stop_all did not stop the query");
    let checkpoint = root.join("ckpt");
    for batch in log_ids(&checkpoint.join("offsets")) {
        assert!(
            checkpoint.join(format!("commits/{batch}")).exists(),
            "batch {batch} planned but not committed after stop_all and await_all"
        );
    }
}
