//! Session windows: the sessions of each key merge as events arrive.
//!
//! `session_window(ts, gap)` gives each row its own session `[ts, ts + gap)`. Grouped
//! by it, DataFusion's `Partial` step yields one state row per (key, initial session).
//! Before those states are merged into the kept ones, [`merge_sessions`] rewrites the
//! session column of every state row — kept and new — to the merged session it belongs
//! to: per key, rows sorted by session start join the current session while they
//! start at or before its end (Spark's `MergingSessionsIterator`), which then ends at
//! the latest end among them. The ordinary `PartialReduce` merge then combines the
//! accumulator states of rows that share (key, merged session), so a session's state
//! is exactly that of all its rows, and sessions that a new event bridges become one.
//!
//! A kept session that merges into a longer one disappears from the state under its
//! old bounds; the operator reports it as removed to the state store.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampNanosecondArray,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};
use crate::functions::{as_nanos, session_structs};

/// Rewrites the session column (`session`, one of the first `key_columns` columns) of
/// every row of `inputs` to its merged session, merging per value of the other key
/// columns. Returns the inputs in the same order and partitioning, without rows that
/// have no session (a NULL time or a gap that was not positive).
pub fn merge_sessions(
    inputs: &[RecordBatch],
    schema: &SchemaRef,
    session: usize,
    key_columns: usize,
) -> Result<Vec<RecordBatch>> {
    let all = concat_batches(schema, inputs)?;
    let rows = all.num_rows();
    let column = all.column(session).as_struct();
    let fields = column.fields().clone();
    let DataType::Timestamp(_, tz) = fields[0].data_type() else {
        return Err(Error::Unsupported(
            "the session_window() column must hold timestamps".to_string(),
        ));
    };
    let starts = as_nanos(column.column(0), tz)?;
    let starts = starts.as_primitive::<TimestampNanosecondType>();
    let ends = as_nanos(column.column(1), tz)?;
    let ends = ends.as_primitive::<TimestampNanosecondType>();

    let others: Vec<usize> = (0..key_columns).filter(|&i| i != session).collect();
    let keys = if others.is_empty() {
        None
    } else {
        let converter = RowConverter::new(
            others
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let columns: Vec<ArrayRef> = others.iter().map(|&i| all.column(i).clone()).collect();
        Some(converter.convert_columns(&columns)?)
    };
    let same_key = |a: usize, b: usize| keys.as_ref().is_none_or(|k| k.row(a) == k.row(b));

    let mut order: Vec<usize> = (0..rows)
        .filter(|&i| column.is_valid(i) && starts.is_valid(i) && ends.is_valid(i))
        .collect();
    order.sort_by(|&a, &b| {
        let by_key = match &keys {
            Some(k) => k.row(a).cmp(&k.row(b)),
            None => std::cmp::Ordering::Equal,
        };
        by_key.then(starts.value(a).cmp(&starts.value(b)))
    });

    let (mut merged_start, mut merged_end) = (vec![None; rows], vec![None; rows]);
    let mut first = 0;
    while first < order.len() {
        let start = starts.value(order[first]);
        let mut end = ends.value(order[first]);
        let mut next = first + 1;
        while next < order.len()
            && same_key(order[first], order[next])
            && starts.value(order[next]) <= end
        {
            end = end.max(ends.value(order[next]));
            next += 1;
        }
        for &row in &order[first..next] {
            merged_start[row] = Some(start);
            merged_end[row] = Some(end);
        }
        first = next;
    }

    let has_session: BooleanArray = merged_start.iter().map(|s| Some(s.is_some())).collect();
    let merged = session_structs(
        &TimestampNanosecondArray::from(merged_start),
        &TimestampNanosecondArray::from(merged_end),
        fields,
        Some(has_session.values().clone().into()),
    )?;
    let mut columns = all.columns().to_vec();
    columns[session] = Arc::new(merged);
    let all = RecordBatch::try_new(schema.clone(), columns)?;

    let mut out = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for input in inputs {
        let len = input.num_rows();
        let part = all.slice(offset, len);
        let keep = has_session.slice(offset, len);
        out.push(filter_record_batch(&part, &keep)?);
        offset += len;
    }
    Ok(out)
}
