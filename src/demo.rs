//! The bundled example data: the oil-well pump sensors of the classic Spark streaming
//! tutorial, so the main job runs with no external service.
//!
//! - `sensors/*.csv`: `ResourceID,Date,Time,HZ,Displace,Flow,SedimentPPM,PressureLbs,ChlorinePPM`
//!   (no header), one file per hour of readings, a reading per pump per minute (`Time`
//!   as `H:MM`), or several a minute when asked (`Time` as `H:MM:SS`), so that windows
//!   shorter than a few minutes hold more than one reading;
//! - `vendors.csv`: `resid,pumpType,purchaseDate,serviceDate,vendor,longitude,latitude`;
//! - `maintenance.csv`: `resid,eventDate,technician,description`.
//!
//! Sensor files are written beside the directory and renamed into it, the way files
//! must arrive in a watched directory. Generation is deterministic for a given seed.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::checkpoint::create_dir_all;
use crate::error::{Error, Result};

/// The pumps of the example, with vendor data.
const PUMPS: [(&str, &str, &str, f64, f64); 6] = [
    ("COHUTTA", "HYDROPUMP", "WILLIAMS", 27.3442, -81.8485),
    ("NANTAHALLA", "HYDROPUMP", "GENERAL", 36.1847, -84.1232),
    ("THERMALITO", "HYDROPUMP", "WILLIAMS", 39.5225, -121.5486),
    ("BUTTE", "HYDROPUMP", "ROBINSON", 41.0132, -122.1567),
    ("CARGO", "GASPUMP", "GENERAL", 29.9011, -95.0922),
    ("LAGNAPPE", "GASPUMP", "SAMUELS", 30.2283, -92.0223),
];

/// Counts of what [`generate_sensor_data`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedData {
    /// Sensor readings written in all files.
    pub readings: u64,
    /// Readings with `PressureLbs < 5` (the alerts the main job should find).
    pub low_pressure: u64,
}

/// A small deterministic generator (xorshift), so the data needs no RNG dependency.
/// Shared with [`crate::sensor_events`].
pub(crate) struct Xorshift(pub(crate) u64);

impl Xorshift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [lo, hi).
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() % 1_000_000) as f64 / 1_000_000.0 * (hi - lo)
    }
}

/// How much sensor data [`generate_sensor_data`] writes. The default is the demo's:
/// eight hourly files, one reading per pump a minute, seed 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorDataOptions {
    /// Sensor files to write.
    pub files: u32,
    /// Minutes of readings per file.
    pub minutes: u32,
    /// Readings per pump per minute, evenly spaced (1 to 60). With 1 the files are the
    /// classic data (`Time` as `H:MM`); with more, `Time` carries the second
    /// (`H:MM:SS`), so that sub-minute windows (`pump_pressure_windows.sql`) hold
    /// several readings.
    pub readings_per_minute: u32,
    /// Seed of the generator: the same options write the same bytes.
    pub seed: u64,
}

impl Default for SensorDataOptions {
    fn default() -> Self {
        SensorDataOptions {
            files: 8,
            minutes: 60,
            readings_per_minute: 1,
            seed: 7,
        }
    }
}

/// Writes the example data under `dir` (`dir/sensors/`, `dir/vendors.csv`,
/// `dir/maintenance.csv`): `options.files` sensor files of `options.minutes` minutes of
/// readings each.
pub fn generate_sensor_data(dir: &Path, options: &SensorDataOptions) -> Result<GeneratedData> {
    let SensorDataOptions {
        files,
        minutes,
        readings_per_minute,
        seed,
    } = *options;
    if !(1..=60).contains(&readings_per_minute) {
        return Err(Error::Option(format!(
            "readings per minute must be between 1 and 60, got {readings_per_minute}"
        )));
    }
    let sensors = dir.join("sensors");
    let staging = dir.join(".staging");
    create_dir_all(&sensors)?;
    create_dir_all(&staging)?;
    let mut rng = Xorshift(seed.max(1));
    let mut counts = GeneratedData {
        readings: 0,
        low_pressure: 0,
    };
    for file in 0..files {
        let mut text = String::new();
        for minute in 0..minutes {
            let total = file * minutes + minute;
            let (day, hour, min) = (10 + total / 1440, (total / 60) % 24, total % 60);
            for reading in 0..readings_per_minute {
                // The classic data has no seconds; more than one reading a minute needs them.
                let time = if readings_per_minute == 1 {
                    format!("{hour}:{min:02}")
                } else {
                    format!("{hour}:{min:02}:{:02}", reading * 60 / readings_per_minute)
                };
                for (name, ..) in PUMPS {
                    let pressure = if rng.next().is_multiple_of(25) {
                        rng.range(0.0, 5.0)
                    } else {
                        rng.range(60.0, 95.0)
                    };
                    // Counted as written (one decimal), which is what the alerts see:
                    // 4.96 is written as 5.0 and is not an alert.
                    let pressure = format!("{pressure:.1}");
                    if pressure.parse::<f64>().is_ok_and(|p| p < 5.0) {
                        counts.low_pressure += 1;
                    }
                    counts.readings += 1;
                    let _ = writeln!(
                        text,
                        "{name},3/{day}/14,{time},{:.2},{:.2},{:.0},{:.2},{pressure},{:.2}",
                        rng.range(9.0, 12.0),
                        rng.range(1.5, 2.5),
                        rng.range(700.0, 900.0),
                        rng.range(1.0, 2.0),
                        rng.range(1.5, 2.5),
                    );
                }
            }
        }
        let name = format!("sensordata-{file:04}.csv");
        let staged = staging.join(&name);
        fs::write(&staged, text).map_err(Error::io(&staged))?;
        let target = sensors.join(&name);
        fs::rename(&staged, &target).map_err(Error::io(&target))?;
    }
    fs::remove_dir(&staging).map_err(Error::io(&staging))?;

    let mut vendors =
        String::from("resid,pumpType,purchaseDate,serviceDate,vendor,longitude,latitude\n");
    let mut maintenance = String::from("resid,eventDate,technician,description\n");
    const TECHNICIANS: [&str; 3] = ["J.DOE", "A.KIM", "R.DIAZ"];
    const WORK: [&str; 4] = [
        "Install",
        "Repair seal",
        "Tighten mounts",
        "Replace pressure valve",
    ];
    for (i, (name, kind, vendor, lat, lon)) in PUMPS.iter().enumerate() {
        let _ = writeln!(
            vendors,
            "{name},{kind},{}/27/08,{}/9/14,{vendor},{lon},{lat}",
            1 + i % 12,
            1 + (i + 3) % 12
        );
        for event in 0..(1 + i % 3) {
            let _ = writeln!(
                maintenance,
                "{name},{}/{}/13,{},{}",
                1 + (i + event * 4) % 12,
                1 + (event * 7 + i) % 28,
                TECHNICIANS[(i + event) % 3],
                WORK[(i * 2 + event) % 4]
            );
        }
    }
    for (name, text) in [("vendors.csv", vendors), ("maintenance.csv", maintenance)] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(Error::io(&path))?;
    }
    Ok(counts)
}

/// The main job: `sql/examples/sensor_alerts.sql`, run by `millrace demo`.
pub const SENSOR_ALERTS_SQL: &str = include_str!("../sql/examples/sensor_alerts.sql");
