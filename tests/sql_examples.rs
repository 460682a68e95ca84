//! The scripts of `sql/examples/` run as a user runs them: generate the input in a
//! scratch directory (`millrace generate-sensors`, `millrace generate-events`, or text
//! files written here), then `millrace -f <script>` in that directory. Their output —
//! console tables parsed back from standard output, Parquet files read with the
//! `parquet` crate — is checked against the same computation done here in plain Rust
//! from the input files: windows, watermark and word splitting included.
//!
//! The input is random (seed printed; rerun with `MILLRACE_TEST_SEED`), the file-based
//! scripts use `'trigger' 'available_now'` and one file per batch, so what each batch
//! reads is known and nothing depends on timing. `socket_word_count.sql` reads from a
//! TCP server run here (its address substituted for the script's `localhost:9999`);
//! its batches cut the lines wherever they happen to, so each table it prints is
//! checked against the counts after *some* number of lines, never fewer than the
//! table before. `kafka_wordcount.sql` runs against the Apache Kafka broker of this binary (its
//! address substituted for `127.0.0.1:9092`), its output topic read back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::*;

/// `sql/examples/<name>` as an absolute path (the scripts run in a scratch directory).
fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sql")
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

/// The files of `dir` ending in `extension`, by name (the order the generators wrote
/// them in, so the order the file source reads them in).
fn files_in(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Milliseconds since the Unix epoch of a calendar date and time.
fn epoch_ms(year: i32, month: u32, day: u32, h: u32, m: u32, s: u32, ms: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_milli_opt(h, m, s, ms))
        .unwrap_or_else(|| panic!("not a date: {year}-{month}-{day} {h}:{m}:{s}.{ms}"))
        .and_utc()
        .timestamp_millis()
}

/// A timestamp as Arrow displays it (`2014-03-10T00:01:30`), in ms since the epoch.
fn displayed_ms(text: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("'{text}' is not a displayed timestamp: {e}"))
        .and_utc()
        .timestamp_millis()
}

// ---------------------------------------------------------------------------------
// The console sink's output, parsed back

/// One `Batch: N` table a console sink printed.
#[derive(Debug)]
struct ConsoleBatch {
    id: u64,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// An `only showing top N rows` line followed the table.
    truncated: bool,
}

impl ConsoleBatch {
    /// Column `name` of every row.
    fn column(&self, name: &str) -> Vec<&str> {
        let index = self
            .header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| {
                panic!("batch {}: no column '{name}' in {:?}", self.id, self.header)
            });
        self.rows.iter().map(|row| row[index].as_str()).collect()
    }
}

/// Every table of a console sink's output, in the order printed.
fn console_batches(stdout: &str) -> Vec<ConsoleBatch> {
    let mut batches: Vec<ConsoleBatch> = Vec::new();
    for line in stdout.lines() {
        if let Some(id) = line.strip_prefix("Batch: ") {
            batches.push(ConsoleBatch {
                id: id.trim().parse().expect("a batch id"),
                header: Vec::new(),
                rows: Vec::new(),
                truncated: false,
            });
            continue;
        }
        let Some(batch) = batches.last_mut() else {
            continue;
        };
        if line.starts_with("only showing top") {
            batch.truncated = true;
        } else if line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect();
            if batch.header.is_empty() {
                batch.header = cells;
            } else {
                batch.rows.push(cells);
            }
        }
    }
    batches
}

/// Asserts one untruncated table per input file, numbered from 0.
fn assert_one_full_table_per_file(batches: &[ConsoleBatch], files: usize, stdout: &str) {
    let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
    assert_eq!(
        ids,
        (0..files as u64).collect::<Vec<_>>(),
        "one batch per file expected; stdout:\n{stdout}"
    );
    for batch in batches {
        assert!(
            !batch.truncated,
            "batch {} was cut at the script's num_rows: the test input is too large",
            batch.id
        );
    }
}

// ---------------------------------------------------------------------------------
// pump_pressure_windows.sql

/// max, min, sum and count of one pump's pressure in one window.
#[derive(Debug, Clone, Copy)]
struct Pressure {
    max: f64,
    min: f64,
    sum: f64,
    count: u64,
}

impl Pressure {
    fn add(&mut self, psi: f64) {
        self.max = self.max.max(psi);
        self.min = self.min.min(psi);
        self.sum += psi;
        self.count += 1;
    }
}

const PRESSURE_SIZE_MS: i64 = 60_000;
const PRESSURE_SLIDE_MS: i64 = 30_000;

/// `(pump, event time in ms, PressureLbs)` of every line of a generated sensor file
/// (`COHUTTA,3/10/14,0:01:15,...,PressureLbs,ChlorinePPM`), read field by field.
fn sensor_readings(path: &Path) -> Vec<(String, i64, f64)> {
    read(path)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 9, "{}: {line}", path.display());
            let number = |s: &str| -> u32 { s.parse().unwrap_or_else(|_| panic!("{line}")) };
            let date: Vec<u32> = fields[1].split('/').map(number).collect();
            let time: Vec<u32> = fields[2].split(':').map(number).collect();
            let at = epoch_ms(
                2000 + date[2] as i32,
                date[0],
                date[1],
                time[0],
                time[1],
                time.get(2).copied().unwrap_or(0),
                0,
            );
            (
                fields[0].to_string(),
                at,
                fields[7].parse().expect("PressureLbs"),
            )
        })
        .collect()
}

/// The starts of the sliding windows (60 s every 30 s, aligned to the epoch) holding `at`.
fn sliding_window_starts(at: i64) -> impl Iterator<Item = i64> {
    let last = at.div_euclid(PRESSURE_SLIDE_MS) * PRESSURE_SLIDE_MS;
    (0..PRESSURE_SIZE_MS / PRESSURE_SLIDE_MS).map(move |k| last - k * PRESSURE_SLIDE_MS)
}

/// `millrace generate-sensors data` in `dir`: `files` CSV files of `minutes` of
/// readings each, `per_minute` readings per pump and minute.
fn generate_sensors(dir: &Path, files: u32, minutes: u32, per_minute: u32, seed: u64) {
    run_in(
        dir,
        &[
            "generate-sensors",
            "data",
            "--files",
            &files.to_string(),
            "--minutes",
            &minutes.to_string(),
            "--readings-per-minute",
            &per_minute.to_string(),
            "--seed",
            &seed.to_string(),
        ],
    );
}

#[test]
fn pump_pressure_windows_prints_the_changed_windows_with_their_values_so_far() {
    let seed = test_seed("pump_pressure_windows");
    let dir = temp_dir();
    generate_sensors(dir.path(), 3, 2, 4, seed);
    let files = files_in(&dir.path().join("data/sensors"), "csv");
    assert_eq!(files.len(), 3);

    let out = run_in(dir.path(), &["-f", &example("pump_pressure_windows.sql")]);
    let batches = console_batches(&out.stdout);
    assert_one_full_table_per_file(&batches, files.len(), &out.stdout);

    // Update mode: batch i prints the windows file i touched, each with its values over
    // files 0..=i.
    let mut so_far: BTreeMap<(String, i64), Pressure> = BTreeMap::new();
    for (file, batch) in files.iter().zip(&batches) {
        let mut touched = BTreeSet::new();
        for (pump, at, psi) in sensor_readings(file) {
            for start in sliding_window_starts(at) {
                so_far
                    .entry((pump.clone(), start))
                    .or_insert(Pressure {
                        max: f64::MIN,
                        min: f64::MAX,
                        sum: 0.0,
                        count: 0,
                    })
                    .add(psi);
                touched.insert((pump.clone(), start));
            }
        }
        let columns = [
            "pump",
            "window_start",
            "window_end",
            "max_psi",
            "min_psi",
            "avg_psi",
            "readings",
        ]
        .map(|name| batch.column(name));
        let mut printed = BTreeSet::new();
        for row in 0..batch.rows.len() {
            let [pump, start, end, max, min, avg, readings] = columns.each_ref().map(|c| c[row]);
            let key = (pump.to_string(), displayed_ms(start));
            assert!(
                printed.insert(key.clone()),
                "batch {}: {key:?} printed twice",
                batch.id
            );
            let Some(expected) = so_far.get(&key) else {
                panic!("batch {}: {key:?} holds no reading", batch.id);
            };
            let what = format!("batch {}, {pump} from {start}", batch.id);
            assert_eq!(displayed_ms(end), key.1 + PRESSURE_SIZE_MS, "{what}: end");
            assert_eq!(max.parse::<f64>().unwrap(), expected.max, "{what}: max");
            assert_eq!(min.parse::<f64>().unwrap(), expected.min, "{what}: min");
            assert_eq!(
                readings.parse::<u64>().unwrap(),
                expected.count,
                "{what}: count"
            );
            let mean = expected.sum / expected.count as f64;
            let avg: f64 = avg.parse().unwrap();
            assert!(
                (avg - mean).abs() <= 1e-9 * mean.abs().max(1.0),
                "{what}: avg {avg}, expected {mean}"
            );
        }
        assert_eq!(
            printed, touched,
            "batch {}: the printed windows are not the ones its file changed",
            batch.id
        );
    }
    // Four readings a minute: a full window holds four per pump, so the aggregates are
    // not single readings in disguise.
    assert!(so_far.values().any(|p| p.count == 4 && p.max > p.min));
}

// ---------------------------------------------------------------------------------
// sensor_counts.sql

const COUNT_WINDOW_MS: i64 = 10_000;
const WATERMARK_DELAY_MS: i64 = 5_000;

/// `(sensor, event time in ms)` of every line of a generated event file
/// (`sensor-3,2026-01-01 00:00:07.250,21.37`), read field by field.
fn sensor_events(path: &Path) -> Vec<(String, i64)> {
    read(path)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 3, "{}: {line}", path.display());
            let (date, time) = fields[1].split_once(' ').expect("date and time");
            let number = |s: &str| -> u32 { s.parse().unwrap_or_else(|_| panic!("{line}")) };
            let date: Vec<u32> = date.split('-').map(number).collect();
            let (hms, ms) = time.split_once('.').expect("milliseconds");
            let hms: Vec<u32> = hms.split(':').map(number).collect();
            let at = epoch_ms(
                date[0] as i32,
                date[1],
                date[2],
                hms[0],
                hms[1],
                hms[2],
                number(ms),
            );
            (fields[0].to_string(), at)
        })
        .collect()
}

/// What the watermark rules make of the event files read one per batch.
struct WindowedCounts {
    /// `(sensor, window start ms, window end ms, events)` of every final window.
    emitted: Vec<(String, i64, i64, i64)>,
    /// Events dropped as late.
    dropped_events: u64,
    /// Late `(sensor, window)` groups dropped per batch (how the engine counts).
    dropped_groups: u64,
    /// The watermark of every batch (ms), including the final one without data.
    watermarks: Vec<Option<i64>>,
}

/// Spark's rules, batch by batch: the watermark of batch N is the largest event time
/// of batches before N minus the delay (none for batch 0); an event whose window ended
/// at or before the *previous* batch's watermark (Spark's watermark for late events) is
/// dropped; windows that ended at or before the final watermark are emitted once.
fn windowed_counts(files: &[PathBuf]) -> WindowedCounts {
    let mut counts: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut newest: Option<i64> = None;
    let (mut dropped_events, mut dropped_groups) = (0, 0);
    let mut watermarks = Vec::new();
    for file in files {
        let watermark = newest.map(|t| t - WATERMARK_DELAY_MS);
        let late_events = watermarks.last().copied().flatten();
        watermarks.push(watermark);
        let events = sensor_events(file);
        let mut late_groups = BTreeSet::new();
        for (sensor, at) in &events {
            let start = at.div_euclid(COUNT_WINDOW_MS) * COUNT_WINDOW_MS;
            if late_events.is_some_and(|w: i64| start + COUNT_WINDOW_MS <= w) {
                dropped_events += 1;
                late_groups.insert((sensor.clone(), start));
            } else {
                *counts.entry((sensor.clone(), start)).or_default() += 1;
            }
        }
        dropped_groups += late_groups.len() as u64;
        newest = events.iter().map(|(_, at)| *at).chain(newest).max();
    }
    let watermark = newest.expect("events were written") - WATERMARK_DELAY_MS;
    watermarks.push(Some(watermark));
    let emitted = counts
        .into_iter()
        .filter(|((_, start), _)| start + COUNT_WINDOW_MS <= watermark)
        .map(|((sensor, start), n)| (sensor, start, start + COUNT_WINDOW_MS, n))
        .collect();
    WindowedCounts {
        emitted,
        dropped_events,
        dropped_groups,
        watermarks,
    }
}

#[test]
fn sensor_counts_writes_every_final_window_once_without_the_events_the_watermark_passed() {
    let seed = test_seed("sensor_counts");
    let dir = temp_dir();
    run_in(
        dir.path(),
        &[
            "generate-events",
            "data",
            "--files",
            "8",
            // 5 seconds per file: late events (up to 30 s early) then reach behind
            // the previous batch's watermark, where they are dropped.
            "--seconds",
            "5",
            "--events-per-second",
            "20",
            "--sensors",
            "4",
            "--seed",
            &seed.to_string(),
        ],
    );
    let files = files_in(&dir.path().join("data/events"), "csv");
    assert_eq!(files.len(), 8);
    let expected = windowed_counts(&files);
    // About one event in twenty is late; some of those must fall behind the watermark,
    // or the watermark would go untested.
    assert!(expected.dropped_events > 0, "no event was late enough");
    assert!(!expected.emitted.is_empty());

    run_in(dir.path(), &["-f", &example("sensor_counts.sql")]);

    let written = read_parquet_dir(&dir.path().join("out/sensor_counts"));
    let ms = |name: &str| -> Vec<i64> {
        i64_column(&written, name)
            .into_iter()
            .map(|ns| ns / 1_000_000)
            .collect()
    };
    let (starts, ends) = (ms("window_start"), ms("window_end"));
    let events = i64_column(&written, "events");
    let actual = string_column(&written, "sensor")
        .into_iter()
        .enumerate()
        .map(|(i, sensor)| (sensor.expect("a sensor"), starts[i], ends[i], events[i]));
    assert_exactly_once("windows written", actual, expected.emitted);

    // One batch per file, then one without data that the final watermark triggers.
    let progress = progress_reports(&dir.path().join("checkpoints/sensor_counts"));
    let watermarks: Vec<Option<i64>> = progress
        .iter()
        .map(|p| {
            p["eventTime"]["watermark"].as_str().map(|w| {
                chrono::DateTime::parse_from_rfc3339(w)
                    .unwrap_or_else(|e| panic!("watermark '{w}': {e}"))
                    .timestamp_millis()
            })
        })
        .collect();
    assert_eq!(
        watermarks, expected.watermarks,
        "the watermark of each batch"
    );
    let dropped: u64 = progress
        .iter()
        .map(|p| {
            p["stateOperators"][0]["numRowsDroppedByWatermark"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        dropped, expected.dropped_groups,
        "late (sensor, window) groups reported by the progress reports"
    );
}

// ---------------------------------------------------------------------------------
// word_count.sql

/// Words with their spellings in the input; more than the 20 the script shows, so the
/// top 20 has to be chosen.
const VOCABULARY: [&str; 32] = [
    "the", "pump", "pressure", "stream", "batch", "window", "state", "sink", "water", "flow",
    "valve", "seal", "don't", "it's", "o'clock", "2026", "v2", "late", "event", "count", "word",
    "line", "file", "query", "arrow", "fusion", "mill", "race", "river", "wheel", "gear", "shaft",
];

/// Between words: spaces, punctuation, tabs; none of them is part of a word.
const SEPARATORS: [&str; 8] = [" ", "  ", ", ", ". ", " - ", "; ", "\t", " (x) "];

/// A line of text: words from the vocabulary, frequent ones more often, in random case.
fn text_line(rng: &mut XorShift) -> String {
    let mut line = String::new();
    let last = VOCABULARY.len() as u64 - 1;
    for i in 0..rng.range(0, 12) {
        if i > 0 {
            line.push_str(SEPARATORS[rng.range(0, SEPARATORS.len() as u64 - 1) as usize]);
        }
        // The product of two uniform draws favours the first words (a skewed corpus).
        let word = VOCABULARY[(rng.range(0, last) * rng.range(0, last) / last) as usize];
        match rng.range(0, 2) {
            0 => line.push_str(word),
            1 => line.push_str(&word.to_uppercase()),
            _ => {
                let mut chars = word.chars();
                line.extend(chars.next().map(|c| c.to_ascii_uppercase()));
                line.extend(chars);
            }
        }
    }
    line
}

/// Words as the script defines them: runs of a-z, 0-9 and `'` of the lower-cased line.
fn words(line: &str) -> Vec<String> {
    line.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The 20 most frequent words of `counts` as the scripts show them: by count, most
/// first, then by word.
fn top_words(counts: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    let mut top: Vec<(String, i64)> = counts.clone().into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(20);
    top
}

/// The `(word, count)` rows a console batch printed.
fn printed_counts(batch: &ConsoleBatch) -> Vec<(String, i64)> {
    batch
        .column("word")
        .into_iter()
        .zip(batch.column("count"))
        .map(|(word, n)| (word.to_string(), n.parse().expect("a count")))
        .collect()
}

#[test]
fn word_count_shows_the_top_words_of_everything_read_after_every_batch() {
    let seed = test_seed("word_count");
    let mut rng = XorShift::new(seed);
    let dir = temp_dir();
    let text_dir = make_dir(dir.path(), "data/text");
    let mut contents = Vec::new();
    for file in 0..4 {
        let lines: Vec<String> = (0..40).map(|_| text_line(&mut rng)).collect();
        let text = lines.join("\n") + "\n";
        write_atomic(&text_dir, &format!("part-{file}.txt"), text.as_bytes());
        contents.push(text);
    }

    let out = run_in(dir.path(), &["-f", &example("word_count.sql")]);
    let batches = console_batches(&out.stdout);
    assert_one_full_table_per_file(&batches, contents.len(), &out.stdout);

    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for (text, batch) in contents.iter().zip(&batches) {
        for word in text.lines().flat_map(words) {
            *counts.entry(word).or_default() += 1;
        }
        assert_eq!(
            printed_counts(batch),
            top_words(&counts),
            "batch {}: the top 20 words so far",
            batch.id
        );
    }
    assert!(counts.len() > 20, "the top 20 chose nothing");
}

// ---------------------------------------------------------------------------------
// socket_word_count.sql, against a TCP server run here

/// A `millrace` process, killed if the test ends before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    /// Fails the test (with the process's standard error) if the process has ended.
    fn assert_running(&mut self, stderr: &Path, context: &str) {
        if let Some(status) = self.0.try_wait().expect("poll the millrace process") {
            panic!(
                "millrace ended ({status}) while {context}; stderr:\n{}",
                fs::read_to_string(stderr).unwrap_or_default()
            );
        }
    }
}

#[test]
fn socket_word_count_shows_the_top_words_of_the_lines_received_so_far() {
    let seed = test_seed("socket_word_count");
    let mut rng = XorShift::new(seed);
    let dir = temp_dir();
    // The server (`nc -lk 9999` in the script's comment) on a free loopback port,
    // substituted for the script's address.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().unwrap().to_string();
    let script = read(Path::new(&example("socket_word_count.sql")));
    assert!(script.contains("LOCATION 'localhost:9999'"), "{script}");
    let job = dir.path().join("socket_word_count.sql");
    fs::write(
        &job,
        script.replace("'localhost:9999'", &format!("'{address}'")),
    )
    .unwrap();
    let (mut run, stdout, stderr) = spawn_script(dir.path(), &job);
    listener.set_nonblocking(true).unwrap();
    let mut connection = None;
    wait_until("millrace to connect", DEADLINE, || {
        run.assert_running(&stderr, "waiting for it to connect");
        match listener.accept() {
            Ok((stream, _)) => connection = Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        connection.is_some()
    });
    let mut connection = connection.unwrap();
    connection.set_nonblocking(false).unwrap();

    // Bursts of lines; after each, wait until a table shows everything sent so far, so
    // every burst is in a later batch than the one before.
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    // The top 20 after each number of lines sent (0, 1, 2, ...).
    let mut tops = vec![top_words(&counts)];
    let bursts = 4;
    for burst in 0..bursts {
        let lines: Vec<String> = (0..15).map(|_| text_line(&mut rng)).collect();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        connection.write_all(text.as_bytes()).expect("send lines");
        for line in &lines {
            for word in words(line) {
                *counts.entry(word).or_default() += 1;
            }
            tops.push(top_words(&counts));
        }
        let expected = top_words(&counts);
        let deadline = Instant::now() + DEADLINE;
        loop {
            run.assert_running(&stderr, "counting");
            let out = fs::read_to_string(&stdout).unwrap_or_default();
            let last = console_batches(&out).last().map(printed_counts);
            if last.as_ref() == Some(&expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "burst {burst} was not counted within {DEADLINE:?} (seed {seed}): expected \
                 {expected:?}, last table {last:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(connection);

    // Ctrl-C (SIGTERM here) stops the query after its current batch.
    stop_gracefully(&mut run, &stderr);

    // Every table is the top 20 after some number of lines, a number that never goes
    // down from one batch to the next; the last one is after all of them.
    let out = read(&stdout);
    let batches = console_batches(&out);
    let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
    assert_eq!(ids, (0..batches.len() as u64).collect::<Vec<_>>(), "{out}");
    assert!(
        batches.len() >= bursts,
        "each burst was counted before the next was sent: {out}"
    );
    let mut lines_in = 0;
    for batch in &batches {
        assert!(
            !batch.truncated,
            "batch {}: LIMIT 20 fits num_rows",
            batch.id
        );
        let printed = printed_counts(batch);
        lines_in = (lines_in..tops.len())
            .find(|&k| tops[k] == printed)
            .unwrap_or_else(|| {
                panic!(
                    "batch {}: {printed:?} is not the top 20 after {lines_in} or more lines \
                     (seed {seed}); stdout:\n{out}",
                    batch.id
                )
            });
    }
    assert_eq!(
        printed_counts(batches.last().unwrap()),
        top_words(&counts),
        "the last table counts every line"
    );
    assert!(counts.len() > 20, "the top 20 chose nothing");
}

/// Stops `run` as Ctrl-C does (SIGTERM) and asserts it exits 0.
fn stop_gracefully(run: &mut Running, stderr: &Path) {
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(run.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "millrace did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "millrace failed ({status}); stderr:\n{}",
        read(stderr)
    );
}

/// Starts `millrace -f job` in `dir`, standard output and error to files there.
fn spawn_script(dir: &Path, job: &Path) -> (Running, PathBuf, PathBuf) {
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let run = Running(
        Command::new(MILLRACE)
            .arg("-f")
            .arg(job)
            .current_dir(dir)
            .env_remove("MILLRACE_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the millrace binary"),
    );
    (run, stdout, stderr)
}

// ---------------------------------------------------------------------------------
// kafka_wordcount.sql, against a broker run here

/// The latest count of each word in records of the script's output topic (what a
/// compacted topic keeps), checking that each value names its key.
fn latest_counts(records: &[common::topic::Record]) -> BTreeMap<String, i64> {
    let mut latest = BTreeMap::new();
    for record in records {
        let key = record.key.clone().expect("a key");
        let value: serde_json::Value =
            serde_json::from_str(record.value.as_deref().expect("a value")).unwrap();
        assert_eq!(value["word"].as_str(), Some(key.as_str()), "{record:?}");
        latest.insert(key, value["n"].as_i64().expect("a count"));
    }
    latest
}

#[test]
fn kafka_wordcount_writes_the_changed_counts_keyed_by_word() {
    use common::kafka::shared;
    use common::topic::{create_topic, partition_count, produce, read_topic};

    let seed = test_seed("kafka_wordcount");
    let mut rng = XorShift::new(seed);
    let broker = shared();
    // The script splits lines at single spaces: words of the vocabulary in random
    // case, one space apart, some with a comma or a quote (the value is raw text, not
    // a CSV line).
    let lines: Vec<String> = (0..40)
        .map(|_| {
            (0..rng.range(1, 8))
                .map(|_| {
                    let word = VOCABULARY[rng.range(0, VOCABULARY.len() as u64 - 1) as usize];
                    match rng.range(0, 3) {
                        0 => word.to_string(),
                        1 => word.to_uppercase(),
                        2 => format!("{word},"),
                        _ => format!("\"{word}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for word in lines.iter().flat_map(|l| l.split(' ')) {
        *expected.entry(word.to_lowercase()).or_default() += 1;
    }
    // As the script's comment says: the lines first, then the script.
    create_topic(&broker.bootstrap, "lines", 2);
    produce(
        &broker.bootstrap,
        "lines",
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let dir = temp_dir();
    let script = read(Path::new(&example("kafka_wordcount.sql")));
    assert!(script.contains("'127.0.0.1:9092'"), "{script}");
    let job = dir.path().join("kafka_wordcount.sql");
    fs::write(
        &job,
        script.replace("'127.0.0.1:9092'", &format!("'{}'", broker.bootstrap)),
    )
    .unwrap();
    let (mut run, _stdout, stderr) = spawn_script(dir.path(), &job);

    let deadline = Instant::now() + DEADLINE;
    loop {
        run.assert_running(&stderr, "counting");
        if partition_count(&broker.bootstrap, "word_counts") > 0
            && latest_counts(&read_topic(&broker.bootstrap, "word_counts", false)) == expected
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "word_counts did not reach the counts of the lines (seed {seed}); stderr:\n{}",
            read(&stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_gracefully(&mut run, &stderr);

    // Each record is a count that went up: no word is written twice with one count.
    let records = read_topic(&broker.bootstrap, "word_counts", false);
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for record in &records {
        let (word, n) = latest_counts(std::slice::from_ref(record))
            .pop_first()
            .unwrap();
        let before = seen.insert(word.clone(), n).unwrap_or(0);
        assert!(
            n > before,
            "{word}: {n} after {before}; records: {records:?}"
        );
    }
    assert_eq!(latest_counts(&records), expected);
    assert!(expected.len() > 20, "few distinct words");
}

// ---------------------------------------------------------------------------------
// sensor_alerts.sql (the demo's job), over readings with seconds

#[test]
fn sensor_alerts_writes_every_low_pressure_reading_once_also_with_seconds_in_time() {
    let seed = test_seed("sensor_alerts");
    let dir = temp_dir();
    generate_sensors(dir.path(), 3, 10, 3, seed);
    let expected: Vec<(String, i64)> = files_in(&dir.path().join("data/sensors"), "csv")
        .iter()
        .flat_map(|file| sensor_readings(file))
        .filter(|(_, _, psi)| *psi < 5.0)
        .map(|(pump, at, _)| (pump, at))
        .collect();
    assert!(
        !expected.is_empty(),
        "no low-pressure reading was generated"
    );

    run_in(dir.path(), &["-f", &example("sensor_alerts.sql")]);

    let written = read_parquet_dir(&dir.path().join("out/alerts"));
    let at = i64_column(&written, "ts");
    let actual = string_column(&written, "pump")
        .into_iter()
        .zip(at)
        .map(|(pump, ns)| (pump.expect("a pump"), ns / 1_000_000));
    assert_exactly_once("alerts written", actual, expected);
}
