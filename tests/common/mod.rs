//! Helpers shared by the process-level tests (`crash_recovery`, `restart`,
//! `rate_source`, `socket_source`, `sql_examples`): temporary directories, input files
//! landed atomically, running the `millrace` binary (and killing it), an independent Parquet
//! reader of an output directory, checkpoint inspection, and a seeded RNG.
//!
//! Nothing here asserts on durations: waits poll a condition until a generous deadline
//! and only fail when the deadline passes.

#![allow(dead_code)]

pub mod kafka;
pub mod postgres;
pub mod topic;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

/// Path of the binary under test.
pub const MILLRACE: &str = env!("CARGO_BIN_EXE_millrace");

/// A generous deadline for anything that should take well under a second.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// SIGABRT, what `std::process::abort` (the crash points) ends the process with.
pub const SIGABRT: i32 = 6;
/// SIGKILL, what `Child::kill` sends.
pub const SIGKILL: i32 = 9;

// ---------------------------------------------------------------------------------
// Directories and files

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("millrace-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Creates `root/name` and returns its path.
pub fn make_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Lands a file in a watched directory the way producers must: the bytes go to a
/// hidden temporary in the same directory (ignored by the file source), then it is
/// renamed to `name`, so the source never sees a partial file.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) {
    let tmp = dir.join(format!(".{name}.landing"));
    let target = dir.join(name);
    let mut file = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    drop(file);
    fs::rename(&tmp, &target).unwrap_or_else(|e| panic!("rename to {}: {e}", target.display()));
}

/// JSON lines `{"id": i, "payload": "p<i>"}` for every id.
pub fn json_rows(ids: impl IntoIterator<Item = i64>) -> String {
    ids.into_iter()
        .map(|id| format!("{{\"id\": {id}, \"payload\": \"p{id}\"}}\n"))
        .collect()
}

/// The filter the crash and restart jobs apply: `WHERE id % 7 <> 3`.
pub fn passes_filter(id: i64) -> bool {
    id % 7 != 3
}

/// The ids among `0..written` that the crash and restart jobs should output.
pub fn passing_ids(written: i64) -> impl Iterator<Item = i64> {
    (0..written).filter(|id| passes_filter(*id))
}

/// Writes a SQL script to `dir/name` and returns its path.
pub fn write_job(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, sql).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A JSON file source `events (id BIGINT NOT NULL, payload VARCHAR)` over `input`
/// feeding a Parquet sink at `output` with the checkpoint `checkpoint`.
/// The `, 'trigger' '<t>'` part of a sink's OPTIONS list, or nothing.
pub fn trigger_option(trigger: Option<&str>) -> String {
    trigger
        .map(|t| format!(", 'trigger' '{t}'"))
        .unwrap_or_default()
}

pub fn file_to_parquet_job(
    input: &Path,
    output: &Path,
    checkpoint: &Path,
    max_files_per_trigger: usize,
    trigger: Option<&str>,
) -> String {
    let trigger = trigger_option(trigger);
    format!(
        "CREATE UNBOUNDED EXTERNAL TABLE events (id BIGINT NOT NULL, payload VARCHAR)\n  \
         STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '{max_files_per_trigger}');\n\
         CREATE SINK out STORED AS PARQUET LOCATION '{}/'\n  \
         OPTIONS ('checkpoint' '{}'{trigger})\n  \
         AS SELECT id, payload FROM events WHERE id % 7 <> 3;\n",
        input.display(),
        output.display(),
        checkpoint.display()
    )
}

// ---------------------------------------------------------------------------------
// Running the binary

/// A running `millrace -f job.sql`; killed (SIGKILL) if dropped while still running,
/// so a failing test leaves no process behind.
pub struct Millrace {
    child: Child,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Millrace {
    /// Starts `millrace -f job` with extra environment variables; its standard error
    /// goes to `stderr_path` (standard output is discarded).
    pub fn spawn(job: &Path, envs: &[(&str, &str)], stderr_path: &Path) -> Millrace {
        let stderr = File::create(stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let mut command = Command::new(MILLRACE);
        command
            .arg("-f")
            .arg(job)
            .env_remove("MILLRACE_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the millrace binary");
        Millrace {
            child,
            stderr_path: stderr_path.to_path_buf(),
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote on standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status if the process has ended (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("poll the millrace process");
        }
        self.status
    }

    /// Panics (with the process's standard error) if it has already ended.
    pub fn assert_running(&mut self, context: &str) {
        if let Some(status) = self.try_status() {
            panic!(
                "{context}: millrace ended on its own ({status}); stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Waits for the process to end, up to `timeout` (then kills it and panics).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "millrace did not end within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a successful exit; panics with the standard error otherwise.
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "millrace failed ({status}); stderr:\n{}",
            self.stderr()
        );
    }

    /// `kill -9` (SIGKILL via [`Child::kill`]); returns the exit status, which says
    /// whether the kill or an earlier exit ended the process.
    pub fn kill9(&mut self) -> ExitStatus {
        if self.try_status().is_none() {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("reap the millrace process");
        self.status = Some(status);
        status
    }

    /// Sends SIGTERM with the `kill` command (a graceful stop request).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Millrace {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
/// Runs `job` again and again, killing each run with `kill -9` after a random delay
/// (5 ms up to `base_ms + 10 ms × attempt`: the range widens with every attempt, so on
/// a loaded machine kills still land anywhere from start-up to the end of the job),
/// until at least `kills` runs were killed and one run finished by itself. A run that
/// fails by itself fails the test. Returns the number of kills; each run's standard
/// error goes to `dir/run-<attempt>.err`. The assertions of a crash test never depend
/// on where a kill lands.
pub fn kill9_until_finished(
    job: &Path,
    dir: &Path,
    rng: &mut XorShift,
    kills: usize,
    base_ms: u64,
) -> usize {
    let (mut killed, mut finished) = (0, false);
    for attempt in 0..400 {
        if killed >= kills && finished {
            break;
        }
        let mut run = Millrace::spawn(job, &[], &dir.join(format!("run-{attempt}.err")));
        std::thread::sleep(Duration::from_millis(rng.range(5, base_ms + 10 * attempt)));
        let status = run.kill9();
        if status.success() {
            finished = true;
        } else {
            assert!(
                status.code().is_none(),
                "millrace failed by itself ({status}):\n{}",
                run.stderr()
            );
            killed += 1;
        }
    }
    assert!(killed >= kills, "{killed} kills, finished: {finished}");
    killed
}

/// Runs `millrace -f job` for a random time within `delay_ms` (from `rng`), checks that it is still
/// running, then kills it with `kill -9`, as a crash would; panics if it ended some
/// other way. The crash tests' main move.
pub fn kill9_after_random_delay(
    job: &Path,
    stderr_path: &Path,
    rng: &mut XorShift,
    delay_ms: (u64, u64),
    what: &str,
) {
    let mut process = Millrace::spawn(job, &[], stderr_path);
    let delay = rng.range(delay_ms.0, delay_ms.1);
    std::thread::sleep(Duration::from_millis(delay));
    process.assert_running(&format!("{what} (kill after {delay} ms)"));
    let status = process.kill9();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "{what}: not ended by the kill ({status}); stderr:\n{}",
        process.stderr()
    );
}

/// What a finished `millrace` process printed.
pub struct Finished {
    /// Everything written on standard output.
    pub stdout: String,
    /// Everything written on standard error.
    pub stderr: String,
}

/// Runs `millrace ARGS` with `dir` as working directory, as a user runs it from a
/// scratch directory, and asserts that it exits 0 within `DEADLINE` (it is killed
/// otherwise). Output goes to anonymous files, so a chatty process never blocks on a
/// full pipe.
pub fn run_in(dir: &Path, args: &[&str]) -> Finished {
    let stdout = tempfile::tempfile().expect("a temporary file for standard output");
    let stderr = tempfile::tempfile().expect("a temporary file for standard error");
    let mut child = Command::new(MILLRACE)
        .args(args)
        .current_dir(dir)
        .env_remove("MILLRACE_CRASH_AT")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone a file handle"))
        .stderr(stderr.try_clone().expect("clone a file handle"))
        .spawn()
        .expect("start the millrace binary");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the millrace process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("millrace {args:?} did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |mut file: File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        file.seek(std::io::SeekFrom::Start(0)).expect("rewind");
        file.read_to_string(&mut text).expect("read the output");
        text
    };
    let finished = Finished {
        stdout: read(stdout),
        stderr: read(stderr),
    };
    assert!(
        status.success(),
        "millrace {args:?} failed ({status}); stderr:\n{}",
        finished.stderr
    );
    finished
}

/// Runs `millrace -f job` to its end; returns the exit status and standard error.
pub fn run_to_end(job: &Path, envs: &[(&str, &str)], stderr_path: &Path) -> (ExitStatus, String) {
    let mut run = Millrace::spawn(job, envs, stderr_path);
    let status = run.wait(DEADLINE);
    (status, run.stderr())
}

/// Runs `millrace -f job` and asserts it exits 0.
pub fn run_success(job: &Path, stderr_path: &Path) {
    let (status, stderr) = run_to_end(job, &[], stderr_path);
    assert!(
        status.success(),
        "millrace failed ({status}); stderr:\n{stderr}"
    );
}

/// Runs `millrace -f job` with `MILLRACE_CRASH_AT=point` and asserts that the process
/// indeed aborted at that crash point (and did not exit some other way).
pub fn run_to_crash_point(job: &Path, point: &str, stderr_path: &Path) {
    let (status, stderr) = run_to_end(job, &[("MILLRACE_CRASH_AT", point)], stderr_path);
    assert_crashed_at(status, &stderr, point);
}

/// Asserts that a run ended by aborting at crash point `point`.
pub fn assert_crashed_at(status: ExitStatus, stderr: &str, point: &str) {
    assert!(
        !status.success() && status.signal() == Some(SIGABRT),
        "with MILLRACE_CRASH_AT={point} millrace should abort (SIGABRT), but it ended with \
         {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("crash point '{point}' reached")),
        "the abort was not at crash point '{point}'; stderr:\n{stderr}"
    );
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------
// The independent reader of an output directory

/// Every `*.parquet` file under `dir` that a plain reader (DuckDB, pyarrow, a
/// DataFusion listing table) would read: not hidden (`.`), not under a `_` or `.`
/// directory, sorted by path.
pub fn visible_parquet_files(dir: &Path) -> Vec<PathBuf> {
    visible_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// Every file under `dir` a plain reader would list (not hidden, not in `_`/`.` dirs).
pub fn visible_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_visible(dir, &mut out);
    out.sort();
    out
}

fn collect_visible(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_visible(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Reads every visible Parquet file of `dir` with the `parquet` crate directly.
pub fn read_parquet_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for path in visible_parquet_files(dir) {
        batches.extend(read_parquet_file(&path));
    }
    batches
}

/// Reads one Parquet file with the `parquet` crate directly.
pub fn read_parquet_file(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{} is not a readable Parquet file: {e}", path.display()))
        .build()
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    reader
        .map(|b| b.unwrap_or_else(|e| panic!("read a batch of {}: {e}", path.display())))
        .collect()
}

/// Column `name` of every batch as i64 (integers and timestamps are cast).
pub fn i64_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for batch in batches {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column '{name}' in {:?}", batch.schema()));
        let column = cast(column.as_ref(), &DataType::Int64).expect("cast to Int64");
        let column = column.as_primitive::<Int64Type>();
        assert_eq!(column.null_count(), 0, "column '{name}' has nulls");
        out.extend(column.values().iter().copied());
    }
    out
}

/// Column `name` of every batch as strings (nulls as `None`).
pub fn string_column(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column '{name}' in {:?}", batch.schema()));
        let column = cast(column.as_ref(), &DataType::Utf8).expect("cast to Utf8");
        let column = column.as_string::<i32>();
        out.extend(column.iter().map(|v| v.map(str::to_string)));
    }
    out
}

/// Asserts that `actual` holds every value of `expected` exactly once and nothing
/// else; the failure message lists missing values, duplicated ones and unexpected ones.
pub fn assert_exactly_once<T: Ord + Clone + std::fmt::Debug>(
    what: &str,
    actual: impl IntoIterator<Item = T>,
    expected: impl IntoIterator<Item = T>,
) {
    // value -> (times seen in actual, times expected)
    let mut counts: BTreeMap<T, (u64, u64)> = BTreeMap::new();
    let mut total = 0u64;
    for value in actual {
        counts.entry(value).or_default().0 += 1;
        total += 1;
    }
    let mut expected_total = 0u64;
    for value in expected {
        counts.entry(value).or_default().1 += 1;
        expected_total += 1;
    }
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    let mut unexpected = Vec::new();
    for (value, (seen, wanted)) in counts {
        if wanted == 0 {
            unexpected.push(value);
        } else if seen < wanted {
            missing.push(value);
        } else if seen > wanted {
            duplicated.push((value, seen));
        }
    }
    fn show<X: std::fmt::Debug>(v: &[X]) -> String {
        let shown: Vec<_> = v.iter().take(20).collect();
        format!(
            "{} {shown:?}{}",
            v.len(),
            if v.len() > 20 { " ..." } else { "" }
        )
    }
    assert!(
        missing.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
        "{what}: {total} values for {expected_total} expected; missing: {}; duplicated \
         (value, copies): {}; unexpected: {}",
        show(&missing),
        show(&duplicated),
        show(&unexpected)
    );
}

/// Files whose name ends in `.tmp` that a plain reader of `dir` would see.
pub fn visible_tmp_files(dir: &Path) -> Vec<PathBuf> {
    visible_files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

// ---------------------------------------------------------------------------------
// The checkpoint

/// The numeric entries (batch ids) of a batch-log directory, ascending.
pub fn log_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The progress reports in `<checkpoint>/progress.jsonl`; a torn last line (a process
/// killed mid-append) is skipped.
pub fn progress_reports(checkpoint: &Path) -> Vec<Value> {
    fs::read_to_string(checkpoint.join("progress.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

// ---------------------------------------------------------------------------------
// Randomness

/// A tiny xorshift64* generator: reproducible from its seed.
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The seed for a randomized test: `MILLRACE_TEST_SEED` if set, else the clock;
/// printed so that a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("MILLRACE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (rerun with MILLRACE_TEST_SEED={seed})");
    seed
}

/// A JSON-lines file of pump readings `(pump, ts, seq, pressure)`, landed atomically
/// (the input of the database and Delta sink tests).
pub fn sensor_file(dir: &Path, name: &str, rows: &[(&str, &str, i64, f64)]) {
    let text: String = rows
        .iter()
        .map(|(pump, ts, seq, pressure)| {
            format!(
                "{{\"pump\": \"{pump}\", \"ts\": \"{ts}\", \"seq\": {seq}, \"pressure\": {pressure}}}\n"
            )
        })
        .collect();
    write_atomic(dir, name, text.as_bytes());
}

/// A reading as [`sensor_file`] writes it.
pub type Reading = (&'static str, &'static str, i64, f64);

/// `files` files `f00.json`, `f01.json`, ... of 5 random readings each (pumps p1 to p3,
/// one timestamp), landed in `input`; returns each file's readings.
pub fn random_sensor_files(input: &Path, rng: &mut XorShift, files: usize) -> Vec<Vec<Reading>> {
    let pumps = ["p1", "p2", "p3", "p4"];
    (0..files)
        .map(|file| {
            let rows: Vec<Reading> = (0..5)
                .map(|_| {
                    (
                        pumps[rng.range(0, 3) as usize],
                        "2026-01-01T10:00:00",
                        rng.range(1, 100) as i64,
                        rng.range(0, 40) as f64 / 4.0,
                    )
                })
                .collect();
            sensor_file(input, &format!("f{file:02}.json"), &rows);
            rows
        })
        .collect()
}

/// Runs `scripts/delta-python.sh` (the independent Delta reader and writer, installed
/// the first time) with `stdin`; fails the test unless it succeeds; returns its output.
pub fn delta_python(args: &[&str], stdin: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/delta-python.sh");
    let mut child = Command::new(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/delta-python.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "delta-python.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `files` JSON-lines files `f-000.json`, ... of 8 events `(k, ts, v)` each for the
/// windowed crash tests: event time moves about 2 s per file, rows up to 9 s early (some
/// between the two watermarks or late for a 5-second delay) and 3 s ahead.
pub fn windowed_event_files(input: &Path, rng: &mut XorShift, files: u64) {
    for file in 0..files {
        let mut text = String::new();
        for _ in 0..8 {
            let seconds = (file * 2 + 9 + rng.range(0, 12)) as i64 - 9;
            let (minute, second) = (seconds / 60, seconds % 60);
            let key = ["a", "b", "c"][rng.range(0, 2) as usize];
            text.push_str(&format!(
                "{{\"k\": \"{key}\", \"ts\": \"2026-01-01T10:{minute:02}:{second:02}\", \"v\": {}}}\n",
                rng.range(1, 100)
            ));
        }
        write_atomic(input, &format!("f-{file:03}.json"), text.as_bytes());
    }
}
