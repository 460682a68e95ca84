//! A streaming aggregation's state outlives the process: a restarted query reads only
//! the new files, yet its complete-mode result covers every row, also after a crash
//! right after the state was saved or after the sink wrote (before the commit log).

use std::fs;
use std::path::Path;
use std::process::Command;

fn write_file(dir: &Path, name: &str, rows: &[(&str, i64)]) {
    let text: String = rows.iter().map(|(k, v)| format!("{k},{v}\n")).collect();
    let staged = dir.parent().unwrap().join(format!(".{name}"));
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
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

/// Runs the job; returns (success, stdout, stderr).
fn run(dir: &Path, crash_at: Option<&str>) -> (bool, String, String) {
    let job = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE t (k VARCHAR, v BIGINT) STORED AS CSV LOCATION '{in_dir}'
           OPTIONS ('max_files_per_trigger' '1');
         CREATE SINK totals STORED AS CONSOLE
           OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now', 'output_mode' 'complete')
           AS SELECT k, count(*) AS n, sum(v) AS total, count(DISTINCT v) AS dv FROM t GROUP BY k ORDER BY k",
        in_dir = dir.join("in").display(),
        ckpt = dir.join("ckpt").display()
    );
    run_job(&job, crash_at)
}

/// The data rows of the last table the console sink printed.
fn last_table(stdout: &str) -> Vec<String> {
    let last = stdout.rsplit("Batch: ").next().unwrap_or("");
    last.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| k "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn state_survives_restarts_and_crashes_around_the_commit() {
    for crash_point in [None, Some("after-state-commit"), Some("after-sink")] {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        fs::create_dir(&input).unwrap();
        write_file(&input, "a.csv", &[("x", 1), ("y", 2), ("x", 3)]);
        let (ok, _, stderr) = run(tmp.path(), None);
        assert!(ok, "{stderr}");

        write_file(&input, "b.csv", &[("x", 3), ("z", 5)]);
        if let Some(point) = crash_point {
            let (ok, _, stderr) = run(tmp.path(), Some(point));
            assert!(
                !ok && stderr.contains(point),
                "expected a crash at {point}: {stderr}"
            );
        }
        write_file(&input, "c.csv", &[("y", 7)]);
        let (ok, stdout, stderr) = run(tmp.path(), None);
        assert!(ok, "{stderr}");
        assert_eq!(
            last_table(&stdout),
            vec![
                "| x | 3 | 7 | 2 |".to_string(),
                "| y | 2 | 9 | 2 |".to_string(),
                "| z | 1 | 5 | 1 |".to_string(),
            ],
            "crash point {crash_point:?}; stdout:\n{stdout}"
        );
        // The state is kept as Arrow IPC versions, one per batch, in each partition
        // (the default 4) below the operator's directory: the first version as a
        // snapshot alone, the later ones as deltas.
        let state_dir = tmp.path().join("ckpt/state/0");
        let versions: Vec<std::collections::BTreeSet<String>> = (0..4)
            .map(|p| {
                fs::read_dir(state_dir.join(p.to_string()))
                    .unwrap()
                    .filter_map(|e| {
                        let name = e.unwrap().file_name().to_string_lossy().into_owned();
                        let version = name.strip_suffix(".arrow")?.split('.').next()?;
                        Some(version.to_string())
                    })
                    .collect()
            })
            .collect();
        let one_per_batch: std::collections::BTreeSet<String> =
            ["0", "1", "2"].map(String::from).into();
        assert_eq!(
            versions,
            vec![one_per_batch; 4],
            "one state version per batch and partition"
        );
        let progress = fs::read_to_string(tmp.path().join("ckpt/progress.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(progress.lines().last().unwrap()).unwrap();
        let operator = &last["stateOperators"][0];
        assert_eq!(operator["numRowsTotal"], 3, "{last}");
        assert_eq!(
            operator["numRowsUpdated"], 1,
            "batch c only touched y: {last}"
        );
    }
}

/// Lands, atomically, a CSV file of rows `key,2026-01-01 10:00:<second>` in `dir`.
fn land_times(dir: &Path, name: &str, key: &str, seconds: &[u32]) {
    let text: String = seconds
        .iter()
        .map(|s| format!("{key},2026-01-01 10:00:{s:02}\n"))
        .collect();
    let staged = dir.parent().unwrap().join(format!(".{name}"));
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
}

/// Runs an append-mode windowed count over `dir/in` with a 5-second watermark delay.
fn run_windows(dir: &Path) -> (bool, String, String) {
    let job = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE e (k VARCHAR, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
           STORED AS CSV LOCATION '{in_dir}' OPTIONS ('max_files_per_trigger' '1');
         CREATE SINK w STORED AS CONSOLE
           OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now', 'output_mode' 'append')
           AS SELECT w.start AS start, n FROM (
                SELECT window(ts, '10 seconds') AS w, count(*) AS n
                FROM e GROUP BY window(ts, '10 seconds'))",
        in_dir = dir.join("in").display(),
        ckpt = dir.join("ckpt").display()
    );
    run_job(&job, None)
}

#[test]
fn windows_are_emitted_once_across_restarts_with_state_and_watermark_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    let land = |name: &str, seconds: &[u32]| land_times(&input, name, "a", seconds);
    // Emitted rows, sorted: a batch's rows come from several partitions in any order.
    let emitted = |stdout: &str| -> Vec<String> {
        let mut rows: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with("| 2026"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        rows.sort();
        rows
    };

    // Run 1: after 10:00:25 the watermark is 10:00:20, and the closing no-data batch
    // emits the two windows that ended by then.
    land("w1.csv", &[1, 4, 12]);
    land("w2.csv", &[2, 25]);
    let (ok, stdout, stderr) = run_windows(tmp.path());
    assert!(ok, "{stderr}");
    assert_eq!(
        emitted(&stdout),
        vec!["| 2026-01-01T10:00:00 | 3 |", "| 2026-01-01T10:00:10 | 1 |"],
        "{stdout}"
    );

    // Run 2: 10:00:05 is late for its window (already emitted): dropped, not emitted
    // again. Only a restored watermark knows that.
    land("w3.csv", &[5, 31]);
    let (ok, stdout, stderr) = run_windows(tmp.path());
    assert!(ok, "{stderr}");
    assert!(emitted(&stdout).is_empty(), "{stdout}");
    let progress = fs::read_to_string(tmp.path().join("ckpt/progress.jsonl")).unwrap();
    let batch3: serde_json::Value = progress
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|p| p["batchId"] == 3)
        .expect("batch 3 ran");
    assert_eq!(batch3["eventTime"]["watermark"], "2026-01-01T10:00:20.000Z");
    assert_eq!(batch3["stateOperators"][0]["numRowsDroppedByWatermark"], 1);

    // Run 3: 10:00:50 moves the watermark to 10:00:45; the windows of 10:00:20 and
    // 10:00:30, kept in the restored state since runs 1 and 2, are emitted.
    land("w4.csv", &[50]);
    let (ok, stdout, stderr) = run_windows(tmp.path());
    assert!(ok, "{stderr}");
    assert_eq!(
        emitted(&stdout),
        vec!["| 2026-01-01T10:00:20 | 1 |", "| 2026-01-01T10:00:30 | 1 |"],
        "{stdout}"
    );
}

/// Runs a complete-mode session-window count (gap 10 s) over `dir/in`.
fn run_sessions(dir: &Path, crash_at: Option<&str>) -> (bool, String, String) {
    let job = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE c (k VARCHAR, ts TIMESTAMP)
           STORED AS CSV LOCATION '{in_dir}' OPTIONS ('max_files_per_trigger' '1');
         CREATE SINK s STORED AS CONSOLE
           OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now', 'output_mode' 'complete')
           AS SELECT k, s.start AS start, s.end AS end, n FROM (
                SELECT k, session_window(ts, '10 seconds') AS s, count(*) AS n
                FROM c GROUP BY k, session_window(ts, '10 seconds'))
              ORDER BY start",
        in_dir = dir.join("in").display(),
        ckpt = dir.join("ckpt").display()
    );
    run_job(&job, crash_at)
}

/// Two sessions kept in the state across a restart (and a crash around the commit)
/// are merged by a later click that bridges them: the state store must have dropped
/// both old sessions and restored exactly the merged one.
#[test]
fn sessions_kept_across_restarts_merge_when_a_click_bridges_them() {
    for crash_point in [None, Some("after-state-commit"), Some("after-sink")] {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        fs::create_dir(&input).unwrap();
        let land = |name: &str, seconds: &[u32]| land_times(&input, name, "u1", seconds);
        land("a.csv", &[0]);
        let (ok, _, stderr) = run_sessions(tmp.path(), None);
        assert!(ok, "{stderr}");
        // [00, 10) and [18, 28): two sessions in the state.
        land("b.csv", &[18]);
        if let Some(point) = crash_point {
            let (ok, _, stderr) = run_sessions(tmp.path(), Some(point));
            assert!(
                !ok && stderr.contains(point),
                "expected a crash at {point}: {stderr}"
            );
        }
        let (ok, stdout, stderr) = run_sessions(tmp.path(), None);
        assert!(ok, "{stderr}");
        assert_eq!(
            last_table(&stdout),
            vec![
                "| u1 | 2026-01-01T10:00:00 | 2026-01-01T10:00:10 | 1 |".to_string(),
                "| u1 | 2026-01-01T10:00:18 | 2026-01-01T10:00:28 | 1 |".to_string(),
            ],
            "crash point {crash_point:?}; stdout:\n{stdout}"
        );
        // 10:00:09 opens [09, 19), which overlaps both: one session [00, 28).
        land("c.csv", &[9]);
        let (ok, _, stderr) = run_sessions(tmp.path(), None);
        assert!(ok, "{stderr}");
        land("d.csv", &[50]);
        let (ok, stdout, stderr) = run_sessions(tmp.path(), None);
        assert!(ok, "{stderr}");
        assert_eq!(
            last_table(&stdout),
            vec![
                "| u1 | 2026-01-01T10:00:00 | 2026-01-01T10:00:28 | 3 |".to_string(),
                "| u1 | 2026-01-01T10:00:50 | 2026-01-01T10:01:00 | 1 |".to_string(),
            ],
            "crash point {crash_point:?}; stdout:\n{stdout}"
        );
    }
}
