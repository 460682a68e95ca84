//! Restarting the `millrace` process: after an abort at each crash point the batch is
//! run again with exactly the offsets (and files) recorded for it, and its output lands
//! once; SIGTERM stops gracefully after the current batch; a checkpoint or an output
//! directory that belongs to another query is refused; the offset and commit logs are
//! purged down to the retention count (100); a SIGTERM while the query is still
//! starting is graceful too; a progress line torn by a kill does not swallow the next
//! report.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// An input directory with `files` JSON files of `rows` sequential ids each
/// (`f-000.json` holds ids `0..rows`, and so on); returns how many ids were written.
fn land_files(input: &Path, first_file: usize, files: usize, rows: i64) -> i64 {
    for f in first_file..first_file + files {
        let first = f as i64 * rows;
        write_atomic(
            input,
            &format!("f-{f:03}.json"),
            json_rows(first..first + rows).as_bytes(),
        );
    }
    (first_file + files) as i64 * rows
}

/// The ids in the input files listed by the file source's log entry `log_file`.
fn ids_in_logged_files(log_file: &Path) -> Vec<i64> {
    let entries = read_json(log_file);
    let mut ids = Vec::new();
    for entry in entries
        .as_array()
        .expect("a file source log entry is a list")
    {
        let path = PathBuf::from(entry["path"].as_str().expect("path"));
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("input JSON");
            ids.push(row["id"].as_i64().expect("id"));
        }
    }
    ids
}

/// The visible output file(s) of batch `batch` (`part-<batch>-*`).
fn batch_files(output: &Path, batch: u64) -> Vec<PathBuf> {
    let prefix = format!("part-{batch:06}-");
    visible_parquet_files(output)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

fn output_ids(output: &Path) -> Vec<i64> {
    i64_column(&read_parquet_dir(output), "id")
}

struct Setup {
    _root: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    output: PathBuf,
    checkpoint: PathBuf,
}

fn setup() -> Setup {
    let root = temp_dir();
    let path = root.path().to_path_buf();
    Setup {
        input: make_dir(&path, "in"),
        output: path.join("out"),
        checkpoint: path.join("ckpt"),
        root: path,
        _root: root,
    }
}

impl Setup {
    fn job(&self, name: &str, max_files: usize, trigger: Option<&str>) -> PathBuf {
        write_job(
            &self.root,
            name,
            &file_to_parquet_job(
                &self.input,
                &self.output,
                &self.checkpoint,
                max_files,
                trigger,
            ),
        )
    }

    fn log(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Asserts that the output holds every id of the `written` ones that passes the
    /// job's filter, each exactly once.
    fn assert_output_holds_all(&self, what: &str, written: i64) {
        assert_exactly_once(what, output_ids(&self.output), passing_ids(written));
    }
}

/// Aborts at `point` during batch 0, restarts without the crash point, and checks
/// that batch 0 ran again (unless it had committed) with the same offsets and files,
/// and that every row is in the output once.
fn crash_then_restart(point: &str) {
    let s = setup();
    let ids_written = land_files(&s.input, 0, 6, 3);
    let job = s.job("job.sql", 2, Some("available_now"));
    run_to_crash_point(&job, point, &s.log("crash.err"));

    let offsets_0 = s.checkpoint.join("offsets/0");
    let files_0 = s.checkpoint.join("sources/events/files/0");
    let offsets_before = fs::read(&offsets_0).expect("offsets/0 is written before batch 0 runs");
    let files_before = fs::read(&files_0).expect("the file source logs batch 0's files");
    assert_eq!(
        log_ids(&s.checkpoint.join("offsets")),
        vec![0],
        "the crash at {point} happened in batch 0"
    );
    let committed = point == "after-commit";
    assert_eq!(
        s.checkpoint.join("commits/0").exists(),
        committed,
        "commits/0 after a crash at {point}"
    );
    // Before the sink's files are published a plain reader sees nothing.
    let visible_before = batch_files(&s.output, 0);
    match point {
        "after-offsets" | "after-sink-manifest" => assert!(
            visible_before.is_empty(),
            "batch 0's output is visible before it was published: {visible_before:?}"
        ),
        _ => assert_eq!(visible_before.len(), 1, "batch 0's output after {point}"),
    }

    run_success(&job, &s.log("restart.err"));

    assert_eq!(
        fs::read(&offsets_0).unwrap(),
        offsets_before,
        "offsets/0 changed on restart after a crash at {point}"
    );
    assert_eq!(
        fs::read(&files_0).unwrap(),
        files_before,
        "the file source's list for batch 0 changed on restart after a crash at {point}"
    );
    assert_eq!(
        log_ids(&s.checkpoint.join("commits")),
        vec![0, 1, 2],
        "three batches of two files each are committed"
    );
    let reports = progress_reports(&s.checkpoint);
    let batch_0: Vec<_> = reports.iter().filter(|r| r["batchId"] == 0).collect();
    if committed {
        assert!(
            batch_0.is_empty(),
            "batch 0 had committed before the crash at {point} but ran again: {batch_0:?}"
        );
    } else {
        assert_eq!(batch_0.len(), 1, "batch 0 re-run once after {point}");
        assert_eq!(
            batch_0[0]["sources"][0]["endOffset"],
            read_json(&offsets_0)["sources"]["events"],
            "the re-run of batch 0 reported other offsets than offsets/0"
        );
    }

    // Batch 0's single output file holds exactly the rows of the files logged for it.
    let files = batch_files(&s.output, 0);
    assert_eq!(files.len(), 1, "batch 0 has one output file: {files:?}");
    let expected_0: Vec<i64> = ids_in_logged_files(&files_0)
        .into_iter()
        .filter(|id| passes_filter(*id))
        .collect();
    assert_exactly_once(
        &format!("batch 0's rows after a crash at {point}"),
        i64_column(&read_parquet_file(&files[0]), "id"),
        expected_0,
    );
    s.assert_output_holds_all(&format!("output after a crash at {point}"), ids_written);
    assert!(visible_tmp_files(&s.output).is_empty());
}

#[test]
fn crash_after_offsets_reruns_the_batch() {
    crash_then_restart("after-offsets");
}

#[test]
fn crash_after_sink_manifest_reruns_the_batch() {
    crash_then_restart("after-sink-manifest");
}

#[test]
fn crash_after_sink_reruns_the_batch() {
    crash_then_restart("after-sink");
}

#[test]
fn crash_after_commit_moves_on() {
    crash_then_restart("after-commit");
}

#[test]
fn sigterm_stops_after_the_current_batch_with_exit_0() {
    let s = setup();
    let ids_written = land_files(&s.input, 0, 30, 2);
    let job = s.job("job.sql", 1, None);
    let mut run = Millrace::spawn(&job, &[], &s.log("run.err"));
    wait_until("the first commit", DEADLINE, || {
        run.assert_running("before SIGTERM");
        !log_ids(&s.checkpoint.join("commits")).is_empty()
    });
    run.sigterm();
    let status = run.wait(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM should stop millrace gracefully with exit 0 ({status}); stderr:\n{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("stopping after the current batch"),
        "stderr:\n{}",
        run.stderr()
    );

    let last = *log_ids(&s.checkpoint.join("offsets"))
        .last()
        .expect("offsets");
    assert_eq!(
        log_ids(&s.checkpoint.join("commits")).last(),
        Some(&last),
        "the last offsets entry {last} has no commit after a graceful stop"
    );
    // The output holds exactly the rows of the committed batches' files.
    let last_log =
        read_json(&s.checkpoint.join(format!("offsets/{last}")))["sources"]["events"]["logOffset"]
            .as_u64()
            .expect("logOffset");
    let committed_ids: Vec<i64> = (0..=last_log)
        .flat_map(|n| ids_in_logged_files(&s.checkpoint.join(format!("sources/events/files/{n}"))))
        .filter(|id| passes_filter(*id))
        .collect();
    assert_exactly_once("output after SIGTERM", output_ids(&s.output), committed_ids);

    // A restart takes the rest.
    run_success(
        &s.job("drain.sql", 1, Some("available_now")),
        &s.log("drain.err"),
    );
    s.assert_output_holds_all("output after the drain", ids_written);
}

#[test]
fn checkpoint_of_a_query_over_other_sources_is_refused() {
    let s = setup();
    land_files(&s.input, 0, 2, 3);
    run_success(
        &s.job("job.sql", 10, Some("available_now")),
        &s.log("a.err"),
    );
    let offsets_before = log_ids(&s.checkpoint.join("offsets"));
    let output_before = visible_files(&s.output);

    let other_input = make_dir(&s.root, "other-in");
    write_atomic(&other_input, "x.json", json_rows(100..103).as_bytes());
    // The same table name over another directory, and another table altogether.
    let other_location = file_to_parquet_job(
        &other_input,
        &s.output,
        &s.checkpoint,
        10,
        Some("available_now"),
    );
    let other_table = other_location.replace("events", "clicks");
    for (name, sql) in [
        ("other-location.sql", other_location),
        ("other-table.sql", other_table),
    ] {
        let job = write_job(&s.root, name, &sql);
        let (status, stderr) = run_to_end(&job, &[], &s.log(&format!("{name}.err")));
        assert!(
            !status.success(),
            "{name}: a checkpoint of another query was accepted; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains("checkpoint error")
                && stderr.contains(&s.checkpoint.display().to_string())
                && stderr.contains("was made by a query reading")
                && stderr.contains(&other_input.display().to_string()),
            "{name}: the refusal should name the checkpoint and both source sets; stderr:\n{stderr}"
        );
        assert_eq!(log_ids(&s.checkpoint.join("offsets")), offsets_before);
        assert_eq!(visible_files(&s.output), output_before);
    }
}

#[test]
fn output_directory_of_another_query_is_refused() {
    let s = setup();
    let ids_written = land_files(&s.input, 0, 2, 3);
    run_success(
        &s.job("job.sql", 10, Some("available_now")),
        &s.log("a.err"),
    );
    let output_before = visible_files(&s.output);

    let second_checkpoint = s.root.join("ckpt2");
    let job = write_job(
        &s.root,
        "second.sql",
        &file_to_parquet_job(
            &s.input,
            &s.output,
            &second_checkpoint,
            10,
            Some("available_now"),
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &s.log("b.err"));
    assert!(
        !status.success(),
        "a second query appended to another query's output directory; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&s.output.display().to_string()) && stderr.contains("another query"),
        "the refusal should name the output directory and say it holds another query's batches; \
         stderr:\n{stderr}"
    );
    assert!(
        log_ids(&second_checkpoint.join("offsets")).is_empty(),
        "the refused query planned a batch"
    );
    assert_eq!(visible_files(&s.output), output_before);
    s.assert_output_holds_all("output of the first query", ids_written);
}

#[test]
fn offset_and_commit_logs_keep_the_newest_100_batches() {
    let s = setup();
    land_files(&s.input, 0, 110, 1);
    let job = s.job("job.sql", 1, Some("available_now"));
    run_success(&job, &s.log("a.err"));
    let retained: Vec<u64> = (10..110).collect();
    assert_eq!(log_ids(&s.checkpoint.join("offsets")), retained);
    assert_eq!(log_ids(&s.checkpoint.join("commits")), retained);

    // A restart over the purged logs carries on where it stopped.
    let ids_written = land_files(&s.input, 110, 2, 1);
    run_success(&job, &s.log("b.err"));
    let retained: Vec<u64> = (12..112).collect();
    assert_eq!(log_ids(&s.checkpoint.join("offsets")), retained);
    assert_eq!(log_ids(&s.checkpoint.join("commits")), retained);
    s.assert_output_holds_all("output over 112 batches", ids_written);
}

#[test]
fn min_batches_to_retain_sets_how_many_log_entries_are_kept() {
    let s = setup();
    land_files(&s.input, 0, 8, 1);
    let job = s.job("job.sql", 1, Some("available_now"));
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        format!("SET millrace.min_batches_to_retain = 3;\n{text}"),
    )
    .unwrap();
    run_success(&job, &s.log("a.err"));
    let retained: Vec<u64> = (5..8).collect();
    assert_eq!(log_ids(&s.checkpoint.join("offsets")), retained);
    assert_eq!(log_ids(&s.checkpoint.join("commits")), retained);
}

#[test]
fn sigterm_while_the_query_is_starting_is_still_graceful() {
    // The checkpoint's metadata is written while the script starts its query, before
    // the first batch: a SIGTERM from then on must stop millrace gracefully (exit 0),
    // not kill it with the signal's default action. Several rounds, since the window
    // is short.
    for round in 0..5 {
        let s = setup();
        land_files(&s.input, 0, 10, 2);
        let mut run = Millrace::spawn(&s.job("job.sql", 1, None), &[], &s.log("run.err"));
        let metadata = s.checkpoint.join("metadata");
        let deadline = std::time::Instant::now() + DEADLINE;
        while !metadata.exists() {
            run.assert_running("before the checkpoint exists");
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint metadata"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        run.sigterm();
        let status = run.wait(DEADLINE);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: SIGTERM while the query starts should stop millrace gracefully \
             with exit 0, it ended with {status}; stderr:\n{}",
            run.stderr()
        );
        if let Some(last) = log_ids(&s.checkpoint.join("offsets")).last() {
            assert!(
                s.checkpoint.join(format!("commits/{last}")).exists(),
                "round {round}: batch {last} planned but not committed at a graceful stop"
            );
        }
    }
}

#[test]
fn torn_progress_line_does_not_corrupt_the_next_report() {
    // A report is appended to progress.jsonl as the JSON text, then the newline; a
    // kill -9 between the two leaves the last report without its newline, and a kill
    // in the middle of the write leaves a fragment. Either way the reports of the next
    // run must start on a line of their own.
    for (cut, expected_batches) in [(1usize, vec![0u64, 1, 2]), (25, vec![0, 2])] {
        let s = setup();
        land_files(&s.input, 0, 2, 2);
        let job = s.job("job.sql", 1, Some("available_now"));
        run_success(&job, &s.log("a.err"));
        let progress = s.checkpoint.join("progress.jsonl");
        let text = fs::read(&progress).unwrap();
        assert_eq!(text.last(), Some(&b'\n'));
        fs::write(&progress, &text[..text.len() - cut]).unwrap();

        land_files(&s.input, 2, 1, 2);
        run_success(&job, &s.log("b.err"));
        let text = fs::read_to_string(&progress).unwrap();
        let batches: Vec<u64> = progress_reports(&s.checkpoint)
            .iter()
            .map(|r| r["batchId"].as_u64().expect("batchId"))
            .collect();
        assert_eq!(
            batches, expected_batches,
            "reports readable after a progress line torn by {cut} byte(s); progress.jsonl:\n{text}"
        );
        assert!(
            !text.contains("}{"),
            "two reports share a line in progress.jsonl:\n{text}"
        );
    }
}

#[test]
fn a_checkpoint_in_use_by_a_running_query_is_refused() {
    let s = setup();
    let ids_written = land_files(&s.input, 0, 4, 2);
    let job = s.job("job.sql", 1, None);
    let mut first = Millrace::spawn(&job, &[], &s.log("first.err"));
    wait_until("the first commit", DEADLINE, || {
        first.assert_running("while the second process starts");
        !log_ids(&s.checkpoint.join("commits")).is_empty()
    });
    let (status, stderr) = run_to_end(
        &s.job("second.sql", 1, Some("available_now")),
        &[],
        &s.log("second.err"),
    );
    assert!(
        !status.success(),
        "a second process on the same checkpoint ran; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("in use by another running query"),
        "stderr:\n{stderr}"
    );
    first.assert_running("after the refused second process");

    // Once the first process is gone (even by kill -9), the checkpoint is free again.
    first.kill9();
    run_success(
        &s.job("drain.sql", 1, Some("available_now")),
        &s.log("drain.err"),
    );
    s.assert_output_holds_all("output after the drain", ids_written);
}
