//! Low-pressure episodes per pump with a user-defined stateful operator
//! (`flat_map_groups_with_state`, Spark's `flatMapGroupsWithState`).
//!
//! An episode opens when a pump's pressure stays below 5 psi for three consecutive
//! readings, and is emitted once when it closes: at the next reading of 5 psi or more
//! ("recovery"), or when the pump stays silent for 30 seconds of event time after its
//! last low reading ("timeout", an event-time timeout driven by the watermark).
//!
//! ```sh
//! cargo run --example pump_low_pressure_episodes
//! ```

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, TimestampNanosecondArray};
use datafusion::arrow::util::pretty::pretty_format_batches;
use millrace::prelude::*;
use serde::{Deserialize, Serialize};

/// Below this pressure (psi) a reading is low.
pub const LOW_PSI: f64 = 5.0;
/// Consecutive low readings that open an episode.
pub const OPEN_AFTER: u32 = 3;
/// An open episode times out this long (event time) after its last low reading.
pub const TIMEOUT_MS: i64 = 30_000;
/// The watermark delay of the readings.
pub const WATERMARK_DELAY_MS: i64 = 10_000;

/// What the operator keeps per pump between batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    /// Consecutive low readings so far.
    low: u32,
    first_low_ms: i64,
    last_low_ms: i64,
    min_psi: f64,
}

/// The readings the example streams: (pump, event time in ms, psi), per pump in time
/// order. Three pumps, one reading every 5 seconds for 10 minutes, with dips of varying
/// length (a pseudo-random but fixed pattern), pump-3 silent in minutes 4 and 5 right
/// after a dip, and pump-1 in a dip when the input ends.
pub fn readings() -> Vec<(String, i64, f64)> {
    let start_ms = 1_767_261_600_000; // 2026-01-01 10:00:00 UTC
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let mut dips = [0u32; 3];
    let mut out = Vec::new();
    for step in 0..120 {
        let ts = start_ms + step * 5_000;
        for (pump, dip) in dips.iter_mut().enumerate() {
            if *dip == 0 && next() % 9 == 0 {
                *dip = 1 + next() % 6;
            }
            // Pump-3 dips just before it goes silent (its episode times out); pump-1
            // dips at the very end (its episode is still open when the input ends).
            if (pump == 2 && step == 44) || (pump == 0 && step == 116) {
                *dip = 4;
            }
            let psi = if *dip > 0 {
                *dip -= 1;
                1.0 + (next() % 35) as f64 / 10.0
            } else {
                30.0 + (next() % 200) as f64 / 10.0
            };
            let silent = pump == 2 && (48..72).contains(&step);
            if !silent {
                out.push((format!("pump-{}", pump + 1), ts, psi));
            }
        }
    }
    out
}

/// Writes `readings` as CSV files of one minute each into `dir`.
pub fn write_files(dir: &Path, readings: &[(String, i64, f64)]) {
    std::fs::create_dir_all(dir).expect("create the input directory");
    let start = readings.iter().map(|r| r.1).min().unwrap_or(0);
    let mut files: std::collections::BTreeMap<i64, String> = Default::default();
    for (pump, ts, psi) in readings {
        let time = chrono::DateTime::from_timestamp_millis(*ts).expect("a valid time");
        files
            .entry((ts - start) / 60_000)
            .or_default()
            .push_str(&format!(
                "{pump},{},{psi}\n",
                time.format("%Y-%m-%d %H:%M:%S%.3f")
            ));
    }
    for (minute, text) in files {
        std::fs::write(dir.join(format!("minute-{minute:02}.csv")), text).expect("write input");
    }
}

/// The episodes' columns.
pub fn episode_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pump", DataType::Utf8, false),
        Field::new(
            "start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "end",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("readings", DataType::Int64, false),
        Field::new("min_psi", DataType::Float64, false),
        Field::new("closed_by", DataType::Utf8, false),
    ]))
}

fn episode(pump: &ScalarValue, run: &Run, closed_by: &str) -> Row {
    vec![
        pump.clone(),
        ScalarValue::TimestampMillisecond(Some(run.first_low_ms), None),
        ScalarValue::TimestampMillisecond(Some(run.last_low_ms), None),
        ScalarValue::Int64(Some(run.low as i64)),
        ScalarValue::Float64(Some(run.min_psi)),
        ScalarValue::Utf8(Some(closed_by.to_string())),
    ]
}

/// The per-pump closure: folds the pump's new readings into its run of low readings.
fn detect(
    key: &[ScalarValue],
    rows: &RecordBatch,
    state: &mut GroupState<Run>,
) -> millrace::Result<Vec<Row>> {
    let pump = &key[0];
    let mut run = state.get().cloned();
    let mut out = Vec::new();
    if state.has_timed_out() {
        if let Some(run) = run.filter(|r| r.low >= OPEN_AFTER) {
            out.push(episode(pump, &run, "timeout"));
        }
        state.remove();
        return Ok(out);
    }
    let ts = rows
        .column_by_name("ts")
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .expect("ts is a nanosecond timestamp");
    let psi = rows
        .column_by_name("pressure")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .expect("pressure is a float");
    // Rows come in arrival order: take them in event-time order.
    let mut readings: Vec<(i64, Option<f64>)> = (0..rows.num_rows())
        .map(|i| {
            (
                ts.value(i) / 1_000_000,
                psi.is_valid(i).then(|| psi.value(i)),
            )
        })
        .collect();
    readings.sort_by_key(|r| r.0);
    for (ts_ms, psi) in readings {
        // A silence longer than the timeout ended the run before this reading (the
        // watermark may not have timed it out yet): the same answer either way.
        if let Some(r) = run.take_if(|r| ts_ms - r.last_low_ms > TIMEOUT_MS)
            && r.low >= OPEN_AFTER
        {
            out.push(episode(pump, &r, "timeout"));
        }
        match psi {
            Some(psi) if psi < LOW_PSI => {
                let r = run.get_or_insert(Run {
                    low: 0,
                    first_low_ms: ts_ms,
                    last_low_ms: ts_ms,
                    min_psi: psi,
                });
                r.low += 1;
                r.last_low_ms = ts_ms;
                r.min_psi = r.min_psi.min(psi);
            }
            _ => {
                if let Some(r) = run.take()
                    && r.low >= OPEN_AFTER
                {
                    out.push(episode(pump, &r, "recovery"));
                }
            }
        }
    }
    match run {
        Some(run) => {
            state.set_timeout_timestamp(run.last_low_ms + TIMEOUT_MS)?;
            state.update(run);
        }
        None => state.remove(),
    }
    Ok(out)
}

/// Streams the CSV readings of `input` (one file per batch) through the episode
/// operator into a memory table `episodes` of `ctx`, until the input is processed.
pub async fn run(
    ctx: &StreamingContext,
    input: &Path,
    checkpoint: &Path,
) -> millrace::Result<StreamingQuery> {
    let readings = ctx
        .read_stream()
        .format("csv")
        .schema(Schema::new(vec![
            Field::new("pump", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("pressure", DataType::Float64, true),
        ]))
        .option("max_files_per_trigger", "1")
        .load(input.to_str().expect("a UTF-8 path"))
        .await?
        .with_watermark("ts", &format!("{WATERMARK_DELAY_MS} milliseconds"))?;
    let episodes = readings
        .group_by_key(&["pump"])
        .flat_map_groups_with_state(
            episode_schema(),
            OutputMode::Append,
            GroupStateTimeout::EventTimeTimeout,
            detect,
        )?;
    let query = episodes
        .write_stream()
        .format("memory")
        .query_name("episodes")
        .option("checkpoint", checkpoint.to_str().expect("a UTF-8 path"))
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    query.await_termination().await?;
    Ok(query)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> millrace::Result<()> {
    let dir = std::env::temp_dir().join(format!("millrace-episodes-{}", std::process::id()));
    write_files(&dir.join("readings"), &readings());
    let ctx = StreamingContext::new();
    run(&ctx, &dir.join("readings"), &dir.join("checkpoint")).await?;
    let rows = ctx
        .session()
        .query("SELECT * FROM episodes ORDER BY pump, start")
        .await?;
    println!("{}", pretty_format_batches(&rows)?);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
