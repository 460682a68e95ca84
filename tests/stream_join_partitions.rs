//! Partitioned stream-stream join state, specified from the outside: each side's rows
//! are split into `millrace.state_partitions` partitions by a hash of the equality key,
//! the same hash on both sides (`state/<operator id>/<side>/<partition>/`); results do
//! not depend on the number of partitions, also with a restart between every batch; a
//! checkpoint keeps its number; a checkpoint of the single-partition layout written by
//! millrace before join state was partitioned still restores.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

mod common;

use common::XorShift;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use millrace::{Error, Session, SessionSettings, StatementResult, StreamingQuery};
use tokio::runtime::Runtime;

/// Rows as sorted text lines, so results compare whatever their order.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// Lands, atomically, a CSV file of `text` in `dir` (created if missing).
fn land(dir: &Path, name: &str, text: &str) {
    fs::create_dir_all(dir).unwrap();
    let staged = dir.parent().unwrap().join(format!(".{name}"));
    fs::write(&staged, text).unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
}

/// The FULL join of the oracle test, over `l` and `r` (streams, or static tables of
/// every row landed).
fn full_join(l: &str, r: &str) -> String {
    format!(
        "SELECT l.k, l.ts, l.v, r.k AS rk, r.ts AS rts, r.w FROM {l} l FULL JOIN {r} r
           ON l.k = r.k AND r.ts BETWEEN l.ts - INTERVAL '3' SECOND AND l.ts + INTERVAL '3' SECOND"
    )
}

/// The tables of the oracle test, over `dir/l` and `dir/r`, one file per batch.
fn tables(dir: &Path) -> String {
    let mut script = String::new();
    for (side, column) in [("l", "v"), ("r", "w")] {
        script.push_str(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE {side} (k BIGINT, ts TIMESTAMP, {column} BIGINT,
               WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
             STORED AS CSV LOCATION '{dir}' OPTIONS ('max_files_per_trigger' '1');",
            dir = dir.join(side).display()
        ));
    }
    script
}

fn started(results: Vec<StatementResult>) -> StreamingQuery {
    match results.into_iter().last() {
        Some(StatementResult::QueryStarted(q)) => q,
        _ => panic!("the script did not start a query"),
    }
}

/// Runs the FULL join over what is in `dir/l` and `dir/r` to the end (`available_now`,
/// a new session: a restart), after `settings`; returns the rows this run emitted and
/// the query.
fn run(rt: &Runtime, dir: &Path, settings: &str) -> Result<(Vec<String>, StreamingQuery), Error> {
    let session = Session::new(rt.handle().clone(), SessionSettings::default());
    let results = rt.block_on(session.execute_script(&format!(
        "{settings}
         {tables}
         CREATE SINK j STORED AS MEMORY
           OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now')
           AS {select}",
        tables = tables(dir),
        ckpt = dir.join("ckpt").display(),
        select = full_join("l", "r"),
    )))?;
    let query = started(results);
    query.await_termination_blocking()?;
    let rows = lines(&rt.block_on(session.query("SELECT * FROM j")).unwrap());
    Ok((rows, query))
}

/// `k,ts,value` rows of one batch: times in `[10 * batch, 10 * batch + 10)` seconds,
/// keys 0 to 5 (one in twenty NULL), so that with a 10-second watermark delay and a
/// ±3-second range no row is late and no row leaves the state before a partner
/// arrives: the stream's answer must be the batch answer over all rows.
fn random_rows(rng: &mut XorShift, batch: u64) -> String {
    let mut text = String::new();
    for _ in 0..rng.range(0, 25) {
        let key = if rng.range(0, 19) == 0 {
            String::new()
        } else {
            rng.range(0, 5).to_string()
        };
        let ms = batch * 10_000 + rng.range(0, 9_999);
        text.push_str(&format!(
            "{key},1970-01-01T00:{:02}:{:02}.{:03},{}\n",
            ms / 60_000,
            ms / 1_000 % 60,
            ms % 1_000,
            rng.range(0, 999)
        ));
    }
    text
}

/// The equality keys (first column of the side's own columns, after row id, matched
/// flag and expiry) of every row in every version file of a state directory.
fn keys_in(dir: &Path) -> BTreeSet<i64> {
    let mut keys = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "arrow")
            || path.to_string_lossy().contains(".removed.")
        {
            continue;
        }
        for batch in FileReader::try_new(fs::File::open(&path).unwrap(), None).unwrap() {
            let batch = batch.unwrap();
            keys.extend(batch.column(3).as_primitive::<Int64Type>().iter().flatten());
        }
    }
    keys
}

/// Random rows in random batches, a restart between every batch: with 1 and with 4
/// state partitions the join emits exactly DataFusion's batch FULL JOIN over all the
/// rows (joined pairs, and every row that never matched once the closing rows move the
/// watermark past it). With 4 partitions, a key's rows of both sides are in the same
/// partition number, and the keys are spread over the partitions.
#[test]
fn the_join_gives_the_batch_answer_with_one_or_four_partitions_restarted_every_batch() {
    let rt = Runtime::new().unwrap();
    let (mut joined, mut unmatched) = (0, 0);
    for seed in 1..=3u64 {
        let mut answers = Vec::new();
        for partitions in [1, 4] {
            let mut rng = XorShift::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let settings = format!("SET millrace.state_partitions = {partitions};");
            let mut emitted = Vec::new();
            let batches = 5;
            for batch in 0..batches {
                // Now and then one side has no file in a batch.
                for side in ["l", "r"] {
                    if rng.range(0, 4) > 0 {
                        land(
                            &dir.join(side),
                            &format!("{batch}.csv"),
                            &random_rows(&mut rng, batch),
                        );
                    }
                }
                fs::create_dir_all(dir.join("l")).unwrap();
                fs::create_dir_all(dir.join("r")).unwrap();
                let (rows, _) = run(&rt, dir, &settings).unwrap();
                emitted.extend(rows);
            }
            // Closing rows far ahead on both sides (keys that match nothing and are not
            // compared) move the watermark past every row above.
            let at = batches * 10 + 100;
            land(
                &dir.join("l"),
                "z.csv",
                &format!("1000,1970-01-01T00:{:02}:{:02},0\n", at / 60, at % 60),
            );
            land(
                &dir.join("r"),
                "z.csv",
                &format!("1001,1970-01-01T00:{:02}:{:02},0\n", at / 60, at % 60),
            );
            let (rows, query) = run(&rt, dir, "").unwrap();
            emitted.extend(rows);
            let last = query.last_progress().unwrap();
            let operator = &last.state_operators[0];
            assert_eq!(operator["numShufflePartitions"], partitions, "{operator}");
            assert_eq!(
                operator["numStateStoreInstances"],
                2 * partitions,
                "{operator}"
            );
            assert_eq!(
                operator["numRowsTotal"], 2,
                "only the closing rows stay: {operator}"
            );

            // The batch answer over every row landed.
            let session = Session::new(rt.handle().clone(), SessionSettings::default());
            for side in ["l", "r"] {
                let column = if side == "l" { "v" } else { "w" };
                rt.block_on(session.execute(&format!(
                    "CREATE EXTERNAL TABLE all_{side} (k BIGINT, ts TIMESTAMP, {column} BIGINT)
                     STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'false')",
                    dir.join(side).display()
                )))
                .unwrap();
            }
            // The closing rows (keys 1000 and 1001) are not compared: they stay in the
            // state, as nothing passes them.
            let oracle = lines(
                &rt.block_on(session.query(&full_join(
                    "(SELECT * FROM all_l WHERE k IS NULL OR k < 1000)",
                    "(SELECT * FROM all_r WHERE k IS NULL OR k < 1000)",
                )))
                .unwrap(),
            );
            emitted.sort();
            assert_eq!(emitted, oracle, "seed {seed}, {partitions} partition(s)");
            joined += oracle.iter().filter(|r| !r.contains("NULL")).count();
            unmatched += oracle.iter().filter(|r| r.contains("NULL")).count();

            // On disk: one directory per side and partition; no key on both sides of
            // two different partitions.
            let state = dir.join("ckpt/state/0");
            let layout: serde_json::Value =
                serde_json::from_slice(&fs::read(state.join("partitions.json")).unwrap()).unwrap();
            assert_eq!(layout["partitions"], partitions);
            let keys: Vec<(BTreeSet<i64>, BTreeSet<i64>)> = (0..partitions)
                .map(|p| {
                    (
                        keys_in(&state.join("left").join(p.to_string())),
                        keys_in(&state.join("right").join(p.to_string())),
                    )
                })
                .collect();
            for (p, (left, _)) in keys.iter().enumerate() {
                for (q, (_, right)) in keys.iter().enumerate() {
                    if p != q {
                        let both: Vec<_> = left.intersection(right).collect();
                        assert!(both.is_empty(), "keys {both:?} in left/{p} and right/{q}");
                    }
                }
            }
            if partitions > 1 {
                let used = keys
                    .iter()
                    .filter(|(l, r)| !l.is_empty() || !r.is_empty())
                    .count();
                assert!(used >= 2, "seed {seed}: keys in {used} partition(s)");
            }
            answers.push(emitted);
        }
        assert_eq!(answers[0], answers[1], "seed {seed}: 1 and 4 partitions");
    }
    // The scenarios are not vacuous: pairs found and NULL rows emitted.
    assert!(
        joined > 30 && unmatched > 30,
        "{joined} joined, {unmatched} unmatched rows"
    );
}

/// A checkpoint keeps the number of join state partitions it was created with:
/// another number is refused with what to do, and nothing is lost by the refusal.
#[test]
fn a_join_checkpoint_refuses_another_number_of_partitions() {
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    land(
        &dir.join("l"),
        "0.csv",
        "1,1970-01-01T00:00:01,10\n2,1970-01-01T00:00:02,20\n",
    );
    land(&dir.join("r"), "0.csv", "2,1970-01-01T00:00:03,30\n");
    let (rows, _) = run(&rt, dir, "SET millrace.state_partitions = 3;").unwrap();
    assert_eq!(
        rows,
        ["2 | 1970-01-01T00:00:02 | 20 | 2 | 1970-01-01T00:00:03 | 30"]
    );
    let mut entries: Vec<String> = fs::read_dir(dir.join("ckpt/state/0/left"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["0", "1", "2"]);

    land(&dir.join("r"), "1.csv", "1,1970-01-01T00:00:04,40\n");
    let error = run(&rt, dir, "SET millrace.state_partitions = 4;")
        .err()
        .expect("another number of partitions must be refused")
        .to_string();
    assert!(error.contains("state has 3 partitions"), "{error}");
    assert!(error.contains("millrace.state_partitions = 3"), "{error}");
    // Resumed without the setting: the stored left 1 meets the new right 1.
    let (rows, query) = run(&rt, dir, "").unwrap();
    assert_eq!(
        rows,
        ["1 | 1970-01-01T00:00:01 | 10 | 1 | 1970-01-01T00:00:04 | 40"]
    );
    assert_eq!(
        query.last_progress().unwrap().state_operators[0]["numShufflePartitions"],
        3
    );
}

/// Where the fixture was made: its checkpoint records absolute paths under it.
const FIXTURE_MADE_IN: &str = "/tmp/millrace-join-fixture";

/// Copies the fixture directory `from` into `to`, with the paths the checkpoint's
/// text files (metadata, file-source log) record moved from [`FIXTURE_MADE_IN`] to `root`.
fn copy_tree(from: &Path, to: &Path, root: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, root);
        } else if entry.path().extension().is_some_and(|e| e == "arrow") {
            fs::copy(entry.path(), &target).unwrap();
        } else {
            let text = fs::read_to_string(entry.path()).unwrap();
            let moved = text.replace(FIXTURE_MADE_IN, &root.display().to_string());
            fs::write(&target, moved).unwrap();
        }
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/join-single-partition")
}

/// Runs `millrace -f job.sql` (the fixture's job, with paths relative to `dir`) in
/// `dir`, after `settings` if any; returns (success, the data rows printed, stderr).
fn run_fixture_job(dir: &Path, settings: &str) -> (bool, Vec<String>, String) {
    let job = fs::read_to_string(dir.join("job.sql")).unwrap();
    fs::write(dir.join("run.sql"), format!("{settings}\n{job}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
        .current_dir(dir)
        .args(["-f", "run.sql"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut rows: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| k "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rows.sort();
    (
        out.status.success(),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A checkpoint written by millrace before join state was partitioned (version files
/// directly in `state/0/left/` and `state/0/right/`; how it was made:
/// `tests/fixtures/join-single-partition/README.md`) restores as one partition: the
/// stored right rows meet new left rows, the stored unmatched left row gets its NULL
/// row when the watermark passes it, and the stored left row that had matched gets
/// none (its restored matched flag). Its state goes on in the same directories, and
/// another number of partitions is refused.
#[test]
fn a_checkpoint_of_the_single_partition_layout_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_tree(&fixture(), dir, dir);
    // The fixture's state: left (1, 5 s) matched, left (3, 5 s) unmatched, right
    // (1, 10 s), (2, 5 s), (1, 11 s); batches 0 to 3 committed.
    assert!(dir.join("ckpt/state/0/left/3.delta.arrow").exists());
    assert!(!dir.join("ckpt/state/0/partitions.json").exists());

    land(
        &dir.join("l"),
        "4.csv",
        "1,1970-01-01T00:00:07\n1,1970-01-01T00:00:30\n",
    );
    let (ok, rows, stderr) = run_fixture_job(dir, "SET millrace.state_partitions = 4;");
    assert!(!ok, "another number of partitions must be refused");
    assert!(stderr.contains("state has 1 partition,"), "{stderr}");
    assert!(stderr.contains("millrace.state_partitions = 1"), "{stderr}");
    assert!(rows.is_empty(), "{rows:?}");

    let (ok, rows, stderr) = run_fixture_job(dir, "");
    assert!(ok, "{stderr}");
    assert_eq!(rows, ["| 1 | 1 | 7 | 10 |", "| 1 | 1 | 7 | 11 |"]);
    land(&dir.join("r"), "5.csv", "0,1970-01-01T00:00:30\n");
    let (ok, rows, stderr) = run_fixture_job(dir, "");
    assert!(ok, "{stderr}");
    assert_eq!(
        rows,
        ["| 3 | | 5 | |"],
        "only the unmatched left row's NULL row"
    );

    let last: serde_json::Value = serde_json::from_str(
        fs::read_to_string(dir.join("ckpt/progress.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let join = &last["stateOperators"][0];
    assert_eq!(join["numShufflePartitions"], 1, "{last}");
    assert_eq!(join["numRowsTotal"], 2, "the two rows at 30 s: {last}");
    assert_eq!(join["customMetrics"]["numOuterRowsEmitted"], 1, "{last}");
    let layout: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("ckpt/state/0/partitions.json")).unwrap())
            .unwrap();
    assert_eq!(layout["partitions"], 1);
    let batch = last["batchId"].as_u64().unwrap();
    for side in ["left", "right"] {
        let file = dir.join(format!("ckpt/state/0/{side}/{batch}.delta.arrow"));
        assert!(file.exists(), "{}", file.display());
    }
}
