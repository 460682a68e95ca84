//! The crash test: a file → Parquet query with the default (continuous) trigger is
//! killed with `kill -9` at random instants while input keeps arriving, and also made
//! to abort at each of the engine's crash points, restarted every time; once the input
//! stops and a final `available_now` run has drained it, an independent Parquet reader
//! must find every expected row exactly once, and no temporary file a plain reader
//! could see.
//!
//! The kill instants come from a seeded RNG; the seed is printed, and
//! `MILLRACE_TEST_SEED=<seed>` replays the same schedule (the process timing still
//! varies, which is the point).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// The crash points of the micro-batch loop and the file sink, in batch order.
const CRASH_POINTS: [&str; 6] = [
    "after-offsets",
    "after-sink-manifest",
    "after-sink",
    "after-commit",
    // Between writing a compaction and deleting the entries it folds (the sink's
    // manifest, the file source's log): plain readers must not notice.
    "after-sink-compaction",
    "after-source-compaction",
];

/// Restarts in total; every fifth one aborts at a crash point (each point twice),
/// the others are `kill -9`ed at a random instant.
const RUNS: usize = 60;

/// Writes JSON files of sequential ids into the watched directory until stopped.
struct Generator {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<i64>,
}

impl Generator {
    fn start(input: PathBuf, seed: u64) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = XorShift::new(seed);
            let mut next_id = 0i64;
            let mut file = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let rows = rng.range(1, 6) as i64;
                let contents = json_rows(next_id..next_id + rows);
                write_atomic(&input, &format!("f-{file:06}.json"), contents.as_bytes());
                next_id += rows;
                file += 1;
                std::thread::sleep(Duration::from_millis(rng.range(4, 20)));
            }
            next_id
        });
        Generator { stop, thread }
    }

    /// Stops the generator; returns how many ids (0..n) it wrote.
    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the input generator panicked")
    }
}

/// The newest committed batch id (the commit log is purged, so not a count).
fn last_commit(checkpoint: &Path) -> Option<u64> {
    log_ids(&checkpoint.join("commits")).last().copied()
}

#[test]
fn kill_minus_nine_at_random_instants_loses_and_duplicates_nothing() {
    let test_start = Instant::now();
    let seed = test_seed("crash_recovery");
    let mut rng = XorShift::new(seed);
    let root = temp_dir();
    let input = make_dir(root.path(), "in");
    let output = root.path().join("out");
    let checkpoint = root.path().join("ckpt");
    let logs = make_dir(root.path(), "logs");
    let continuous = write_job(
        root.path(),
        "continuous.sql",
        &file_to_parquet_job(&input, &output, &checkpoint, 3, None),
    );
    let drain = write_job(
        root.path(),
        "drain.sql",
        &file_to_parquet_job(&input, &output, &checkpoint, 3, Some("available_now")),
    );

    let generator = Generator::start(input.clone(), rng.next_u64());
    let mut killed = 0;
    let mut crashed = 0;
    let mut runs_that_committed = 0;
    for run in 0..RUNS {
        let stderr_path = logs.join(format!("run-{run:02}.err"));
        let before = last_commit(&checkpoint);
        if run % 5 == 4 {
            let point = CRASH_POINTS[(run / 5) % CRASH_POINTS.len()];
            let (status, stderr) =
                run_to_end(&continuous, &[("MILLRACE_CRASH_AT", point)], &stderr_path);
            assert_crashed_at(status, &stderr, point);
            crashed += 1;
        } else {
            kill9_after_random_delay(
                &continuous,
                &stderr_path,
                &mut rng,
                (20, 400),
                &format!("run {run}"),
            );
            killed += 1;
        }
        if last_commit(&checkpoint) > before {
            runs_that_committed += 1;
        }
    }
    let ids_written = generator.stop();
    let before_drain = last_commit(&checkpoint).map_or(0, |b| b + 1);
    run_success(&drain, &logs.join("drain.err"));

    // Every expected id exactly once, read by a plain Parquet reader.
    let batches = read_parquet_dir(&output);
    let ids = i64_column(&batches, "id");
    let payloads = string_column(&batches, "payload");
    for (id, payload) in ids.iter().zip(&payloads) {
        assert_eq!(
            payload.as_deref(),
            Some(format!("p{id}").as_str()),
            "row {id} has the wrong payload"
        );
    }
    assert_exactly_once(
        "ids in the output",
        ids.iter().copied(),
        passing_ids(ids_written),
    );

    // No temporary is visible to plain readers; after a clean drain none is left at all
    // beside the result files (uncommitted ones are removed, committed ones published).
    let visible_tmp = visible_tmp_files(&output);
    assert!(
        visible_tmp.is_empty(),
        "temporary files visible: {visible_tmp:?}"
    );
    let leftover: Vec<_> = std::fs::read_dir(&output)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftover.is_empty(),
        "temporaries left after the drain: {leftover:?}"
    );

    // Every visible file belongs to a committed batch's manifest, and vice versa. The
    // manifest is compacted: batches up to the newest compaction are counted there.
    let manifest_dir = output.join("_millrace_sink");
    let mut listed = BTreeSet::new();
    for id in log_ids(&manifest_dir) {
        let entry = read_json(&manifest_dir.join(id.to_string()));
        for file in entry["files"].as_array().expect("manifest files") {
            listed.insert(output.join(file.as_str().expect("file name")));
        }
    }
    let compaction = std::fs::read_dir(&manifest_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".compact")?.parse::<u64>().ok()
        })
        .max()
        .map(|last| read_json(&manifest_dir.join(format!("{last}.compact"))));
    let folded_upto = compaction
        .as_ref()
        .map(|c| c["lastBatchId"].as_u64().expect("lastBatchId"));
    let batch_of = |path: &std::path::Path| -> u64 {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        name.strip_prefix("part-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not an output file name: {name}"))
    };
    let (folded, unfolded): (Vec<_>, Vec<_>) = visible_files(&output)
        .into_iter()
        .partition(|p| folded_upto.is_some_and(|upto| batch_of(p) <= upto));
    let visible: BTreeSet<_> = unfolded.into_iter().collect();
    assert_eq!(
        visible, listed,
        "visible output files differ from the files the sink manifests list"
    );
    assert_eq!(
        folded.len() as u64,
        compaction
            .as_ref()
            .map_or(0, |c| c["files"].as_u64().expect("files")),
        "visible files of compacted batches differ from the compaction's count"
    );

    // The checkpoint ends committed.
    let last = *log_ids(&checkpoint.join("offsets"))
        .last()
        .expect("offsets");
    assert!(
        checkpoint.join("commits").join(last.to_string()).exists(),
        "the last batch {last} has no commit after the drain"
    );
    // Reports torn by a kill may leave a fragment, but never glue two reports together.
    let progress = std::fs::read_to_string(checkpoint.join("progress.jsonl")).unwrap();
    assert!(
        !progress.contains("}{"),
        "two progress reports share a line in progress.jsonl"
    );
    assert!(
        runs_that_committed > 0,
        "no crashed run ever committed a batch: the test exercised nothing"
    );
    eprintln!(
        "crash_recovery: {killed} kill -9 + {crashed} crash-point aborts, {runs_that_committed} \
         of them after committing a batch; {before_drain} batches committed before the drain, \
         {} after; {ids_written} ids written, {} rows read back; {:.1} s",
        last_commit(&checkpoint).map_or(0, |b| b + 1),
        ids.len(),
        test_start.elapsed().as_secs_f64()
    );
}
