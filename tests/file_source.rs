//! The file source and the sinks it feeds, specified from the outside: files are read
//! once each, in modification-time-then-name order, `max_files_per_trigger` at a time;
//! hidden files and files outside the glob are ignored; files that arrive while a
//! query runs are picked up; progress reports carry Spark's field names.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int64Array};
use millrace::{Session, SessionSettings, StatementResult, StreamingQuery};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    Runtime::new().expect("tokio runtime")
}

/// Writes a file the way producers must: elsewhere first, then renamed into place.
fn land(dir: &Path, name: &str, content: &str) {
    let staging = dir.parent().unwrap().join(format!(".staging-{name}"));
    fs::write(&staging, content).unwrap();
    fs::rename(&staging, dir.join(name)).unwrap();
}

/// Sets a file's modification time, so the read order can be specified exactly.
fn set_mtime(path: &Path, seconds_since_epoch: u64) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(seconds_since_epoch))
        .unwrap();
}

fn started(results: Vec<StatementResult>) -> StreamingQuery {
    match results.into_iter().last() {
        Some(StatementResult::QueryStarted(q)) => q,
        _ => panic!("the script did not start a query"),
    }
}

fn ids(session: &Session, rt: &Runtime, sql: &str) -> Vec<i64> {
    let batches = rt.block_on(session.query(sql)).unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            (0..col.len()).map(|i| col.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn files_are_read_once_in_mtime_then_name_order_a_few_per_batch() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    // c is oldest; a and b share an mtime and so go by name.
    for (name, id, mtime) in [
        ("c.csv", 1, 1_000),
        ("b.csv", 3, 2_000),
        ("a.csv", 2, 2_000),
        ("d.csv", 4, 3_000),
    ] {
        land(&input, name, &format!("{id}\n"));
        set_mtime(&input.join(name), mtime);
    }
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let query = started(
        rt.block_on(session.execute_script(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (id BIGINT) STORED AS CSV LOCATION '{}' \
             OPTIONS ('max_files_per_trigger' '3');
             CREATE SINK seen STORED AS MEMORY OPTIONS ('trigger' 'available_now') AS SELECT id FROM t",
            input.display()
        )))
        .unwrap(),
    );
    query.await_termination_blocking().unwrap();
    let progress = query.recent_progress();
    assert_eq!(
        progress
            .iter()
            .map(|p| p.num_input_rows)
            .collect::<Vec<_>>(),
        vec![3, 1],
        "three files, then the last one"
    );
    // The memory table keeps arrival order: batch by batch, file by file.
    assert_eq!(ids(&session, &rt, "SELECT id FROM seen"), vec![1, 2, 3, 4]);
}

#[test]
fn hidden_files_and_files_outside_the_glob_are_ignored() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "keep.csv", "1\n");
    land(&input, "skip.txt", "2\n");
    land(&input, ".hidden.csv", "3\n");
    land(&input, "_temporary.csv", "4\n");
    fs::create_dir(input.join("sub.csv")).unwrap();
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let query = started(
        rt.block_on(session.execute_script(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (id BIGINT) STORED AS CSV LOCATION '{}' \
             OPTIONS ('path_glob_filter' '*.csv');
             CREATE SINK seen STORED AS MEMORY OPTIONS ('trigger' 'available_now') AS SELECT id FROM t",
            input.display()
        )))
        .unwrap(),
    );
    query.await_termination_blocking().unwrap();
    assert_eq!(ids(&session, &rt, "SELECT id FROM seen"), vec![1]);
}

#[test]
fn files_landing_while_the_query_runs_are_picked_up_and_queryable_meanwhile() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let query = started(
        rt.block_on(session.execute_script(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (id BIGINT) STORED AS JSON LOCATION '{}';
             CREATE SINK live STORED AS MEMORY AS SELECT id * 10 AS id FROM t",
            input.display()
        )))
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 1..=3i64 {
        land(
            &input,
            &format!("f{round}.json"),
            &format!("{{\"id\": {round}}}\n"),
        );
        // Wait (a condition, not a duration) until the running query has it.
        loop {
            let seen = ids(&session, &rt, "SELECT id FROM live ORDER BY id");
            if seen.len() as i64 == round {
                assert_eq!(seen, (1..=round).map(|i| i * 10).collect::<Vec<_>>());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "query did not pick up file {round}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(query.is_active(), "a continuous query keeps running");
    query.stop();
    query.await_termination_blocking().unwrap();
    assert!(!query.is_active());
}

#[test]
fn progress_reports_use_spark_field_names_and_land_in_the_checkpoint() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "a.csv", "1\n2\nnot-a-number\n");
    let checkpoint = tmp.path().join("ckpt");
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let query = started(
        rt.block_on(session.execute_script(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (id BIGINT) STORED AS CSV LOCATION '{}' \
             OPTIONS ('mode' 'drop_malformed');
             CREATE SINK out STORED AS PARQUET LOCATION '{}' \
             OPTIONS ('checkpoint' '{}', 'trigger' 'available_now') AS SELECT id FROM t",
            input.display(),
            tmp.path().join("out").display(),
            checkpoint.display()
        )))
        .unwrap(),
    );
    query.await_termination_blocking().unwrap();
    let text = fs::read_to_string(checkpoint.join("progress.jsonl")).unwrap();
    let reports: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    for field in [
        "id",
        "runId",
        "name",
        "timestamp",
        "batchId",
        "numInputRows",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
        "durationMs",
        "eventTime",
        "sources",
        "sink",
    ] {
        assert!(
            report.get(field).is_some(),
            "progress lacks {field}: {report}"
        );
    }
    for phase in [
        "latestOffset",
        "getBatch",
        "queryPlanning",
        "addBatch",
        "walCommit",
        "triggerExecution",
    ] {
        assert!(
            report["durationMs"].get(phase).is_some(),
            "durationMs lacks {phase}"
        );
    }
    assert_eq!(report["id"], query.id());
    assert_eq!(report["numInputRows"], 2);
    assert_eq!(report["sink"]["numOutputRows"], 2);
    let source = &report["sources"][0];
    assert_eq!(source["startOffset"], serde_json::Value::Null);
    assert_eq!(source["endOffset"]["logOffset"], 0);
    assert_eq!(source["metrics"]["numMalformedRowsDropped"], "1");
}

#[test]
fn a_bare_select_over_a_stream_prints_batches_until_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "a.csv", "7,seven\n8,eight\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .arg("-c")
        .arg(format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (id BIGINT, name VARCHAR) STORED AS CSV LOCATION '{}';
             SELECT name, id + 1 AS next FROM t WHERE id > 7",
            input.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        // Read until the first batch's table is complete.
        while !(seen.contains("Batch: 0") && seen.matches("+--").count() >= 3) {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        (seen, stdout)
    });
    let (seen, _stdout) = reader.join().unwrap();
    assert!(seen.contains("Batch: 0"), "console output: {seen}");
    assert!(seen.contains("| eight | 9    |"), "console output: {seen}");
    assert!(!seen.contains("seven"), "filtered row printed: {seen}");
    // Graceful stop on SIGTERM: the command ends with success.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

/// Like Spark's CSV column pruning (`spark.sql.csv.parser.columnPruning.enabled`, on by
/// default): a column the query does not read is not parsed, so a value that does not
/// fit it does not make its record malformed. Checked against pyspark 4.3.0 on the
/// same file with `mode` `DROPMALFORMED`: `SELECT key, x` keeps keys 1 and 2, `SELECT
/// key, ts` keeps keys 1 and 5.
#[test]
fn a_csv_column_the_query_does_not_read_is_not_parsed_so_its_bad_values_drop_nothing() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(
        &input,
        "a.csv",
        "1,2026-01-01T00:00:00,5\n2,not-a-time,7\n5,2026-01-01T00:00:04,zz\nx,2026-01-01T00:00:03,3\n",
    );
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    rt.block_on(session.execute_script(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE t (key BIGINT, ts TIMESTAMP, x BIGINT) STORED AS CSV \
         LOCATION '{}' OPTIONS ('mode' 'drop_malformed')",
        input.display()
    )))
    .unwrap();
    for (sink, columns, kept, dropped) in [
        ("no_ts", "key, x", vec![1, 2], "2"),
        ("no_x", "key, ts", vec![1, 5], "2"),
        ("every_column", "key, ts, x", vec![1], "3"),
    ] {
        let query = started(
            rt.block_on(session.execute_script(&format!(
                "CREATE SINK {sink} STORED AS MEMORY OPTIONS ('trigger' 'available_now') \
                 AS SELECT {columns} FROM t"
            )))
            .unwrap(),
        );
        query.await_termination_blocking().unwrap();
        let report = serde_json::to_value(&query.recent_progress()[0]).unwrap();
        assert_eq!(
            report["sources"][0]["metrics"]["numMalformedRowsDropped"], dropped,
            "SELECT {columns}"
        );
        assert_eq!(
            ids(
                &session,
                &rt,
                &format!("SELECT key FROM {sink} ORDER BY key")
            ),
            kept,
            "SELECT {columns}"
        );
    }
}
