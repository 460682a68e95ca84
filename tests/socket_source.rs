//! The socket source through the `millrace` binary into a Parquet sink, against a TCP
//! server run by the test: lines arrive in the output exactly once; lines received
//! (and written to the WAL) but not yet in a batch when the process is killed with
//! `kill -9` are delivered after the restart, exactly once; a missing server is
//! reported clearly.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

fn socket_job(root: &Path, name: &str, address: &str, trigger: Option<&str>) -> PathBuf {
    let trigger = trigger_option(trigger);
    write_job(
        root,
        name,
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE lines STORED AS SOCKET LOCATION '{address}';\n\
             CREATE SINK out STORED AS PARQUET LOCATION '{}/'\n  \
             OPTIONS ('checkpoint' '{}'{trigger})\n  AS SELECT value FROM lines;\n",
            root.join("out").display(),
            root.join("ckpt").display()
        ),
    )
}

/// Accepts the next connection on `listener`, failing the test (with the process's
/// standard error) if none comes before the deadline or the process ends first.
fn accept(listener: &TcpListener, run: &mut Millrace) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                run.assert_running("waiting for millrace to connect");
                assert!(Instant::now() < deadline, "millrace never connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn line(i: usize) -> String {
    format!("line-{i:05} with, some \"text\"")
}

/// Sends lines `range` as one write.
fn send(stream: &mut TcpStream, range: std::ops::Range<usize>) {
    let text: String = range.map(|i| format!("{}\n", line(i))).collect();
    stream.write_all(text.as_bytes()).expect("send lines");
    stream.flush().unwrap();
}

fn output_lines(root: &Path) -> Vec<String> {
    string_column(&read_parquet_dir(&root.join("out")), "value")
        .into_iter()
        .map(|v| v.expect("value is never null"))
        .collect()
}

#[test]
fn lines_arrive_exactly_once() {
    let root = temp_dir();
    let root = root.path();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let job = socket_job(root, "job.sql", &address, None);
    let mut run = Millrace::spawn(&job, &[], &root.join("run.err"));
    let mut stream = accept(&listener, &mut run);
    const N: usize = 300;
    for burst in 0..6 {
        send(&mut stream, burst * 50..(burst + 1) * 50);
        std::thread::sleep(Duration::from_millis(40));
    }
    wait_until("all lines in the output", DEADLINE, || {
        run.assert_running("while lines arrive");
        output_lines(root).len() >= N
    });
    run.sigterm();
    let status = run.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", run.stderr());
    drop(stream);
    assert_exactly_once("socket lines", output_lines(root), (0..N).map(line));
    eprintln!(
        "socket: {N} lines in {} batches",
        log_ids(&root.join("ckpt/commits")).len()
    );
}

#[test]
fn lines_in_the_wal_survive_kill_minus_nine() {
    let root = temp_dir();
    let root = root.path();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();

    // The first batch runs at start (with no data, unless the lines beat it); the next
    // would come in an hour.
    let hourly = socket_job(root, "hourly.sql", &address, Some("1 hour"));
    let mut run = Millrace::spawn(&hourly, &[], &root.join("hourly.err"));
    let mut stream = accept(&listener, &mut run);
    std::thread::sleep(Duration::from_millis(300));
    const N: usize = 200;
    for burst in 0..4 {
        send(&mut stream, burst * 50..(burst + 1) * 50);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every line is received: in the WAL, or already in the output if the first batch
    // took it (its WAL segment is then deleted).
    wait_until("all lines in the WAL (or output)", DEADLINE, || {
        run.assert_running("while lines arrive");
        let mut received: BTreeSet<String> = wal_contents(root).into_iter().collect();
        received.extend(output_lines(root));
        (0..N).all(|i| received.contains(&line(i)))
    });
    let status = run.kill9();
    assert!(!status.success());
    let batches_before = log_ids(&root.join("ckpt/commits")).len();
    drop(stream);

    // The restart replays the WAL; the server accepts the new connection and closes it.
    let drain = socket_job(root, "drain.sql", &address, Some("available_now"));
    let mut run = Millrace::spawn(&drain, &[], &root.join("drain.err"));
    drop(accept(&listener, &mut run));
    run.wait_success(DEADLINE);
    assert_exactly_once(
        "socket lines after kill -9",
        output_lines(root),
        (0..N).map(line),
    );
    eprintln!(
        "socket WAL replay: {N} lines; {batches_before} batches committed before the kill, {} after",
        log_ids(&root.join("ckpt/commits")).len()
    );
}

/// The complete lines in the WAL segments under `<checkpoint>/sources/lines/`, in order.
fn wal_contents(root: &Path) -> Vec<String> {
    let dir = root.join("ckpt/sources/lines");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut segments: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    segments.sort();
    let mut lines = Vec::new();
    for segment in segments {
        // A segment can be deleted (its batch committed) while we list.
        let Ok(text) = fs::read_to_string(&segment) else {
            continue;
        };
        let complete = text.rfind('\n').map_or(0, |p| p + 1);
        lines.extend(text[..complete].lines().map(str::to_string));
    }
    lines
}

/// Aborts at `point` in the first batch that has lines, restarts with
/// `available_now`: the batch is replayed from the WAL with the same offsets, and
/// every line the WAL held at the crash is in the output exactly once.
fn crash_in_a_batch_then_replay(point: &str) {
    let root = temp_dir();
    let root = root.path();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // The first batch runs at start, with no lines; the lines arrive before the next.
    let job = socket_job(root, "job.sql", &address, Some("1 second"));
    let mut run = Millrace::spawn(
        &job,
        &[("MILLRACE_CRASH_AT", point)],
        &root.join("crash.err"),
    );
    let mut stream = accept(&listener, &mut run);
    const N: usize = 120;
    send(&mut stream, 0..N / 2);
    send(&mut stream, N / 2..N);
    let status = run.wait(DEADLINE);
    assert_crashed_at(status, &run.stderr(), point);
    drop(stream);

    // Lines still in the kernel's buffers at the abort may be lost (TCP cannot ask for
    // them again); every line the WAL holds must be delivered.
    let in_wal = wal_contents(root);
    let sent: Vec<String> = (0..N).map(line).collect();
    assert!(
        sent.starts_with(&in_wal),
        "the WAL does not hold a prefix of the lines sent: {in_wal:?}"
    );
    let offsets_0 = root.join("ckpt/offsets/0");
    let offsets_before = fs::read(&offsets_0).expect("batch 0 was planned before the crash");
    let planned = read_json(&offsets_0)["sources"]["lines"]["lines"]
        .as_u64()
        .expect("socket offset") as usize;
    assert!(
        planned > 0 && planned <= in_wal.len(),
        "batch 0 planned {planned} lines, the WAL holds {}",
        in_wal.len()
    );

    let drain = socket_job(root, "drain.sql", &address, Some("available_now"));
    let mut run = Millrace::spawn(&drain, &[], &root.join("drain.err"));
    drop(accept(&listener, &mut run));
    run.wait_success(DEADLINE);
    assert_eq!(
        fs::read(&offsets_0).unwrap(),
        offsets_before,
        "offsets/0 changed on restart after a crash at {point}"
    );
    let reports = progress_reports(&root.join("ckpt"));
    let batch_0: Vec<_> = reports.iter().filter(|r| r["batchId"] == 0).collect();
    assert_eq!(
        batch_0.len(),
        usize::from(point != "after-commit"),
        "batch 0 is re-run after a crash at {point} unless it had committed"
    );
    assert_exactly_once(
        &format!("socket lines after a crash at {point}"),
        output_lines(root),
        in_wal,
    );
}

#[test]
fn crash_after_offsets_replays_the_lines() {
    crash_in_a_batch_then_replay("after-offsets");
}

#[test]
fn crash_after_sink_manifest_replays_the_lines() {
    crash_in_a_batch_then_replay("after-sink-manifest");
}

#[test]
fn crash_after_sink_replays_the_lines() {
    crash_in_a_batch_then_replay("after-sink");
}

#[test]
fn crash_after_commit_keeps_the_lines_once() {
    crash_in_a_batch_then_replay("after-commit");
}

/// Sends bursts of lines from `first` on until the connection breaks or `stop` is
/// set; returns the next line number.
fn send_until_broken(
    mut stream: TcpStream,
    first: usize,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut rng = XorShift::new(seed);
        let mut next = first;
        while !stop.load(Ordering::SeqCst) {
            let burst = rng.range(1, 20) as usize;
            let text: String = (next..next + burst)
                .map(|i| format!("{}\n", line(i)))
                .collect();
            if stream.write_all(text.as_bytes()).is_err() {
                break;
            }
            next += burst;
            std::thread::sleep(Duration::from_millis(rng.range(1, 15)));
        }
        next
    })
}

#[test]
fn random_kills_never_lose_a_wal_line_nor_duplicate_one() {
    let seed = test_seed("socket_source");
    let mut rng = XorShift::new(seed);
    let root = temp_dir();
    let root = root.path();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let job = socket_job(root, "job.sql", &address, None);
    let mut next = 0;
    let mut required = BTreeSet::new();
    for round in 0..12 {
        let mut run = Millrace::spawn(&job, &[], &root.join(format!("run-{round}.err")));
        let stream = accept(&listener, &mut run);
        let stop = Arc::new(AtomicBool::new(false));
        let sender = send_until_broken(stream, next, stop.clone(), rng.next_u64());
        let delay = rng.range(30, 400);
        std::thread::sleep(Duration::from_millis(delay));
        run.assert_running(&format!("round {round} (kill after {delay} ms)"));
        run.kill9();
        stop.store(true, Ordering::SeqCst);
        next = sender.join().expect("sender");
        // What the WAL holds now was received by millrace: it must all be delivered.
        required.extend(wal_contents(root));
    }
    let drain = socket_job(root, "drain.sql", &address, Some("available_now"));
    let mut run = Millrace::spawn(&drain, &[], &root.join("drain.err"));
    drop(accept(&listener, &mut run));
    run.wait_success(DEADLINE);

    let output = output_lines(root);
    let sent: BTreeSet<String> = (0..next).map(line).collect();
    let mut seen = BTreeSet::new();
    for value in &output {
        assert!(seen.insert(value), "line delivered twice: {value}");
        assert!(sent.contains(value), "line never sent: {value}");
    }
    let lost: Vec<_> = required.iter().filter(|l| !seen.contains(l)).collect();
    assert!(
        lost.is_empty(),
        "{} lines that were in the WAL are missing from the output: {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    eprintln!(
        "socket kills: {next} lines sent, {} in the WAL at some kill, {} delivered",
        required.len(),
        output.len()
    );
}

#[test]
fn no_server_is_a_clear_error() {
    let root = temp_dir();
    let root = root.path();
    // A port that was free a moment ago, with nothing listening on it.
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let job = socket_job(root, "job.sql", &address, Some("available_now"));
    let (status, stderr) = run_to_end(&job, &[], &root.join("run.err"));
    assert!(
        !status.success(),
        "millrace ran without a server; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot connect to socket source {address}")),
        "the error should name the unreachable address; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a missing server must not panic; stderr:\n{stderr}"
    );
}
