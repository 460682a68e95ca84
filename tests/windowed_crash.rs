//! A windowed aggregation to Parquet in append mode, `kill -9`ed at random instants
//! (at least 30 times, plus aimed crash points) and restarted: the final output equals
//! an uninterrupted run's, row for row — each window emitted exactly once, with the
//! same late rows dropped — as read by an independent Parquet reader.

mod common;

use std::path::Path;

use common::*;

/// The job: 10-second windows per key with a 5-second watermark delay, one input file
/// per batch, written as Parquet in append mode.
fn job(
    root: &Path,
    name: &str,
    input: &Path,
    output: &Path,
    checkpoint: &Path,
) -> std::path::PathBuf {
    write_job(
        root,
        name,
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE events (k VARCHAR, ts TIMESTAMP, v BIGINT,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
               STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK windows STORED AS PARQUET LOCATION '{}/'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'append')
               AS SELECT k, CAST(w.start AS VARCHAR) AS start, n, total FROM (
                 SELECT k, window(ts, '10 seconds') AS w, count(*) AS n, sum(v) AS total
                 FROM events GROUP BY k, window(ts, '10 seconds'));\n",
            input.display(),
            output.display(),
            checkpoint.display()
        ),
    )
}

/// The output as sorted `k|start|n|total` lines.
fn rows(output: &Path) -> Vec<String> {
    let batches = read_parquet_dir(output);
    let keys = string_column(&batches, "k");
    let starts = string_column(&batches, "start");
    let counts = i64_column(&batches, "n");
    let totals = i64_column(&batches, "total");
    let mut rows: Vec<String> = (0..keys.len())
        .map(|i| {
            format!(
                "{}|{}|{}|{}",
                keys[i].as_deref().unwrap_or("NULL"),
                starts[i].as_deref().unwrap_or("NULL"),
                counts[i],
                totals[i]
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn kill_9_during_a_windowed_aggregation_changes_nothing_in_the_output() {
    let seed = test_seed("windowed_crash");
    let mut rng = XorShift::new(seed);
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    // 90 files; event time moves ~2 s per file, rows up to 9 s early (some late for the
    // watermark) and 3 s ahead.
    windowed_event_files(&input, &mut rng, 90);

    // The uninterrupted run.
    let reference = job(
        root,
        "reference.sql",
        &input,
        &root.join("out-ref"),
        &root.join("ckpt-ref"),
    );
    run_success(&reference, &root.join("reference.err"));
    let expected = rows(&root.join("out-ref"));
    assert!(
        expected.len() > 20,
        "the reference emitted only {expected:?}"
    );

    // The same job, crashed again and again.
    let output = root.join("out");
    let crashed = job(root, "crashed.sql", &input, &output, &root.join("ckpt"));
    for point in [
        "after-state-commit",
        "after-sink-manifest",
        "after-sink",
        "after-commit",
    ] {
        run_to_crash_point(&crashed, point, &root.join(format!("{point}.err")));
    }
    let kills = kill9_until_finished(&crashed, root, &mut rng, 30, 160);
    run_success(&crashed, &root.join("final.err"));

    assert!(
        visible_tmp_files(&output).is_empty(),
        "temporaries visible to readers"
    );
    let actual = rows(&output);
    assert_eq!(
        actual, expected,
        "seed {seed}: output after {kills} kills differs"
    );
}
