//! Durations written by users: trigger intervals (`'2 seconds'`), watermark delays
//! (`INTERVAL '5' SECOND`) and, later, window lengths.
//!
//! One parser serves all of them so `'500 milliseconds'`, `'1 minute'` and
//! `INTERVAL '10' SECOND` mean the same thing everywhere.

use std::time::Duration;

use sqlparser::ast::{DateTimeField, Expr, Interval, Value};

use crate::error::{Error, Result};

/// Parses `"<number> <unit>"` (e.g. `"2 seconds"`, `"500 ms"`, `"1.5 minutes"`).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.trim().parse().map_err(|_| {
        Error::Option(format!(
            "cannot read '{text}' as a duration: expected a number and a unit, e.g. '2 seconds' or '500 milliseconds'"
        ))
    })?;
    let unit = unit.trim();
    let unit = if unit.is_empty() { "second" } else { unit };
    let millis = number * unit_millis(unit).ok_or_else(|| {
        Error::Option(format!(
            "unknown time unit '{unit}' in '{text}': use milliseconds, seconds, minutes, hours or days"
        ))
    })?;
    let nanos = (millis * 1_000.0).round() * 1_000.0;
    if !nanos.is_finite() || nanos > MAX_DURATION_NANOS as f64 {
        return Err(too_long(text));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// The longest duration millrace accepts, in nanoseconds: `i64::MAX`, about 292
/// years (106,751 days). Window bounds, watermarks and timestamps are `i64`
/// nanoseconds, so a longer duration would wrap around and give windows that end
/// before they start.
pub const MAX_DURATION_NANOS: i64 = i64::MAX;

fn too_long(text: &str) -> Error {
    Error::Option(format!(
        "duration '{text}' is too long: durations must be at most 106751 days (about 292 \
         years), the range of a timestamp"
    ))
}

/// A checked duration as `i64` nanoseconds (every duration `parse_duration`
/// returns fits).
pub fn as_nanos_i64(duration: Duration) -> Result<i64> {
    i64::try_from(duration.as_nanos()).map_err(|_| too_long(&format!("{duration:?}")))
}

fn unit_millis(unit: &str) -> Option<f64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 7.0 * 86_400_000.0,
        _ => return None,
    })
}

/// Reads a SQL interval literal such as `INTERVAL '5' SECOND` or `INTERVAL '5 seconds'`.
pub fn interval_expr_duration(expr: &Expr) -> Result<Duration> {
    match expr {
        Expr::Interval(Interval {
            value,
            leading_field,
            ..
        }) => {
            let text = match value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
                    other => return Err(Error::Sql(format!("unexpected interval value {other}"))),
                },
                other => return Err(Error::Sql(format!("unexpected interval value {other}"))),
            };
            match leading_field {
                None => parse_duration(&text),
                Some(field) => {
                    let unit = match field {
                        DateTimeField::Millisecond | DateTimeField::Milliseconds => "ms",
                        DateTimeField::Second | DateTimeField::Seconds => "second",
                        DateTimeField::Minute | DateTimeField::Minutes => "minute",
                        DateTimeField::Hour | DateTimeField::Hours => "hour",
                        DateTimeField::Day | DateTimeField::Days => "day",
                        DateTimeField::Week(_) | DateTimeField::Weeks => "week",
                        other => {
                            return Err(Error::Sql(format!(
                                "interval unit {other} is not supported here: use MILLISECOND, SECOND, MINUTE, HOUR or DAY"
                            )));
                        }
                    };
                    parse_duration(&format!("{text} {unit}"))
                }
            }
        }
        other => Err(Error::Sql(format!(
            "expected an interval such as INTERVAL '5' SECOND, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_spellings() {
        assert_eq!(parse_duration("2 seconds").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("500 milliseconds").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("1.5 min").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn overflowing_durations_are_refused() {
        for text in [
            "99999999999 days",
            "106752 days",
            "99999999999999999999999999999999 ms",
        ] {
            let error = parse_duration(text).unwrap_err().to_string();
            assert!(
                error.contains("too long") || error.contains("cannot read"),
                "{text}: {error}"
            );
        }
        let longest = parse_duration("106751 days").unwrap();
        assert!(as_nanos_i64(longest).is_ok());
    }
}
