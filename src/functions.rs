//! SQL functions millrace adds to DataFusion for streaming queries, with Spark's names
//! and meaning:
//!
//! - `window(ts, size [, slide [, start]])`: the event-time window holding `ts`, as a
//!   struct `{start, end}`, for `GROUP BY`. Tumbling when `slide` is left out (or equals
//!   `size`); a smaller `slide` gives sliding windows, each row in `size / slide` of
//!   them — the planner expands those (see `planning::sliding_windows`). Spark names the
//!   column `window`; here write `window(ts, ...) AS window` (DataFusion identifies an
//!   expression by its name, so a function cannot rename its own column). Durations
//!   are strings (`'10 seconds'`) or intervals (`INTERVAL '10' SECOND`); `start`
//!   shifts the windows (Spark's `startTime`).
//! - `window_time(window)`: the window's last instant, `end - 1 microsecond`, as in Spark.
//! - `session_window(ts, gap)`: a row's initial session `{start: ts, end: ts + gap}`;
//!   grouped by, the streaming aggregation merges the overlapping sessions of each key
//!   (see `execution::sessions`). `gap` is a literal duration or, as in Spark, an
//!   expression evaluated per row (a duration string or an interval); rows whose gap
//!   is not positive get no session (NULL) and are left out of the aggregation. Write
//!   `session_window(ts, ...) AS session_window`.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StructArray, TimestampNanosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, TimeUnit, TimestampNanosecondType,
};
use datafusion::common::{DataFusionError, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use crate::duration::parse_duration;

/// Registers millrace's functions in a DataFusion context.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(WindowFunction::new()));
    ctx.register_udf(ScalarUDF::from(WindowTimeFunction::new()));
    ctx.register_udf(ScalarUDF::from(WindowListFunction::new()));
    ctx.register_udf(ScalarUDF::from(SessionWindowFunction::new()));
}

/// Name of Spark's session window function.
pub const SESSION_WINDOW: &str = "session_window";

/// Name of the internal function listing every window a row belongs to.
pub const WINDOW_LIST: &str = "__millrace_window_list";

/// `__millrace_window_list(ts, size, slide, start)`: every (sliding) window holding
/// `ts`, as a list of `{start, end}` structs. Not for users: the planner puts it, with
/// an unnest, under an aggregation grouped by a sliding `window()` (Spark's Expand).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowListFunction {
    signature: Signature,
}

impl WindowListFunction {
    /// The function, ready to register.
    pub fn new() -> Self {
        WindowListFunction {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl Default for WindowListFunction {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for WindowListFunction {
    fn name(&self) -> &str {
        WINDOW_LIST
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        plan_err!("{WINDOW_LIST} needs its arguments to plan its type")
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> datafusion::common::Result<FieldRef> {
        window_field(&args, WINDOW_LIST, |window| {
            DataType::List(Arc::new(Field::new("item", window, true)))
        })
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let (size, slide, offset) = invoked_window_spec(&args)?;
        let DataType::List(item) = args.return_type().clone() else {
            return exec_err!("{WINDOW_LIST} returns a list");
        };
        let DataType::Struct(fields) = item.data_type().clone() else {
            return exec_err!("{WINDOW_LIST} returns a list of structs");
        };
        let DataType::Timestamp(_, tz) = fields[0].data_type() else {
            return exec_err!("{WINDOW_LIST} returns timestamps");
        };
        let ts = args.args[0].to_array(args.number_rows)?;
        let nanos = as_nanos(&ts, tz)?;
        let nanos = nanos.as_primitive::<TimestampNanosecondType>();
        let (mut starts, mut offsets) = (Vec::new(), vec![0i32]);
        for t in nanos.iter() {
            if let Some(t) = t {
                // The latest window holding t, then earlier ones while they still do.
                let mut start = window_start(t, offset, slide)?;
                let mut found = Vec::new();
                while window_end(start, size)? > t {
                    found.push(start);
                    match start.checked_sub(slide) {
                        Some(earlier) => start = earlier,
                        None => break,
                    }
                }
                starts.extend(found.into_iter().rev());
            }
            offsets.push(starts.len() as i32);
        }
        let starts: TimestampNanosecondArray = starts.into_iter().map(Some).collect();
        let windows = window_structs(&starts, size, fields, None)?;
        let list = datafusion::arrow::array::ListArray::try_new(
            item,
            datafusion::arrow::buffer::OffsetBuffer::new(offsets.into()),
            Arc::new(windows),
            ts.logical_nulls(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list) as ArrayRef))
    }
}

/// The struct type of a window over timestamps of `unit` and time zone `tz`.
fn window_type(unit: TimeUnit, tz: Option<Arc<str>>) -> DataType {
    let ts = DataType::Timestamp(unit, tz);
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ]))
}

/// The planned field of a window function: its duration arguments checked, its time
/// argument a timestamp, its type the window struct as `wrap` shapes it.
fn window_field(
    args: &ReturnFieldArgs,
    name: &str,
    wrap: impl Fn(DataType) -> DataType,
) -> datafusion::common::Result<FieldRef> {
    window_spec(args.scalar_arguments)?;
    match args.arg_fields.first().map(|f| f.data_type()) {
        Some(DataType::Timestamp(unit, tz)) => Ok(Arc::new(Field::new(
            name,
            wrap(window_type(*unit, tz.clone())),
            true,
        ))),
        Some(other) => plan_err!("window() needs a TIMESTAMP column, got {other}"),
        None => plan_err!("window() takes (time column, size [, slide [, start]])"),
    }
}

/// Timestamps of any unit as nanoseconds (time zone `tz`), for window arithmetic.
pub(crate) fn as_nanos(
    ts: &ArrayRef,
    tz: &Option<Arc<str>>,
) -> datafusion::common::Result<ArrayRef> {
    Ok(cast(
        ts,
        &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
    )?)
}

/// Window structs `{start, end = start + size}` from window starts in nanoseconds, in
/// the unit and time zone of `fields`.
fn window_structs(
    starts: &TimestampNanosecondArray,
    size: i64,
    fields: Fields,
    nulls: Option<datafusion::arrow::buffer::NullBuffer>,
) -> datafusion::common::Result<StructArray> {
    let ends: TimestampNanosecondArray = starts
        .iter()
        .map(|s| s.map(|s| window_end(s, size)).transpose())
        .collect::<datafusion::common::Result<_>>()?;
    session_structs(starts, &ends, fields, nulls)
}

/// A duration argument given as a literal: a string or a day-time interval.
fn duration_literal(
    name: &str,
    value: Option<&ScalarValue>,
) -> datafusion::common::Result<Duration> {
    let text = match value {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s))) => s.clone(),
        Some(ScalarValue::IntervalMonthDayNano(Some(v))) if v.months == 0 => {
            let nanos = v.days as i128 * 86_400_000_000_000 + v.nanoseconds as i128;
            return interval_nanos(name, nanos);
        }
        Some(ScalarValue::IntervalDayTime(Some(v))) => {
            let nanos = (v.days as i128 * 86_400_000 + v.milliseconds as i128) * 1_000_000;
            return interval_nanos(name, nanos);
        }
        _ => {
            return plan_err!(
                "{name} of window() must be a literal duration such as '10 seconds' or INTERVAL '10' SECOND (months are not fixed durations)"
            );
        }
    };
    parse_duration(&text).map_err(|e| DataFusionError::Plan(format!("{name} of window(): {e}")))
}

/// An interval literal's length, refused if negative or longer than a timestamp's
/// range (it would wrap around and give windows ending before they start).
fn interval_nanos(name: &str, nanos: i128) -> datafusion::common::Result<Duration> {
    if nanos < 0 {
        return plan_err!("{name} of window() must be positive");
    }
    if nanos > crate::duration::MAX_DURATION_NANOS as i128 {
        return plan_err!(
            "{name} of window() is too long: durations must be at most 106751 days (about \
             292 years), the range of a timestamp"
        );
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// `start + size`: the end of a window, or an error if it is past the last timestamp.
fn window_end(start: i64, size: i64) -> datafusion::common::Result<i64> {
    start.checked_add(size).ok_or_else(|| {
        DataFusionError::Execution(format!(
            "a window starting at {start} ns since 1970 with a size of {size} ns ends after the \
             last representable timestamp (year 2262): use a smaller window or check the \
             event times"
        ))
    })
}

/// The start of the window of size `size` (offset `offset`) holding `t`.
fn window_start(t: i64, offset: i64, size: i64) -> datafusion::common::Result<i64> {
    t.checked_sub(offset)
        .and_then(|shifted| t.checked_sub(shifted.rem_euclid(size)))
        .ok_or_else(|| {
            DataFusionError::Execution(format!(
                "the window of timestamp {t} ns since 1970 starts before the first \
                 representable timestamp (year 1677): check the event times"
            ))
        })
}

/// Spark's `window(timeColumn, windowDuration [, slideDuration [, startTime]])`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFunction {
    signature: Signature,
}

impl WindowFunction {
    /// The function, ready to register.
    pub fn new() -> Self {
        WindowFunction {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl Default for WindowFunction {
    fn default() -> Self {
        Self::new()
    }
}

/// [`window_spec`] of a call being executed (its duration arguments are constants).
fn invoked_window_spec(args: &ScalarFunctionArgs) -> datafusion::common::Result<(i64, i64, i64)> {
    let scalars: Vec<Option<&ScalarValue>> = args
        .args
        .iter()
        .map(|a| match a {
            ColumnarValue::Scalar(s) => Some(s),
            ColumnarValue::Array(_) => None,
        })
        .collect();
    window_spec(&scalars)
}

/// The window size, slide and start offset (ns) of a `window()` call, checked.
pub fn window_spec(
    scalars: &[Option<&ScalarValue>],
) -> datafusion::common::Result<(i64, i64, i64)> {
    if !(2..=4).contains(&scalars.len()) {
        return plan_err!("window() takes (time column, size [, slide [, start]])");
    }
    let size = duration_literal("the window size", scalars[1])?;
    if size.is_zero() {
        return plan_err!("the window size of window() must be positive");
    }
    let slide = match scalars.get(2) {
        Some(slide) => duration_literal("the slide", *slide)?,
        None => size,
    };
    if slide.is_zero() || slide > size {
        return plan_err!("the slide of window() must be positive and at most the window size");
    }
    let start = match scalars.get(3) {
        Some(start) => duration_literal("the start offset", *start)?,
        None => Duration::ZERO,
    };
    Ok((
        size.as_nanos() as i64,
        slide.as_nanos() as i64,
        start.as_nanos() as i64,
    ))
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        "window"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        plan_err!("window() needs its arguments to plan its type")
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> datafusion::common::Result<FieldRef> {
        window_field(&args, "window", |window| window)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let (size, slide, offset) = invoked_window_spec(&args)?;
        if slide != size {
            return exec_err!(
                "a sliding window() (slide smaller than size) puts a row in several windows: \
                 use it in GROUP BY, where millrace expands it"
            );
        }
        let DataType::Struct(fields) = args.return_type().clone() else {
            return exec_err!("window() returns a struct");
        };
        let DataType::Timestamp(_, tz) = fields[0].data_type() else {
            return exec_err!("window() returns timestamps");
        };
        let ts = args.args[0].to_array(args.number_rows)?;
        let nanos = as_nanos(&ts, tz)?;
        let starts: TimestampNanosecondArray = nanos
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .map(|t| t.map(|t| window_start(t, offset, size)).transpose())
            .collect::<datafusion::common::Result<_>>()?;
        let window = window_structs(&starts, size, fields, ts.logical_nulls())?;
        Ok(ColumnarValue::Array(Arc::new(window) as ArrayRef))
    }
}

/// Spark's `window_time(window)`: the last instant of a window, `end - 1 microsecond`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowTimeFunction {
    signature: Signature,
}

impl WindowTimeFunction {
    /// The function, ready to register.
    pub fn new() -> Self {
        WindowTimeFunction {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for WindowTimeFunction {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for WindowTimeFunction {
    fn name(&self) -> &str {
        "window_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        match arg_types.first() {
            Some(DataType::Struct(fields))
                if fields.len() == 2
                    && fields[1].name() == "end"
                    && matches!(fields[1].data_type(), DataType::Timestamp(_, _)) =>
            {
                Ok(fields[1].data_type().clone())
            }
            other => plan_err!("window_time() takes a window (from window()), got {other:?}"),
        }
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let window = args.args[0].to_array(args.number_rows)?;
        let window = window.as_struct();
        let end = window.column(1);
        let DataType::Timestamp(unit, tz) = end.data_type().clone() else {
            return exec_err!("window_time() takes a window");
        };
        let nanos = as_nanos(end, &tz)?;
        let last: TimestampNanosecondArray = nanos
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .map(|e| e.map(|e| e - 1_000))
            .collect();
        let last = cast(
            &last.with_timezone_opt(tz.clone()),
            &DataType::Timestamp(unit, tz),
        )?;
        Ok(ColumnarValue::Array(last))
    }
}

/// Spark's `session_window(timeColumn, gapDuration)`: the session a row opens,
/// `{start: ts, end: ts + gap}`, which the streaming aggregation then merges with the
/// overlapping sessions of the same key.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionWindowFunction {
    signature: Signature,
}

impl SessionWindowFunction {
    /// The function, ready to register.
    pub fn new() -> Self {
        SessionWindowFunction {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl Default for SessionWindowFunction {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for SessionWindowFunction {
    fn name(&self) -> &str {
        SESSION_WINDOW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        plan_err!("session_window() needs its arguments to plan its type")
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> datafusion::common::Result<FieldRef> {
        // A literal gap is checked now; a per-row gap must be text or an interval.
        match args.scalar_arguments.get(1) {
            Some(Some(gap)) => {
                let gap = duration_literal("the gap", Some(gap))?;
                if gap.is_zero() {
                    return plan_err!("the gap of session_window() must be positive");
                }
            }
            _ => match args.arg_fields.get(1).map(|f| f.data_type()) {
                Some(
                    DataType::Utf8
                    | DataType::Utf8View
                    | DataType::LargeUtf8
                    | DataType::Interval(_),
                ) => {}
                other => {
                    return plan_err!(
                        "the gap of session_window() must be a duration: a string such as \
                         '5 minutes' or an interval, got {other:?}"
                    );
                }
            },
        }
        match args.arg_fields.first().map(|f| f.data_type()) {
            Some(DataType::Timestamp(unit, tz)) => Ok(Arc::new(Field::new(
                SESSION_WINDOW,
                window_type(*unit, tz.clone()),
                true,
            ))),
            Some(other) => plan_err!("session_window() needs a TIMESTAMP column, got {other}"),
            None => plan_err!("session_window() takes (time column, gap)"),
        }
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let DataType::Struct(fields) = args.return_type().clone() else {
            return exec_err!("session_window() returns a struct");
        };
        let DataType::Timestamp(_, tz) = fields[0].data_type() else {
            return exec_err!("session_window() returns timestamps");
        };
        let ts = args.args[0].to_array(args.number_rows)?;
        let nanos = as_nanos(&ts, tz)?;
        let nanos = nanos.as_primitive::<TimestampNanosecondType>();
        let gaps: Vec<Option<i64>> = match &args.args[1] {
            ColumnarValue::Scalar(gap) => {
                let gap = duration_literal("the gap", Some(gap))?.as_nanos() as i64;
                vec![Some(gap); args.number_rows]
            }
            ColumnarValue::Array(gaps) => row_gaps(gaps)?,
        };
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut valid = Vec::new();
        for (t, gap) in nanos.iter().zip(gaps) {
            match (t, gap) {
                (Some(t), Some(gap)) if gap > 0 => {
                    starts.push(Some(t));
                    ends.push(Some(window_end(t, gap)?));
                    valid.push(true);
                }
                _ => {
                    starts.push(None);
                    ends.push(None);
                    valid.push(false);
                }
            }
        }
        let session = session_structs(
            &TimestampNanosecondArray::from(starts),
            &TimestampNanosecondArray::from(ends),
            fields,
            Some(valid.into()),
        )?;
        Ok(ColumnarValue::Array(Arc::new(session) as ArrayRef))
    }
}

/// Per-row gaps in nanoseconds from a text or interval column; a gap that is NULL,
/// unreadable or in months is `None` (the row gets no session).
fn row_gaps(gaps: &ArrayRef) -> datafusion::common::Result<Vec<Option<i64>>> {
    let text = match gaps.data_type() {
        DataType::Interval(_) => {
            return Ok((0..gaps.len())
                .map(|i| {
                    let value = ScalarValue::try_from_array(gaps, i).ok()?;
                    if value.is_null() {
                        return None;
                    }
                    duration_literal("the gap", Some(&value))
                        .ok()
                        .map(|d| d.as_nanos() as i64)
                })
                .collect());
        }
        _ => cast(gaps, &DataType::Utf8)?,
    };
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|g| {
            g.and_then(|g| parse_duration(g).ok())
                .map(|d| d.as_nanos() as i64)
        })
        .collect())
}

/// Window or session structs `{start, end}` from nanosecond bounds, in the unit and
/// time zone of `fields`. Shared with the session merging of the streaming aggregation.
pub fn session_structs(
    starts: &TimestampNanosecondArray,
    ends: &TimestampNanosecondArray,
    fields: Fields,
    nulls: Option<datafusion::arrow::buffer::NullBuffer>,
) -> datafusion::common::Result<StructArray> {
    let DataType::Timestamp(unit, tz) = fields[0].data_type().clone() else {
        return exec_err!("a session holds timestamps");
    };
    let target = DataType::Timestamp(unit, tz.clone());
    let starts = cast(&starts.clone().with_timezone_opt(tz.clone()), &target)?;
    let ends = cast(&ends.clone().with_timezone_opt(tz), &target)?;
    Ok(StructArray::try_new(fields, vec![starts, ends], nulls)?)
}
