//! The SQL front end: scripts are split into statements, millrace's own statements
//! (`CREATE UNBOUNDED EXTERNAL TABLE`, `CREATE SINK`) are parsed here and turned
//! into stream declarations and query configurations; everything else is DataFusion's.

pub mod ddl;
pub mod split;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::{CreateExternalTable, Statement as DFStatement};

use crate::connector::registry::{self, Location, Role};
use crate::error::{Error, Result};
use crate::execution::Trigger;
use crate::sink::{OutputMode, SinkRequest, SinkSpec};
use crate::source::file::{FileSourceOptions, compile_glob, list_files};
use crate::source::format::{CORRUPT_RECORD_COLUMN, Encoding, FileFormat, MalformedMode};
use crate::source::options::Options;
use crate::source::rate::{RateOptions, rate_schema};
use crate::source::socket::socket_schema;
use crate::source::{DEFAULT_WATERMARK_MAX_FUTURE, SourceKind, StreamDef, WatermarkSpec};
use ddl::{CreateSink, CreateStream};

/// Turns a parsed `CREATE UNBOUNDED EXTERNAL TABLE` into a checked stream declaration.
///
/// Everything that can be checked before a query runs is checked here: the format and
/// its options, the directory, the watermark column's type, and (when files are
/// already there) that the first file matches the declared columns.
pub async fn declare_stream(state: &SessionState, statement: CreateStream) -> Result<StreamDef> {
    let (name, declared) = plan_columns(state, &statement).await?;
    let what = format!("{} table '{name}'", statement.format);
    let connector = registry::sql_connector(Role::Source, &statement.format, &what)?;
    let mut options = Options::new(what.clone(), statement.options.clone())?;
    let location = statement.location.clone();
    let (kind, schema, location) = match statement.format.as_str() {
        "CSV" | "JSON" | "PARQUET" | "TEXT" => {
            let dir = location.ok_or_else(|| {
                Error::Sql(format!("{what} needs LOCATION '<directory>' to watch"))
            })?;
            let dir = existing_dir(&dir, &name)?;
            let (file, schema) = file_options(&statement.format, &mut options, declared, &what)?;
            check_first_file(&file, &dir, &schema)?;
            (SourceKind::Files(file), schema, dir.display().to_string())
        }
        "RATE" => {
            no_columns(&declared, &what, "timestamp TIMESTAMP, value BIGINT")?;
            no_location(&location, &what)?;
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
            let kind = SourceKind::Rate(RateOptions {
                rows_per_second,
                num_partitions,
                max_rows_per_trigger,
            });
            (kind, rate_schema(), String::new())
        }
        "SOCKET" => {
            no_columns(&declared, &what, "value VARCHAR")?;
            let address = location.ok_or_else(|| {
                Error::Sql(format!(
                    "{what} needs LOCATION '<host>:<port>' to connect to"
                ))
            })?;
            if address
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(Error::Sql(format!(
                    "LOCATION '{address}' of {what} must be '<host>:<port>'"
                )));
            }
            (SourceKind::Socket, socket_schema(), address)
        }
        "KAFKA" => {
            let (kafka, schema) =
                crate::source::kafka::declare(declared, location, &mut options, &what)?;
            let location = kafka.location();
            (SourceKind::Kafka(kafka), schema, location)
        }
        "DELTA" => {
            let (delta, schema) =
                crate::connector::delta::source::declare(declared, location, &mut options, &what)?;
            let location = delta.path.display().to_string();
            (SourceKind::Delta(delta), schema, location)
        }
        _ => {
            return Err(registry::unknown_sql_format(
                Role::Source,
                &statement.format,
                &what,
            ));
        }
    };
    let max_future = options
        .take("watermark_max_future")
        .map(|d| crate::duration::parse_duration(&d))
        .transpose()?;
    if max_future.is_some() && statement.watermark.is_none() {
        return Err(Error::Option(format!(
            "'watermark_max_future' of {what} needs a WATERMARK clause in the column list"
        )));
    }
    let idle_timeout = options
        .take("watermark_idle_timeout")
        .map(|d| crate::duration::parse_duration(&d))
        .transpose()?;
    if idle_timeout.is_some() && statement.watermark.is_none() {
        return Err(Error::Option(format!(
            "'watermark_idle_timeout' of {what} needs a WATERMARK clause in the column list"
        )));
    }
    options.finish(&connector.sql_options())?;
    let watermark = match &statement.watermark {
        None => None,
        Some((column, expr)) => Some(WatermarkSpec {
            max_future: max_future.unwrap_or(DEFAULT_WATERMARK_MAX_FUTURE),
            idle_timeout,
            ..watermark_spec(&schema, column, expr, &name)?
        }),
    };
    Ok(StreamDef {
        name,
        schema,
        kind,
        location,
        watermark,
    })
}

/// Lets DataFusion's planner convert the column list, so SQL types mean what they mean
/// in DataFusion. Returns the normalised table name and the schema.
async fn plan_columns(state: &SessionState, statement: &CreateStream) -> Result<(String, Schema)> {
    let cet = CreateExternalTable {
        name: statement.name.clone(),
        columns: statement.columns.clone(),
        file_type: "CSV".to_string(),
        locations: vec!["unused".to_string()],
        table_partition_cols: vec![],
        order_exprs: vec![],
        if_not_exists: statement.if_not_exists,
        or_replace: false,
        temporary: false,
        unbounded: true,
        options: vec![],
        constraints: vec![],
    };
    let plan = state
        .statement_to_plan(DFStatement::CreateExternalTable(cet))
        .await?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(created)) => Ok((
            created.name.table().to_string(),
            created.schema.as_arrow().clone(),
        )),
        other => Err(Error::Sql(format!(
            "unexpected plan for a table declaration: {other}"
        ))),
    }
}

/// Resolves a relative path against the working directory once, when the statement
/// runs, so a query keeps writing to the same place whatever happens to the cwd later.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(path))
}

fn existing_dir(location: &str, table: &str) -> Result<PathBuf> {
    let path = Path::new(location);
    if !path.is_dir() {
        return Err(Error::Sql(format!(
            "LOCATION '{location}' of table '{table}' is not an existing directory; create it first \
             (files are then moved into it as they arrive)"
        )));
    }
    path.canonicalize().map_err(Error::io(path))
}

fn no_columns(declared: &Schema, what: &str, fixed: &str) -> Result<()> {
    if declared.fields().is_empty() {
        Ok(())
    } else {
        Err(Error::Sql(format!(
            "{what} has fixed columns ({fixed}); leave out the column list"
        )))
    }
}

fn no_location(location: &Option<String>, what: &str) -> Result<()> {
    match location {
        None => Ok(()),
        Some(l) => Err(Error::Sql(format!("{what} takes no LOCATION (got '{l}')"))),
    }
}

fn file_options(
    format: &str,
    options: &mut Options,
    declared: Schema,
    what: &str,
) -> Result<(FileSourceOptions, Arc<Schema>)> {
    let mode = match format {
        "CSV" | "JSON" => options
            .take("mode")
            .map(|m| MalformedMode::parse(&m))
            .transpose()?
            .unwrap_or(MalformedMode::Permissive),
        _ => MalformedMode::FailFast,
    };
    let encoding = match format {
        "CSV" => {
            let has_header = options.take_bool("has_header")?.unwrap_or(false);
            let delimiter = match options.take("delimiter") {
                None => b',',
                Some(d) => {
                    let d = if d == "\\t" { "\t".to_string() } else { d };
                    match d.as_bytes() {
                        [byte] => *byte,
                        _ => {
                            return Err(Error::Option(format!(
                                "'delimiter' of {what} must be a single character, got '{d}'"
                            )));
                        }
                    }
                }
            };
            Encoding::Csv {
                has_header,
                delimiter,
            }
        }
        "JSON" => Encoding::Json,
        "TEXT" => Encoding::Text,
        _ => Encoding::Parquet,
    };
    let schema = if format == "TEXT" {
        match declared.fields().len() {
            0 => Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                "value",
                DataType::Utf8,
                true,
            )]),
            1 if is_string(declared.field(0).data_type()) => declared,
            _ => {
                return Err(Error::Sql(format!(
                    "{what} has one text column per line: declare `(value VARCHAR)` or no columns"
                )));
            }
        }
    } else {
        if declared.fields().is_empty() {
            return Err(Error::Sql(format!(
                "{what} needs its columns declared: CREATE UNBOUNDED EXTERNAL TABLE name (col TYPE, ...)"
            )));
        }
        declared
    };
    let schema = match schema.index_of(CORRUPT_RECORD_COLUMN) {
        Err(_) => schema,
        Ok(index) => {
            let field = schema.field(index);
            if !matches!(encoding, Encoding::Csv { .. } | Encoding::Json) {
                return Err(Error::Sql(format!(
                    "{what} cannot have a {CORRUPT_RECORD_COLUMN} column: only CSV and JSON records can be malformed"
                )));
            }
            if !is_string(field.data_type()) || !field.is_nullable() {
                return Err(Error::Sql(format!(
                    "column {CORRUPT_RECORD_COLUMN} of {what} must be a nullable VARCHAR"
                )));
            }
            // DataFusion plans VARCHAR as Utf8View; the decoders fill this column as Utf8.
            let mut fields = schema.fields().to_vec();
            fields[index] = Arc::new(field.clone().with_data_type(DataType::Utf8));
            Schema::new_with_metadata(fields, schema.metadata().clone())
        }
    };
    let max_files_per_trigger =
        options.take_parsed::<usize>("max_files_per_trigger", "a positive whole number")?;
    if max_files_per_trigger == Some(0) {
        return Err(Error::Option(format!(
            "'max_files_per_trigger' of {what} must be at least 1"
        )));
    }
    let path_glob_filter = options.take("path_glob_filter");
    compile_glob(path_glob_filter.as_deref())?;
    Ok((
        FileSourceOptions {
            format: FileFormat { encoding, mode },
            path_glob_filter,
            max_files_per_trigger,
        },
        Arc::new(schema),
    ))
}

/// Whether a declared column is text: DataFusion plans `VARCHAR` as `Utf8View` by
/// default (`datafusion.sql_parser.map_string_types_to_utf8view`).
fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
}

fn check_first_file(options: &FileSourceOptions, dir: &Path, schema: &Arc<Schema>) -> Result<()> {
    let glob = compile_glob(options.path_glob_filter.as_deref())?;
    let mut files = list_files(dir, glob.as_ref())?;
    files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
    match files.first() {
        Some(first) => options.format.check_file(&first.path, schema),
        None => Ok(()),
    }
}

fn watermark_spec(
    schema: &Schema,
    column: &str,
    expr: &sqlparser::ast::Expr,
    table: &str,
) -> Result<WatermarkSpec> {
    let field = schema
        .fields()
        .iter()
        .find(|f| f.name().eq_ignore_ascii_case(column))
        .ok_or_else(|| {
            Error::Sql(format!(
                "WATERMARK FOR {column}: table '{table}' has no column '{column}'"
            ))
        })?;
    if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
        return Err(Error::Sql(format!(
            "WATERMARK FOR {column}: column '{column}' of table '{table}' is {}, but a watermark \
             needs a TIMESTAMP column",
            field.data_type()
        )));
    }
    Ok(WatermarkSpec {
        column: field.name().clone(),
        delay: ddl::watermark_delay(column, expr)?,
        max_future: DEFAULT_WATERMARK_MAX_FUTURE,
        idle_timeout: None,
    })
}

/// A `CREATE SINK`'s options, resolved.
#[derive(Debug)]
pub struct SinkOptions {
    /// Where the results go.
    pub spec: SinkSpec,
    /// Which rows the sink receives.
    pub output_mode: OutputMode,
    /// When batches run.
    pub trigger: Trigger,
    /// The checkpoint directory.
    pub checkpoint: Option<PathBuf>,
}

/// Resolves and checks a `CREATE SINK`'s format, location and options.
pub fn sink_options(statement: &CreateSink) -> Result<SinkOptions> {
    let what = format!("{} sink '{}'", statement.format, statement.name);
    let connector = registry::sql_connector(Role::Sink, &statement.format, &what)?;
    let mut options = Options::new(what.clone(), statement.options.clone())?;
    let checkpoint = options
        .take("checkpoint")
        .map(|c| absolute(Path::new(&c)))
        .transpose()?;
    let output_mode = options
        .take("output_mode")
        .map(|m| OutputMode::parse(&m))
        .transpose()?
        .unwrap_or(OutputMode::Append);
    let trigger = options
        .take("trigger")
        .map(|t| Trigger::parse(&t))
        .transpose()?
        .unwrap_or_default();
    let spec = SinkSpec::parse(
        SinkRequest {
            connector,
            what: &what,
            location: statement.location.clone(),
            location_hint: match connector.location {
                Location::Required(x) | Location::Optional(x) => format!("LOCATION '{x}'"),
                Location::None => String::new(),
            },
            has_checkpoint: checkpoint.is_some(),
        },
        &mut options,
    )?;
    options.finish(&connector.sql_options())?;
    if !spec.supports(output_mode) {
        return Err(Error::Unsupported(format!(
            "{what} supports only output_mode 'append' (files cannot be rewritten); use a console \
             or memory sink for 'update' and 'complete'"
        )));
    }
    Ok(SinkOptions {
        spec,
        output_mode,
        trigger,
        checkpoint,
    })
}
