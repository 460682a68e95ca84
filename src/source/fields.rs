//! Columns built straight from the text fields of delimited records (CSV files and
//! CSV-encoded Kafka values).
//!
//! A field of a numeric, date, time or time-zone-less timestamp column is parsed as it
//! is read, with the very function Arrow's `cast` kernel applies to each value when it
//! casts text to that type (`Parser::parse`, or `string_to_datetime` for timestamps).
//! The values are therefore exactly those of building a text column and casting it,
//! without the intermediate text column: about half the cost of decoding a CSV file of
//! numbers. A column of any other type (text, booleans, decimals, timestamps with a
//! time zone, ...) is still gathered as text and cast afterwards.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, ArrowPrimitiveType, PrimitiveBuilder, StringArray, StringBuilder, new_null_array,
};
use datafusion::arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, Date32Type, Date64Type, Field, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};

/// A decoded column, before the malformed-record mode is applied.
pub(super) enum Column {
    /// The fields as text, still to be cast to the column's type.
    Text(StringArray),
    /// Values already of the column's type, with a null wherever a field was missing
    /// or unreadable.
    Parsed {
        /// The values.
        values: ArrayRef,
        /// The rows whose field could not be read as the column's type, each with the
        /// field's text, in row order.
        unreadable: Vec<(usize, String)>,
    },
}

/// The columns of a schema, filled one record at a time.
pub(super) struct FieldColumns {
    /// Per field: its builder, or `None` for a field the query does not read, which
    /// is neither checked nor parsed and comes out all NULL (see [`Self::pruned`]).
    builders: Vec<Option<Box<dyn ColumnBuilder>>>,
    fields: Vec<Arc<Field>>,
    rows: usize,
}

impl FieldColumns {
    /// Empty columns for `fields`, each parsing its values as it goes where its type
    /// allows it. Field `i` is read only if `read(i)`: the others are skipped, so a
    /// value that would not fit such a column never makes its record malformed (as
    /// Spark's CSV column pruning, `spark.sql.csv.parser.columnPruning.enabled`), and
    /// the column is all NULL. `rows`: how many records are expected (room is made
    /// for them up front).
    pub(super) fn pruned(fields: &[Arc<Field>], read: &dyn Fn(usize) -> bool, rows: usize) -> Self {
        FieldColumns {
            builders: fields
                .iter()
                .enumerate()
                .map(|(i, f)| read(i).then(|| builder_for(f.data_type(), rows)))
                .collect(),
            fields: fields.to_vec(),
            rows: 0,
        }
    }

    /// Appends one record: `field(i)` is the raw bytes of field `i` (`None` when the
    /// record has no such field). Missing and empty fields become nulls. Returns why
    /// the record is malformed if a field is not valid UTF-8 (the first such field);
    /// values that do not fit their column are collected per column instead.
    pub(super) fn push_record<'a>(
        &mut self,
        field: impl Fn(usize) -> Option<&'a [u8]>,
    ) -> Option<String> {
        let row = self.rows;
        self.rows += 1;
        let mut reason = None;
        for (i, builder) in self.builders.iter_mut().enumerate() {
            let Some(builder) = builder else {
                continue;
            };
            let text = match field(i).filter(|f| !f.is_empty()) {
                None => None,
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        reason.get_or_insert_with(|| format!("field {} is not valid UTF-8", i + 1));
                        None
                    }
                },
            };
            builder.push(row, text);
        }
        reason
    }

    /// The finished columns, in field order.
    pub(super) fn finish(self) -> Vec<Column> {
        let rows = self.rows;
        self.builders
            .into_iter()
            .zip(&self.fields)
            .map(|(builder, field)| match builder {
                Some(builder) => builder.finish(),
                None => Column::Parsed {
                    values: new_null_array(field.data_type(), rows),
                    unreadable: Vec::new(),
                },
            })
            .collect()
    }
}

/// Builds one column from its fields' text.
trait ColumnBuilder: Send {
    /// Appends row `row`'s field (`None`: null).
    fn push(&mut self, row: usize, text: Option<&str>);
    /// The column.
    fn finish(self: Box<Self>) -> Column;
}

fn builder_for(data_type: &DataType, rows: usize) -> Box<dyn ColumnBuilder> {
    fn parsed<P: Parser + Send>(rows: usize) -> Box<dyn ColumnBuilder> {
        Box::new(Parsed::<P>::new(P::parse, rows))
    }
    fn timestamps<T: ArrowTimestampType + Send>(rows: usize) -> Box<dyn ColumnBuilder> {
        // What `cast` does for a timestamp without a time zone: read in UTC, keep the
        // wall-clock time.
        Box::new(Parsed::<T>::new(
            |text| {
                let naive = string_to_datetime(&chrono::Utc, text).ok()?.naive_utc();
                T::from_naive_datetime(naive, None)
            },
            rows,
        ))
    }
    match data_type {
        DataType::Int8 => parsed::<Int8Type>(rows),
        DataType::Int16 => parsed::<Int16Type>(rows),
        DataType::Int32 => parsed::<Int32Type>(rows),
        DataType::Int64 => parsed::<Int64Type>(rows),
        DataType::UInt8 => parsed::<UInt8Type>(rows),
        DataType::UInt16 => parsed::<UInt16Type>(rows),
        DataType::UInt32 => parsed::<UInt32Type>(rows),
        DataType::UInt64 => parsed::<UInt64Type>(rows),
        DataType::Float32 => parsed::<Float32Type>(rows),
        DataType::Float64 => parsed::<Float64Type>(rows),
        DataType::Date32 => parsed::<Date32Type>(rows),
        DataType::Date64 => parsed::<Date64Type>(rows),
        DataType::Time32(TimeUnit::Second) => parsed::<Time32SecondType>(rows),
        DataType::Time32(TimeUnit::Millisecond) => parsed::<Time32MillisecondType>(rows),
        DataType::Time64(TimeUnit::Microsecond) => parsed::<Time64MicrosecondType>(rows),
        DataType::Time64(TimeUnit::Nanosecond) => parsed::<Time64NanosecondType>(rows),
        DataType::Timestamp(TimeUnit::Second, None) => timestamps::<TimestampSecondType>(rows),
        DataType::Timestamp(TimeUnit::Millisecond, None) => {
            timestamps::<TimestampMillisecondType>(rows)
        }
        DataType::Timestamp(TimeUnit::Microsecond, None) => {
            timestamps::<TimestampMicrosecondType>(rows)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, None) => {
            timestamps::<TimestampNanosecondType>(rows)
        }
        _ => Box::new(StringBuilder::with_capacity(rows, rows * 8)),
    }
}

/// A column parsed as it is read.
struct Parsed<P: ArrowPrimitiveType> {
    values: PrimitiveBuilder<P>,
    parse: fn(&str) -> Option<P::Native>,
    unreadable: Vec<(usize, String)>,
}

impl<P: ArrowPrimitiveType> Parsed<P> {
    fn new(parse: fn(&str) -> Option<P::Native>, rows: usize) -> Self {
        Parsed {
            values: PrimitiveBuilder::with_capacity(rows),
            parse,
            unreadable: Vec::new(),
        }
    }
}

impl<P: ArrowPrimitiveType + Send> ColumnBuilder for Parsed<P> {
    fn push(&mut self, row: usize, text: Option<&str>) {
        match text.map(|t| (t, (self.parse)(t))) {
            None => self.values.append_null(),
            Some((_, Some(value))) => self.values.append_value(value),
            Some((text, None)) => {
                self.values.append_null();
                self.unreadable.push((row, text.to_string()));
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Column {
        Column::Parsed {
            values: Arc::new(self.values.finish()),
            unreadable: self.unreadable,
        }
    }
}

impl ColumnBuilder for StringBuilder {
    fn push(&mut self, _row: usize, text: Option<&str>) {
        self.append_option(text);
    }

    fn finish(mut self: Box<Self>) -> Column {
        Column::Text(StringBuilder::finish(&mut self))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::compute::{CastOptions, cast_with_options};
    use datafusion::arrow::util::display::FormatOptions;

    use super::*;

    /// Texts that probe each parser's edges: signs, spaces, overflow, exponents,
    /// special floats, dates and times in many spellings, time zones, rubbish.
    const TEXTS: &[&str] = &[
        "0",
        "-0",
        "+7",
        "42",
        " 42",
        "42 ",
        "-129",
        "128",
        "255",
        "256",
        "-1",
        "65536",
        "2147483648",
        "-9223372036854775808",
        "9223372036854775808",
        "18446744073709551615",
        "1e3",
        "1.5",
        "-1.5e-3",
        ".5",
        "5.",
        "NaN",
        "nan",
        "inf",
        "-Infinity",
        "0x10",
        "1_000",
        "abc",
        "",
        "2026-01-01",
        "2026-1-1",
        "2026-02-29",
        "2024-02-29",
        "2026-13-01",
        "2026-01-01 00:00:00",
        "2026-01-01T12:34:56.789",
        "2026-01-01 12:34:56.123456789",
        "2026-01-01 12:34:56.1234567891",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00+02:00",
        "2026-01-01 24:00:00",
        "2026-01-01 23:59:60",
        "1677-09-21 00:12:43",
        "2262-04-12 00:00:00",
        "12:34:56",
        "12:34",
        "12:34:56.789",
        "25:00:00",
        "1969-12-31 23:59:59.999",
        "0001-01-01 00:00:00",
        "99999-01-01 00:00:00",
    ];

    const TYPES: &[DataType] = &[
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt16,
        DataType::UInt32,
        DataType::UInt64,
        DataType::Float32,
        DataType::Float64,
        DataType::Date32,
        DataType::Date64,
        DataType::Time32(TimeUnit::Second),
        DataType::Time32(TimeUnit::Millisecond),
        DataType::Time64(TimeUnit::Microsecond),
        DataType::Time64(TimeUnit::Nanosecond),
        DataType::Timestamp(TimeUnit::Second, None),
        DataType::Timestamp(TimeUnit::Millisecond, None),
        DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Timestamp(TimeUnit::Nanosecond, None),
    ];

    #[test]
    fn parsing_as_read_gives_what_casting_the_text_gives() {
        let options = CastOptions {
            safe: true,
            format_options: FormatOptions::default(),
        };
        // Null (no field) first, then every probe.
        let texts: Vec<Option<&str>> = std::iter::once(None)
            .chain(TEXTS.iter().map(|t| Some(*t)))
            .collect();
        let text_array = StringArray::from(texts.clone());
        for data_type in TYPES {
            let mut builder = builder_for(data_type, 0);
            for (row, text) in texts.iter().enumerate() {
                builder.push(row, text.filter(|t| !t.is_empty()));
            }
            let Column::Parsed { values, unreadable } = builder.finish() else {
                panic!("{data_type} is not parsed as it is read");
            };
            let cast = cast_with_options(&text_array, data_type, &options).unwrap();
            // An empty field is a null before it reaches either path.
            let empty = texts.iter().position(|t| *t == Some("")).unwrap();
            for (row, text) in texts.iter().enumerate() {
                if row == empty {
                    assert!(values.is_null(row));
                    continue;
                }
                assert_eq!(
                    values.slice(row, 1).to_data(),
                    cast.slice(row, 1).to_data(),
                    "{data_type}: {text:?}"
                );
            }
            let expected_unreadable: Vec<(usize, String)> = (0..texts.len())
                .filter(|&row| row != empty && cast.is_null(row) && texts[row].is_some())
                .map(|row| (row, texts[row].unwrap().to_string()))
                .collect();
            assert_eq!(unreadable, expected_unreadable, "{data_type}");
            assert!(
                unreadable.len() < texts.len() - 1,
                "{data_type}: no probe was readable"
            );
        }
    }

    #[test]
    fn other_types_are_gathered_as_text() {
        for data_type in [
            DataType::Utf8,
            DataType::Boolean,
            DataType::Decimal128(10, 2),
            DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
        ] {
            let fields = [Arc::new(Field::new("c", data_type, true))];
            let mut columns = FieldColumns::pruned(&fields, &|_| true, 0);
            assert_eq!(columns.push_record(|_| Some(b"1".as_slice())), None);
            assert_eq!(
                columns.push_record(|_| Some(b"\xff".as_slice())).as_deref(),
                Some("field 1 is not valid UTF-8")
            );
            assert!(matches!(columns.finish().as_slice(), [Column::Text(t)] if t.len() == 2));
        }
    }
}
