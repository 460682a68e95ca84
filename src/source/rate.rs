//! The rate source: `(timestamp, value)` rows at `rows_per_second`, for testing and
//! benchmarking without any input data.
//!
//! Row `v` has `value = v` and `timestamp = start + v / rows_per_second`, where
//! `start` is the time the query first ran, stored in the checkpoint. Offsets are
//! row counts, so values count up with no gaps or repeats, across restarts too
//! (after a pause, the rows of the paused time arrive in the next batch).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::json;

use super::{Offset, SourceBatch, StreamSource};
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};

/// Options of `STORED AS RATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateOptions {
    /// Rows generated per second of wall-clock time (default 1).
    pub rows_per_second: u64,
    /// Number of Arrow batches each micro-batch is split into (default 1).
    pub num_partitions: usize,
}

/// The fixed schema of the rate source: `timestamp TIMESTAMP, value BIGINT`.
pub fn rate_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
        Field::new("value", DataType::Int64, false),
    ]))
}

/// A rate source opened for one query.
pub struct RateSource {
    options: RateOptions,
    start_ms: i64,
    bound: Option<i64>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RateSource {
    /// Opens the source, reading (or fixing, on the first run) its start time.
    pub fn open(options: RateOptions, state_dir: &Path) -> Result<Self> {
        let path: PathBuf = state_dir.join("start.json");
        let start_ms = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)?["startTimeMs"]
                .as_i64()
                .ok_or_else(|| Error::Checkpoint(format!("{} is damaged", path.display())))?,
            Err(_) => {
                let start = now_ms();
                write_atomic(
                    &path,
                    json!({ "startTimeMs": start }).to_string().as_bytes(),
                )?;
                start
            }
        };
        Ok(RateSource {
            options,
            start_ms,
            bound: None,
        })
    }

    fn available(&self) -> i64 {
        let elapsed = (now_ms() - self.start_ms).max(0) as i128;
        let rows = (elapsed * self.options.rows_per_second as i128 / 1000) as i64;
        self.bound.map_or(rows, |b| rows.min(b))
    }
}

fn value_offset(offset: Option<&Offset>) -> Result<i64> {
    match offset {
        None => Ok(0),
        Some(v) => v["value"]
            .as_i64()
            .ok_or_else(|| Error::Checkpoint(format!("rate source offset {v} has no 'value'"))),
    }
}

impl StreamSource for RateSource {
    fn schema(&self) -> SchemaRef {
        rate_schema()
    }

    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>> {
        let start = value_offset(start)?;
        let end = self.available().max(start);
        Ok((end > 0).then(|| json!({ "value": end })))
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        self.bound = Some(self.available());
        Ok(())
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch> {
        let (start, end) = (value_offset(start)?, value_offset(Some(end))?);
        let total = (end - start).max(0);
        let parts = self.options.num_partitions.max(1) as i64;
        let rps = self.options.rows_per_second.max(1) as i128;
        let mut out = SourceBatch::default();
        for p in 0..parts {
            let lo = start + total * p / parts;
            let hi = start + total * (p + 1) / parts;
            if lo == hi {
                continue;
            }
            let values = Int64Array::from_iter_values(lo..hi);
            let stamps = TimestampNanosecondArray::from_iter_values((lo..hi).map(|v| {
                (self.start_ms as i128 * 1_000_000 + v as i128 * 1_000_000_000 / rps) as i64
            }));
            out.batches.push(RecordBatch::try_new(
                rate_schema(),
                vec![Arc::new(stamps), Arc::new(values)],
            )?);
        }
        Ok(out)
    }

    fn commit(&mut self, _end: &Offset) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "RateStreamSource[rowsPerSecond={}, numPartitions={}]",
            self.options.rows_per_second, self.options.num_partitions
        )
    }
}
