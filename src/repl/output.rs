//! How the shell prints rows: `\pset format table|csv|json` and `\pset limit N`, the
//! same for static results, `\d` listings and live queries.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::error::{Error, Result};

/// Rows shown in table format unless `\pset limit` says otherwise (datafusion-cli's
/// `--maxrows` default is 40 as well).
pub const DEFAULT_LIMIT: usize = 40;

/// The shell's output format (`\pset format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A pretty table, at most `limit` rows.
    Table,
    /// CSV with a header line, every row (for `millrace > out.csv`).
    Csv,
    /// One JSON object per row (JSON lines), every row.
    Json,
}

impl OutputFormat {
    /// Reads `table`, `csv` or `json` (any case).
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            other => Err(Error::Option(format!(
                "unknown output format '{other}': use table, csv or json"
            ))),
        }
    }

    /// The name `\pset` shows.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
        }
    }
}

/// What `\pset` controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    /// How rows are printed.
    pub format: OutputFormat,
    /// Most rows a table shows; 0 shows every row. CSV and JSON print every row.
    pub limit: usize,
}

impl Default for OutputSettings {
    fn default() -> Self {
        OutputSettings {
            format: OutputFormat::Table,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Rows rendered as text.
pub struct Rendered {
    /// The text, ending with a newline (empty when there was nothing to print).
    pub text: String,
    /// Rows in the result.
    pub total: usize,
    /// Rows in `text`.
    pub shown: usize,
}

impl Rendered {
    /// `N rows` (with how many are shown when the table was cut at the limit).
    pub fn summary(&self) -> String {
        let rows = if self.total == 1 { "row" } else { "rows" };
        if self.shown < self.total {
            format!(
                "{} {rows} (first {} shown; \\pset limit N changes that)",
                self.total, self.shown
            )
        } else {
            format!("{} {rows}", self.total)
        }
    }
}

/// Renders `batches` (of `schema`, so an empty result still shows its columns in a
/// table) in the chosen format. `header` says whether CSV starts with the column
/// names (a live query in append mode prints them with its first rows only).
pub fn render(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    settings: &OutputSettings,
    header: bool,
) -> Result<Rendered> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut text = String::new();
    let mut shown = total;
    match settings.format {
        OutputFormat::Table => {
            let mut kept = Vec::new();
            let mut left = if settings.limit == 0 {
                usize::MAX
            } else {
                settings.limit
            };
            for batch in batches {
                let take = batch.num_rows().min(left);
                if take > 0 {
                    kept.push(batch.slice(0, take));
                }
                left -= take;
            }
            shown = kept.iter().map(RecordBatch::num_rows).sum();
            if kept.is_empty() {
                kept.push(RecordBatch::new_empty(schema.clone()));
            }
            text = format!("{}\n", pretty_format_batches(&kept)?);
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(header)
                .build(Vec::new());
            if batches.is_empty() && header {
                writer.write(&csv_ready(&RecordBatch::new_empty(schema.clone()))?)?;
            }
            for batch in batches {
                writer.write(&csv_ready(batch)?)?;
            }
            text.push_str(&String::from_utf8_lossy(&writer.into_inner()));
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            text.push_str(&String::from_utf8_lossy(&writer.into_inner()));
        }
    }
    Ok(Rendered { text, total, shown })
}

/// The batch with every column the CSV writer cannot write (structs such as
/// `window`, lists such as Kafka `headers`, maps, binary such as Kafka `key` and
/// `value`) turned into text as the table format shows it, so `\pset format csv`
/// prints any result.
fn csv_ready(batch: &RecordBatch) -> Result<RecordBatch> {
    let needs_text = |t: &DataType| {
        t.is_nested()
            || matches!(
                t,
                DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::FixedSizeBinary(_)
            )
    };
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| needs_text(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !needs_text(field.data_type()) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let text: StringArray = (0..column.len())
            .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
            .collect();
        fields.push(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(text));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::TimeUnit;

    use super::*;

    fn rows(n: i64) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("v{i}")),
                )),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    #[test]
    fn a_table_stops_at_the_limit_and_says_so() {
        let (schema, batches) = rows(5);
        let settings = OutputSettings {
            format: OutputFormat::Table,
            limit: 2,
        };
        let out = render(&schema, &batches, &settings, true).unwrap();
        assert!(out.text.contains("| 1 | v1 |"), "{}", out.text);
        assert!(!out.text.contains("v2"), "{}", out.text);
        assert_eq!((out.total, out.shown), (5, 2));
        assert!(out.summary().starts_with("5 rows (first 2 shown"));
    }

    #[test]
    fn csv_prints_structs_and_binary_as_the_table_shows_them() {
        use datafusion::arrow::array::{BinaryArray, StructArray, TimestampSecondArray};
        let window = StructArray::from(vec![
            (
                Arc::new(Field::new(
                    "start",
                    DataType::Timestamp(TimeUnit::Second, None),
                    false,
                )),
                Arc::new(TimestampSecondArray::from(vec![0, 10])) as ArrayRef,
            ),
            (
                Arc::new(Field::new(
                    "end",
                    DataType::Timestamp(TimeUnit::Second, None),
                    false,
                )),
                Arc::new(TimestampSecondArray::from(vec![10, 20])) as ArrayRef,
            ),
        ]);
        let key = BinaryArray::from_opt_vec(vec![Some(b"k1".as_slice()), None]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("window", window.data_type().clone(), false),
            Field::new("key", DataType::Binary, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(window),
                Arc::new(key),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
        )
        .unwrap();
        let csv = OutputSettings {
            format: OutputFormat::Csv,
            limit: 0,
        };
        let out = render(&schema, &[batch], &csv, true).unwrap();
        assert_eq!(
            out.text,
            "window,key,n\n\
             \"{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10}\",6b31,3\n\
             \"{start: 1970-01-01T00:00:10, end: 1970-01-01T00:00:20}\",,4\n"
        );
    }

    #[test]
    fn csv_and_json_print_every_row() {
        let (schema, batches) = rows(3);
        let csv = OutputSettings {
            format: OutputFormat::Csv,
            limit: 1,
        };
        let out = render(&schema, &batches, &csv, true).unwrap();
        assert_eq!(out.text, "n,s\n0,v0\n1,v1\n2,v2\n");
        let out = render(&schema, &batches, &csv, false).unwrap();
        assert_eq!(out.text, "0,v0\n1,v1\n2,v2\n");
        let json = OutputSettings {
            format: OutputFormat::Json,
            limit: 1,
        };
        let out = render(&schema, &batches, &json, true).unwrap();
        assert_eq!(out.text.lines().next(), Some(r#"{"n":0,"s":"v0"}"#));
        assert_eq!(out.text.lines().count(), 3);
    }

    #[test]
    fn an_empty_table_shows_its_columns() {
        let (schema, _) = rows(0);
        let out = render(&schema, &[], &OutputSettings::default(), true).unwrap();
        assert!(out.text.contains("| n | s |"), "{}", out.text);
        assert_eq!(out.summary(), "0 rows");
        assert!(OutputFormat::parse("xml").is_err());
        assert_eq!(OutputFormat::parse("JSON").unwrap(), OutputFormat::Json);
    }
}
