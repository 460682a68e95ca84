//! The SQL front end: scripts are split into statements, millrace's own statements
//! (`CREATE UNBOUNDED EXTERNAL TABLE`, `CREATE SINK`) are parsed here and turned
//! into stream declarations and query configurations; everything else is DataFusion's.

pub mod ddl;
pub mod split;

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::{CreateExternalTable, Statement as DFStatement};

use crate::connector::registry::{self, Location, Role};
use crate::error::{Error, Result};
use crate::execution::Trigger;
use crate::sink::{OutputMode, SinkRequest, SinkSpec};
use crate::source::options::Options;
use crate::source::{
    DEFAULT_WATERMARK_MAX_FUTURE, DeclaredSource, SourceArgs, StreamDef, WatermarkSpec,
};
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
    let parse = connector
        .parse_source
        .ok_or_else(|| registry::unknown_sql_format(Role::Source, &statement.format, &what))?;
    let DeclaredSource {
        definition: kind,
        schema,
        location,
    } = parse(
        SourceArgs {
            what: &what,
            table: &name,
            declared,
            location: statement.location.clone(),
        },
        &mut options,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn identity(sql: &str) -> String {
        let state = SessionContext::new().state();
        let statement = ddl::parse_create_stream(sql).unwrap();
        declare_stream(&state, statement).await.unwrap().identity()
    }

    /// Checkpoints record these strings: they must not change, or checkpoints made by
    /// an older millrace stop restoring.
    #[tokio::test]
    async fn source_identities_stay_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        let location = path.display();
        for format in ["CSV", "JSON", "PARQUET"] {
            assert_eq!(
                identity(&format!(
                    "CREATE UNBOUNDED EXTERNAL TABLE t (a BIGINT) STORED AS {format} \
                     LOCATION '{location}'"
                ))
                .await,
                format!("{format} {location}")
            );
        }
        assert_eq!(
            identity(&format!(
                "CREATE UNBOUNDED EXTERNAL TABLE t STORED AS TEXT LOCATION '{location}'"
            ))
            .await,
            format!("TEXT {location}")
        );
        assert_eq!(
            identity("CREATE UNBOUNDED EXTERNAL TABLE t STORED AS RATE").await,
            "RATE"
        );
        assert_eq!(
            identity(
                "CREATE UNBOUNDED EXTERNAL TABLE t STORED AS SOCKET LOCATION 'localhost:9999'"
            )
            .await,
            "SOCKET localhost:9999"
        );
        assert_eq!(
            identity(
                "CREATE UNBOUNDED EXTERNAL TABLE t STORED AS KAFKA LOCATION 'readings' \
                 OPTIONS ('bootstrap.servers' '127.0.0.1:1')"
            )
            .await,
            "KAFKA readings"
        );
        assert_eq!(
            identity(
                "CREATE UNBOUNDED EXTERNAL TABLE t STORED AS KAFKA \
                 OPTIONS ('bootstrap.servers' '127.0.0.1:1', 'topic_pattern' 'read.*')"
            )
            .await,
            "KAFKA pattern read.*"
        );
    }
}
