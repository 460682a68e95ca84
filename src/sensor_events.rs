//! Sensor events with an event-time column, for windowed counts with a watermark
//! (`sql/examples/sensor_counts.sql`, written by `millrace generate-events`).
//!
//! The oil-well readings of [`crate::demo`] carry their time as two text fields (`Date`,
//! `Time`), and a `WATERMARK` needs a `TIMESTAMP` column of the table itself; these
//! events have one:
//!
//! - `events/events-NNNN.csv`: `sensor,ts,value` (no header), e.g.
//!   `sensor-3,2026-01-01 00:00:07.250,21.37`. File `n` holds `seconds` seconds of event
//!   time from 2026-01-01 00:00:00 + `n × seconds`, about `events_per_second` events a
//!   second, each from one of `sensors` sensors chosen at random, in time order.
//! - About one event in twenty is *late*: stamped 1 to 30 seconds before its place in
//!   the stream (never before its start), the way a device that lost its connection
//!   sends old readings. A watermark
//!   of a few seconds drops the ones whose window it has already passed.
//!
//! Files are written beside the directory and renamed into it, the way files must
//! arrive in a watched directory. Generation is deterministic for a given seed.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use chrono::{NaiveDate, TimeDelta};

use crate::checkpoint::create_dir_all;
use crate::demo::Xorshift;
use crate::error::{Error, Result};

/// How many events [`generate_sensor_events`] writes. The default (6 files of a minute,
/// 20 events a second from 5 sensors, seed 7) runs the example in a second or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDataOptions {
    /// Event files to write; `sensor_counts.sql` reads one per micro-batch.
    pub files: u32,
    /// Seconds of event time per file.
    pub seconds: u32,
    /// Average events per second of event time.
    pub events_per_second: u32,
    /// Distinct sensors (`sensor-0` ...).
    pub sensors: u32,
    /// Seed of the generator: the same options write the same bytes.
    pub seed: u64,
}

impl Default for EventDataOptions {
    fn default() -> Self {
        EventDataOptions {
            files: 6,
            seconds: 60,
            events_per_second: 20,
            sensors: 5,
            seed: 7,
        }
    }
}

/// Counts of what [`generate_sensor_events`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedEvents {
    /// Events written in all files.
    pub events: u64,
    /// Events stamped earlier than their place in the stream (some of them arrive
    /// behind the watermark; which ones depends on the query's delay).
    pub late: u64,
}

/// One event in `LATE_ONE_IN` is stamped early (late arrival).
const LATE_ONE_IN: u64 = 20;
/// The most a late event is stamped early, in milliseconds.
const MAX_LATENESS_MS: u64 = 30_000;

/// Writes `options.files` event files into `dir/events/` (see the module doc).
pub fn generate_sensor_events(dir: &Path, options: &EventDataOptions) -> Result<GeneratedEvents> {
    let EventDataOptions {
        files,
        seconds,
        events_per_second,
        sensors,
        seed,
    } = *options;
    if seconds == 0 || events_per_second == 0 || sensors == 0 {
        return Err(Error::Option(
            "seconds per file, events per second and sensors must each be at least 1".into(),
        ));
    }
    let events_dir = dir.join("events");
    let staging = dir.join(".staging-events");
    create_dir_all(&events_dir)?;
    create_dir_all(&staging)?;
    let start = NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    let per_file = u64::from(seconds) * u64::from(events_per_second);
    let span_ms = u64::from(seconds) * 1000;
    let mut rng = Xorshift(seed.max(1));
    let mut counts = GeneratedEvents { events: 0, late: 0 };
    let mut text = String::new();
    for file in 0..files {
        text.clear();
        let file_start_ms = u64::from(file) * span_ms;
        for i in 0..per_file {
            // Evenly spread over the file's span, with jitter inside each event's slot.
            let slot = span_ms / per_file.max(1);
            let mut at_ms = file_start_ms + i * span_ms / per_file + rng.next() % slot.max(1);
            if rng.next().is_multiple_of(LATE_ONE_IN) {
                let lateness = 1000 + rng.next() % (MAX_LATENESS_MS - 999);
                // Never before the stream's start: nothing was running then.
                if lateness <= at_ms {
                    at_ms -= lateness;
                    counts.late += 1;
                }
            }
            let ts = start + TimeDelta::milliseconds(at_ms as i64);
            let sensor = rng.next() % u64::from(sensors);
            let value = rng.range(18.0, 26.0);
            let _ = writeln!(
                text,
                "sensor-{sensor},{},{value:.2}",
                ts.format("%Y-%m-%d %H:%M:%S%.3f")
            );
            counts.events += 1;
        }
        let name = format!("events-{file:04}.csv");
        let staged = staging.join(&name);
        fs::write(&staged, &text).map_err(Error::io(&staged))?;
        let target = events_dir.join(&name);
        fs::rename(&staged, &target).map_err(Error::io(&target))?;
    }
    fs::remove_dir(&staging).map_err(Error::io(&staging))?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_events_it_counts_in_time_order_but_for_the_late_ones() {
        let dir = tempfile::tempdir().unwrap();
        let options = EventDataOptions {
            files: 2,
            seconds: 10,
            ..EventDataOptions::default()
        };
        let counts = generate_sensor_events(dir.path(), &options).unwrap();
        assert_eq!(counts.events, 2 * 10 * 20);
        let mut lines = Vec::new();
        for file in ["events-0000.csv", "events-0001.csv"] {
            let text = fs::read_to_string(dir.path().join("events").join(file)).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
        assert_eq!(lines.len() as u64, counts.events);
        // Late events are the ones earlier than the newest before them.
        let mut newest = String::new();
        let mut early = 0;
        for line in &lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 3, "{line}");
            assert!(fields[0].starts_with("sensor-"), "{line}");
            if fields[1] < newest.as_str() {
                early += 1;
            } else {
                newest = fields[1].to_string();
            }
        }
        assert!(
            counts.late > 0 && early <= counts.late,
            "{early} early, {counts:?}"
        );
        let again = tempfile::tempdir().unwrap();
        generate_sensor_events(again.path(), &options).unwrap();
        assert_eq!(
            fs::read(dir.path().join("events/events-0001.csv")).unwrap(),
            fs::read(again.path().join("events/events-0001.csv")).unwrap(),
            "not deterministic for a seed"
        );
    }
}
