//! A chain of two stateful operators (10-second windows per key, then 30-second windows
//! of those: a window of windows) to Parquet in append mode, `kill -9`ed at random
//! instants (at least 30 times, plus aimed crash points) and restarted: the final output
//! equals an uninterrupted run's, row for row, so every restart restored both
//! operators' state (`state/0/` and `state/1/`) at the same batch.

mod common;

use std::path::Path;

use common::*;

/// The job: per key 10-second windows (watermark delay 5 s), then 30-second windows of
/// them by `window_time`, one input file per batch, written as Parquet in append mode.
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
               AS SELECT CAST(w30.start AS VARCHAR) AS start, windows, n, total FROM (
                 SELECT window(window_time(w), '30 seconds') AS w30, count(*) AS windows,
                        sum(n) AS n, sum(total) AS total
                 FROM (SELECT k, window(ts, '10 seconds') AS w, count(*) AS n,
                              sum(v) AS total
                       FROM events GROUP BY k, window(ts, '10 seconds'))
                 GROUP BY window(window_time(w), '30 seconds'));\n",
            input.display(),
            output.display(),
            checkpoint.display()
        ),
    )
}

/// The output as sorted `start|windows|n|total` lines.
fn rows(output: &Path) -> Vec<String> {
    let batches = read_parquet_dir(output);
    let starts = string_column(&batches, "start");
    let windows = i64_column(&batches, "windows");
    let counts = i64_column(&batches, "n");
    let totals = i64_column(&batches, "total");
    let mut rows: Vec<String> = (0..starts.len())
        .map(|i| {
            format!(
                "{}|{}|{}|{}",
                starts[i].as_deref().unwrap_or("NULL"),
                windows[i],
                counts[i],
                totals[i]
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn kill_9_during_a_chain_of_two_stateful_operators_changes_nothing_in_the_output() {
    let seed = test_seed("operator_chain_crash");
    let mut rng = XorShift::new(seed);
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    // 90 files; event time moves ~2 s per file, rows up to 9 s early (some between the
    // two watermarks, some late) and 3 s ahead.
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
        expected.len() > 4,
        "the reference emitted only {expected:?}"
    );

    // Each operator reports itself, with its id, and keeps its state in its directory.
    let reports = progress_reports(&root.join("ckpt-ref"));
    let last = reports.last().expect("progress reports");
    let operators = last["stateOperators"].as_array().expect("stateOperators");
    assert_eq!(operators.len(), 2, "{last}");
    for (id, operator) in operators.iter().enumerate() {
        assert_eq!(operator["operatorId"], id, "{operator}");
        assert_eq!(operator["operatorName"], "stateStoreSave", "{operator}");
        assert!(
            root.join("ckpt-ref/state").join(id.to_string()).is_dir(),
            "no state/{id}"
        );
    }

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
