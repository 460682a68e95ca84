//! A stream-stream LEFT OUTER join to Parquet, aborted at each crash point of a batch
//! and then `kill -9`ed at random instants (at least 30 times) while both inputs keep
//! growing, and restarted: a plain Parquet reader of
//! the output directory sees, after every kill, each output row at most once and no
//! NULL row for an impression that was joined; at the end exactly the rows an oracle
//! computes from the input (every impression-click pair within 10 seconds, and a NULL
//! row for each impression without a click that the final watermark has passed).
//!
//! The input has no late rows (event time moves 10 s per file on both sides, the
//! watermark delay is 30 s), so the result does not depend on where batches begin or
//! end, nor on where the kills land.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;

/// Files of impressions; clicks reach 12 s further, so each side gets `FILES + 2`.
const FILES: u64 = 40;
const LAST: u64 = FILES + 1;
const DELAY_S: i64 = 30;
const RANGE_S: i64 = 10;

struct Impression {
    id: u64,
    ad: u64,
    ts: i64,
}

struct Click {
    id: u64,
    ad: u64,
    ts: i64,
}

fn stamp(seconds: i64) -> String {
    format!(
        "2026-01-01T{:02}:{:02}:{:02}",
        10 + seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

/// The job: impressions LEFT JOIN clicks on the ad, the click within 10 s after the
/// impression, one file per side and batch, to Parquet.
fn job(root: &Path, output: &Path, checkpoint: &Path) -> std::path::PathBuf {
    write_job(
        root,
        "join.sql",
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE impressions (id BIGINT, ad BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '{DELAY_S}' SECOND)
               STORED AS JSON LOCATION '{imp}/' OPTIONS ('max_files_per_trigger' '1');
             CREATE UNBOUNDED EXTERNAL TABLE clicks (id BIGINT, ad BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '{DELAY_S}' SECOND)
               STORED AS JSON LOCATION '{clk}/' OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK joined STORED AS PARQUET LOCATION '{out}/'
               OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now')
               AS SELECT i.id AS impression, CAST(c.id AS VARCHAR) AS click
               FROM impressions i LEFT JOIN clicks c
                 ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '{RANGE_S}' SECOND;\n",
            imp = root.join("impressions").display(),
            clk = root.join("clicks").display(),
            out = output.display(),
            ckpt = checkpoint.display()
        ),
    )
}

/// The output as (impression, click or "NULL") pairs, in read order.
fn read_rows(output: &Path) -> Vec<(i64, String)> {
    if !output.exists() {
        return Vec::new();
    }
    let batches = read_parquet_dir(output);
    let impressions = i64_column(&batches, "impression");
    let clicks = string_column(&batches, "click");
    impressions
        .into_iter()
        .zip(clicks)
        .map(|(i, c)| (i, c.unwrap_or_else(|| "NULL".to_string())))
        .collect()
}

/// What a reader may see at any time: no row twice, no NULL row for an impression
/// that also has a joined row.
fn check_reader_view(rows: &[(i64, String)], context: &str) {
    let mut seen = BTreeSet::new();
    for row in rows {
        assert!(
            seen.insert(row.clone()),
            "{context}: row {row:?} seen twice"
        );
    }
    let joined: BTreeSet<i64> = rows
        .iter()
        .filter(|(_, c)| c != "NULL")
        .map(|(i, _)| *i)
        .collect();
    for (i, c) in rows {
        assert!(
            !(c == "NULL" && joined.contains(i)),
            "{context}: impression {i} has a NULL row and a joined row"
        );
    }
}

#[test]
fn kill_9_while_both_inputs_grow_leaves_each_joined_row_once() {
    let seed = test_seed("stream_join_crash");
    let mut rng = XorShift::new(seed);
    let tmp = temp_dir();
    let root = tmp.path();
    let impressions_dir = make_dir(root, "impressions");
    let clicks_dir = make_dir(root, "clicks");

    // File k of each side holds the events of seconds [10k, 10k + 10).
    let mut impressions = Vec::new();
    let mut clicks = Vec::new();
    for file in 0..FILES as i64 {
        for _ in 0..6 {
            let id = impressions.len() as u64;
            let ts = file * 10 + rng.range(0, 9) as i64;
            impressions.push(Impression {
                id,
                ad: rng.range(0, 7),
                ts,
            });
            // About a third are clicked, within 12 s (some too late to count).
            if rng.range(0, 2) == 0 {
                clicks.push(Click {
                    id: 1_000 + clicks.len() as u64,
                    ad: if rng.range(0, 4) == 0 {
                        rng.range(0, 7)
                    } else {
                        impressions.last().unwrap().ad
                    },
                    ts: ts + rng.range(0, 12) as i64,
                });
            }
        }
    }
    let file_of = |ts: i64| (ts / 10) as u64;
    let mut impression_files: BTreeMap<u64, String> = BTreeMap::new();
    let mut click_files: BTreeMap<u64, String> = BTreeMap::new();
    for file in 0..=LAST {
        impression_files.insert(file, String::new());
        click_files.insert(file, String::new());
    }
    for i in &impressions {
        impression_files
            .get_mut(&file_of(i.ts))
            .unwrap()
            .push_str(&format!(
                "{{\"id\": {}, \"ad\": {}, \"ts\": \"{}\"}}\n",
                i.id,
                i.ad,
                stamp(i.ts)
            ));
    }
    for c in &clicks {
        click_files
            .get_mut(&file_of(c.ts))
            .unwrap()
            .push_str(&format!(
                "{{\"id\": {}, \"ad\": {}, \"ts\": \"{}\"}}\n",
                c.id,
                c.ad,
                stamp(c.ts)
            ));
    }
    let mut landed = 0u64;
    let land_next = |landed: &mut u64, count: u64| {
        for _ in 0..count {
            if *landed > LAST {
                return;
            }
            let name = format!("f-{landed:03}.json");
            write_atomic(&impressions_dir, &name, impression_files[landed].as_bytes());
            write_atomic(&clicks_dir, &name, click_files[landed].as_bytes());
            *landed += 1;
        }
    };

    let output = root.join("out");
    let job = job(root, &output, &root.join("ckpt"));
    land_next(&mut landed, 3);
    // Aimed crashes first, one batch each (scenario 16: between the state version and
    // the sink, between the sink's manifest and its rename, before the commit log).
    for point in [
        "after-state-commit",
        "after-sink-manifest",
        "after-sink",
        "after-commit",
    ] {
        run_to_crash_point(&job, point, &root.join(format!("{point}.err")));
        check_reader_view(&read_rows(&output), &format!("after a crash at {point}"));
        land_next(&mut landed, 1);
    }
    let mut kills = 0;
    for attempt in 0..400 {
        if kills >= 30 && landed > LAST {
            break;
        }
        let mut run = Millrace::spawn(&job, &[], &root.join(format!("run-{attempt}.err")));
        // Kills land anywhere from start-up to the end of the run; the range widens
        // with every attempt on a loaded machine (no assertion depends on where).
        std::thread::sleep(Duration::from_millis(rng.range(5, 150 + 5 * attempt)));
        let status = run.kill9();
        if !status.success() {
            assert!(
                status.code().is_none(),
                "millrace failed by itself ({status}):\n{}",
                run.stderr()
            );
            kills += 1;
        }
        check_reader_view(&read_rows(&output), &format!("after attempt {attempt}"));
        // The inputs keep growing between (and so during) the runs.
        land_next(&mut landed, rng.range(0, 2));
    }
    assert!(kills >= 30, "only {kills} kills");
    land_next(&mut landed, LAST + 1);
    run_success(&job, &root.join("final.err"));

    assert!(
        visible_tmp_files(&output).is_empty(),
        "temporaries visible to readers"
    );
    let actual = read_rows(&output);
    check_reader_view(&actual, "at the end");

    // The oracle: every pair within the range; a NULL row for each impression without
    // one that the final watermark has passed (left rows leave before W - 10 s).
    let watermark = impressions
        .iter()
        .map(|i| i.ts)
        .max()
        .unwrap()
        .min(clicks.iter().map(|c| c.ts).max().unwrap())
        - DELAY_S;
    let mut expected: BTreeSet<(i64, String)> = BTreeSet::new();
    for i in &impressions {
        let mut matched = false;
        for c in &clicks {
            if c.ad == i.ad && c.ts >= i.ts && c.ts <= i.ts + RANGE_S {
                expected.insert((i.id as i64, c.id.to_string()));
                matched = true;
            }
        }
        if !matched && i.ts < watermark - RANGE_S {
            expected.insert((i.id as i64, "NULL".to_string()));
        }
    }
    let actual: BTreeSet<(i64, String)> = actual.into_iter().collect();
    assert!(
        expected.len() > 100,
        "a meaningful test: {}",
        expected.len()
    );
    assert_eq!(
        actual, expected,
        "seed {seed}: output after {kills} kills differs from the oracle"
    );
}
