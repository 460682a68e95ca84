//! The Delta Lake source, reading tables written by an independent writer — the
//! `deltalake` Python package from PyPI (`scripts/delta-python.sh`): the snapshot then
//! each new commit, exactly once across restarts; `max_files_per_trigger` cutting a
//! version into several batches; `starting_version`; a DELETE commit refused with a
//! message, or skipped with `skip_change_commits`.

mod common;

use std::path::Path;

use common::*;

/// Appends rows `(id, name)` for `ids` as one commit (one file).
fn append(table: &Path, ids: impl IntoIterator<Item = i64>) {
    let rows: Vec<String> = ids
        .into_iter()
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}"))
        .collect();
    delta_python(
        &["write", &table.display().to_string(), "append"],
        &format!("[{}]", rows.join(",")),
    );
}

/// `CREATE UNBOUNDED EXTERNAL TABLE src STORED AS DELTA` → Parquet sink at `out`.
fn copy_job(root: &Path, table: &Path, out: &Path, options: &str) -> std::path::PathBuf {
    write_job(
        root,
        "copy.sql",
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE src STORED AS DELTA LOCATION '{}' {options};
             CREATE SINK copy STORED AS PARQUET LOCATION '{}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now')
               AS SELECT id, name FROM src;\n",
            table.display(),
            out.display(),
            root.join("ckpt").display()
        ),
    )
}

fn ids(out: &Path) -> Vec<i64> {
    let mut ids = i64_column(&read_parquet_dir(out), "id");
    ids.sort();
    ids
}

/// `numInputRows` of each batch in the checkpoint's progress reports.
fn rows_per_batch(checkpoint: &Path) -> Vec<u64> {
    progress_reports(checkpoint)
        .iter()
        .map(|r| r["numInputRows"].as_u64().unwrap())
        .collect()
}

#[test]
fn reads_the_snapshot_then_each_new_commit_exactly_once_across_restarts() {
    let tmp = temp_dir();
    let root = tmp.path();
    let table = root.join("table");
    let out = root.join("out");
    append(&table, 0..3);
    append(&table, 3..5);
    let job = copy_job(root, &table, &out, "");
    run_success(&job, &root.join("run1.err"));
    assert_eq!(ids(&out), (0..5).collect::<Vec<_>>());
    // New commits after a restart: only their rows are added.
    append(&table, 5..8);
    append(&table, 8..9);
    run_success(&job, &root.join("run2.err"));
    assert_eq!(ids(&out), (0..9).collect::<Vec<_>>());
    // Killed right after its output, before commits/N: the replay reads the same
    // commit's files again, and the file sink keeps one copy.
    append(&table, 9..12);
    run_to_crash_point(&job, "after-sink", &root.join("crash.err"));
    run_success(&job, &root.join("run3.err"));
    assert_exactly_once("ids", ids(&out), 0..12);
    // The schema is the table's own (no column list declared).
    let names = string_column(&read_parquet_dir(&out), "name");
    assert!(names.contains(&Some("n11".to_string())));
}

#[test]
fn max_files_per_trigger_cuts_versions_and_starting_version_skips_older_commits() {
    let tmp = temp_dir();
    let root = tmp.path();
    let table = root.join("table");
    for i in 0..5 {
        append(&table, [i * 10, i * 10 + 1]);
    }
    // One file a batch: the snapshot (5 files) gives 5 batches of 2 rows.
    let out = root.join("out");
    let job = copy_job(root, &table, &out, "OPTIONS ('max_files_per_trigger' '1')");
    run_success(&job, &root.join("run.err"));
    assert_eq!(ids(&out), [0, 1, 10, 11, 20, 21, 30, 31, 40, 41]);
    assert_eq!(rows_per_batch(&root.join("ckpt")), [2, 2, 2, 2, 2]);

    // From version 3 on: only the commits of versions 3 and 4.
    let root2 = root.join("from3");
    std::fs::create_dir_all(&root2).unwrap();
    let out2 = root2.join("out");
    let job = copy_job(&root2, &table, &out2, "OPTIONS ('starting_version' '3')");
    run_success(&job, &root2.join("run.err"));
    assert_eq!(ids(&out2), [30, 31, 40, 41]);
    // 'latest': nothing of what is there; a later commit only.
    let root3 = root.join("latest");
    std::fs::create_dir_all(&root3).unwrap();
    let out3 = root3.join("out");
    let job = copy_job(
        &root3,
        &table,
        &out3,
        "OPTIONS ('starting_version' 'latest')",
    );
    run_success(&job, &root3.join("run1.err"));
    append(&table, [50]);
    run_success(&job, &root3.join("run2.err"));
    assert_eq!(ids(&out3), [50]);
}

#[test]
fn a_commit_that_deletes_rows_is_refused_unless_change_commits_are_skipped() {
    let tmp = temp_dir();
    let root = tmp.path();
    let table = root.join("table");
    append(&table, 0..4);
    let out = root.join("out");
    let job = copy_job(root, &table, &out, "");
    run_success(&job, &root.join("run1.err"));
    // A DELETE (version 1) rewrites the file; then an append (version 2).
    delta_python(&["delete", &table.display().to_string(), "id = 2"], "");
    append(&table, [7]);
    let (status, stderr) = run_to_end(&job, &[], &root.join("run2.err"));
    assert!(!status.success());
    assert!(
        stderr.contains("version 1 removes or rewrites data")
            && stderr.contains("'skip_change_commits' 'true'"),
        "{stderr}"
    );
    assert_eq!(ids(&out), [0, 1, 2, 3], "nothing of the refused commit");
    // With skip_change_commits the DELETE commit is skipped whole (the rows it
    // rewrote are not read again) and the append after it is read.
    let job = copy_job(root, &table, &out, "OPTIONS ('skip_change_commits' 'true')");
    run_success(&job, &root.join("run3.err"));
    assert_eq!(ids(&out), [0, 1, 2, 3, 7]);
}
