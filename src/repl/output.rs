//! How the shell prints rows: `\pset format table|csv|json` and `\pset limit N`, the
//! same for static results, `\d` listings and live queries.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
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
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                writer.write(batch)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

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
