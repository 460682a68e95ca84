//! The rate source through the `millrace` binary into a Parquet sink: across runs with
//! `trigger = 'once'` and across `kill -9`s of continuous runs, `value` counts up from 0
//! with no gap and no repeat, timestamps never go down as values go up, and several
//! partitions per batch change none of that.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn rate_job(
    root: &Path,
    name: &str,
    rows_per_second: u64,
    partitions: usize,
    trigger: Option<&str>,
) -> PathBuf {
    let trigger = trigger_option(trigger);
    write_job(
        root,
        name,
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE ticks STORED AS RATE\n  \
             OPTIONS ('rows_per_second' '{rows_per_second}', 'num_partitions' '{partitions}');\n\
             CREATE SINK out STORED AS PARQUET LOCATION '{}/'\n  \
             OPTIONS ('checkpoint' '{}'{trigger})\n  AS SELECT * FROM ticks;\n",
            root.join("out").display(),
            root.join("ckpt").display()
        ),
    )
}

/// Checks the output under `root/out` against the checkpoint under `root/ckpt`:
/// values are exactly `0..n` where `n` is the last committed offset, and timestamps
/// are non-decreasing in value order. Returns `n`.
fn check_values(root: &Path) -> i64 {
    let checkpoint = root.join("ckpt");
    let last = *log_ids(&checkpoint.join("offsets"))
        .last()
        .expect("at least one batch ran");
    assert!(
        checkpoint.join(format!("commits/{last}")).exists(),
        "the last batch {last} is not committed"
    );
    let end = read_json(&checkpoint.join(format!("offsets/{last}")))["sources"]["ticks"]["value"]
        .as_i64()
        .expect("rate offset");

    let batches = read_parquet_dir(&root.join("out"));
    let values = i64_column(&batches, "value");
    let stamps = i64_column(&batches, "timestamp");
    assert_exactly_once("rate values", values.iter().copied(), 0..end);

    let mut rows: Vec<(i64, i64)> = values.into_iter().zip(stamps).collect();
    rows.sort_unstable();
    for pair in rows.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "timestamp goes down from value {} ({}) to value {} ({})",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
    end
}

#[test]
fn once_runs_count_up_from_zero_without_gaps() {
    let root = temp_dir();
    let root = root.path();
    let job = rate_job(root, "once.sql", 1000, 1, Some("once"));
    for run in 0..4 {
        run_success(&job, &root.join(format!("run-{run}.err")));
        let commits = log_ids(&root.join("ckpt/commits"));
        assert!(
            commits.len() <= run + 1,
            "{} batches after {} runs with trigger 'once'",
            commits.len(),
            run + 1
        );
    }
    let rows = check_values(root);
    assert!(rows > 0, "four runs produced no rows at all");
    eprintln!(
        "rate once: {rows} rows in {} batches",
        log_ids(&root.join("ckpt/commits")).len()
    );
}

#[test]
fn partitions_and_kill_minus_nine_keep_values_contiguous() {
    let seed = test_seed("rate_source");
    let mut rng = XorShift::new(seed);
    let root = temp_dir();
    let root = root.path();
    let once = rate_job(root, "once.sql", 2000, 4, Some("once"));
    let continuous = rate_job(root, "continuous.sql", 2000, 4, None);
    run_success(&once, &root.join("first.err"));
    let mut killed = 0;
    for round in 0..6 {
        let mut run = Millrace::spawn(&continuous, &[], &root.join(format!("kill-{round}.err")));
        let delay = rng.range(30, 400);
        std::thread::sleep(Duration::from_millis(delay));
        run.assert_running(&format!("round {round} (kill after {delay} ms)"));
        run.kill9();
        killed += 1;
        if round % 2 == 1 {
            run_success(&once, &root.join(format!("once-{round}.err")));
        }
    }
    run_success(&once, &root.join("last.err"));
    let rows = check_values(root);
    assert!(rows > 0, "no rows at all");
    eprintln!(
        "rate with 4 partitions: {rows} rows, {killed} kills, last batch {:?}",
        log_ids(&root.join("ckpt/commits")).last()
    );
}
