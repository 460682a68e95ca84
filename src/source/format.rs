//! Decoding one file of a file source into Arrow, with Spark's malformed-record modes.
//!
//! - CSV: the `csv` crate splits records (with their line numbers and byte spans);
//!   [`fields`](super::fields) parses numeric, date and time fields as they are read,
//!   with the function Arrow's `cast` kernel uses for each value, and gathers other
//!   columns as text that is cast afterwards; either way a value that does not fit its
//!   column shows up as a null where the text was not null.
//! - JSON lines: Arrow's JSON decoder reads the whole file in one pass; only when that
//!   fails is the file decoded line by line to find, and handle, the bad lines.
//! - TEXT: one `value` row per line. PARQUET: columns are matched by name and cast.
//!
//! A record is *malformed* when it has the wrong number of fields, a value that cannot
//! be read as its column's type, a null in a `NOT NULL` column, or (JSON) is not an
//! object. What happens then is the table's `mode`:
//! `permissive` keeps the row with nulls for the bad fields and puts the raw line in a
//! declared `_corrupt_record` column (a row that would need a null in a `NOT NULL`
//! column cannot be kept, and is dropped and counted); `drop_malformed` drops and
//! counts it; `fail_fast` stops the query with the file name and line number.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::compute::{
    CastOptions, cast_with_options, concat_batches, filter_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::fields::{Column, FieldColumns};
use crate::error::{Error, Result};

/// Name of the optional column that receives the raw text of malformed records.
pub const CORRUPT_RECORD_COLUMN: &str = "_corrupt_record";

/// What to do with a malformed record (Spark's `mode` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedMode {
    /// Keep the row: bad fields become null, the raw line goes to `_corrupt_record`.
    Permissive,
    /// Drop the row and count it in progress (`numMalformedRowsDropped`).
    DropMalformed,
    /// Stop the query with the file name and line number.
    FailFast,
}

impl MalformedMode {
    /// The option value (`permissive`, `drop_malformed`, `fail_fast`), for `\d`.
    pub fn name(self) -> &'static str {
        match self {
            MalformedMode::Permissive => "permissive",
            MalformedMode::DropMalformed => "drop_malformed",
            MalformedMode::FailFast => "fail_fast",
        }
    }

    /// Reads the option value (`permissive`, `drop_malformed`, `fail_fast`; Spark's
    /// upper-case spellings are accepted too).
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().replace('-', "_").as_str() {
            "permissive" => Ok(MalformedMode::Permissive),
            "drop_malformed" | "dropmalformed" => Ok(MalformedMode::DropMalformed),
            "fail_fast" | "failfast" => Ok(MalformedMode::FailFast),
            _ => Err(Error::Option(format!(
                "unknown mode '{value}': use 'permissive', 'drop_malformed' or 'fail_fast'"
            ))),
        }
    }
}

/// How the bytes of a file become rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// Delimited text; `has_header` skips (and checks) a header line.
    Csv {
        /// The first line names the columns (checked against the declaration).
        has_header: bool,
        /// Field separator byte (default `,`).
        delimiter: u8,
    },
    /// One JSON object per line.
    Json,
    /// One `value` row per line.
    Text,
    /// Apache Parquet.
    Parquet,
}

/// A file format with its malformed-record policy.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFormat {
    /// How bytes become rows.
    pub encoding: Encoding,
    /// What to do with malformed records.
    pub mode: MalformedMode,
}

impl FileFormat {
    /// The `STORED AS` name.
    pub fn name(&self) -> &'static str {
        match self.encoding {
            Encoding::Csv { .. } => "CSV",
            Encoding::Json => "JSON",
            Encoding::Text => "TEXT",
            Encoding::Parquet => "PARQUET",
        }
    }

    /// Reads one whole file into a batch of `schema`, applying the malformed-record mode.
    pub fn read_file(&self, path: &Path, schema: &SchemaRef) -> Result<Decoded> {
        self.read_file_columns(path, schema, None)
    }

    /// [`Self::read_file`] for a query that reads only `columns` (indices into
    /// `schema`; `None`: all). CSV files skip the other columns' fields (as Spark's
    /// CSV column pruning does): they are neither parsed nor checked, so a value that
    /// would not fit such a column does not make its record malformed, and the column
    /// is NULL. `NOT NULL` columns and, when the query reads `_corrupt_record`, every
    /// column are still read. Other formats read every column.
    pub fn read_file_columns(
        &self,
        path: &Path,
        schema: &SchemaRef,
        columns: Option<&[usize]>,
    ) -> Result<Decoded> {
        let shape = Shape::new(schema).reading(columns);
        match &self.encoding {
            Encoding::Parquet => read_parquet(path, &shape),
            encoding => {
                let bytes = std::fs::read(path).map_err(Error::io(path))?;
                let rows = match encoding {
                    Encoding::Csv {
                        has_header,
                        delimiter,
                    } => read_csv(&bytes, path, *has_header, *delimiter, &shape)?,
                    Encoding::Json => read_json(&bytes, &shape)?,
                    _ => read_text(&bytes, &shape)?,
                };
                rows.resolve(path, self.mode, &shape)
            }
        }
    }

    /// Checks a file against the declared schema without reading its rows (CSV header,
    /// Parquet columns), so a wrong declaration is refused when the table is created.
    pub fn check_file(&self, path: &Path, schema: &SchemaRef) -> Result<()> {
        let shape = Shape::new(schema);
        match &self.encoding {
            Encoding::Csv {
                has_header: true,
                delimiter,
            } => {
                let bytes = std::fs::read(path).map_err(Error::io(path))?;
                let mut reader = csv_reader(&bytes, *delimiter);
                let mut header = csv::ByteRecord::new();
                if reader.read_byte_record(&mut header).unwrap_or(false) {
                    check_header(&header, path, &shape)?;
                }
                Ok(())
            }
            Encoding::Parquet => parquet_projection(path, &shape).map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// One decoded file.
#[derive(Debug)]
pub struct Decoded {
    /// The kept rows, in the declared schema.
    pub batch: RecordBatch,
    /// Malformed rows that were dropped.
    pub malformed_dropped: u64,
}

/// The declared schema split into data columns and the optional corrupt-record column.
struct Shape {
    schema: SchemaRef,
    data: SchemaRef,
    corrupt_index: Option<usize>,
    /// Per data column: whether the query reads it (see [`Shape::reading`]).
    read: Vec<bool>,
}

impl Shape {
    fn new(schema: &SchemaRef) -> Self {
        let corrupt_index = schema.index_of(CORRUPT_RECORD_COLUMN).ok();
        let data_fields: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != CORRUPT_RECORD_COLUMN)
            .map(|f| f.as_ref().clone())
            .collect();
        let read = vec![true; data_fields.len()];
        Shape {
            schema: schema.clone(),
            data: Arc::new(Schema::new(data_fields)),
            corrupt_index,
            read,
        }
    }

    /// The same shape for a query that reads only `columns` of the declared schema
    /// (`None`: all of them). Every data column stays read when the query reads
    /// `_corrupt_record` (a record's malformedness is then part of the answer); a
    /// `NOT NULL` column always does (its check drops records).
    fn reading(mut self, columns: Option<&[usize]>) -> Self {
        let Some(columns) = columns else {
            return self;
        };
        if self.corrupt_index.is_some_and(|c| columns.contains(&c)) {
            return self;
        }
        let data_indices =
            (0..self.schema.fields().len()).filter(|&i| Some(i) != self.corrupt_index);
        for (slot, (index, field)) in self
            .read
            .iter_mut()
            .zip(data_indices.zip(self.data.fields()))
        {
            *slot = columns.contains(&index) || !field.is_nullable();
        }
        self
    }

    /// Empty columns for the data columns, skipping those the query does not read.
    fn field_columns(&self, rows: usize) -> FieldColumns {
        FieldColumns::pruned(self.data.fields(), &|i| self.read[i], rows)
    }

    /// Inserts the corrupt-record column (if declared) into a batch of data columns,
    /// keeping only the rows in `keep` (all rows if `None`). The declared schema (with
    /// its NOT NULL columns) is applied after the filter has removed unkeepable rows.
    fn assemble(
        &self,
        data: RecordBatch,
        corrupt: Option<ArrayRef>,
        keep: Option<&BooleanArray>,
    ) -> Result<RecordBatch> {
        let mut columns = data.columns().to_vec();
        if let Some(index) = self.corrupt_index {
            let corrupt =
                corrupt.unwrap_or_else(|| new_null_array(&DataType::Utf8, data.num_rows()));
            columns.insert(index, corrupt);
        }
        let all = RecordBatch::try_new(nullable(&self.schema), columns)?;
        let kept = match keep {
            Some(keep) => filter_record_batch(&all, keep)?,
            None => all,
        };
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            kept.columns().to_vec(),
        )?)
    }
}

/// Rows decoded from text, before the malformed-record mode is applied.
struct TextRows {
    /// Data columns, with nulls where a value was missing or unreadable.
    data: RecordBatch,
    /// Per row: why it is malformed (if it is), with its line number and raw text.
    problems: Vec<Option<Box<Problem>>>,
    /// Rows that cannot be kept in any mode (null in a NOT NULL column).
    unkeepable: Vec<bool>,
}

struct Problem {
    line: u64,
    reason: String,
    raw: String,
}

impl Problem {
    /// A problem found at `line` (0 while the line is not known yet), boxed as a row's
    /// malformed slot holds it; its raw text is attached later, if at all.
    fn new(line: u64, reason: String) -> Box<Self> {
        Box::new(Problem {
            line,
            reason,
            raw: String::new(),
        })
    }

    /// A NULL in NOT NULL column `field`: such a row cannot be kept in any mode.
    fn not_null(line: u64, field: &Field) -> Box<Self> {
        Problem::new(
            line,
            format!("column '{}' is NOT NULL but has no value", field.name()),
        )
    }

    /// The same problem, placed at `line` with its record's text (`raw`, without the
    /// line end): a delimited record's problem is found before its place is attached.
    fn at(mut self: Box<Self>, line: u64, raw: &[u8]) -> Box<Self> {
        self.line = line;
        self.raw = String::from_utf8_lossy(raw)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        self
    }
}

impl TextRows {
    fn resolve(self, path: &Path, mode: MalformedMode, shape: &Shape) -> Result<Decoded> {
        let locate = |line: u64| format!("{} at line {line}", path.display());
        let (batch, _, malformed_dropped) = self.resolve_with(mode, shape, &locate)?;
        Ok(Decoded {
            batch,
            malformed_dropped,
        })
    }

    /// Applies the malformed-record mode: the kept rows, which rows were kept (`None`:
    /// all of them) and how many were dropped. `locate` names where a problem's
    /// `line` is, for the `fail_fast` message.
    fn resolve_with(
        self,
        mode: MalformedMode,
        shape: &Shape,
        locate: &dyn Fn(u64) -> String,
    ) -> Result<(RecordBatch, Option<BooleanArray>, u64)> {
        let TextRows {
            data,
            problems,
            unkeepable,
        } = self;
        let bad_rows = problems.iter().filter(|p| p.is_some()).count();
        if bad_rows == 0 {
            return Ok((shape.assemble(data, None, None)?, None, 0));
        }
        if mode == MalformedMode::FailFast {
            let problem = problems.into_iter().flatten().next().expect("a bad row");
            return Err(Error::Data(format!(
                "malformed record in {}: {}; set the table's 'mode' option to \
                 'permissive' or 'drop_malformed' to go past bad records",
                locate(problem.line),
                problem.reason
            )));
        }
        let keep: BooleanArray = problems
            .iter()
            .zip(&unkeepable)
            .map(|(problem, unkeepable)| {
                let dropped = problem.is_some() && mode == MalformedMode::DropMalformed;
                Some(!(*unkeepable || dropped))
            })
            .collect();
        let dropped = keep.iter().filter(|k| *k == Some(false)).count() as u64;
        let corrupt: StringArray = problems
            .iter()
            .map(|p| p.as_ref().map(|p| p.raw.as_str()))
            .collect();
        let batch = shape.assemble(data, Some(Arc::new(corrupt)), Some(&keep))?;
        Ok((batch, Some(keep), dropped))
    }
}

/// How the bytes of one message (a Kafka record's value) become one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEncoding {
    /// One JSON object per record.
    Json,
    /// One delimited line per record (no header).
    Csv {
        /// Field separator byte.
        delimiter: u8,
    },
}

/// Records decoded into one row each, with the malformed-record mode applied.
#[derive(Debug)]
pub struct DecodedRecords {
    /// The kept rows, in the declared schema.
    pub batch: RecordBatch,
    /// Which input records were kept (`None`: all of them), so that columns built
    /// beside the decoded ones (a Kafka record's metadata) can be filtered the same way.
    pub kept: Option<BooleanArray>,
    /// Malformed records that were dropped.
    pub malformed_dropped: u64,
}

/// Decodes message-based input, one row per record, with the same conversions and
/// malformed-record policy as files (so a Kafka value is read exactly like a line of a
/// JSON or CSV file). A record with no value (`None`, a Kafka tombstone) or an empty
/// one is malformed. `locate(i)` names record `i` in a `fail_fast` error (e.g.
/// "topic 'clicks' partition 0 offset 17").
pub fn decode_records(
    encoding: RecordEncoding,
    mode: MalformedMode,
    records: &[Option<&[u8]>],
    schema: &SchemaRef,
    locate: &dyn Fn(usize) -> String,
) -> Result<DecodedRecords> {
    let shape = Shape::new(schema);
    let rows = match encoding {
        RecordEncoding::Json => json_records(records, &shape)?,
        RecordEncoding::Csv { delimiter } => csv_records(records, delimiter, &shape)?,
    };
    let locate = |line: u64| locate(line as usize);
    let (batch, kept, malformed_dropped) = rows.resolve_with(mode, &shape, &locate)?;
    Ok(DecodedRecords {
        batch,
        kept,
        malformed_dropped,
    })
}

/// The reason given for a record without a value.
const NO_VALUE: &str = "the record has no value (a tombstone)";

/// JSON records: every record through one decoder when each holds exactly one object
/// (the fast path); otherwise record by record, to find and handle the bad ones.
fn json_records(records: &[Option<&[u8]>], shape: &Shape) -> Result<TextRows> {
    let schema = nullable(&shape.data);
    let indices: Vec<u64> = (0..records.len() as u64).collect();
    if let Some(data) = decode_json_each(records, &schema) {
        let problems = records.iter().map(|_| None).collect();
        return mark_not_null(data, shape, problems, &indices);
    }
    let mut batches = Vec::with_capacity(records.len());
    let mut problems = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let outcome = match record {
            None => Err(NO_VALUE.to_string()),
            Some(bytes) => match decode_json(bytes, &schema) {
                Ok(batch) if batch.num_rows() == 1 => Ok(batch),
                Ok(batch) if batch.num_rows() == 0 => Err("the value is empty".to_string()),
                Ok(_) => Err("the value holds more than one JSON value".to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match outcome {
            Ok(batch) => {
                batches.push(batch);
                problems.push(None);
            }
            Err(reason) => {
                let bytes = record.unwrap_or_default();
                batches.push(salvage_json(bytes, &schema)?);
                problems.push(Some(Box::new(Problem {
                    line: index as u64,
                    reason,
                    raw: String::from_utf8_lossy(bytes).into_owned(),
                })));
            }
        }
    }
    let data = concat_batches(&schema, &batches)?;
    mark_not_null(data, shape, problems, &indices)
}

/// Decodes every record with one decoder, or `None` if any record is not exactly one
/// JSON object of the schema (then the caller goes record by record).
fn decode_json_each(records: &[Option<&[u8]>], schema: &SchemaRef) -> Option<RecordBatch> {
    if records.is_empty() {
        return Some(RecordBatch::new_empty(schema.clone()));
    }
    let mut decoder = JsonReaderBuilder::new(schema.clone())
        .with_batch_size(records.len() + 1)
        .build_decoder()
        .ok()?;
    for (index, record) in records.iter().enumerate() {
        let bytes = (*record)?;
        let read = decoder.decode(bytes).ok()?;
        if read != bytes.len() || decoder.has_partial_record() || decoder.len() != index + 1 {
            return None;
        }
    }
    let batch = decoder.flush().ok()??;
    (batch.num_rows() == records.len()).then_some(batch)
}

/// CSV records: each value is one delimited record.
fn csv_records(records: &[Option<&[u8]>], delimiter: u8, shape: &Shape) -> Result<TextRows> {
    let width = shape.data.fields().len();
    let mut columns = shape.field_columns(records.len());
    let mut problems: Vec<Option<Box<Problem>>> = Vec::with_capacity(records.len());
    let mut record = csv::ByteRecord::new();
    for value in records {
        let mut reason = None;
        match value {
            None => reason = Some(NO_VALUE.to_string()),
            Some(bytes) => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .delimiter(delimiter)
                    .flexible(true)
                    .buffer_capacity(bytes.len() + 1)
                    .from_reader(*bytes);
                match reader.read_byte_record(&mut record) {
                    Ok(true) => {
                        if record.len() != width {
                            reason =
                                Some(format!("expected {width} fields, found {}", record.len()));
                        }
                        let mut second = csv::ByteRecord::new();
                        if reader.read_byte_record(&mut second).unwrap_or(true) {
                            reason.get_or_insert_with(|| {
                                "the value holds more than one CSV record".to_string()
                            });
                        }
                    }
                    Ok(false) => {
                        record.clear();
                        reason = Some("the value is empty".to_string());
                    }
                    Err(e) => {
                        record.clear();
                        reason = Some(format!("not valid CSV: {e}"));
                    }
                }
            }
        }
        if value.is_none() {
            record.clear();
        }
        let utf8_reason = columns.push_record(|i| record.get(i));
        problems.push(reason.or(utf8_reason).map(|reason| Problem::new(0, reason)));
    }
    let rows = typed_rows(columns.finish(), shape, problems)?;
    let problems = rows
        .problems
        .into_iter()
        .zip(records)
        .enumerate()
        .map(|(index, (problem, value))| {
            problem.map(|p| p.at(index as u64, value.unwrap_or_default()))
        })
        .collect();
    Ok(TextRows { problems, ..rows })
}

fn csv_reader(bytes: &[u8], delimiter: u8) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(bytes)
}

fn check_header(header: &csv::ByteRecord, path: &Path, shape: &Shape) -> Result<()> {
    let found: Vec<String> = header
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let declared: Vec<&String> = shape.data.fields().iter().map(|f| f.name()).collect();
    let matches = found.len() == declared.len()
        && found
            .iter()
            .zip(&declared)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
    if matches {
        Ok(())
    } else {
        Err(Error::Data(format!(
            "the header of {} is [{}] but the table declares columns [{}]; fix the column list \
             (same names, same order) or set 'has_header' 'false'",
            path.display(),
            found.join(", "),
            declared
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn read_csv(
    bytes: &[u8],
    path: &Path,
    has_header: bool,
    delimiter: u8,
    shape: &Shape,
) -> Result<TextRows> {
    let width = shape.data.fields().len();
    let mut reader = csv_reader(bytes, delimiter);
    let mut record = csv::ByteRecord::new();
    // Sized once for the file's lines (a fast byte count), so that the per-row vectors
    // and the columns are not grown and copied again and again as they fill.
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut columns = shape.field_columns(lines);
    let mut problems: Vec<Option<Box<Problem>>> = Vec::with_capacity(lines);
    let mut spans: Vec<(u64, usize, usize)> = Vec::with_capacity(lines);
    let mut first = true;
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| Error::Data(format!("cannot read {} as CSV: {e}", path.display())))?;
        if !more {
            break;
        }
        let position = record
            .position()
            .cloned()
            .unwrap_or_else(csv::Position::new);
        if std::mem::take(&mut first) && has_header {
            check_header(&record, path, shape)?;
            continue;
        }
        let end = reader.position().byte() as usize;
        spans.push((position.line(), position.byte() as usize, end));
        let width_reason = (record.len() != width)
            .then(|| format!("expected {width} fields, found {}", record.len()));
        let utf8_reason = columns.push_record(|i| record.get(i));
        problems.push(
            width_reason
                .or(utf8_reason)
                .map(|reason| Problem::new(position.line(), reason)),
        );
    }
    let rows = typed_rows(columns.finish(), shape, problems)?;
    // Attach raw lines only to the rows that need them.
    let problems = rows
        .problems
        .into_iter()
        .zip(&spans)
        .map(|(problem, (line, start, end))| problem.map(|p| p.at(*line, &bytes[*start..*end])))
        .collect();
    Ok(TextRows { problems, ..rows })
}

/// Casts the text columns to the declared types and marks the rows whose values do not
/// fit (for each row, the first such column in column order gives the reason).
fn typed_rows(
    columns: Vec<Column>,
    shape: &Shape,
    mut problems: Vec<Option<Box<Problem>>>,
) -> Result<TextRows> {
    let rows = problems.len();
    let mut unkeepable = vec![false; rows];
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    let not_valid = |text: &str, field: &Field| {
        Problem::new(
            0,
            format!(
                "'{text}' is not a valid {} for column '{}'",
                field.data_type(),
                field.name()
            ),
        )
    };
    let mut arrays = Vec::with_capacity(columns.len());
    for (column, field) in columns.into_iter().zip(shape.data.fields()) {
        let typed = match column {
            Column::Parsed { values, unreadable } => {
                for (row, text) in unreadable {
                    problems[row].get_or_insert_with(|| not_valid(&text, field));
                }
                values
            }
            Column::Text(text) => {
                let typed = cast_with_options(&text, field.data_type(), &options)?;
                if typed.null_count() > text.null_count() {
                    for (row, problem) in problems.iter_mut().enumerate() {
                        if typed.is_null(row) && text.is_valid(row) && problem.is_none() {
                            *problem = Some(not_valid(text.value(row), field));
                        }
                    }
                }
                typed
            }
        };
        if !field.is_nullable() && typed.null_count() > 0 {
            for (row, slot) in unkeepable.iter_mut().enumerate() {
                if typed.is_null(row) {
                    *slot = true;
                    problems[row].get_or_insert_with(|| Problem::not_null(0, field));
                }
            }
        }
        arrays.push(typed);
    }
    let data = RecordBatch::try_new_with_options(
        nullable(&shape.data),
        arrays,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    Ok(TextRows {
        data,
        problems,
        unkeepable,
    })
}

/// The same schema with every field nullable: rows are decoded into it first, and the
/// declared nullability is enforced when malformed rows are resolved.
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn read_json(bytes: &[u8], shape: &Shape) -> Result<TextRows> {
    let schema = nullable(&shape.data);
    // Row i comes from the i-th non-blank line: its number in the file, for messages.
    let lines: Vec<u64> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, _)| index as u64 + 1)
        .collect();
    if let Ok(data) = decode_json(bytes, &schema) {
        let rows = data.num_rows();
        return mark_not_null(data, shape, (0..rows).map(|_| None).collect(), &lines);
    }
    // Slow path: something in the file is bad; decode line by line to find it.
    let mut batches = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode_json(line, &schema) {
            Ok(batch) if batch.num_rows() == 1 => {
                batches.push(batch);
                problems.push(None);
            }
            outcome => {
                let reason = match outcome {
                    Err(e) => e.to_string(),
                    Ok(_) => "not a single JSON object".to_string(),
                };
                batches.push(salvage_json(line, &schema)?);
                problems.push(Some(Box::new(Problem {
                    line: index as u64 + 1,
                    reason,
                    raw: String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_string(),
                })));
            }
        }
    }
    let data = concat_batches(&schema, &batches)?;
    mark_not_null(data, shape, problems, &lines)
}

/// Marks rows with nulls in NOT NULL columns as malformed and unkeepable.
fn mark_not_null(
    data: RecordBatch,
    shape: &Shape,
    mut problems: Vec<Option<Box<Problem>>>,
    lines: &[u64],
) -> Result<TextRows> {
    let mut unkeepable = vec![false; data.num_rows()];
    for (column, field) in data.columns().iter().zip(shape.data.fields()) {
        if field.is_nullable() || column.null_count() == 0 {
            continue;
        }
        for (row, slot) in unkeepable.iter_mut().enumerate() {
            if column.is_null(row) {
                *slot = true;
                let line = lines.get(row).copied().unwrap_or(row as u64 + 1);
                problems[row].get_or_insert_with(|| Problem::not_null(line, field));
            }
        }
    }
    Ok(TextRows {
        data,
        problems,
        unkeepable,
    })
}

fn decode_json(bytes: &[u8], schema: &SchemaRef) -> Result<RecordBatch, Error> {
    let mut decoder = JsonReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .build_decoder()?;
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let read = decoder.decode(&bytes[offset..])?;
        offset += read;
        if let Some(batch) = decoder.flush()? {
            batches.push(batch);
        }
        if offset >= bytes.len() || read == 0 {
            break;
        }
    }
    Ok(concat_batches(schema, &batches)?)
}

/// Keeps the fields of a bad JSON line that decode on their own (for `permissive`).
fn salvage_json(line: &[u8], schema: &SchemaRef) -> Result<RecordBatch> {
    let object = match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let single = Arc::new(Schema::new(vec![field.as_ref().clone()]));
            object
                .get(field.name())
                .and_then(|value| {
                    let text = serde_json::json!({ field.name(): value }).to_string();
                    decode_json(text.as_bytes(), &single).ok()
                })
                .filter(|b| b.num_rows() == 1)
                .map(|b| b.column(0).clone())
                .unwrap_or_else(|| new_null_array(field.data_type(), 1))
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn read_text(bytes: &[u8], shape: &Shape) -> Result<TextRows> {
    let text = String::from_utf8_lossy(bytes);
    let lines: StringArray = text
        .lines()
        .map(|l| Some(l.trim_end_matches('\r')))
        .collect();
    let rows = lines.len();
    typed_rows(
        vec![Column::Text(lines)],
        shape,
        (0..rows).map(|_| None).collect(),
    )
}

/// Finds the declared columns in a Parquet file, by name.
fn parquet_projection(
    path: &Path,
    shape: &Shape,
) -> Result<(ParquetRecordBatchReaderBuilder<std::fs::File>, Vec<usize>)> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::Data(format!("cannot read {} as Parquet: {e}", path.display())))?;
    let file_schema = builder.schema().clone();
    let mut indices = Vec::new();
    for field in shape.data.fields() {
        let found = file_schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(field.name()))
            .ok_or_else(|| {
                Error::Data(format!(
                    "{} has no column '{}' (it has: {}); fix the table's column list",
                    path.display(),
                    field.name(),
                    file_schema
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let found_type = file_schema.field(found).data_type();
        if !datafusion::arrow::compute::can_cast_types(found_type, field.data_type()) {
            return Err(Error::Data(format!(
                "column '{}' of {} is {found_type}, which cannot be read as the declared {}",
                field.name(),
                path.display(),
                field.data_type()
            )));
        }
        indices.push(found);
    }
    Ok((builder, indices))
}

fn read_parquet(path: &Path, shape: &Shape) -> Result<Decoded> {
    let (builder, indices) = parquet_projection(path, shape)?;
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
    let reader = builder.with_projection(mask).build()?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch?;
        let columns = indices
            .iter()
            .zip(shape.data.fields())
            .map(|(index, field)| {
                let at = sorted.binary_search(index).expect("projected column");
                // Unsafe cast: a value that does not fit is an error naming the file,
                // never a silent NULL.
                let strict = CastOptions {
                    safe: false,
                    format_options: FormatOptions::default(),
                };
                cast_with_options(batch.column(at), field.data_type(), &strict).map_err(|e| {
                    Error::Data(format!(
                        "column '{}' of {} cannot be read as the declared {}: {e}",
                        field.name(),
                        path.display(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let data = RecordBatch::try_new(shape.data.clone(), columns)
            .map_err(|e| Error::Data(format!("{} does not fit the table: {e}", path.display())))?;
        batches.push(shape.assemble(data, None, None)?);
    }
    Ok(Decoded {
        batch: concat_batches(&shape.schema, &batches)?,
        malformed_dropped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    /// Column `index` of `batch` as its concrete array type.
    fn column<T: Array + 'static>(batch: &RecordBatch, index: usize) -> &T {
        batch.column(index).as_any().downcast_ref::<T>().unwrap()
    }

    fn decode(format: FileFormat, schema: &SchemaRef, text: &str) -> Result<Decoded> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        std::fs::write(&path, text).unwrap();
        format.read_file(&path, schema)
    }

    fn csv(mode: MalformedMode) -> FileFormat {
        FileFormat {
            encoding: Encoding::Csv {
                has_header: false,
                delimiter: b',',
            },
            mode,
        }
    }

    fn json(mode: MalformedMode) -> FileFormat {
        FileFormat {
            encoding: Encoding::Json,
            mode,
        }
    }

    fn id_temp_corrupt() -> SchemaRef {
        schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("temp", DataType::Float64, true),
            Field::new(CORRUPT_RECORD_COLUMN, DataType::Utf8, true),
        ])
    }

    #[test]
    fn csv_permissive_nulls_bad_fields_and_keeps_the_raw_line() {
        let decoded = decode(
            csv(MalformedMode::Permissive),
            &id_temp_corrupt(),
            "1,20.5\n2,hot\n3\n",
        )
        .unwrap();
        let batch = decoded.batch;
        assert_eq!(batch.num_rows(), 3);
        let temp = column::<Float64Array>(&batch, 1);
        assert_eq!(temp.value(0), 20.5);
        assert!(temp.is_null(1) && temp.is_null(2));
        let corrupt = column::<StringArray>(&batch, 2);
        assert!(corrupt.is_null(0));
        assert_eq!(corrupt.value(1), "2,hot");
        assert_eq!(corrupt.value(2), "3");
        assert_eq!(decoded.malformed_dropped, 0);
    }

    #[test]
    fn csv_columns_the_query_does_not_read_are_skipped_unless_it_reads_corrupt_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input");
        std::fs::write(&path, "1,20.5\nx,hot\n2,hot\n").unwrap();
        let format = csv(MalformedMode::DropMalformed);
        let schema = id_temp_corrupt();
        // `temp` unread: its bad value drops nothing and the column is NULL. `id` is
        // NOT NULL, so it is read even when the query does not ask for it.
        for columns in [&[0][..], &[]] {
            let decoded = format
                .read_file_columns(&path, &schema, Some(columns))
                .unwrap();
            assert_eq!(
                column::<Int64Array>(&decoded.batch, 0).values().to_vec(),
                vec![1, 2]
            );
            assert_eq!(decoded.malformed_dropped, 1, "only 'x' is not a BIGINT");
            assert_eq!(decoded.batch.column(1).null_count(), 2);
        }
        // Every column read, or `_corrupt_record` read: `hot` is malformed again.
        for columns in [None, Some(&[0, 2][..])] {
            let decoded = format.read_file_columns(&path, &schema, columns).unwrap();
            assert_eq!(
                column::<Int64Array>(&decoded.batch, 0).values().to_vec(),
                vec![1]
            );
            assert_eq!(decoded.malformed_dropped, 2);
        }
    }

    #[test]
    fn csv_drop_malformed_counts_what_it_drops() {
        let decoded = decode(
            csv(MalformedMode::DropMalformed),
            &id_temp_corrupt(),
            "1,20.5\nx,1\n2,21\n4,5,6\n",
        )
        .unwrap();
        let ids = column::<Int64Array>(&decoded.batch, 0);
        assert_eq!(ids.values().to_vec(), vec![1, 2]);
        assert_eq!(decoded.malformed_dropped, 2);
    }

    #[test]
    fn csv_fail_fast_names_the_file_and_line() {
        let error = decode(
            csv(MalformedMode::FailFast),
            &id_temp_corrupt(),
            "1,20.5\n2,21\n3,warm\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("input at line 3"), "{error}");
        assert!(error.contains("'warm' is not a valid Float64"), "{error}");
    }

    #[test]
    fn a_null_in_a_not_null_column_cannot_be_kept_even_when_permissive() {
        let decoded = decode(
            csv(MalformedMode::Permissive),
            &id_temp_corrupt(),
            "1,1\n,2\n",
        )
        .unwrap();
        assert_eq!(decoded.batch.num_rows(), 1);
        assert_eq!(decoded.malformed_dropped, 1);
    }

    #[test]
    fn csv_header_must_match_the_declared_columns() {
        let format = FileFormat {
            encoding: Encoding::Csv {
                has_header: true,
                delimiter: b';',
            },
            mode: MalformedMode::Permissive,
        };
        let ok = decode(format.clone(), &id_temp_corrupt(), "ID;Temp\n1;2\n").unwrap();
        assert_eq!(ok.batch.num_rows(), 1);
        let error = decode(format, &id_temp_corrupt(), "id;pressure\n1;2\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[id, pressure]") && error.contains("[id, temp]"),
            "{error}"
        );
    }

    #[test]
    fn json_fast_path_and_line_by_line_fallback_agree() {
        let good = "{\"id\": 1, \"temp\": 1.5}\n{\"id\": 2}\n";
        let decoded = decode(json(MalformedMode::FailFast), &id_temp_corrupt(), good).unwrap();
        assert_eq!(decoded.batch.num_rows(), 2);

        let bad =
            "{\"id\": 1, \"temp\": 1.5}\n[1, 2]\n{\"id\": 3, \"temp\": \"hot\"}\n{\"id\": 4\n";
        let decoded = decode(json(MalformedMode::Permissive), &id_temp_corrupt(), bad).unwrap();
        // Line 2 has no id (NOT NULL): dropped. Line 3 keeps its id, temp is null.
        // Line 4 is cut off: no id either.
        let ids = column::<Int64Array>(&decoded.batch, 0);
        assert_eq!(ids.values().to_vec(), vec![1, 3]);
        assert_eq!(decoded.malformed_dropped, 2);
        let corrupt = column::<StringArray>(&decoded.batch, 2);
        assert_eq!(corrupt.value(1), "{\"id\": 3, \"temp\": \"hot\"}");

        let error = decode(json(MalformedMode::FailFast), &id_temp_corrupt(), bad)
            .unwrap_err()
            .to_string();
        assert!(error.contains("at line 2"), "{error}");
    }

    #[test]
    fn text_gives_one_value_per_line() {
        let text = schema(vec![Field::new("value", DataType::Utf8, true)]);
        let format = FileFormat {
            encoding: Encoding::Text,
            mode: MalformedMode::Permissive,
        };
        let decoded = decode(format, &text, "first line\r\nsecond, with comma\n\nlast").unwrap();
        let values = column::<StringArray>(&decoded.batch, 0);
        let values: Vec<&str> = values.iter().map(|v| v.unwrap()).collect();
        assert_eq!(values, vec!["first line", "second, with comma", "", "last"]);
    }

    fn records<'a>(values: &[Option<&'a str>]) -> Vec<Option<&'a [u8]>> {
        values.iter().map(|v| v.map(str::as_bytes)).collect()
    }

    fn locate(i: usize) -> String {
        format!("record {i}")
    }

    #[test]
    fn json_records_are_one_row_each_and_keep_mask_lines_up() {
        let values = records(&[
            Some(r#"{"id": 1, "temp": 1.5}"#),
            Some("{\"id\": 2,\n \"temp\": 2.5}"),
            Some(r#"{"id": 3, "temp": "hot"}"#),
            None,
            Some(r#"{"id": 5}{"id": 6}"#),
            Some(""),
            Some(r#"{"temp": 7}"#),
        ]);
        let decoded = decode_records(
            RecordEncoding::Json,
            MalformedMode::Permissive,
            &values,
            &id_temp_corrupt(),
            &locate,
        )
        .unwrap();
        // Kept: 1, 2 (a value may span lines), 3 (temp null). The tombstone, the two
        // objects, the empty value and the record without id (NOT NULL) have no id.
        let ids = column::<Int64Array>(&decoded.batch, 0);
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
        assert_eq!(decoded.malformed_dropped, 4);
        let kept: Vec<bool> = decoded.kept.unwrap().iter().map(|k| k.unwrap()).collect();
        assert_eq!(kept, vec![true, true, true, false, false, false, false]);
        let corrupt = column::<StringArray>(&decoded.batch, 2);
        assert!(corrupt.is_null(0) && corrupt.is_null(1));
        assert_eq!(corrupt.value(2), r#"{"id": 3, "temp": "hot"}"#);

        let good = records(&[Some(r#"{"id": 1}"#), Some(r#" {"id": 2} "#)]);
        let decoded = decode_records(
            RecordEncoding::Json,
            MalformedMode::FailFast,
            &good,
            &id_temp_corrupt(),
            &locate,
        )
        .unwrap();
        assert_eq!(decoded.batch.num_rows(), 2);
        assert!(decoded.kept.is_none());

        let error = decode_records(
            RecordEncoding::Json,
            MalformedMode::FailFast,
            &values,
            &id_temp_corrupt(),
            &locate,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("malformed record in record 2:"), "{error}");
    }

    #[test]
    fn csv_records_are_one_row_each() {
        let values = records(&[Some("1,2.5"), Some("2,warm"), Some("3,1\n4,2"), Some("5")]);
        let decoded = decode_records(
            RecordEncoding::Csv { delimiter: b',' },
            MalformedMode::DropMalformed,
            &values,
            &id_temp_corrupt(),
            &locate,
        )
        .unwrap();
        let ids = column::<Int64Array>(&decoded.batch, 0);
        assert_eq!(ids.values().to_vec(), vec![1]);
        assert_eq!(decoded.malformed_dropped, 3);
        let error = decode_records(
            RecordEncoding::Csv { delimiter: b',' },
            MalformedMode::FailFast,
            &values,
            &id_temp_corrupt(),
            &locate,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("record 1: 'warm' is not a valid Float64"),
            "{error}"
        );
    }
}
