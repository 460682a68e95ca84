//! Spark's `readStream`: a builder that declares an unbounded table.
//!
//! The declaration goes through the same checks as `CREATE UNBOUNDED EXTERNAL TABLE`
//! (it is rendered as that statement and run in the session), so every format, option
//! and error message is the SQL one.

use datafusion::arrow::datatypes::{DataType, Schema};

use super::{StreamFrame, StreamingContext};
use crate::error::{Error, Result};

/// Declares an unbounded table: `format`, `schema`, `option`s, then `load(path)`.
pub struct DataStreamReader {
    ctx: StreamingContext,
    format: String,
    schema: Option<Schema>,
    options: Vec<(String, String)>,
}

impl DataStreamReader {
    pub(super) fn new(ctx: StreamingContext) -> Self {
        DataStreamReader {
            ctx,
            format: "parquet".to_string(),
            schema: None,
            options: Vec::new(),
        }
    }

    /// The source format: `csv`, `json`, `parquet`, `text` (files in a directory),
    /// `rate`, `socket` or `kafka` (a topic). Default `parquet`, as in Spark.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_string();
        self
    }

    /// The rows' columns (file formats need one; `rate`, `socket` and `text` have
    /// fixed columns).
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// One source option, as in the SQL `OPTIONS` list (`max_files_per_trigger`,
    /// `has_header`, `mode`, `rows_per_second`, ...). Unknown options are refused
    /// when the stream is loaded.
    pub fn option(mut self, key: &str, value: &str) -> Self {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    /// Declares the stream over `path` (a directory for files, `host:port` for a
    /// socket, a topic for Kafka, ignored by `rate`) and returns it as a frame.
    pub async fn load(self, path: &str) -> Result<StreamFrame> {
        let name = self.ctx.next_stream_name();
        let format = self.format.to_ascii_uppercase();
        let columns = match &self.schema {
            Some(schema) => {
                let columns = schema
                    .fields()
                    .iter()
                    .map(|f| {
                        Ok(format!(
                            "\"{}\" {}{}",
                            f.name().replace('"', "\"\""),
                            sql_type(f.data_type())?,
                            if f.is_nullable() { "" } else { " NOT NULL" }
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                format!("({})", columns.join(", "))
            }
            None => String::new(),
        };
        let location = match format.as_str() {
            "RATE" => String::new(),
            _ => format!(" LOCATION {}", quote(path)),
        };
        let options = if self.options.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("{} {}", quote(k), quote(v)))
                .collect();
            format!(" OPTIONS ({})", pairs.join(", "))
        };
        let ddl = format!(
            "CREATE UNBOUNDED EXTERNAL TABLE {name} {columns} STORED AS {format}{location}{options}"
        );
        self.ctx.sql(&ddl).await?;
        self.ctx.table(&name).await
    }

    /// Picks up an unbounded table declared in SQL, by name (Spark's `readStream.table`).
    pub async fn table(self, name: &str) -> Result<StreamFrame> {
        self.ctx.table(name).await
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL type that DataFusion plans back to `data_type`.
fn sql_type(data_type: &DataType) -> Result<&'static str> {
    Ok(match data_type {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 => "TINYINT",
        DataType::Int16 => "SMALLINT",
        DataType::Int32 => "INT",
        DataType::Int64 => "BIGINT",
        DataType::UInt8 => "TINYINT UNSIGNED",
        DataType::UInt16 => "SMALLINT UNSIGNED",
        DataType::UInt32 => "INT UNSIGNED",
        DataType::UInt64 => "BIGINT UNSIGNED",
        DataType::Float32 => "FLOAT",
        DataType::Float64 => "DOUBLE",
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "VARCHAR",
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => "BYTEA",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, None) => "TIMESTAMP",
        other => {
            return Err(Error::Sql(format!(
                "a stream column of type {other} cannot be declared yet; use BOOLEAN, integer, \
                 FLOAT/DOUBLE, VARCHAR, BYTEA, DATE or TIMESTAMP (without time zone) columns"
            )));
        }
    })
}
