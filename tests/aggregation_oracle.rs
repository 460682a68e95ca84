//! Incremental aggregation against an oracle: random rows, split into random files
//! and read a random number of files per micro-batch, must give — in complete mode,
//! and through update-mode upserts — exactly what one DataFusion query over all the
//! rows gives.

use std::fs;
use std::path::Path;

mod common;

use common::XorShift;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use millrace::{Session, SessionSettings};
use tokio::runtime::Runtime;

/// Rows as sorted text lines, so results compare whatever their order.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// Aggregates whose result does not depend on how rows were split into batches (an
/// `array_agg` is sorted, `first_value`/`last_value` are ordered), so they must equal
/// the one-batch answer exactly.
const AGGREGATES: &str = "count(*) AS n, sum(v) AS total, min(v) AS low, max(v) AS high, \
     count(DISTINCT v) AS distinct_v, bool_or(v > 90) AS any_high, bool_and(v > 5) AS all_over_5, \
     count(label) AS labelled, max(label) AS last_label, \
     round(stddev(v), 6) AS sd, round(var_pop(v), 6) AS vp, round(avg(v), 6) AS mean, \
     array_sort(array_agg(v)) AS vs, array_sort(array_agg(DISTINCT label)) AS labels, \
     first_value(v ORDER BY v) AS first_v, last_value(v ORDER BY v) AS last_v, \
     approx_distinct(v) AS approx_dv, \
     approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS median";

fn write_case(dir: &Path, rng: &mut XorShift) {
    let files = 1 + rng.range(0, 7);
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..rng.range(0, 11) {
            let key = format!("k{}", rng.range(0, 4));
            let v = rng.range(0, 99);
            // Some labels are missing (NULL): aggregates must skip them.
            let label = if rng.range(0, 3) == 0 {
                String::new()
            } else {
                format!("l{}", rng.range(0, 2))
            };
            text.push_str(&format!("{key},{v},{label}\n"));
        }
        fs::write(dir.join(format!("part-{f:02}.csv")), text).unwrap();
    }
}

#[test]
fn random_micro_batches_give_the_batch_answer() {
    let runtime = Runtime::new().unwrap();
    for seed in 1..=12u64 {
        let mut rng = XorShift::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        fs::create_dir(&input).unwrap();
        write_case(&input, &mut rng);
        let per_trigger = 1 + rng.range(0, 2);
        let session = Session::new(runtime.handle().clone(), SessionSettings::default());
        let script = format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (k VARCHAR, v BIGINT, label VARCHAR)
               STORED AS CSV LOCATION '{dir}' OPTIONS ('max_files_per_trigger' '{per_trigger}');
             CREATE EXTERNAL TABLE all_rows (k VARCHAR, v BIGINT, label VARCHAR)
               STORED AS CSV LOCATION '{dir}' OPTIONS ('format.has_header' 'false');
             CREATE SINK grouped STORED AS MEMORY
               OPTIONS ('trigger' 'available_now', 'output_mode' 'complete')
               AS SELECT k, {AGGREGATES} FROM t GROUP BY k;
             CREATE SINK upserted STORED AS MEMORY
               OPTIONS ('trigger' 'available_now', 'output_mode' 'update')
               AS SELECT k, {AGGREGATES} FROM t GROUP BY k;
             CREATE SINK global STORED AS MEMORY
               OPTIONS ('trigger' 'available_now', 'output_mode' 'complete')
               AS SELECT {AGGREGATES} FROM t",
            dir = input.display()
        );
        runtime.block_on(session.execute_script(&script)).unwrap();
        session.await_all().unwrap();
        let query = |sql: &str| lines(&runtime.block_on(session.query(sql)).unwrap());
        let oracle = query(&format!("SELECT k, {AGGREGATES} FROM all_rows GROUP BY k"));
        let context = format!("seed {seed}, {per_trigger} file(s) per batch");
        assert_eq!(
            query("SELECT * FROM grouped"),
            oracle,
            "complete mode, {context}"
        );
        assert_eq!(
            query("SELECT * FROM upserted"),
            oracle,
            "update mode, {context}"
        );
        let global_oracle = query(&format!("SELECT {AGGREGATES} FROM all_rows"));
        let global = query("SELECT * FROM global");
        if oracle.is_empty() {
            // No rows at all: no batch ran, so there is no result row yet.
            assert!(global.is_empty() || global == global_oracle, "{context}");
        } else {
            assert_eq!(global, global_oracle, "global aggregate, {context}");
        }
    }
}

/// Append mode with event-time windows (tumbling and sliding) and a watermark: what is emitted must be exactly
/// the one-batch answer over the rows that were not late, for the windows the final
/// watermark passed. Which rows are late is worked out here from the batch boundaries
/// (files are read in name order, `per_trigger` at a time): as in Spark, a row is late
/// when its window ended at or before the watermark of the batch *before* its batch
/// (the watermark for late events), and the watermark of a batch is the largest event
/// time of the batches before it minus the delay.
#[test]
fn random_micro_batches_in_append_mode_give_the_batch_answer_over_rows_not_late() {
    const DELAY: i64 = 5;
    const WINDOW: i64 = 10;
    let runtime = Runtime::new().unwrap();
    let (mut emitted_windows, mut late_rows) = (0, 0);
    for seed in 1..=10u64 {
        let mut rng = XorShift::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        fs::create_dir(&input).unwrap();
        let files = 1 + rng.range(0, 7) as usize;
        let per_trigger = 1 + rng.range(0, 2) as usize;
        // (file, key, second of the minute..., value); time drifts forward per file,
        // with rows up to 30 s early (late for the previous batch's watermark often).
        let mut rows: Vec<(usize, String, i64, i64)> = Vec::new();
        for file in 0..files {
            let mut text = String::new();
            for _ in 0..rng.range(0, 9) {
                let second = (file as i64 * 6 + rng.range(0, 34) as i64 - 30).max(0);
                let key = format!("k{}", rng.range(0, 2));
                let v = rng.range(0, 49) as i64;
                text.push_str(&format!(
                    "{key},2026-01-01 10:{:02}:{:02},{v}\n",
                    second / 60,
                    second % 60
                ));
                rows.push((file, key, second, v));
            }
            let staged = tmp.path().join(format!(".f{file}"));
            fs::write(&staged, text).unwrap();
            fs::rename(&staged, input.join(format!("f{file:02}.csv"))).unwrap();
        }

        // The rows that are not late, and the final watermark.
        let mut watermark: Option<i64> = None;
        let mut late_events: Option<i64> = None;
        let mut max_seen: Option<i64> = None;
        // Even seeds slide by half a window: a row then counts in two windows, each
        // judged late on its own.
        let slide = if seed % 2 == 0 { WINDOW / 2 } else { WINDOW };
        let windows_of = |second: i64| -> Vec<i64> {
            let mut start = second - second.rem_euclid(slide);
            let mut starts = Vec::new();
            while start + WINDOW > second {
                starts.push(start);
                start -= slide;
            }
            starts
        };
        let mut kept: Vec<(String, i64, i64)> = Vec::new();
        for batch in (0..files).collect::<Vec<_>>().chunks(per_trigger) {
            let batch_rows: Vec<_> = rows.iter().filter(|r| batch.contains(&r.0)).collect();
            for row in &batch_rows {
                for start in windows_of(row.2) {
                    if late_events.is_none_or(|w| start + WINDOW > w) {
                        kept.push((row.1.clone(), start, row.3));
                    } else {
                        late_rows += 1;
                    }
                }
            }
            if let Some(m) = batch_rows.iter().map(|r| r.2).max() {
                max_seen = Some(max_seen.map_or(m, |s: i64| s.max(m)));
            }
            late_events = watermark;
            watermark = max_seen.map(|m| m - DELAY);
        }
        let mut expected: std::collections::BTreeMap<(String, i64), (i64, i64)> =
            Default::default();
        for (key, start, v) in &kept {
            if watermark.is_some_and(|w| start + WINDOW <= w) {
                let entry = expected.entry((key.clone(), *start)).or_default();
                entry.0 += 1;
                entry.1 += v;
            }
        }
        let mut expected: Vec<String> = expected
            .into_iter()
            .map(|((key, start), (n, total))| {
                let t = 10 * 3600 + start; // seconds since midnight; may precede 10:00
                format!(
                    "{key} | 2026-01-01T{:02}:{:02}:{:02} | {n} | {total}",
                    t / 3600,
                    (t / 60) % 60,
                    t % 60
                )
            })
            .collect();
        expected.sort();

        let session = Session::new(runtime.handle().clone(), SessionSettings::default());
        let script = format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t (k VARCHAR, ts TIMESTAMP, v BIGINT,
               WATERMARK FOR ts AS ts - INTERVAL '{DELAY}' SECOND)
               STORED AS CSV LOCATION '{dir}' OPTIONS ('max_files_per_trigger' '{per_trigger}');
             CREATE SINK final_windows STORED AS MEMORY
               OPTIONS ('trigger' 'available_now', 'output_mode' 'append')
               AS SELECT k, window(ts, '{WINDOW} seconds', '{slide} seconds') AS w,
                         count(*) AS n, sum(v) AS total
                  FROM t GROUP BY k, window(ts, '{WINDOW} seconds', '{slide} seconds')",
            dir = input.display()
        );
        runtime.block_on(session.execute_script(&script)).unwrap();
        session.await_all().unwrap();
        let emitted = lines(
            &runtime
                .block_on(session.query(
                    "SELECT k, CAST(w.start AS VARCHAR) AS start, n, total FROM final_windows",
                ))
                .unwrap(),
        );
        assert_eq!(
            emitted, expected,
            "seed {seed}: {files} files, {per_trigger} per batch, slide {slide} s"
        );
        emitted_windows += emitted.len();
    }
    // The cases exercise both halves of the rule.
    assert!(
        emitted_windows > 10,
        "only {emitted_windows} windows emitted in all"
    );
    assert!(late_rows > 0, "no case had a late row");
}

/// Session windows against an oracle written here in plain Rust: random clicks (3
/// users, event times out of order) split into random files must give, in complete
/// mode, exactly the sessions that merging all clicks at once gives — each user's
/// clicks sorted by time, a click joining the current session while it starts at or
/// before the session's end (`ts + gap` of the clicks so far).
#[test]
fn session_windows_merged_across_random_micro_batches_give_the_batch_answer() {
    const GAP: i64 = 10;
    let runtime = Runtime::new().unwrap();
    let clock = |s: i64| format!("2026-01-01T10:{:02}:{:02}", s / 60, s % 60);
    for seed in 1..=12u64 {
        let mut rng = XorShift::new(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        fs::create_dir(&input).unwrap();
        let mut clicks: Vec<(String, i64, i64)> = Vec::new();
        for f in 0..1 + rng.range(0, 7) {
            let mut text = String::new();
            for _ in 0..rng.range(0, 9) {
                let user = format!("u{}", rng.range(0, 3));
                let second = rng.range(0, 240) as i64;
                let v = rng.range(0, 99) as i64;
                text.push_str(&format!("{user},{},{v}\n", clock(second).replace('T', " ")));
                clicks.push((user, second, v));
            }
            fs::write(input.join(format!("part-{f:02}.csv")), text).unwrap();
        }
        let per_trigger = 1 + rng.range(0, 2);
        let session = Session::new(runtime.handle().clone(), SessionSettings::default());
        let script = format!(
            "CREATE UNBOUNDED EXTERNAL TABLE clicks (user_id VARCHAR, ts TIMESTAMP, v BIGINT)
               STORED AS CSV LOCATION '{dir}' OPTIONS ('max_files_per_trigger' '{per_trigger}');
             CREATE SINK sessions STORED AS MEMORY
               OPTIONS ('trigger' 'available_now', 'output_mode' 'complete')
               AS SELECT user_id, session_window(ts, '{GAP} seconds') AS session_window,
                         count(*) AS n, sum(v) AS total
               FROM clicks GROUP BY user_id, session_window(ts, '{GAP} seconds')",
            dir = input.display()
        );
        runtime.block_on(session.execute_script(&script)).unwrap();
        session.await_all().unwrap();
        let actual = lines(
            &runtime
                .block_on(session.query(
                    "SELECT user_id, session_window.start, session_window.end, n, total \
                     FROM sessions",
                ))
                .unwrap(),
        );

        clicks.sort();
        let mut expected = Vec::new();
        let mut i = 0;
        while i < clicks.len() {
            let (user, start, _) = clicks[i].clone();
            let (mut end, mut n, mut total) = (start + GAP, 0, 0);
            while i < clicks.len() && clicks[i].0 == user && clicks[i].1 <= end {
                end = end.max(clicks[i].1 + GAP);
                n += 1;
                total += clicks[i].2;
                i += 1;
            }
            expected.push(format!(
                "{user} | {} | {} | {n} | {total}",
                clock(start),
                clock(end)
            ));
        }
        expected.sort();
        assert_eq!(
            actual, expected,
            "seed {seed}, {per_trigger} file(s) per batch"
        );
    }
}

/// A user-defined aggregate that cannot merge partial states.
#[derive(Debug)]
struct RowsSeen(i64);

impl datafusion::logical_expr::Accumulator for RowsSeen {
    fn update_batch(
        &mut self,
        values: &[datafusion::arrow::array::ArrayRef],
    ) -> datafusion::common::Result<()> {
        self.0 += values[0].len() as i64;
        Ok(())
    }
    fn evaluate(&mut self) -> datafusion::common::Result<datafusion::common::ScalarValue> {
        Ok(datafusion::common::ScalarValue::Int64(Some(self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
    }
    fn state(&mut self) -> datafusion::common::Result<Vec<datafusion::common::ScalarValue>> {
        Ok(vec![datafusion::common::ScalarValue::Int64(Some(self.0))])
    }
    fn merge_batch(
        &mut self,
        _states: &[datafusion::arrow::array::ArrayRef],
    ) -> datafusion::common::Result<()> {
        datafusion::common::not_impl_err!("rows_seen keeps no mergeable state")
    }
}

#[test]
fn an_aggregate_that_cannot_merge_is_refused_before_any_batch() {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{Volatility, create_udaf};
    let runtime = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::write(input.join("a.csv"), "a,1,x\nb,2,y\n").unwrap();
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    session.context().register_udaf(create_udaf(
        "rows_seen",
        vec![DataType::Int64],
        std::sync::Arc::new(DataType::Int64),
        Volatility::Immutable,
        std::sync::Arc::new(|_| Ok(Box::new(RowsSeen(0)))),
        std::sync::Arc::new(vec![DataType::Int64]),
    ));
    let script = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE t (k VARCHAR, v BIGINT, label VARCHAR)
           STORED AS CSV LOCATION '{}';
         CREATE SINK seen STORED AS MEMORY
           OPTIONS ('trigger' 'available_now', 'output_mode' 'complete')
           AS SELECT k, rows_seen(v) AS n FROM t GROUP BY k",
        input.display()
    );
    runtime.block_on(session.execute_script(&script)).unwrap();
    let error = session.await_all().unwrap_err().to_string();
    assert!(
        error.contains("the aggregate rows_seen(t.v) cannot merge partial states"),
        "{error}"
    );
    // Nothing ran: the memory table is empty.
    let rows = runtime
        .block_on(session.query("SELECT * FROM seen"))
        .unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}
