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

use super::options::Options;
use super::{
    DeclaredSource, Offset, SourceArgs, SourceBatch, SourceDefinition, StreamDef, StreamSource,
    no_columns, no_location,
};
use crate::checkpoint::{read_file, write_atomic};
use crate::error::{Error, Result};

/// Options of `STORED AS RATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateOptions {
    /// Rows generated per second of wall-clock time (default 1).
    pub rows_per_second: u64,
    /// Number of Arrow batches each micro-batch is split into (default 1).
    pub num_partitions: usize,
    /// At most this many rows per batch (`max_rows_per_trigger`, like Spark's
    /// `maxOffsetsPerTrigger`): after a long pause the rows of the paused time arrive
    /// over several batches instead of in one that may not fit in memory.
    pub max_rows_per_trigger: Option<u64>,
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
        // Only a missing file means a first run: any other read error must stop the
        // query, or a new start time would change every replayed row.
        let damaged = || {
            Error::Checkpoint(format!(
                "{} is damaged: restore it, or start the query with a new checkpoint directory",
                path.display()
            ))
        };
        let start_ms = match read_file(&path)? {
            Some(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|_| damaged())?["startTimeMs"]
                .as_i64()
                .ok_or_else(damaged)?,
            None => {
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
        let mut end = self.available().max(start);
        if let Some(limit) = self.options.max_rows_per_trigger {
            end = end.min(start.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
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
            "RateStreamSource[rowsPerSecond={}, numPartitions={}{}]",
            self.options.rows_per_second,
            self.options.num_partitions,
            self.options
                .max_rows_per_trigger
                .map_or(String::new(), |n| format!(", maxRowsPerTrigger={n}"))
        )
    }
}

impl SourceDefinition for RateOptions {
    fn format_name(&self) -> &'static str {
        "RATE"
    }

    fn open(&self, _table: &StreamDef, state_dir: &Path) -> Result<Box<dyn StreamSource>> {
        Ok(Box::new(RateSource::open(self.clone(), state_dir)?))
    }

    fn details(&self) -> Vec<String> {
        let mut options = vec![
            format!("rows_per_second {}", self.rows_per_second),
            format!("num_partitions {}", self.num_partitions),
        ];
        if let Some(limit) = self.max_rows_per_trigger {
            options.push(format!("max_rows_per_trigger {limit}"));
        }
        options
    }
}

/// `STORED AS RATE`: fixed columns, no location.
pub fn parse(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    let what = args.what;
    no_columns(&args.declared, what, "timestamp TIMESTAMP, value BIGINT")?;
    no_location(&args.location, what)?;
    let rows_per_second = options
        .take_parsed::<u64>("rows_per_second", "a positive whole number")?
        .unwrap_or(1);
    let num_partitions = options
        .take_parsed::<usize>("num_partitions", "a positive whole number")?
        .unwrap_or(1);
    let max_rows_per_trigger =
        options.take_parsed::<u64>("max_rows_per_trigger", "a positive whole number")?;
    if rows_per_second == 0 || num_partitions == 0 || max_rows_per_trigger == Some(0) {
        return Err(Error::Option(format!(
            "'rows_per_second', 'num_partitions' and 'max_rows_per_trigger' of {what} \
             must be at least 1"
        )));
    }
    Ok(DeclaredSource {
        definition: Arc::new(RateOptions {
            rows_per_second,
            num_partitions,
            max_rows_per_trigger,
        }),
        schema: rate_schema(),
        location: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::fault::{self, Op};

    fn options() -> RateOptions {
        RateOptions {
            rows_per_second: 10,
            num_partitions: 1,
            max_rows_per_trigger: None,
        }
    }

    /// A read error other than "not found" (here a symbolic link loop, a real
    /// `ELOOP` from the kernel) must stop the query, not fix a new start time:
    /// that would change the timestamps of every row a replay re-reads.
    #[test]
    fn an_unreadable_start_time_is_an_error_not_a_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("start.json");
        std::os::unix::fs::symlink(&path, &path).unwrap();
        let error = RateSource::open(options(), dir.path())
            .err()
            .expect("an error, not a new start time")
            .to_string();
        assert!(error.contains("start.json"), "{error}");
        assert!(
            path.symlink_metadata().unwrap().file_type().is_symlink(),
            "start.json was overwritten"
        );
    }

    #[test]
    fn an_io_error_reading_the_start_time_names_the_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = RateSource::open(options(), dir.path()).unwrap().start_ms;
        let before = std::fs::read(dir.path().join("start.json")).unwrap();
        {
            let _eio = fault::inject(dir.path(), Op::Read, libc::EIO);
            let error = RateSource::open(options(), dir.path())
                .err()
                .expect("EIO is not 'absent'")
                .to_string();
            assert!(error.contains("start.json"), "{error}");
            assert!(error.contains("Input/output error"), "{error}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("start.json")).unwrap(),
            before
        );
        let again = RateSource::open(options(), dir.path()).unwrap().start_ms;
        assert_eq!(again, first, "the start time survives the fault");
    }

    /// After a pause of an hour at 10 rows/s (36,000 rows waiting), batches take at
    /// most `max_rows_per_trigger` rows each, and the next one starts where the
    /// previous one ended.
    #[test]
    fn a_long_pause_is_spread_over_batches_of_at_most_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let hour_ago = now_ms() - 3_600_000;
        write_atomic(
            &dir.path().join("start.json"),
            json!({ "startTimeMs": hour_ago }).to_string().as_bytes(),
        )
        .unwrap();
        let limited = RateOptions {
            max_rows_per_trigger: Some(1_000),
            ..options()
        };
        let mut source = RateSource::open(limited, dir.path()).unwrap();
        let first = source.latest_offset(None).unwrap().unwrap();
        assert_eq!(first, json!({ "value": 1_000 }));
        let rows: usize = source
            .get_batch(None, &first)
            .unwrap()
            .batches
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 1_000);
        let second = source.latest_offset(Some(&first)).unwrap().unwrap();
        assert_eq!(second, json!({ "value": 2_000 }));
        // Without a limit the whole hour would be one batch.
        let mut unlimited = RateSource::open(options(), dir.path()).unwrap();
        let all = value_offset(unlimited.latest_offset(None).unwrap().as_ref()).unwrap();
        assert!(all >= 36_000, "{all}");
    }
}
