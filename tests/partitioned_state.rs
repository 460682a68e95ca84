//! Partitioned, incremental keyed state, specified from the outside: keys are spread
//! over `millrace.state_partitions` partitions, each with its own files under
//! `state/0/<partition>/`; a restart restores every partition; a checkpoint keeps its
//! number of partitions; a batch reads from the state only the keys it touches.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::reader::FileReader;
use millrace::{Error, Session, SessionSettings, StatementResult, StreamingQuery};
use tokio::runtime::Runtime;

/// Writes a file the way producers must: elsewhere first, then renamed into place.
fn land(dir: &Path, name: &str, keys: impl Iterator<Item = i64>) {
    let text: String = keys.map(|k| format!("{k},{}\n", k * 10)).collect();
    land_text(dir, name, &text);
}

fn land_text(dir: &Path, name: &str, text: &str) {
    let staging = dir.parent().unwrap().join(format!(".staging-{name}"));
    fs::write(&staging, text).unwrap();
    fs::rename(&staging, dir.join(name)).unwrap();
}

fn started(results: Vec<StatementResult>) -> StreamingQuery {
    match results.into_iter().last() {
        Some(StatementResult::QueryStarted(q)) => q,
        _ => panic!("the script did not start a query"),
    }
}

/// Runs `count(*), sum(v) GROUP BY k` over `dir/in` to the end (`available_now`, one
/// file per batch, update mode, a memory sink), after `settings` (SET statements).
fn run(rt: &Runtime, dir: &Path, settings: &str) -> Result<StreamingQuery, Error> {
    run_in(rt, dir, settings, "update").map(|(_, query)| query)
}

/// [`run`] in `mode`; the session holds the memory sink's table `totals`.
fn run_in(
    rt: &Runtime,
    dir: &Path,
    settings: &str,
    mode: &str,
) -> Result<(Session, StreamingQuery), Error> {
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let results = rt.block_on(session.execute_script(&format!(
        "{settings}
         CREATE UNBOUNDED EXTERNAL TABLE t (k BIGINT, v BIGINT) STORED AS CSV LOCATION '{}'
           OPTIONS ('max_files_per_trigger' '1');
         CREATE SINK totals STORED AS MEMORY
           OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' '{mode}')
           AS SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k",
        dir.join("in").display(),
        dir.join("ckpt").display()
    )))?;
    let query = started(results);
    query.await_termination_blocking()?;
    Ok((session, query))
}

/// `(k, n)` of every row of the newest snapshot of each partition directory.
fn snapshot_counts(state: &Path, partitions: usize) -> Vec<BTreeMap<i64, i64>> {
    (0..partitions)
        .map(|p| {
            let dir = state.join(p.to_string());
            let newest = fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".snapshot.arrow")?.parse::<u64>().ok()
                })
                .max()
                .unwrap_or_else(|| panic!("partition {p} has no snapshot"));
            let file = fs::File::open(dir.join(format!("{newest}.snapshot.arrow"))).unwrap();
            let mut rows = BTreeMap::new();
            for batch in FileReader::try_new(file, None).unwrap() {
                let batch = batch.unwrap();
                let k = batch.column(0).as_primitive::<Int64Type>();
                let n = batch.column(1).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    rows.insert(k.value(i), n.value(i));
                }
            }
            rows
        })
        .collect()
}

fn state_operator(query: &StreamingQuery, batch: usize) -> serde_json::Value {
    query.recent_progress()[batch].state_operators[0].clone()
}

#[test]
fn keys_spread_over_partitions_and_a_restart_restores_every_partition() {
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "a.csv", 0..300);
    run(&rt, tmp.path(), "SET millrace.state_partitions = 3;").unwrap();

    // The layout: the number of partitions recorded, one store per partition.
    let state = tmp.path().join("ckpt/state/0");
    let layout: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("partitions.json")).unwrap()).unwrap();
    assert_eq!(layout["partitions"], 3);
    let mut entries: Vec<String> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["0", "1", "2", "partitions.json"]);
    // Every key is in exactly one partition, and each partition holds some.
    let parts = snapshot_counts(&state, 3);
    assert!(
        parts.iter().all(|p| p.len() > 30),
        "{:?}",
        parts.iter().map(BTreeMap::len)
    );
    let mut all: BTreeMap<i64, i64> = BTreeMap::new();
    for part in &parts {
        for (k, n) in part {
            assert!(all.insert(*k, *n).is_none(), "key {k} in two partitions");
        }
    }
    assert_eq!(all, (0..300).map(|k| (k, 1)).collect());

    // A restart (without the SET: the checkpoint's number holds) continues from every
    // partition: keys of all partitions are counted on.
    land(&input, "b.csv", 0..300);
    let query = run(&rt, tmp.path(), "").unwrap();
    let operator = state_operator(&query, 0);
    assert_eq!(operator["numShufflePartitions"], 3, "{operator}");
    assert_eq!(operator["numRowsTotal"], 300, "{operator}");
    assert_eq!(operator["numRowsUpdated"], 300, "{operator}");
    assert_eq!(
        operator["customMetrics"]["numStateRowsRead"], 300,
        "{operator}"
    );
    assert_eq!(query.recent_progress()[0].sink.num_output_rows, 300);
    // Committed versions 0 and 1 in every partition; counts are now 2 for every key.
    for p in 0..3 {
        let dir = state.join(p.to_string());
        for file in ["0.snapshot.arrow", "1.delta.arrow", "1.removed.arrow"] {
            assert!(dir.join(file).exists(), "{}/{file}", dir.display());
        }
    }
    // A third run in complete mode shows every key of every partition.
    land(&input, "c.csv", 0..1);
    let (session, _) = run_in(&rt, tmp.path(), "", "complete").unwrap();
    let totals = rt
        .block_on(session.query("SELECT count(*), sum(n), sum(total) FROM totals"))
        .unwrap();
    let column = |c: usize| totals[0].column(c).as_primitive::<Int64Type>().value(0);
    assert_eq!(column(0), 300);
    assert_eq!(column(1), 601, "two rows per key, three for key 0");
    assert_eq!(column(2), 2 * (0..300).map(|k| k * 10).sum::<i64>());
}

#[test]
fn a_checkpoint_refuses_another_number_of_partitions() {
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "a.csv", 0..10);
    run(&rt, tmp.path(), "SET millrace.state_partitions = 2;").unwrap();

    land(&input, "b.csv", 0..10);
    let error = run(&rt, tmp.path(), "SET millrace.state_partitions = 5;")
        .err()
        .expect("another number of partitions must be refused")
        .to_string();
    assert!(error.contains("2 partitions"), "{error}");
    assert!(error.contains("millrace.state_partitions = 2"), "{error}");
    // Nothing was lost: the same number, or none, resumes.
    let query = run(&rt, tmp.path(), "SET millrace.state_partitions = 2;").unwrap();
    assert_eq!(state_operator(&query, 0)["numRowsTotal"], 10);
    assert_eq!(state_operator(&query, 0)["numRowsUpdated"], 10);

    let error = run(&rt, tmp.path(), "SET millrace.state_partitions = 0;")
        .err()
        .expect("0 partitions is refused")
        .to_string();
    assert!(error.contains("from 1 to"), "{error}");
}

#[test]
fn a_batch_reads_only_the_held_keys_it_touches() {
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "a.csv", 0..1_000);
    // 10 rows: 5 keys already held (one of them twice), 4 new ones.
    land(
        &input,
        "b.csv",
        [3, 500, 999, 7, 7, 1_000, 1_001, 1_002, 1_003, 42].into_iter(),
    );
    let query = run(&rt, tmp.path(), "").unwrap();
    let first = state_operator(&query, 0);
    assert_eq!(first["numRowsTotal"], 1_000, "{first}");
    assert_eq!(first["customMetrics"]["numStateRowsRead"], 0, "{first}");
    let second = state_operator(&query, 1);
    assert_eq!(second["numRowsTotal"], 1_004, "{second}");
    assert_eq!(second["numRowsUpdated"], 9, "{second}");
    assert_eq!(
        second["customMetrics"]["numStateRowsRead"], 5,
        "only the held keys 3, 7, 42, 500 and 999 are read: {second}"
    );
    assert_eq!(second["numShufflePartitions"], 4, "the default: {second}");
}

/// Session windows too: a batch reads the held sessions of the keys it has rows for
/// (those its sessions may merge with), not its partitions' whole state.
#[test]
fn a_session_window_batch_reads_only_the_sessions_of_its_keys() {
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    let at = |k: i64, second: i64| format!("{k},2026-01-01T00:00:{second:02}\n");
    // One session for each of 1,000 keys.
    land_text(
        &input,
        "a.csv",
        &(0..1_000).map(|k| at(k, 0)).collect::<String>(),
    );
    // Keys 3, 7 and 42 extend their session; 500 opens a second one (30 s later, past
    // the 10 s gap); 1000 is new.
    let second: String = [
        at(3, 5),
        at(7, 1),
        at(7, 2),
        at(42, 3),
        at(500, 30),
        at(1_000, 0),
    ]
    .concat();
    land_text(&input, "b.csv", &second);
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let results = rt
        .block_on(session.execute_script(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (k BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '1' HOUR) STORED AS CSV LOCATION '{}'
               OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK sessions STORED AS MEMORY
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'update')
               AS SELECT k, session_window(ts, '10 seconds') AS s, count(*) AS n
                  FROM t GROUP BY k, session_window(ts, '10 seconds')",
            input.display(),
            tmp.path().join("ckpt").display()
        )))
        .unwrap();
    let query = started(results);
    query.await_termination_blocking().unwrap();
    let first = state_operator(&query, 0);
    assert_eq!(first["numRowsTotal"], 1_000, "{first}");
    let second = state_operator(&query, 1);
    assert_eq!(
        second["customMetrics"]["numStateRowsRead"], 4,
        "only the sessions of keys 3, 7, 42 and 500 are read: {second}"
    );
    assert_eq!(second["numRowsTotal"], 1_002, "{second}");
    let counts = rt
        .block_on(session.query(
            "SELECT k, count(*) AS sessions, max(n) AS rows FROM sessions
             WHERE k IN (3, 7, 500) GROUP BY k ORDER BY k",
        ))
        .unwrap();
    let mut rows = Vec::new();
    for b in &counts {
        for i in 0..b.num_rows() {
            rows.push((
                b.column(0).as_primitive::<Int64Type>().value(i),
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    // (key, rows in the update-mode table, readings in its largest session): the
    // memory table keeps a row per (key, session) it was shown, so a session that grew
    // is there before and after.
    assert_eq!(rows, vec![(3, 2, 2), (7, 2, 3), (500, 2, 1)]);
}
