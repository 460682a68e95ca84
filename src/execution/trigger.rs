//! When batches run (Spark's triggers).

use std::time::Duration;

use crate::duration::parse_duration;
use crate::error::{Error, Result};

/// When a streaming query runs its next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch at most every `interval`; `Duration::ZERO` (the default) runs the next
    /// batch as soon as the last one ended and new data exists.
    ProcessingTime(Duration),
    /// One batch, then stop.
    Once,
    /// Everything available when the query starts, in as many batches as the
    /// per-trigger limits need, then stop.
    AvailableNow,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::ProcessingTime(Duration::ZERO)
    }
}

impl Trigger {
    /// Reads the `trigger` option: `available_now`, `once`, or an interval (`'2 seconds'`).
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "available_now" | "availablenow" => Ok(Trigger::AvailableNow),
            "once" => Ok(Trigger::Once),
            "" | "default" | "continuous_batches" => Ok(Trigger::default()),
            other => parse_duration(other)
                .map(Trigger::ProcessingTime)
                .map_err(|e| {
                    let detail = match e {
                        Error::Option(message) => message,
                        e => e.to_string(),
                    };
                    Error::Option(format!(
                        "unknown trigger '{}': use 'available_now', 'once' or an interval such as \
                     '10 seconds' ({detail})",
                        value.trim()
                    ))
                }),
        }
    }

    /// Whether the query ends by itself once the data at hand is processed.
    pub fn is_finite(self) -> bool {
        matches!(self, Trigger::Once | Trigger::AvailableNow)
    }
}

/// How the watermarks of several watermarked tables in one query combine (Spark's
/// `spark.sql.streaming.multipleWatermarkPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatermarkPolicy {
    /// The slowest input decides (no input's data is late because another ran ahead);
    /// no watermark until every watermarked input has seen data.
    #[default]
    Min,
    /// The fastest input decides (state is dropped sooner; slower inputs' rows may be late).
    Max,
}

impl WatermarkPolicy {
    /// Reads the setting's value (`min` or `max`).
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "min" => Ok(WatermarkPolicy::Min),
            "max" => Ok(WatermarkPolicy::Max),
            other => Err(crate::error::Error::Option(format!(
                "unknown multiple_watermark_policy '{other}': use 'min' or 'max'"
            ))),
        }
    }
}
