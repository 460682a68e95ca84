//! The bundled example data: the oil-well pump sensors of the classic Spark streaming
//! tutorial, so the main job runs with no external service.
//!
//! - `sensors/*.csv`: `ResourceID,Date,Time,HZ,Displace,Flow,SedimentPPM,PressureLbs,ChlorinePPM`
//!   (no header), one file per hour of readings, a reading per pump per minute;
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
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() % 1_000_000) as f64 / 1_000_000.0 * (hi - lo)
    }
}

/// Writes the example data under `dir` (`dir/sensors/`, `dir/vendors.csv`,
/// `dir/maintenance.csv`): `files` sensor files of `minutes` readings per pump each.
pub fn generate_sensor_data(
    dir: &Path,
    files: u32,
    minutes: u32,
    seed: u64,
) -> Result<GeneratedData> {
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
            for (name, ..) in PUMPS {
                let pressure = if rng.next().is_multiple_of(25) {
                    rng.range(0.0, 5.0)
                } else {
                    rng.range(60.0, 95.0)
                };
                if pressure < 5.0 {
                    counts.low_pressure += 1;
                }
                counts.readings += 1;
                let _ = writeln!(
                    text,
                    "{name},3/{day}/14,{hour}:{min:02},{:.2},{:.2},{:.0},{:.2},{:.1},{:.2}",
                    rng.range(9.0, 12.0),
                    rng.range(1.5, 2.5),
                    rng.range(700.0, 900.0),
                    rng.range(1.0, 2.0),
                    pressure,
                    rng.range(1.5, 2.5),
                );
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
