//! The interactive shell, driven as a person drives it: the real `millrace` binary in
//! a pseudo-terminal (rexpect), keys typed, output read back. Every wait is for a
//! piece of output, with a generous deadline, never a fixed sleep.

#![cfg(unix)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::process::WaitStatus;
use rexpect::session::{Options, PtySession};

/// Deadline for each expected piece of output (a debug build on a busy machine).
const TIMEOUT_MS: u64 = 90_000;

/// Starts the shell in `dir`, with its history in `dir/history`.
fn shell(dir: &Path) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_millrace"));
    command
        .current_dir(dir)
        .env("MILLRACE_HISTORY", dir.join("history"))
        .env("TERM", "xterm");
    let mut shell = rexpect::spawn_with_options(
        command,
        Options::new()
            .timeout_ms(Some(TIMEOUT_MS))
            .strip_ansi_escape_codes(true),
    )
    .expect("start millrace in a pseudo-terminal");
    shell.exp_string("\\? lists the commands").expect("banner");
    shell
}

/// Types a line and Enter.
fn type_line(shell: &mut PtySession, line: &str) {
    shell.send(line).unwrap();
    shell.send("\r").unwrap();
    shell.flush().unwrap();
}

/// Waits for `needle` in the output; returns what came before it.
fn expect(shell: &mut PtySession, needle: &str) -> String {
    shell
        .exp_string(needle)
        .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"))
}

/// Waits for the process to end; its exit code.
fn exit_code(shell: &mut PtySession) -> i32 {
    shell.exp_eof().expect("the shell ends");
    match shell.process().wait().expect("wait for the shell") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the shell did not exit normally: {other:?}"),
    }
}

/// Writes a CSV file into `dir` atomically (written aside, then renamed in), as a
/// file source needs.
fn land(dir: &Path, name: &str, rows: &str) {
    let staged = dir.join(format!(".{name}.tmp"));
    fs::write(&staged, rows).unwrap();
    fs::rename(&staged, dir.join(name)).unwrap();
}

const READINGS: &str = "CREATE UNBOUNDED EXTERNAL TABLE readings (pump VARCHAR, ts TIMESTAMP, psi DOUBLE, \
    WATERMARK FOR ts AS ts - INTERVAL '10' SECOND) STORED AS CSV LOCATION 'in/';";

#[test]
fn static_queries_multi_line_statements_history_and_quit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shell = shell(tmp.path());
    type_line(&mut shell, "SELECT 40 + 2 AS answer;");
    expect(&mut shell, "| 42     |");
    expect(&mut shell, "1 row in");
    // A statement over three lines runs at its `;`, not before.
    type_line(&mut shell, "SELECT 'multi'");
    type_line(&mut shell, "  || '-line' AS joined");
    type_line(&mut shell, ";");
    expect(&mut shell, "| multi-line |");
    // Output formats and the row limit.
    type_line(&mut shell, "\\pset format csv");
    expect(&mut shell, "format csv, limit 40");
    type_line(&mut shell, "SELECT 7 AS seven, 'x' AS ex;");
    expect(&mut shell, "seven,ex");
    expect(&mut shell, "7,x");
    type_line(&mut shell, "\\pset format table");
    type_line(&mut shell, "\\pset limit 2");
    expect(&mut shell, "format table, limit 2");
    type_line(&mut shell, "SELECT * FROM (VALUES (1), (2), (3)) AS t(v);");
    expect(&mut shell, "3 rows (first 2 shown");
    // Errors are reported and the shell goes on.
    type_line(&mut shell, "SELECT nope FROM nowhere;");
    expect(&mut shell, "error:");
    expect(&mut shell, "nowhere");
    type_line(&mut shell, "\\q");
    assert_eq!(exit_code(&mut shell), 0);
    let history = fs::read_to_string(tmp.path().join("history")).unwrap();
    assert!(history.contains("SELECT 40 + 2 AS answer;"), "{history}");
    // The multi-line statement is one entry.
    assert!(history.contains("'multi'\\n  || '-line'"), "{history}");
}

#[test]
fn tables_are_listed_described_and_completed() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("in")).unwrap();
    fs::write(
        tmp.path().join("vendors.csv"),
        "pump,vendor\np1,Acme\np2,Bolt\n",
    )
    .unwrap();
    let mut shell = shell(tmp.path());
    type_line(&mut shell, READINGS);
    expect(&mut shell, "table 'readings' declared");
    type_line(
        &mut shell,
        "CREATE EXTERNAL TABLE vendors STORED AS CSV LOCATION 'vendors.csv' \
         OPTIONS ('format.has_header' 'true');",
    );
    type_line(&mut shell, "\\d");
    let _ = expect(&mut shell, "| readings ");
    let line = expect(&mut shell, "\n");
    assert!(line.contains("| unbounded "), "{line}");
    assert!(line.contains("CSV "), "{line}");
    let _ = expect(&mut shell, "| vendors ");
    let line = expect(&mut shell, "\n");
    assert!(line.contains("| table "), "{line}");
    // Tab completes the table name; `\d name` shows the columns and the watermark.
    // (`\d readi` alone would be an unknown table.)
    shell.send("\\d readi\t").unwrap();
    shell.send("\r").unwrap();
    shell.flush().unwrap();
    expect(&mut shell, "unbounded table readings");
    expect(&mut shell, "| psi    | Float64");
    expect(&mut shell, "watermark:");
    expect(&mut shell, "ts - INTERVAL '10 seconds'");
    // Completion in SQL: table names after FROM.
    shell
        .send("SELECT count(*) AS vendor_count FROM vend\t")
        .unwrap();
    type_line(&mut shell, ";");
    expect(&mut shell, "vendor_count");
    expect(&mut shell, "| 2            |");
    type_line(&mut shell, "\\q");
    assert_eq!(exit_code(&mut shell), 0);
}

#[test]
fn a_live_select_shows_rows_until_ctrl_c_and_the_shell_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(
        &input,
        "1.csv",
        "p1,2026-01-01T10:00:00,3.5\np2,2026-01-01T10:00:01,7.25\n",
    );
    let mut shell = shell(tmp.path());
    type_line(&mut shell, READINGS);
    expect(&mut shell, "table 'readings' declared");

    // Append mode: rows as they come, with a status line.
    type_line(
        &mut shell,
        "SELECT pump, psi * 2 AS double_psi FROM readings;",
    );
    expect(&mut shell, "runs live (append mode)");
    expect(&mut shell, "| p1   | 7.0        |");
    expect(&mut shell, "| p2   | 14.5       |");
    expect(&mut shell, "-- batch 0 | 2 input rows");
    land(&input, "2.csv", "p3,2026-01-01T10:00:30,1.0\n");
    expect(&mut shell, "| p3   | 2.0        |");
    expect(&mut shell, "-- batch 1 | 1 input rows");
    // The watermark of batch 1 comes from batch 0's rows: 10:00:01 - 10 s.
    expect(&mut shell, "watermark 2026-01-01T09:59:51");
    shell.send_control('c').unwrap();
    expect(&mut shell, "streaming query 'select_1' stopped");
    type_line(&mut shell, "SELECT 40 + 2 AS answer;");
    expect(&mut shell, "| 42     |");

    // An aggregation: the whole result table, redrawn after each batch.
    type_line(
        &mut shell,
        "SELECT count(*) AS readings_so_far, max(psi) AS top FROM readings;",
    );
    expect(&mut shell, "runs live (complete mode)");
    expect(&mut shell, "| 3               | 7.25 |");
    expect(&mut shell, "1 state rows");
    land(&input, "3.csv", "p1,2026-01-01T10:01:00,9.5\n");
    expect(&mut shell, "| 4               | 9.5 |");
    shell.send_control('c').unwrap();
    expect(&mut shell, "streaming query 'select_2' stopped");
    // Ctrl-C stopped the query, not the shell.
    type_line(&mut shell, "SELECT 'still here' AS alive;");
    expect(&mut shell, "| still here |");
    type_line(&mut shell, "SHOW QUERIES;");
    let _ = expect(&mut shell, "| select_1 ");
    let line = expect(&mut shell, "\n");
    assert!(line.contains("| stopped "), "{line}");
    type_line(&mut shell, "\\q");
    assert_eq!(exit_code(&mut shell), 0);
}

#[test]
fn background_sinks_are_listed_described_stopped_and_their_failures_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::create_dir(tmp.path().join("bad")).unwrap();
    land(&input, "1.csv", "p1,2026-01-01T10:00:00,3.5\n");
    fs::write(
        tmp.path().join("setup.sql"),
        format!(
            "{READINGS}\n\
             CREATE UNBOUNDED EXTERNAL TABLE strict (n BIGINT)\n\
               STORED AS CSV LOCATION 'bad/' OPTIONS ('mode' 'fail_fast');\n"
        ),
    )
    .unwrap();
    let mut shell = shell(tmp.path());
    type_line(&mut shell, "\\i setup.sql");
    expect(&mut shell, "table 'strict' declared");

    type_line(
        &mut shell,
        "CREATE SINK per_pump STORED AS MEMORY OPTIONS ('output_mode' 'complete') AS \
         SELECT pump, count(*) AS n FROM readings GROUP BY pump;",
    );
    expect(
        &mut shell,
        "streaming query 'per_pump' started in the background",
    );
    // The memory table fills in the background while the prompt is free.
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    loop {
        type_line(&mut shell, "SELECT count(*) AS pumps_seen FROM per_pump;");
        let before = expect(&mut shell, "1 row in");
        if before.contains("| 1          |") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the memory sink never filled: {before}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    type_line(&mut shell, "SHOW QUERIES;");
    let _ = expect(&mut shell, "| per_pump ");
    let line = expect(&mut shell, "\n");
    assert!(line.contains("| active "), "{line}");
    type_line(&mut shell, "\\p per_pump");
    expect(&mut shell, "\"lastProgress\": {");
    expect(&mut shell, "\"numRowsTotal\": 1");
    type_line(&mut shell, "\\d");
    let _ = expect(&mut shell, "| readings ");
    let line = expect(&mut shell, "\n");
    assert!(
        line.contains("per_pump"),
        "\\d names the running query: {line}"
    );

    type_line(&mut shell, "STOP QUERY per_pump;");
    expect(&mut shell, "streaming query 'per_pump' stopped");
    type_line(&mut shell, "SHOW QUERIES;");
    let _ = expect(&mut shell, "| per_pump ");
    let line = expect(&mut shell, "\n");
    assert!(line.contains("| stopped "), "{line}");
    type_line(&mut shell, "STOP QUERY per_pump;");
    expect(&mut shell, "is not running");

    // A background query that fails is reported at the next prompt, once.
    type_line(
        &mut shell,
        "CREATE SINK strict_copy STORED AS MEMORY AS SELECT n FROM strict;",
    );
    expect(
        &mut shell,
        "streaming query 'strict_copy' started in the background",
    );
    land(&tmp.path().join("bad"), "1.csv", "1\nnot a number\n");
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    loop {
        type_line(&mut shell, "SELECT 'poll' AS poll;");
        let before = expect(&mut shell, "1 row in");
        if before.contains("streaming query 'strict_copy' failed") {
            assert!(before.contains("at line 2"), "{before}");
            break;
        }
        assert!(Instant::now() < deadline, "no failure reported: {before}");
        std::thread::sleep(Duration::from_millis(300));
    }
    type_line(&mut shell, "SELECT 'again' AS poll;");
    let before = expect(&mut shell, "1 row in");
    assert!(!before.contains("failed"), "reported once: {before}");

    // A new background query; Ctrl-C twice at an empty prompt stops it and quits.
    type_line(
        &mut shell,
        "CREATE SINK last STORED AS MEMORY AS SELECT pump FROM readings;",
    );
    expect(
        &mut shell,
        "streaming query 'last' started in the background",
    );
    shell.send_control('c').unwrap();
    expect(&mut shell, "Ctrl-C again");
    shell.send_control('c').unwrap();
    expect(&mut shell, "stopping 1 streaming query");
    assert_eq!(exit_code(&mut shell), 0);
}

#[test]
fn sigterm_stops_the_queries_after_their_batch_and_exits_with_143() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    land(&input, "1.csv", "p1,2026-01-01T10:00:00,3.5\n");
    let mut shell = shell(tmp.path());
    type_line(&mut shell, READINGS);
    expect(&mut shell, "table 'readings' declared");
    type_line(
        &mut shell,
        "CREATE SINK copy STORED AS CSV LOCATION 'out/' OPTIONS ('checkpoint' 'ckpt') AS \
         SELECT pump, psi FROM readings;",
    );
    expect(
        &mut shell,
        "streaming query 'copy' started in the background",
    );
    let commits = tmp.path().join("ckpt/commits");
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    while !commits.join("0").exists() {
        assert!(Instant::now() < deadline, "batch 0 never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The shell waits at its prompt, inside the line editor.
    shell
        .process_mut()
        .signal(rexpect::process::Signal::SIGTERM)
        .expect("send SIGTERM");
    expect(
        &mut shell,
        "terminated (SIGTERM); stopping 1 streaming query after the current batch",
    );
    shell.exp_eof().expect("the shell ends");
    match shell.process().wait().expect("wait for the shell") {
        WaitStatus::Exited(_, code) => assert_eq!(code, 143),
        other => panic!("the shell did not exit by itself: {other:?}"),
    }
    // Stopped after a batch, not in the middle of one: every planned batch committed.
    let ids = |dir: &str| -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(tmp.path().join("ckpt").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.chars().all(|c| c.is_ascii_digit()))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("offsets"), ids("commits"));
}

#[test]
fn a_background_console_query_prints_above_the_line_being_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    let mut shell = shell(tmp.path());
    type_line(&mut shell, READINGS);
    expect(&mut shell, "table 'readings' declared");
    type_line(
        &mut shell,
        "CREATE SINK echo STORED AS CONSOLE AS SELECT pump, psi FROM readings;",
    );
    expect(
        &mut shell,
        "streaming query 'echo' started in the background",
    );
    // Half a statement typed, then a batch arrives.
    shell.send("SELECT 40 + ").unwrap();
    shell.flush().unwrap();
    expect(&mut shell, "SELECT 40 + ");
    land(&input, "1.csv", "p7,2026-01-01T10:00:00,3.5\n");
    expect(&mut shell, "| p7   | 3.5 |");
    // The line editor draws the prompt and the half-typed line again below the batch,
    // and the statement goes on from there.
    expect(&mut shell, "millrace> SELECT 40 + ");
    type_line(&mut shell, "2 AS answer;");
    expect(&mut shell, "| 42     |");
    type_line(&mut shell, "\\q");
    assert_eq!(exit_code(&mut shell), 0);
}

/// Waits until `path` exists (a checkpoint file written by a background query).
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Accepts the shell's connection to the test's line server.
fn accept_connection(listener: &std::net::TcpListener) -> std::net::TcpStream {
    let (stream, _) = listener.accept().expect("the shell connects");
    stream
}

/// `STOP QUERY` on a socket query closes its connection (its reader thread ends
/// with it), so the same query started again in the same shell is the only writer
/// of its write-ahead log, and every line arrives once.
#[test]
fn a_socket_query_stopped_and_restarted_in_the_shell_has_one_reader() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut shell = shell(tmp.path());
    type_line(
        &mut shell,
        &format!("CREATE UNBOUNDED EXTERNAL TABLE lines STORED AS SOCKET LOCATION '{address}';"),
    );
    expect(&mut shell, "table 'lines' declared");
    let sink = "CREATE SINK copy STORED AS CSV LOCATION 'out/' OPTIONS ('checkpoint' 'ckpt') \
                AS SELECT value FROM lines;";
    type_line(&mut shell, sink);
    expect(
        &mut shell,
        "streaming query 'copy' started in the background",
    );
    let mut first = accept_connection(&listener);
    first.write_all(b"a\nb\n").unwrap();
    wait_for_file(&tmp.path().join("ckpt/commits/0"));
    type_line(&mut shell, "STOP QUERY copy;");
    expect(&mut shell, "streaming query 'copy' stopped");
    first
        .set_read_timeout(Some(Duration::from_millis(TIMEOUT_MS)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(
        matches!(first.read(&mut buf), Ok(0)),
        "the stopped query's reader still holds its connection"
    );

    type_line(&mut shell, sink);
    expect(
        &mut shell,
        "streaming query 'copy' started in the background",
    );
    let mut second = accept_connection(&listener);
    let _ = first.write_all(b"ghost\n");
    second.write_all(b"c\n").unwrap();
    let commits = tmp.path().join("ckpt/commits");
    let deadline = Instant::now() + Duration::from_millis(TIMEOUT_MS);
    let lines = loop {
        let mut lines: Vec<String> = Vec::new();
        for entry in fs::read_dir(tmp.path().join("out")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".csv") && !name.starts_with('.') {
                let text = fs::read_to_string(&path).unwrap();
                lines.extend(text.lines().skip(1).map(str::to_string));
            }
        }
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(commits.join("1").exists() || lines.len() >= 3);
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"], "{lines:?}");
    type_line(&mut shell, "\\q");
    assert_eq!(exit_code(&mut shell), 0);
}
