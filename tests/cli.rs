//! The `millrace` command, driven as a user drives it: scripts with `-f`, inline
//! statements with `-c`, `--progress`, and the shell on standard input.

use std::fs;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn millrace(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run millrace")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_script_runs_its_queries_to_the_end_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/a.json"), "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    fs::write(
        tmp.path().join("job.sql"),
        "-- relative paths resolve against the working directory\n\
         CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS JSON LOCATION 'in/';\n\
         CREATE SINK doubled STORED AS JSON LOCATION 'out/' \
         OPTIONS ('checkpoint' 'ckpt', 'trigger' 'available_now') AS SELECT n * 2 AS m FROM t;\n",
    )
    .unwrap();
    let out = millrace(&["-f", "job.sql", "--progress"], tmp.path());
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let progress: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(progress.len(), 1, "one batch, one progress line: {stderr}");
    assert_eq!(progress[0]["name"], "doubled");
    let written: Vec<String> = fs::read_dir(tmp.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(written, vec!["{\"m\":2}\n{\"m\":4}\n".to_string()]);
}

#[test]
fn a_failing_statement_exits_non_zero_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS AVRO LOCATION 'in/'",
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown format 'AVRO'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_query_that_fails_while_running_exits_non_zero_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/bad.csv"), "1\n2\nthree\n").unwrap();
    let out = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS CSV LOCATION 'in/' OPTIONS ('mode' 'fail_fast');
             CREATE SINK s STORED AS CONSOLE OPTIONS ('trigger' 'available_now') AS SELECT n FROM t",
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.csv at line 3"), "{stderr}");
    assert!(stderr.contains("'three' is not a valid Int64"), "{stderr}");
}

#[test]
fn static_queries_print_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let out = millrace(&["-c", "SELECT 1 + 1 AS two, upper('x') AS x"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| two | x |"), "{stdout}");
    assert!(stdout.contains("| 2   | X |"), "{stdout}");
}

#[test]
fn the_shell_reads_statements_from_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/a.csv"), "5\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_millrace"))
        .current_dir(tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT)\n  STORED AS CSV LOCATION 'in/';\n\
                  CREATE SINK m STORED AS MEMORY OPTIONS ('trigger' 'once') AS SELECT n + 1 AS n FROM t;\n\
                  SELECT 40 + 2 AS answer;\n\
                  \\queries\n\
                  \\q\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("| 42     |"), "{stdout}");
    assert!(stderr.contains("table 't' declared"), "{stderr}");
    assert!(stderr.contains("streaming query 'm' started"), "{stderr}");
}

#[test]
fn the_demo_writes_one_alert_per_low_pressure_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let out = millrace(&["demo", "--dir", "demo", "--files", "3"], tmp.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // "generated 1080 sensor readings (41 below 5 psi) in ..."
    let low: u64 = stderr
        .split(" below 5 psi")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generator summary in: {stderr}"));
    assert!(low > 0);
    // The last table printed is `alerts | pumps` counted from the Parquet output.
    let counts = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no count table in: {stdout}"));
    let alerts: u64 = counts.split('|').nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(alerts, low, "{stdout}");
    // Every batch printed on the console too.
    assert!(stdout.contains("Batch: 1"), "{stdout}");
}

#[test]
fn views_over_streams_stream_and_explain_shows_the_per_batch_plan() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/a.csv"), "1\n2\n3\n").unwrap();
    let out = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS CSV LOCATION 'in/';
             CREATE VIEW big AS SELECT n * 100 AS n FROM t WHERE n > 1;
             EXPLAIN SELECT n FROM big;
             CREATE SINK s STORED AS CONSOLE OPTIONS ('trigger' 'available_now') AS SELECT n + 1 AS m FROM big",
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("physical_plan"), "{stdout}");
    assert!(stdout.contains("FilterExec"), "{stdout}");
    assert!(
        stdout.contains("| 201 |") && stdout.contains("| 301 |"),
        "{stdout}"
    );
    assert!(!stdout.contains("| 101 |"), "{stdout}");
}

#[test]
fn copy_from_a_stream_is_refused_with_what_to_do_instead() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    let out = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS CSV LOCATION 'in/';
             COPY (SELECT n FROM t) TO 'copy.csv'",
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("use CREATE SINK") || stderr.contains("with CREATE SINK"),
        "{stderr}"
    );
}

#[test]
fn a_memory_sink_never_replaces_another_table_and_options_are_given_once() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    let clash = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS CSV LOCATION 'in/';
             CREATE SINK t STORED AS MEMORY AS SELECT n FROM t",
        ],
        tmp.path(),
    );
    assert!(!clash.status.success());
    let stderr = text(&clash.stderr);
    assert!(
        stderr.contains("table 't'") && stderr.contains("already exists"),
        "{stderr}"
    );

    let twice = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (n BIGINT) STORED AS CSV LOCATION 'in/' \
             OPTIONS ('mode' 'permissive', 'MODE' 'fail_fast')",
        ],
        tmp.path(),
    );
    assert!(!twice.status.success());
    let stderr = text(&twice.stderr);
    assert!(
        stderr.contains("option 'mode'") && stderr.contains("twice"),
        "{stderr}"
    );
}

#[test]
fn a_noop_sink_runs_the_whole_query_and_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/a.csv"), "p1,1\np2,2\np1,3\n").unwrap();
    fs::write(tmp.path().join("in/b.csv"), "p3,4\np1,5\n").unwrap();
    let out = millrace(
        &[
            "--progress",
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (pump VARCHAR, n BIGINT) STORED AS CSV LOCATION 'in/' \
             OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK s STORED AS NOOP OPTIONS ('trigger' 'available_now', 'output_mode' 'update') \
             AS SELECT pump, sum(n) AS total FROM t GROUP BY pump",
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "", "a noop sink prints nothing");
    let progress: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(progress.len(), 2, "{stderr}");
    assert_eq!(progress[0]["sink"]["description"], "NoopSink");
    // Batch 0 changes p1 and p2, batch 1 p3 and p1; three groups in the state at the end.
    let output: Vec<u64> = progress
        .iter()
        .map(|p| p["sink"]["numOutputRows"].as_u64().unwrap())
        .collect();
    assert_eq!(output, [2, 2]);
    let operator = &progress[1]["stateOperators"][0];
    assert_eq!(operator["numRowsTotal"], 3);
    // The one stateful operator is operator 0, named as Spark names an aggregation.
    assert_eq!(operator["operatorId"], 0, "{operator}");
    assert_eq!(operator["operatorName"], "stateStoreSave", "{operator}");
    assert_eq!(operator["numRowsUpdated"], 2, "{operator}");
}

#[test]
fn a_global_count_and_max_over_a_stream_keep_their_state() {
    // DataFusion's `aggregate_statistics` rule would answer them from one batch's
    // statistics, and the streaming aggregation would be gone.
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(tmp.path().join("in/a.csv"), "a,1\nb,2\n").unwrap();
    let out = millrace(
        &[
            "-c",
            "CREATE UNBOUNDED EXTERNAL TABLE t (k VARCHAR, n BIGINT) STORED AS CSV LOCATION 'in/';
             CREATE SINK s STORED AS CONSOLE OPTIONS ('trigger' 'available_now', 'output_mode' 'complete')
             AS SELECT count(*) AS c, max(n) AS top FROM t",
        ],
        tmp.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("| 2 | 2   |"), "{stdout}");
}

/// `bench --dir DIR` keeps its input for another look; running it again over the same
/// directory runs the whole job again, not a restart from the first run's checkpoint
/// (which found nothing left to read and reported 0 batches).
#[test]
fn a_benchmark_run_again_over_a_kept_directory_runs_the_whole_job_again() {
    let tmp = tempfile::tempdir().unwrap();
    let batches = |report: &str| -> usize {
        let (_, rest) = report.split_once(" rows in ").expect("a report line");
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    for workload in ["join", "groupby"] {
        let dir = tmp.path().join(workload);
        let dir = dir.to_str().unwrap();
        let runs: Vec<usize> = (0..2)
            .map(|_| {
                let out = millrace(
                    &[
                        "bench",
                        "--workload",
                        workload,
                        "--rows",
                        "2000",
                        "--dir",
                        dir,
                    ],
                    tmp.path(),
                );
                assert!(out.status.success(), "{}", text(&out.stderr));
                batches(&text(&out.stdout))
            })
            .collect();
        assert!(runs[0] > 0, "{workload}: {runs:?}");
        assert_eq!(runs[0], runs[1], "{workload}: batches of the two runs");
    }
}
