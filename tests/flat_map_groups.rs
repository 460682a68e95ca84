//! `flat_map_groups_with_state` (a user-defined stateful operator): the key's state
//! across batches and restarts, processing-time timeouts, and a replay after a crash
//! at each point of the batch that never applies a batch twice.
//! (Event-time timeouts: the pump episodes example in tests/dataframe_api.rs; late rows
//! with and without one: below.)

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

mod common;

use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::datatypes::Int64Type;
use millrace::prelude::*;
use serde::{Deserialize, Serialize};

/// The state each user keeps.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: i64,
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("total", DataType::Int64, false),
        Field::new("event", DataType::Utf8, false),
    ]))
}

/// The `user, n` JSON rows landing in `input`, one file per batch.
async fn users_stream(ctx: &StreamingContext, input: &Path) -> StreamFrame {
    ctx.read_stream()
        .format("json")
        .schema(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
        .option("max_files_per_trigger", "1")
        .load(input.to_str().unwrap())
        .await
        .unwrap()
}

/// Running totals of `n` per user: a batch's rows add to the total ("updated"); a row
/// with `n = 0` ends the user's tally ("removed": the state goes); a processing-time
/// timeout (set to the batch's own timestamp, so it passes at any later batch) ends it
/// too ("timed_out").
async fn running_totals(
    ctx: &StreamingContext,
    input: &Path,
    timeout: GroupStateTimeout,
) -> StreamFrame {
    let users = users_stream(ctx, input).await;
    users
        .group_by_key(&["user"])
        .flat_map_groups_with_state(
            output_schema(),
            OutputMode::Append,
            timeout,
            move |key, rows, state: &mut GroupState<Tally>| {
                let user = key[0].clone();
                let row = |total: i64, event: &str| {
                    vec![
                        user.clone(),
                        ScalarValue::Int64(Some(total)),
                        ScalarValue::Utf8(Some(event.to_string())),
                    ]
                };
                let before = state.get().map_or(0, |t| t.total);
                if state.has_timed_out() {
                    assert_eq!(rows.num_rows(), 0, "a timed-out key has no new rows");
                    state.remove();
                    return Ok(vec![row(before, "timed_out")]);
                }
                let n = rows
                    .column_by_name("n")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                let total = before + n.iter().flatten().sum::<i64>();
                if n.iter().flatten().any(|v| v == 0) {
                    state.remove();
                    return Ok(vec![row(total, "removed")]);
                }
                state.update(Tally { total });
                if timeout == GroupStateTimeout::ProcessingTimeTimeout {
                    state.set_timeout_duration(Duration::ZERO)?;
                }
                Ok(vec![row(total, "updated")])
            },
        )
        .unwrap()
}

/// Runs the running totals over what `input` holds, into memory table `name`.
async fn run_to_memory(
    ctx: &StreamingContext,
    input: &Path,
    checkpoint: &Path,
    name: &str,
    timeout: GroupStateTimeout,
) -> Vec<String> {
    let frame = running_totals(ctx, input, timeout).await;
    run_until_read(ctx, frame, checkpoint, name).await.0
}

/// Runs `frame` (rows of [`output_schema`]) into memory table `name` until its input is
/// read; returns the table's rows as sorted `user|total|event` lines, and the query.
async fn run_until_read(
    ctx: &StreamingContext,
    frame: StreamFrame,
    checkpoint: &Path,
    name: &str,
) -> (Vec<String>, StreamingQuery) {
    let query = frame
        .write_stream()
        .format("memory")
        .query_name(name)
        .option("checkpoint", checkpoint.to_str().unwrap())
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let mut rows = memory_rows(ctx, name).await;
    rows.sort();
    (rows, query)
}

/// The rows of memory table `name` (rows of [`output_schema`]) as `user|total|event`.
async fn memory_rows(ctx: &StreamingContext, name: &str) -> Vec<String> {
    let batches = ctx
        .session()
        .query(&format!("SELECT * FROM {name}"))
        .await
        .unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push(format!(
                "{}|{}|{}",
                b.column(0).as_string::<i32>().value(i),
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_string::<i32>().value(i)
            ));
        }
    }
    rows
}

fn land(dir: &Path, name: &str, rows: &[(&str, i64)]) {
    let text: String = rows
        .iter()
        .map(|(u, n)| format!("{{\"user\":\"{u}\",\"n\":{n}}}\n"))
        .collect();
    common::write_atomic(dir, name, text.as_bytes());
}

fn sorted(rows: &[&str]) -> Vec<String> {
    let mut rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_updated_removed_and_restored_across_batches_and_restarts() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let checkpoint = tmp.path().join("ckpt");
    land(&input, "1.json", &[("a", 1), ("a", 2), ("b", 5)]);
    land(&input, "2.json", &[("a", 3), ("b", 0)]);
    let ctx = StreamingContext::new();
    let first = run_to_memory(
        &ctx,
        &input,
        &checkpoint,
        "run1",
        GroupStateTimeout::NoTimeout,
    )
    .await;
    assert_eq!(
        first,
        sorted(&["a|3|updated", "b|5|updated", "a|6|updated", "b|5|removed"])
    );
    assert!(
        checkpoint
            .join("state/0")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "the state is kept under state/<operator id>/"
    );

    // A new program over the same checkpoint: a's tally continues from 6, b starts over.
    land(&input, "3.json", &[("a", 4), ("b", 7)]);
    let ctx = StreamingContext::new();
    let second = run_to_memory(
        &ctx,
        &input,
        &checkpoint,
        "run2",
        GroupStateTimeout::NoTimeout,
    )
    .await;
    assert_eq!(second, sorted(&["a|10|updated", "b|7|updated"]));
}

/// A closure that panics ends its query with an error that carries the panic's message,
/// instead of leaving the query running forever with nobody told: the batch it panicked
/// in is not committed, the one before it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_closure_fails_the_query_with_its_message() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let checkpoint = tmp.path().join("ckpt");
    land(&input, "1.json", &[("a", 1)]);
    land(&input, "2.json", &[("a", 13)]);
    let ctx = StreamingContext::new();
    let users = users_stream(&ctx, &input).await;
    let frame = users
        .group_by_key(&["user"])
        .flat_map_groups_with_state(
            output_schema(),
            OutputMode::Append,
            GroupStateTimeout::NoTimeout,
            |key, rows, _state: &mut GroupState<Tally>| {
                let n = rows
                    .column_by_name("n")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                if n.values().contains(&13) {
                    panic!("unlucky number for {:?}", key[0]);
                }
                Ok(vec![vec![
                    key[0].clone(),
                    ScalarValue::Int64(Some(n.values().iter().sum())),
                    ScalarValue::Utf8(Some("updated".into())),
                ]])
            },
        )
        .unwrap();
    let query = frame
        .write_stream()
        .format("memory")
        .query_name("panics")
        .option("checkpoint", checkpoint.to_str().unwrap())
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), query.await_termination())
        .await
        .expect("the query hung after its closure panicked");
    let error = outcome.expect_err("a panicking closure must fail the query");
    assert!(
        matches!(error.root_cause(), millrace::Error::Panic(_)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("unlucky number for"), "{message}");
    assert!(
        message.contains("resumes from its last committed batch"),
        "{message}"
    );
    assert_eq!(common::log_ids(&checkpoint.join("commits")), vec![0]);
    assert_eq!(memory_rows(&ctx, "panics").await, vec!["a|1|updated"]);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processing_time_timeout_calls_the_keys_without_new_rows_once() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let checkpoint = tmp.path().join("ckpt");
    let timeout = GroupStateTimeout::ProcessingTimeTimeout;
    land(&input, "1.json", &[("x", 1), ("y", 2)]);
    let ctx = StreamingContext::new();
    let first = run_to_memory(&ctx, &input, &checkpoint, "run1", timeout).await;
    assert_eq!(first, sorted(&["x|1|updated", "y|2|updated"]));

    // The next batch's timestamp must be later than the first's (no sleeping on a
    // guess: wait until the clock has moved past the end of the first run).
    let ended = now_ms();
    common::wait_until("the clock to move", Duration::from_secs(5), || {
        now_ms() > ended
    });
    land(&input, "2.json", &[("x", 5)]);
    let ctx = StreamingContext::new();
    let second = run_to_memory(&ctx, &input, &checkpoint, "run2", timeout).await;
    // x had new rows: no timeout; y had none and its timeout passed: called once.
    assert_eq!(second, sorted(&["x|6|updated", "y|2|timed_out"]));

    // y's state is gone and does not time out again; x's new timeout passes.
    let ended = now_ms();
    common::wait_until("the clock to move", Duration::from_secs(5), || {
        now_ms() > ended
    });
    land(&input, "3.json", &[("z", 1)]);
    let ctx = StreamingContext::new();
    let third = run_to_memory(&ctx, &input, &checkpoint, "run3", timeout).await;
    assert_eq!(third, sorted(&["x|6|timed_out", "z|1|updated"]));
}

/// A running query fires a processing-time timeout when it is due, without new data
/// (Spark runs no-data batches for it): x's timeout passes while no file lands, and x is
/// called once more, timed out, which removes its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_processing_time_timeout_fires_without_new_data() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    land(&input, "1.json", &[("x", 1)]);
    let ctx = StreamingContext::new();
    let query = running_totals(&ctx, &input, GroupStateTimeout::ProcessingTimeTimeout)
        .await
        .write_stream()
        .format("memory")
        .query_name("live")
        .option("checkpoint", tmp.path().join("ckpt").to_str().unwrap())
        .output_mode(OutputMode::Append)
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = memory_rows(&ctx, "live").await;
        if rows.iter().any(|r| r.ends_with("timed_out")) {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "x's processing-time timeout never fired without new data; rows: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    query.stop();
    query.await_termination().await.unwrap();
    let batches = query.recent_progress().len();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, sorted(&["x|1|timed_out", "x|1|updated"]));
    // One batch for the file, one no-data batch for the timeout; the state is gone, so
    // no further batch ran for it.
    assert_eq!(batches, 2, "{:?}", query.recent_progress());
}

/// Runs a running total of `n` per user over JSON files of `user, n, ts` (one file per
/// batch, watermark 10 s behind the latest `ts`) with `timeout`; returns the rows the
/// closure emitted and the rows the operator counted as dropped by the watermark.
async fn totals_with_event_time(
    input: &Path,
    checkpoint: &Path,
    timeout: GroupStateTimeout,
) -> (Vec<String>, u64) {
    let ctx = StreamingContext::new();
    let events = ctx
        .read_stream()
        .format("json")
        .schema(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
        .option("max_files_per_trigger", "1")
        .load(input.to_str().unwrap())
        .await
        .unwrap()
        .with_watermark("ts", "10 seconds")
        .unwrap();
    let totals = events
        .group_by_key(&["user"])
        .flat_map_groups_with_state(
            output_schema(),
            OutputMode::Append,
            timeout,
            |key, rows, state: &mut GroupState<Tally>| {
                let n = rows
                    .column_by_name("n")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                let total = state.get().map_or(0, |t| t.total) + n.iter().flatten().sum::<i64>();
                state.update(Tally { total });
                Ok(vec![vec![
                    key[0].clone(),
                    ScalarValue::Int64(Some(total)),
                    ScalarValue::Utf8(Some("updated".to_string())),
                ]])
            },
        )
        .unwrap();
    let (rows, query) = run_until_read(&ctx, totals, checkpoint, "totals").await;
    let dropped = query
        .recent_progress()
        .iter()
        .flat_map(|p| p.state_operators.iter())
        .filter(|op| op["operatorName"] == "flatMapGroupsWithState")
        .map(|op| op["numRowsDroppedByWatermark"].as_u64().unwrap())
        .sum();
    (rows, dropped)
}

/// Spark's rule for late rows in `flatMapGroupsWithState`: with an event-time timeout a
/// row at or before the late-events watermark (the previous batch's watermark) never
/// reaches the closure and is counted in `numRowsDroppedByWatermark`, while a row
/// between the late-events and the eviction watermark still does; without an
/// event-time timeout the closure sees every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_event_time_timeout_rows_behind_the_late_events_watermark_never_reach_the_closure()
{
    let line = |user: &str, n: i64, seconds: i64| {
        format!(
            "{{\"user\":\"{user}\",\"n\":{n},\"ts\":\"1970-01-01T00:{:02}:{:02}\"}}\n",
            seconds / 60,
            seconds % 60
        )
    };
    for (timeout, expected, dropped) in [
        (
            GroupStateTimeout::EventTimeTimeout,
            sorted(&[
                "a|1|updated",
                "a|11|updated",
                "b|10000|updated",
                "c|1000|updated",
            ]),
            1,
        ),
        (
            GroupStateTimeout::NoTimeout,
            sorted(&[
                "a|1|updated",
                "a|11|updated",
                "a|111|updated",
                "b|10000|updated",
                "c|1000|updated",
            ]),
            0,
        ),
    ] {
        let tmp = common::temp_dir();
        let input = common::make_dir(tmp.path(), "in");
        // Batch 0: watermark after it 100 - 10 = 90 s.
        common::write_atomic(&input, "1.json", line("a", 1, 100).as_bytes());
        // Batch 1 (late-events watermark: none yet; eviction 90 s): a row at 80 s is
        // between the two and reaches the closure. Watermark after it: 190 s.
        let second = line("a", 10, 80) + &line("c", 1000, 200);
        common::write_atomic(&input, "2.json", second.as_bytes());
        // Batch 2 (late-events watermark 90 s, eviction 190 s): 85 s is late, 150 s is
        // between the two watermarks.
        let third = line("a", 100, 85) + &line("b", 10000, 150);
        common::write_atomic(&input, "3.json", third.as_bytes());
        let (rows, counted) =
            totals_with_event_time(&input, &tmp.path().join("ckpt"), timeout).await;
        assert_eq!(rows, expected, "{timeout:?}");
        assert_eq!(
            counted, dropped,
            "numRowsDroppedByWatermark with {timeout:?}"
        );
    }
}

/// Not a test on its own: the query a crash test runs in a child process (this test
/// binary, re-run with `--ignored --exact`), so that `MILLRACE_CRASH_AT` can abort it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by crash_at_each_point_of_a_batch_replays_it_without_applying_it_twice"]
async fn child_runs_the_running_totals_into_parquet() {
    let dir = std::path::PathBuf::from(
        std::env::var("FMG_DIR").expect("run by the crash test, with FMG_DIR set"),
    );
    let ctx = StreamingContext::new();
    let query = running_totals(&ctx, &dir.join("in"), GroupStateTimeout::NoTimeout)
        .await
        .write_stream()
        .format("parquet")
        .option("path", dir.join("out").to_str().unwrap())
        .option("checkpoint", dir.join("ckpt").to_str().unwrap())
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
}

fn run_child(dir: &Path, crash_at: Option<&str>) -> std::process::Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "child_runs_the_running_totals_into_parquet",
            "--nocapture",
        ])
        .env("FMG_DIR", dir)
        .env_remove("MILLRACE_CRASH_AT");
    if let Some(point) = crash_at {
        command.env("MILLRACE_CRASH_AT", point);
    }
    command.output().unwrap()
}

#[test]
fn crash_at_each_point_of_a_batch_replays_it_without_applying_it_twice() {
    for point in [
        "after-offsets",
        "after-state-commit",
        "after-sink",
        "after-commit",
    ] {
        let tmp = common::temp_dir();
        let dir = tmp.path();
        let input = common::make_dir(dir, "in");
        land(&input, "1.json", &[("a", 1), ("a", 2), ("b", 5)]);
        let ok = run_child(dir, None);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );

        land(&input, "2.json", &[("a", 3), ("b", 0)]);
        land(&input, "3.json", &[("a", 4), ("b", 7)]);
        let crashed = run_child(dir, Some(point));
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success(),
            "{point}: the child did not crash"
        );
        assert!(
            stderr.contains(&format!("crash point '{point}' reached")),
            "{point}: {stderr}"
        );
        let ok = run_child(dir, None);
        assert!(
            ok.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );

        let batches = common::read_parquet_dir(&dir.join("out"));
        let users = common::string_column(&batches, "user");
        let totals = common::i64_column(&batches, "total");
        let events = common::string_column(&batches, "event");
        let mut rows: Vec<String> = (0..users.len())
            .map(|i| {
                format!(
                    "{}|{}|{}",
                    users[i].as_deref().unwrap(),
                    totals[i],
                    events[i].as_deref().unwrap()
                )
            })
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            sorted(&[
                "a|3|updated",
                "b|5|updated",
                "a|6|updated",
                "b|5|removed",
                "a|10|updated",
                "b|7|updated",
            ]),
            "after a crash at {point}"
        );
    }
}

#[test]
fn kill_9_at_random_instants_changes_nothing_in_the_output() {
    use std::collections::BTreeMap;
    use std::os::unix::process::ExitStatusExt;
    let seed = common::test_seed("flat_map_groups_crash");
    let mut rng = common::XorShift::new(seed);
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let input = common::make_dir(dir, "in");
    // Files of 6 rows (one batch each); a 0 ends a user's tally now and then. Whenever
    // a run gets through all of them, 20 more land, so kills keep landing mid-work
    // however fast or slow the machine is.
    let mut expected = Vec::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut files = 0;
    let mut land_more = |count: usize, rng: &mut common::XorShift, expected: &mut Vec<String>| {
        for _ in 0..count {
            let rows: Vec<(String, i64)> = (0..6)
                .map(|_| {
                    let user = ["a", "b", "c", "d", "e"][rng.range(0, 4) as usize].to_string();
                    let n = if rng.range(0, 15) == 0 {
                        0
                    } else {
                        rng.range(1, 20) as i64
                    };
                    (user, n)
                })
                .collect();
            let borrowed: Vec<(&str, i64)> = rows.iter().map(|(u, n)| (u.as_str(), *n)).collect();
            land(&input, &format!("f-{files:04}.json"), &borrowed);
            files += 1;
            // What the batch emits, computed in plain Rust.
            let mut batch: BTreeMap<&str, (i64, bool)> = BTreeMap::new();
            for (user, n) in &rows {
                let entry = batch.entry(user.as_str()).or_default();
                entry.0 += n;
                entry.1 |= *n == 0;
            }
            for (user, (sum, zero)) in batch {
                let total = totals.get(user).copied().unwrap_or(0) + sum;
                if zero {
                    totals.remove(user);
                    expected.push(format!("{user}|{total}|removed"));
                } else {
                    totals.insert(user.to_string(), total);
                    expected.push(format!("{user}|{total}|updated"));
                }
            }
        }
    };
    land_more(60, &mut rng, &mut expected);

    let (mut kills, mut finished) = (0, false);
    for attempt in 0..400u64 {
        if kills >= 30 && finished {
            break;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_runs_the_running_totals_into_parquet",
                "--nocapture",
            ])
            .env("FMG_DIR", dir)
            .env_remove("MILLRACE_CRASH_AT")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("run-{attempt}.err"))).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(5, 1500)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished = true;
            if kills < 30 {
                land_more(20, &mut rng, &mut expected);
            }
        } else {
            assert_eq!(
                status.signal(),
                Some(9),
                "seed {seed}: the child failed by itself ({status}): {}",
                std::fs::read_to_string(dir.join(format!("run-{attempt}.err"))).unwrap()
            );
            kills += 1;
        }
    }
    assert!(kills >= 30, "{kills} kills, finished: {finished}");
    expected.sort();
    let last = run_child(dir, None);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let batches = common::read_parquet_dir(&dir.join("out"));
    let users = common::string_column(&batches, "user");
    let totals = common::i64_column(&batches, "total");
    let events = common::string_column(&batches, "event");
    let mut rows: Vec<String> = (0..users.len())
        .map(|i| {
            format!(
                "{}|{}|{}",
                users[i].as_deref().unwrap(),
                totals[i],
                events[i].as_deref().unwrap()
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows, expected,
        "seed {seed}: output after {kills} kills differs"
    );
}
