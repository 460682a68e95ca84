//! The Delta Lake sink, read back by an independent reader — the `deltalake` Python
//! package from PyPI, installed by `scripts/delta-python.sh` — and by delta-rs itself,
//! with the commits checked in `_delta_log/*.json`: one commit per batch carrying a
//! `txn` action (appId = the query id, version = the batch id), a replayed batch
//! recognised and skipped, a table of another schema refused, update mode MERGEd on the
//! GROUP BY keys, complete mode overwriting, and `kill -9` at random instants (at least
//! 30 times) of files → windowed aggregation → Delta, compared with an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The table as the Python `deltalake` package reads it: `(version, rows, history)`.
fn python_read(table: &Path) -> (i64, Vec<BTreeMap<String, Value>>, Vec<Value>) {
    let out = delta_python(&["read", &table.display().to_string()], "");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    (
        v["version"].as_i64().unwrap(),
        rows,
        v["history"].as_array().unwrap().clone(),
    )
}

/// `row[c1]|row[c2]|...` of each row, sorted.
fn project(rows: &[BTreeMap<String, Value>], columns: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| match &r[*c] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

/// The actions of every commit in `_delta_log/`, by version.
fn log_commits(table: &Path) -> BTreeMap<u64, Vec<Value>> {
    let mut commits = BTreeMap::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(version) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(version) = version.parse::<u64>() else {
            continue;
        };
        let actions = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        commits.insert(version, actions);
    }
    commits
}

/// `(appId, version)` of the `txn` action of each commit, by Delta version.
fn txns(table: &Path) -> BTreeMap<u64, Vec<(String, i64)>> {
    log_commits(table)
        .into_iter()
        .map(|(v, actions)| {
            let txns = actions
                .iter()
                .filter_map(|a| a.get("txn"))
                .map(|t| {
                    (
                        t["appId"].as_str().unwrap().to_string(),
                        t["version"].as_i64().unwrap(),
                    )
                })
                .collect();
            (v, txns)
        })
        .collect()
}

fn query_id(checkpoint: &Path) -> String {
    read_json(&checkpoint.join("metadata"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn readings(input: &Path) -> String {
    format!(
        "CREATE UNBOUNDED EXTERNAL TABLE readings (pump VARCHAR, ts TIMESTAMP, seq BIGINT, \
         pressure DOUBLE) STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '1');\n",
        input.display()
    )
}

fn delta_job(root: &Path, name: &str, input: &Path, table: &Path, extra: &str) -> PathBuf {
    write_job(
        root,
        name,
        &format!(
            "{}CREATE SINK low STORED AS DELTA LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now'{extra})
               AS SELECT pump, ts, seq, pressure, pressure < 5 AS low FROM readings;\n",
            readings(input),
            table.display(),
            root.join(format!("ckpt-{name}")).display(),
        ),
    )
}

#[test]
fn append_mode_writes_one_commit_per_batch_carrying_the_query_id_and_batch_id() {
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let table = root.join("low");
    sensor_file(
        &input,
        "a.json",
        &[
            ("p1", "2026-01-01T10:00:00", 1, 4.5),
            ("p2", "2026-01-01T10:00:01", 2, 12.25),
        ],
    );
    sensor_file(&input, "b.json", &[("p1", "2026-01-01T10:00:02", 3, 0.5)]);
    let job = delta_job(
        root,
        "append.sql",
        &input,
        &table,
        ", 'partition_by' 'pump'",
    );
    run_success(&job, &root.join("run1.err"));

    let (version, rows, history) = python_read(&table);
    assert_eq!(version, 1, "two batches, two commits: {history:?}");
    assert_eq!(
        project(&rows, &["pump", "ts", "seq", "pressure", "low"]),
        [
            "p1|2026-01-01 10:00:00|1|4.5|true",
            "p1|2026-01-01 10:00:02|3|0.5|true",
            "p2|2026-01-01 10:00:01|2|12.25|false",
        ]
    );
    // Each commit carries the query's txn action, version = batch id.
    let id = query_id(&root.join("ckpt-append.sql"));
    let expected: BTreeMap<u64, Vec<(String, i64)>> =
        [(0, vec![(id.clone(), 0)]), (1, vec![(id.clone(), 1)])].into();
    assert_eq!(txns(&table), expected);
    // Partitioned by pump, as asked.
    let meta = log_commits(&table)[&0]
        .iter()
        .find_map(|a| a.get("metaData").cloned())
        .unwrap();
    assert_eq!(meta["partitionColumns"], serde_json::json!(["pump"]));
    assert!(table.join("pump=p1").is_dir() && table.join("pump=p2").is_dir());

    // A second run with a new file adds one commit with only that file's rows; delta-rs
    // itself reads the same rows.
    sensor_file(&input, "c.json", &[("p3", "2026-01-01T10:00:03", 4, 7.0)]);
    run_success(&job, &root.join("run2.err"));
    let (version, rows, _) = python_read(&table);
    assert_eq!(version, 2);
    assert_eq!(
        project(&rows, &["seq"]),
        ["1", "2", "3", "4"],
        "rows after the second run"
    );
    assert_eq!(txns(&table)[&2], [(id, 2)]);
    let batches = millrace::connector::delta::sink::read_table(&table).unwrap();
    let mut seqs = i64_column(&batches, "seq");
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3, 4], "delta-rs reads the same rows");
}

#[test]
fn a_batch_already_in_the_table_is_recognised_by_its_txn_and_not_written_again() {
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let table = root.join("t");
    sensor_file(&input, "a.json", &[("p1", "2026-01-01T10:00:00", 1, 4.5)]);
    sensor_file(&input, "b.json", &[("p2", "2026-01-01T10:00:01", 2, 3.5)]);
    let job = delta_job(root, "replay.sql", &input, &table, "");
    // Committed to the table, then killed before commits/0: batch 0 is replayed.
    run_to_crash_point(&job, "delta-after-commit", &root.join("crash1.err"));
    assert_eq!(project(&python_read(&table).1, &["seq"]), ["1"]);
    // The restart replays batch 0, which the table already has (logged), then is
    // killed before batch 1's write: nothing of it is visible.
    let (status, log) = run_to_end(
        &job,
        &[
            ("MILLRACE_CRASH_AT", "delta-before-write"),
            ("RUST_LOG", "millrace=info"),
        ],
        &root.join("crash2.err"),
    );
    assert_crashed_at(status, &log, "delta-before-write");
    assert!(
        log.contains("batch 0 is already in the table (replay skipped)"),
        "the replay was not recognised: {log}"
    );
    assert_eq!(project(&python_read(&table).1, &["seq"]), ["1"]);
    run_success(&job, &root.join("final.err"));
    let (version, rows, _) = python_read(&table);
    assert_eq!(project(&rows, &["seq"]), ["1", "2"]);
    assert_eq!(version, 1, "the replayed batch 0 made no second commit");
    let id = query_id(&root.join("ckpt-replay.sql"));
    assert_eq!(
        txns(&table),
        [(0, vec![(id.clone(), 0)]), (1, vec![(id, 1)])].into()
    );
}

#[test]
fn a_table_of_another_schema_is_refused_before_the_query_runs() {
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let table = root.join("other");
    // A table written by another Delta writer, with other columns.
    delta_python(
        &["write", &table.display().to_string(), "append"],
        r#"[{"pump": "p0", "seq": "x"}]"#,
    );
    sensor_file(&input, "a.json", &[("p1", "2026-01-01T10:00:00", 1, 4.5)]);
    let job = delta_job(root, "mismatch.sql", &input, &table, "");
    let (status, stderr) = run_to_end(&job, &[], &root.join("run.err"));
    assert!(!status.success());
    assert!(
        stderr.contains("has the schema (pump: string, seq: string)")
            && stderr.contains("but the query writes (pump: string, ts: timestamp_ntz")
            && stderr.contains("write to a new LOCATION"),
        "{stderr}"
    );
    // Nothing was written to it.
    assert_eq!(python_read(&table).0, 0);
    // A partition_by that differs from the table's partitioning is refused too.
    let job = write_job(
        root,
        "partition.sql",
        &format!(
            "{}CREATE SINK s STORED AS DELTA LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'partition_by' 'seq')
               AS SELECT pump, CAST(seq AS VARCHAR) AS seq FROM readings;\n",
            readings(&input),
            table.display(),
            root.join("ckpt-p").display()
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &root.join("partition.err"));
    assert!(!status.success());
    assert!(
        stderr.contains("is partitioned by (), but the sink's partition_by is (seq)"),
        "{stderr}"
    );
}

/// Expected `pump|readings|total|lowest` rows of a GROUP BY pump over `files`.
fn expected_groups(files: &[Vec<(&str, &str, i64, f64)>]) -> Vec<String> {
    let mut groups: BTreeMap<&str, (i64, i64, f64)> = BTreeMap::new();
    for row in files.iter().flatten() {
        let entry = groups.entry(row.0).or_insert((0, 0, f64::MAX));
        entry.0 += 1;
        entry.1 += row.2;
        entry.2 = entry.2.min(row.3);
    }
    groups
        .into_iter()
        .map(|(pump, (n, total, min))| format!("{pump}|{n}|{total}|{min:?}"))
        .collect()
}

/// Windowed counts per key in append mode: each window is emitted once, so a batch
/// written twice would show as duplicate rows.
fn windowed_job(root: &Path, name: &str, input: &Path, table: &Path) -> PathBuf {
    write_job(
        root,
        name,
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE events (k VARCHAR, ts TIMESTAMP, v BIGINT,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
               STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK windows STORED AS DELTA LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'append')
               AS SELECT k, w.start AS start, n, total FROM (
                 SELECT k, window(ts, '10 seconds') AS w, count(*) AS n, sum(v) AS total
                 FROM events GROUP BY k, window(ts, '10 seconds'));\n",
            input.display(),
            table.display(),
            root.join(format!("ckpt-{name}")).display(),
        ),
    )
}

#[test]
fn kill_9_during_files_to_aggregation_to_delta_changes_nothing_in_the_table() {
    let seed = test_seed("delta_crash");
    let mut rng = XorShift::new(seed);
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    windowed_event_files(&input, &mut rng, 60);
    let columns = ["k", "start", "n", "total"];

    let reference_table = root.join("reference");
    let reference = windowed_job(root, "reference.sql", &input, &reference_table);
    run_success(&reference, &root.join("reference.err"));
    let expected = project(&python_read(&reference_table).1, &columns);
    assert!(expected.len() > 15, "the reference wrote only {expected:?}");

    let table = root.join("crashed");
    let crashed = windowed_job(root, "crashed.sql", &input, &table);
    for point in [
        "after-state-commit",
        "delta-before-write",
        "delta-after-commit",
        "after-sink",
        "after-commit",
    ] {
        run_to_crash_point(&crashed, point, &root.join(format!("{point}.err")));
    }
    let kills = kill9_until_finished(&crashed, root, &mut rng, 30, 200);
    run_success(&crashed, &root.join("final.err"));

    let (version, rows, history) = python_read(&table);
    let actual = project(&rows, &columns);
    assert_exactly_once(
        &format!("seed {seed}: windows in the table after {kills} kills"),
        actual.clone(),
        expected.clone(),
    );
    assert_eq!(actual, expected);
    // The version history: one commit per batch, batch ids in order, none twice.
    let id = query_id(&root.join("ckpt-crashed.sql"));
    let txns = txns(&table);
    assert_eq!(txns.len() as i64, version + 1, "{history:?}");
    let batch_ids: Vec<i64> = txns
        .values()
        .map(|t| {
            assert_eq!(t.len(), 1, "one txn action per commit: {t:?}");
            assert_eq!(t[0].0, id);
            t[0].1
        })
        .collect();
    assert!(
        batch_ids.windows(2).all(|w| w[0] < w[1]),
        "seed {seed}: batch ids of the commits are not strictly increasing: {batch_ids:?}"
    );
    assert_eq!(history.len() as i64, version + 1);
}

#[test]
fn update_mode_merges_on_the_group_keys_and_complete_mode_overwrites() {
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let mut rng = XorShift::new(test_seed("delta_update"));
    let files = random_sensor_files(&input, &mut rng, 8);
    let (stats, totals) = (root.join("stats"), root.join("totals"));
    let job = write_job(
        root,
        "update.sql",
        &format!(
            "{}CREATE SINK stats STORED AS DELTA LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'update')
               AS SELECT pump, count(*) AS readings, sum(seq) AS total, min(pressure) AS lowest
               FROM readings GROUP BY pump;
             CREATE SINK totals STORED AS DELTA LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'complete')
               AS SELECT pump, count(*) AS readings FROM readings GROUP BY pump;\n",
            readings(&input),
            stats.display(),
            root.join("ckpt-update").display(),
            totals.display(),
            root.join("ckpt-complete").display(),
        ),
    );
    run_success(&job, &root.join("run.err"));
    let expected = expected_groups(&files);
    assert_eq!(expected.len(), 4);
    let (version, rows, history) = python_read(&stats);
    assert_eq!(
        project(&rows, &["pump", "readings", "total", "lowest"]),
        expected,
        "update mode's final table"
    );
    // One commit per batch: a WRITE creating the table, then a MERGE per batch.
    assert_eq!(version, 7, "{history:?}");
    let operations: Vec<&str> = history
        .iter()
        .map(|h| h["operation"].as_str().unwrap())
        .collect();
    assert_eq!(operations.iter().filter(|o| **o == "MERGE").count(), 7);
    assert_eq!(
        txns(&stats).values().map(|t| t[0].1).collect::<Vec<_>>(),
        (0..8).collect::<Vec<i64>>()
    );
    // Complete mode: the table holds the last batch's whole result (no duplicates of
    // earlier batches' rows).
    let (version, rows, _) = python_read(&totals);
    assert_eq!(version, 7);
    let expected_totals: Vec<String> = expected
        .iter()
        .map(|r| r.split('|').take(2).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(project(&rows, &["pump", "readings"]), expected_totals);

    // A replay of an update-mode batch is skipped like any other.
    let ckpt = root.join("ckpt-update");
    std::fs::remove_file(ckpt.join("commits/7")).unwrap();
    run_success(&job, &root.join("replay.err"));
    assert_eq!(python_read(&stats).0, 7, "the replayed batch made a commit");
    assert_eq!(
        project(
            &python_read(&stats).1,
            &["pump", "readings", "total", "lowest"]
        ),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataframe_api_writes_a_delta_table() {
    use millrace::prelude::*;
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    sensor_file(&input, "a.json", &[("p1", "2026-01-01T10:00:00", 1, 4.5)]);
    sensor_file(&input, "b.json", &[("p2", "2026-01-01T10:00:01", 2, 9.0)]);
    let table = root.join("df");
    let ctx = StreamingContext::new();
    ctx.sql(&readings(&input)).await.unwrap();
    let query = ctx
        .table("readings")
        .await
        .unwrap()
        .select(vec![col("pump"), col("seq")])
        .unwrap()
        .write_stream()
        .format("delta")
        .option("path", &table.display().to_string())
        .option("checkpoint", &root.join("ckpt").display().to_string())
        .trigger(Trigger::AvailableNow)
        .query_name("df_delta")
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let (version, rows, _) = python_read(&table);
    assert_eq!(version, 1);
    assert_eq!(project(&rows, &["pump", "seq"]), ["p1|1", "p2|2"]);
}

/// `(pump, day as YYYY-MM-DD, psi)` of every reading in the generated CSV files.
fn sensor_readings(dir: &Path) -> Vec<(String, String, f64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 9, "{line}");
            let date: Vec<u32> = fields[1].split('/').map(|n| n.parse().unwrap()).collect();
            let day = format!("{:04}-{:02}-{:02}", 2000 + date[2], date[0], date[1]);
            rows.push((fields[0].to_string(), day, fields[7].parse().unwrap()));
        }
    }
    rows
}

#[test]
fn the_sensor_delta_example_appends_alerts_and_merges_daily_statistics() {
    let tmp = temp_dir();
    let root = tmp.path();
    run_in(
        root,
        &[
            "generate-sensors",
            "data",
            "--files",
            "3",
            "--minutes",
            "30",
        ],
    );
    let readings = sensor_readings(&root.join("data/sensors"));
    run_in(
        root,
        &[
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/sql/examples/sensor_delta.sql"),
        ],
    );
    let mut expected_alerts: Vec<String> = readings
        .iter()
        .filter(|r| r.2 < 5.0)
        .map(|r| format!("{}|{:?}", r.0, r.2))
        .collect();
    expected_alerts.sort();
    assert!(!expected_alerts.is_empty());
    let (_, alerts, _) = python_read(&root.join("lake/pump_alerts"));
    assert_eq!(project(&alerts, &["pump", "psi"]), expected_alerts);

    let mut daily: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for r in &readings {
        let entry = daily.entry((r.0.clone(), r.1.clone())).or_default();
        entry.0 += 1;
        entry.1 += i64::from(r.2 < 5.0);
    }
    let expected_daily: Vec<String> = daily
        .iter()
        .map(|((pump, day), (n, low))| format!("{pump}|{day}|{n}|{low}"))
        .collect();
    let (_, rows, _) = python_read(&root.join("lake/pump_daily"));
    assert_eq!(
        project(&rows, &["pump", "day", "readings", "low_readings"]),
        expected_daily
    );
}
