//! Stream-stream joins across restarts: every step of a scenario runs in a new
//! `millrace` process on the same checkpoint (so each batch starts from the state the
//! previous process saved), also after a crash right after the state was saved or
//! after the sink wrote (before the commit log). Scenarios from Spark's
//! `StreamingJoinSuite` (/work/shared/stream-joins.md §1.8).

use std::fs;
use std::path::Path;
use std::process::Command;

/// Lands, atomically, a CSV file of `rows` in `dir` (created if missing).
fn land(dir: &Path, name: &str, rows: &[String]) {
    fs::create_dir_all(dir).unwrap();
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let staged = dir.parent().unwrap().join(format!(".{name}"));
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
}

/// `key,1970-01-01T00:00:<seconds>` rows.
fn timed(rows: &[(i64, i64)]) -> Vec<String> {
    rows.iter()
        .map(|(k, s)| format!("{k},1970-01-01T00:{:02}:{:02}", s / 60, s % 60))
        .collect()
}

/// Runs `millrace -c job`, crashing at `crash_at` if given; returns (success, stdout,
/// stderr).
fn run_job(job: &str, crash_at: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
    command.arg("-c").arg(job);
    if let Some(point) = crash_at {
        command.env("MILLRACE_CRASH_AT", point);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The data rows every batch of a run printed, normalised and sorted.
fn emitted(stdout: &str) -> Vec<String> {
    let mut rows: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| k "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rows.sort();
    rows
}

/// The progress reports of the checkpoint, oldest first.
fn progress(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join("ckpt/progress.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rows(expected: &[&str]) -> Vec<String> {
    let mut rows: Vec<String> = expected.iter().map(|r| r.to_string()).collect();
    rows.sort();
    rows
}

/// A job over tables `l` and `r` under `dir` (one file per batch), console sink.
fn job(dir: &Path, tables: &str, select: &str) -> String {
    fs::create_dir_all(dir.join("l")).unwrap();
    fs::create_dir_all(dir.join("r")).unwrap();
    format!(
        "{tables};
         CREATE SINK j STORED AS CONSOLE
           OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now')
           AS {select}",
        tables = tables
            .replace("{l}", &dir.join("l").display().to_string())
            .replace("{r}", &dir.join("r").display().to_string()),
        ckpt = dir.join("ckpt").display()
    )
}

/// Scenario 1 (inner join on a key, no watermark: both sides unbounded, allowed by the
/// session setting), one process per step, with a crash around the commit before the
/// last step's successful run: the state that survives is exactly the committed one.
#[test]
fn inner_join_state_survives_restarts_between_every_batch() {
    for crash_point in [None, Some("after-state-commit"), Some("after-sink")] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let job = job(
            dir,
            "CREATE UNBOUNDED EXTERNAL TABLE l (k BIGINT) STORED AS CSV LOCATION '{l}'
               OPTIONS ('max_files_per_trigger' '1');
             CREATE UNBOUNDED EXTERNAL TABLE r (k BIGINT) STORED AS CSV LOCATION '{r}'
               OPTIONS ('max_files_per_trigger' '1');
             SET millrace.join.allow_unbounded_state = true",
            "SELECT l.k, l.k * 2 AS lv, r.k * 3 AS rv FROM l JOIN r ON l.k = r.k",
        );
        let step = |side: &str, name: &str, keys: &[i64], expected: &[&str]| {
            let lines: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            land(&dir.join(side), name, &lines);
            let (ok, stdout, stderr) = run_job(&job, None);
            assert!(ok, "{stderr}");
            assert_eq!(emitted(&stdout), rows(expected), "step {name}: {stdout}");
        };
        step("l", "1.csv", &[1], &[]);
        step("r", "2.csv", &[1, 10], &["| 1 | 2 | 3 |"]);
        step("l", "3.csv", &[10], &["| 10 | 20 | 30 |"]);
        step("r", "4.csv", &[1], &["| 1 | 2 | 3 |"]);
        land(&dir.join("l"), "5.csv", &["1".to_string()]);
        if let Some(point) = crash_point {
            let (ok, _, stderr) = run_job(&job, Some(point));
            assert!(
                !ok && stderr.contains(point),
                "expected a crash at {point}: {stderr}"
            );
        }
        // After the restart, left 1 meets both stored right 1s (and only them).
        let (ok, stdout, stderr) = run_job(&job, None);
        assert!(ok, "{stderr}");
        assert_eq!(
            emitted(&stdout),
            rows(&["| 1 | 2 | 3 |", "| 1 | 2 | 3 |"]),
            "crash point {crash_point:?}: {stdout}"
        );
        let last = progress(dir).pop().unwrap();
        let join = &last["stateOperators"][0];
        assert_eq!(join["operatorName"], "symmetricHashJoin", "{last}");
        assert_eq!(
            join["numRowsTotal"], 6,
            "3 left + 3 right rows kept: {last}"
        );
        assert_eq!(join["customMetrics"]["leftStateUnbounded"], 1, "{last}");
        assert_eq!(join["customMetrics"]["rightStateUnbounded"], 1, "{last}");
        // Each side's versions are under the operator's directory, one directory per
        // state partition (4 by default).
        assert_eq!(join["numShufflePartitions"], 4, "{last}");
        for side in ["left", "right"] {
            for p in 0..4 {
                let file = format!("{side}/{p}/4.delta.arrow");
                assert!(dir.join("ckpt/state/0").join(&file).exists(), "{file}");
            }
        }
    }
}

/// Scenario 2 (inner join on equal 10-second windows, watermark 10 s on the left), one
/// process per step: the window key evicts both sides once the watermark passes the
/// window's end, and after restarts late rows on either side find nothing.
#[test]
fn windowed_inner_join_evicts_by_the_window_key_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = job(
        dir,
        "CREATE UNBOUNDED EXTERNAL TABLE l (k BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
           STORED AS CSV LOCATION '{l}' OPTIONS ('max_files_per_trigger' '1');
         CREATE UNBOUNDED EXTERNAL TABLE r (k BIGINT, ts TIMESTAMP)
           STORED AS CSV LOCATION '{r}' OPTIONS ('max_files_per_trigger' '1')",
        "SELECT a.k, to_unixtime(a.w['end']) AS e, a.lv, b.rv
         FROM (SELECT k, window(ts, '10 seconds') AS w, k * 2 AS lv FROM l) a
         JOIN (SELECT k, window(ts, '10 seconds') AS w, k * 3 AS rv FROM r) b
           ON a.k = b.k AND a.w = b.w",
    );
    let step = |side: &str, name: &str, rows: &[(i64, i64)], expected: &[&str], total: u64| {
        land(&dir.join(side), name, &timed(rows));
        let (ok, stdout, stderr) = run_job(&job, None);
        assert!(ok, "{stderr}");
        assert_eq!(
            emitted(&stdout),
            self::rows(expected),
            "step {name}: {stdout}"
        );
        let last = progress(dir).pop().unwrap();
        assert_eq!(
            last["stateOperators"][0]["numRowsTotal"], total,
            "step {name}: {last}"
        );
        last
    };
    step("l", "1.csv", &[(1, 1)], &[], 1);
    step("r", "2.csv", &[(1, 1)], &["| 1 | 10 | 2 | 3 |"], 2);
    // Watermark 15 after this batch: the closing no-data batch evicts window [0, 10).
    step("l", "3.csv", &[(25, 25)], &[], 1);
    step("r", "4.csv", &[(25, 25)], &["| 25 | 30 | 50 | 75 |"], 2);
    // Window [0, 10) ended by the watermark (15): not stored, nothing to join.
    step("r", "5.csv", &[(1, 1)], &[], 2);
    let last = step("l", "6.csv", &[(5, 5)], &[], 2);
    assert_eq!(
        last["stateOperators"][0]["customMetrics"]["leftNumRowsDroppedByWatermark"], 1,
        "{last}"
    );
}

/// Scenario 5 (left outer with the range condition leftTime BETWEEN rightTime - 5 s AND
/// rightTime + 5 s, watermark 10 s), one process per step: joined rows appear in the
/// batch that finds them, the NULL row of the never-matched left (3, 5) only in the
/// batch whose watermark (20) passes it, after a restart that restored its matched
/// flag; the state then holds the two rows at 30.
#[test]
fn left_outer_rows_appear_when_the_watermark_passes_them_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = job(
        dir,
        "CREATE UNBOUNDED EXTERNAL TABLE l (k BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
           STORED AS CSV LOCATION '{l}' OPTIONS ('max_files_per_trigger' '1');
         CREATE UNBOUNDED EXTERNAL TABLE r (k BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
           STORED AS CSV LOCATION '{r}' OPTIONS ('max_files_per_trigger' '1')",
        "SELECT l.k, r.k AS rk, to_unixtime(l.ts) AS lt, to_unixtime(r.ts) AS rt
         FROM l LEFT JOIN r ON l.k = r.k
           AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND",
    );
    let step = |side: &str, name: &str, input: &[(i64, i64)], expected: &[&str], total: u64| {
        land(&dir.join(side), name, &timed(input));
        let (ok, stdout, stderr) = run_job(&job, None);
        assert!(ok, "{stderr}");
        assert_eq!(emitted(&stdout), rows(expected), "step {name}: {stdout}");
        let last = progress(dir).pop().unwrap();
        assert_eq!(
            last["stateOperators"][0]["numRowsTotal"], total,
            "step {name}: {last}"
        );
        last
    };
    step("l", "1.csv", &[(1, 5), (3, 5)], &[], 2);
    step("r", "2.csv", &[(1, 10), (2, 5)], &["| 1 | 1 | 5 | 10 |"], 4);
    step("r", "3.csv", &[(1, 11)], &[], 5);
    step(
        "l",
        "4.csv",
        &[(1, 7), (1, 30)],
        &["| 1 | 1 | 7 | 10 |", "| 1 | 1 | 7 | 11 |"],
        7,
    );
    let last = step("r", "5.csv", &[(0, 30)], &["| 3 | | 5 | |"], 2);
    assert_eq!(
        last["eventTime"]["watermark"], "1970-01-01T00:00:20.000Z",
        "{last}"
    );
    assert_eq!(
        last["stateOperators"][0]["customMetrics"]["numOuterRowsEmitted"], 1,
        "{last}"
    );
}

/// Scenario 11 (early state exclusion), one process per step: a left row failing its
/// left-only predicate gets its NULL row in the batch it arrives in and is not stored,
/// so no second NULL row appears when the watermark moves past its window.
#[test]
fn left_rows_failing_their_own_predicate_get_their_null_row_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = job(
        dir,
        "CREATE UNBOUNDED EXTERNAL TABLE l (k BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
           STORED AS CSV LOCATION '{l}' OPTIONS ('max_files_per_trigger' '1');
         CREATE UNBOUNDED EXTERNAL TABLE r (k BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
           STORED AS CSV LOCATION '{r}' OPTIONS ('max_files_per_trigger' '1')",
        "SELECT a.k, to_unixtime(a.w['end']) AS e, a.lv, b.rv
         FROM (SELECT k, window(ts, '10 seconds') AS w, k * 2 AS lv FROM l) a
         LEFT JOIN (SELECT k, window(ts, '10 seconds') AS w, k * 3 AS rv FROM r) b
           ON a.k = b.k AND a.w = b.w AND a.lv > 4",
    );
    let run = |expected: &[&str], total: u64| {
        let (ok, stdout, stderr) = run_job(&job, None);
        assert!(ok, "{stderr}");
        assert_eq!(emitted(&stdout), rows(expected), "{stdout}");
        let last = progress(dir).pop().unwrap();
        assert_eq!(last["stateOperators"][0]["numRowsTotal"], total, "{last}");
    };
    let seconds = |ks: &[i64]| -> Vec<(i64, i64)> { ks.iter().map(|k| (*k, *k)).collect() };
    land(&dir.join("l"), "1.csv", &timed(&seconds(&[1, 2, 3])));
    land(&dir.join("r"), "1.csv", &timed(&seconds(&[3, 4, 5])));
    // Left 1 and 2 are not stored: left 3 + right 3, 4, 5.
    run(
        &["| 1 | 10 | 2 | |", "| 2 | 10 | 4 | |", "| 3 | 10 | 6 | 9 |"],
        4,
    );
    land(&dir.join("l"), "2.csv", &timed(&seconds(&[20])));
    land(&dir.join("r"), "2.csv", &timed(&seconds(&[21])));
    run(&[], 2);
    land(&dir.join("r"), "3.csv", &timed(&seconds(&[20])));
    run(&["| 20 | 30 | 40 | 60 |"], 3);
}

/// `EXPLAIN` of a stream-stream join shows how each side's rows leave the state, and
/// says UNBOUNDED for a side whose rows never do (allowed by the session setting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_each_sides_state_bound_and_unbounded_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for side in ["l", "r"] {
        fs::create_dir_all(dir.join(side)).unwrap();
    }
    let session = millrace::Session::new(
        tokio::runtime::Handle::current(),
        millrace::SessionSettings::default(),
    );
    for side in ["l", "r"] {
        session
            .execute(&format!(
                "CREATE UNBOUNDED EXTERNAL TABLE {side} (k BIGINT, ts TIMESTAMP,
                   WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
                 STORED AS CSV LOCATION '{}'",
                dir.join(side).display()
            ))
            .await
            .unwrap();
    }
    session
        .execute("SET millrace.join.allow_unbounded_state = true")
        .await
        .unwrap();
    let explained = session
        .execute(
            "EXPLAIN SELECT l.k FROM l JOIN r
               ON l.k = r.k AND l.ts < r.ts - INTERVAL '5' SECOND",
        )
        .await
        .unwrap();
    let millrace::StatementResult::Rows(batches) = explained else {
        panic!("EXPLAIN returns rows");
    };
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("StreamJoin: type=Inner"), "{text}");
    assert!(text.contains("left state: UNBOUNDED"), "{text}");
    assert!(
        text.contains("right state: rows leave when ts <= watermark + 5000 ms"),
        "{text}"
    );
    assert!(text.contains("StreamJoinExec"), "{text}");
}

/// `watermark_idle_timeout` (beyond Spark): an input that delivers no rows for that
/// long stops holding the query's watermark back, so a LEFT join's NULL row is emitted
/// although the right input stays quiet. Without it the watermark would stay at the
/// right input's 0 s for ever. (The wait is for an outcome, bounded generously; what
/// is asserted does not depend on how long anything takes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_input_with_an_idle_timeout_stops_holding_outer_rows_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    land(&dir.join("l"), "1.csv", &timed(&[(1, 0)]));
    land(&dir.join("r"), "1.csv", &timed(&[(9, 0)]));
    let session = millrace::Session::new(
        tokio::runtime::Handle::current(),
        millrace::SessionSettings::default(),
    );
    for (side, options) in [
        ("l", ""),
        ("r", "OPTIONS ('watermark_idle_timeout' '1 second')"),
    ] {
        session
            .execute(&format!(
                "CREATE UNBOUNDED EXTERNAL TABLE {side} (k BIGINT, ts TIMESTAMP,
                   WATERMARK FOR ts AS ts - INTERVAL '0' SECOND)
                 STORED AS CSV LOCATION '{}' {options}",
                dir.join(side).display()
            ))
            .await
            .unwrap();
    }
    let started = session
        .execute(
            "CREATE SINK j STORED AS MEMORY AS
             SELECT l.k, r.k AS rk FROM l LEFT JOIN r
               ON l.k = r.k AND r.ts BETWEEN l.ts AND l.ts + INTERVAL '10' SECOND",
        )
        .await
        .unwrap();
    let millrace::StatementResult::QueryStarted(query) = started else {
        panic!("CREATE SINK starts a query");
    };
    query.process_all_available().await.unwrap();
    land(&dir.join("l"), "2.csv", &timed(&[(2, 100)]));
    query.process_all_available().await.unwrap();
    // Left 1 (at 0 s) leaves once no right row can match it, at watermark 10 s: with
    // the right input idle, the watermark is the left's, 100 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let nulls = loop {
        let result = session
            .execute("SELECT k FROM j WHERE rk IS NULL ORDER BY k")
            .await
            .unwrap();
        let batches = match result {
            millrace::StatementResult::Rows(batches) => batches,
            millrace::StatementResult::Done => Vec::new(),
            _ => panic!("a query returns rows"),
        };
        let keys: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        if !keys.is_empty() || std::time::Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(nulls, vec![1], "the NULL row of left 1");
    let last = query.last_progress().unwrap();
    assert_eq!(
        last.event_time.watermark.as_deref(),
        Some("1970-01-01T00:01:40.000Z"),
        "the idle right input no longer holds the watermark back"
    );
    query.stop();
    query.await_termination().await.unwrap();
}
