//! The PostgreSQL sink (`CREATE SINK ... STORED AS POSTGRES LOCATION '<table>'`):
//! each batch's rows written to a table over a real connection (tokio-postgres),
//! exactly-once for any reader of the database.
//!
//! **How a batch is written.** One database transaction per batch: it first reads the
//! last batch id this query committed to this table from millrace's small table
//! `millrace_sink_batches` (row locked), and if the batch is not newer, it is a replay
//! of a batch the database already has (the process died after the database commit and
//! before `commits/N`): nothing is written. Otherwise the rows go in with binary `COPY`
//! (append mode), with `COPY` into a temporary table and `INSERT ... ON CONFLICT (keys)
//! DO UPDATE` on the GROUP BY columns (update mode), or after a `DELETE` of the whole
//! table (complete mode); the batch id is recorded in `millrace_sink_batches`, and the
//! transaction commits. Rows and marker commit together or not at all.
//!
//! **Connection.** `host` (default `127.0.0.1`), `port` (5432), `database`
//! (`postgres`), `user` (`postgres`); the password comes from the environment variable
//! named by `password_env` or the file named by `password_file` (first line), never
//! from the statement, and is never logged. TLS ([`tls`]): libpq's `sslmode` (`disable`
//! by default for a loopback host, `verify-full` otherwise) and `sslrootcert`.
//!
//! **Table.** Created on the first write when absent (`create_table`, default true)
//! with the query's columns (and, in update mode, a `UNIQUE NULLS NOT DISTINCT`
//! constraint on the keys, PostgreSQL 15 and later); an existing table must have every
//! output column with a matching type, else the query is refused before it runs.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use futures::{FutureExt, pin_mut};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls};

use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::sink::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec, TableWrite};
use crate::source::options::Options;

pub mod tls;

use tls::TlsOptions;

/// The sink's own options (besides `checkpoint`, `output_mode`, `trigger`).
pub const OPTIONS: &[&str] = &[
    "host",
    "port",
    "database",
    "user",
    "password_env",
    "password_file",
    "sslmode",
    "sslrootcert",
    "create_table",
    "connect_timeout",
];

/// millrace's table recording, per query and target table, the last batch committed.
pub const BATCHES_TABLE: &str = "millrace_sink_batches";

/// Where the password comes from (the secret itself is read when the sink opens and
/// kept only in the connection configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// No password (trust or peer authentication).
    None,
    /// The environment variable of this name.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

/// A `STORED AS POSTGRES` sink's options, checked.
#[derive(Debug, Clone)]
pub struct PostgresSinkOptions {
    /// The target table as written in `LOCATION` (`name` or `schema.name`, case kept).
    pub table: String,
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User name.
    pub user: String,
    /// Where the password comes from.
    pub password: Password,
    /// Create the table on first write when absent.
    pub create_table: bool,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// TLS (`sslmode`, `sslrootcert`).
    pub tls: TlsOptions,
}

impl PostgresSinkOptions {
    /// Reads the options (taking them from `options`); `table` is the `LOCATION`.
    pub fn parse(
        options: &mut Options,
        table: &str,
        has_checkpoint: bool,
        what: &str,
    ) -> Result<Self> {
        if !has_checkpoint {
            return Err(Error::Option(format!(
                "{what} needs a checkpoint ('checkpoint' option): the batch ids recorded in the \
                 database are only meaningful with the query's checkpoint"
            )));
        }
        if table.trim().is_empty() || table.split('.').count() > 2 {
            return Err(Error::Sql(format!(
                "the table of {what} must be '<table>' or '<schema>.<table>', got '{table}'"
            )));
        }
        let port = options
            .take_parsed::<u16>("port", "a port number")?
            .unwrap_or(5432);
        let password = match (options.take("password_env"), options.take("password_file")) {
            (Some(_), Some(_)) => {
                return Err(Error::Option(format!(
                    "{what}: give either 'password_env' or 'password_file', not both"
                )));
            }
            (Some(var), None) => Password::Env(var),
            (None, Some(file)) => Password::File(PathBuf::from(file)),
            (None, None) => Password::None,
        };
        let host = options
            .take("host")
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let tls = TlsOptions::parse(options, &host, what)?;
        let connect_timeout = options
            .take("connect_timeout")
            .map(|d| crate::duration::parse_duration(&d))
            .transpose()?
            .unwrap_or(Duration::from_secs(10));
        Ok(PostgresSinkOptions {
            table: table.to_string(),
            host,
            port,
            database: options
                .take("database")
                .unwrap_or_else(|| "postgres".to_string()),
            user: options
                .take("user")
                .unwrap_or_else(|| "postgres".to_string()),
            password,
            create_table: options.take_bool("create_table")?.unwrap_or(true),
            connect_timeout,
            tls,
        })
    }

    /// `host:port/database table`, for progress reports and messages (no password).
    pub fn describe(&self) -> String {
        format!(
            "{}:{}/{} {}",
            self.host, self.port, self.database, self.table
        )
    }

    fn config(&self) -> Result<tokio_postgres::Config> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .application_name("millrace")
            .connect_timeout(self.connect_timeout);
        match &self.password {
            Password::None => {}
            Password::Env(var) => {
                let value = std::env::var(var).map_err(|_| {
                    Error::Option(format!(
                        "the PostgreSQL password variable '{var}' (password_env) is not set"
                    ))
                })?;
                config.password(value);
            }
            Password::File(path) => {
                let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
                config.password(text.lines().next().unwrap_or_default());
            }
        }
        Ok(config)
    }
}

impl SinkDefinition for PostgresSinkOptions {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink::open(
            self.clone(),
            ctx.schema,
            ctx.query_id,
            ctx.table_write("POSTGRES")?,
        )?))
    }
}

/// `STORED AS POSTGRES`: the registry's parse function.
pub fn parse_sink(args: SinkArgs<'_>, options: &mut Options) -> Result<SinkSpec> {
    Ok(SinkSpec::new(PostgresSinkOptions::parse(
        options,
        args.location.as_deref().unwrap_or_default(),
        args.has_checkpoint,
        args.what,
    )?))
}

/// How a column is sent: the PostgreSQL type, and the Arrow type it is cast to first.
fn column_type(data_type: &DataType) -> Option<(Type, &'static str, DataType)> {
    use DataType::*;
    Some(match data_type {
        Boolean => (Type::BOOL, "boolean", Boolean),
        Int8 | Int16 | UInt8 => (Type::INT2, "smallint", Int16),
        Int32 | UInt16 => (Type::INT4, "integer", Int32),
        Int64 | UInt32 | UInt64 => (Type::INT8, "bigint", Int64),
        Float16 | Float32 => (Type::FLOAT4, "real", Float32),
        Float64 => (Type::FLOAT8, "double precision", Float64),
        Utf8 | LargeUtf8 | Utf8View => (Type::TEXT, "text", Utf8),
        Binary | LargeBinary | BinaryView => (Type::BYTEA, "bytea", Binary),
        Date32 | Date64 => (Type::DATE, "date", Date32),
        Timestamp(_, None) => (
            Type::TIMESTAMP,
            "timestamp",
            Timestamp(TimeUnit::Microsecond, None),
        ),
        Timestamp(_, Some(_)) => (
            Type::TIMESTAMPTZ,
            "timestamptz",
            Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        _ => return None,
    })
}

/// Whether an existing column of PostgreSQL type `udt_name` takes values of `ty`.
fn compatible(udt_name: &str, ty: &Type) -> bool {
    match *ty {
        Type::TEXT => matches!(udt_name, "text" | "varchar" | "bpchar"),
        _ => udt_name == ty.name(),
    }
}

/// `"name"` with inner quotes doubled: identifiers are sent as written.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One value of a row for binary COPY.
#[derive(Debug)]
enum Value<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<chrono::Utc>),
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Bool(v) => v.to_sql(ty, out),
            Value::I16(v) => v.to_sql(ty, out),
            Value::I32(v) => v.to_sql(ty, out),
            Value::I64(v) => v.to_sql(ty, out),
            Value::F32(v) => v.to_sql(ty, out),
            Value::F64(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Bytes(v) => v.to_sql(ty, out),
            Value::Date(v) => v.to_sql(ty, out),
            Value::Timestamp(v) => v.to_sql(ty, out),
            Value::TimestampTz(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // The column types are chosen (and existing tables checked) from the schema.
        true
    }

    to_sql_checked!();
}

/// The columns of one batch, cast to the Arrow types [`column_type`] sends.
struct Columns {
    arrays: Vec<ArrayRef>,
}

impl Columns {
    fn new(batch: &RecordBatch, types: &[DataType]) -> Result<Self> {
        let arrays = batch
            .columns()
            .iter()
            .zip(types)
            .map(|(array, to)| {
                if array.data_type() == to {
                    Ok(array.clone())
                } else {
                    cast(array, to).map_err(Error::from)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Columns { arrays })
    }

    fn value(&self, column: usize, row: usize) -> Result<Value<'_>> {
        let array = &self.arrays[column];
        if array.is_null(row) {
            return Ok(Value::Null);
        }
        let out_of_range = || {
            Error::Data(format!(
                "a timestamp or date in column {} is outside PostgreSQL's range",
                column + 1
            ))
        };
        Ok(match array.data_type() {
            DataType::Boolean => Value::Bool(downcast::<BooleanArray>(array)?.value(row)),
            DataType::Int16 => Value::I16(downcast::<Int16Array>(array)?.value(row)),
            DataType::Int32 => Value::I32(downcast::<Int32Array>(array)?.value(row)),
            DataType::Int64 => Value::I64(downcast::<Int64Array>(array)?.value(row)),
            DataType::Float32 => Value::F32(downcast::<Float32Array>(array)?.value(row)),
            DataType::Float64 => Value::F64(downcast::<Float64Array>(array)?.value(row)),
            DataType::Utf8 => Value::Text(downcast::<StringArray>(array)?.value(row)),
            DataType::Binary => Value::Bytes(downcast::<BinaryArray>(array)?.value(row)),
            DataType::Date32 => Value::Date(
                downcast::<Date32Array>(array)?
                    .value_as_date(row)
                    .ok_or_else(out_of_range)?,
            ),
            DataType::Timestamp(_, None) => Value::Timestamp(
                downcast::<TimestampMicrosecondArray>(array)?
                    .value_as_datetime(row)
                    .ok_or_else(out_of_range)?,
            ),
            DataType::Timestamp(_, Some(_)) => {
                let micros = downcast::<TimestampMicrosecondArray>(array)?.value(row);
                Value::TimestampTz(
                    DateTime::from_timestamp_micros(micros).ok_or_else(out_of_range)?,
                )
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "PostgreSQL sink: no conversion for {other}"
                )));
            }
        })
    }
}

fn downcast<T: 'static>(array: &ArrayRef) -> Result<&T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::Unsupported(format!("unexpected array type {}", array.data_type())))
}

/// Runs `future` to completion on `runtime`, on a thread of its own: the query thread
/// is inside the engine's runtime, where another runtime cannot block.
fn block_on<T: Send>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T>> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Network(
                    "the PostgreSQL sink's client thread panicked".to_string(),
                ))
            })
    })
}

/// The server's message and SQLSTATE for a database error (tokio-postgres's own
/// `Display` says only "db error"), the client's text otherwise.
fn error_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The cause (a TLS handshake's certificate error, say) is not in the
            // `Display` of tokio-postgres's error, only in its sources.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

fn db_error(
    context: &str,
    options: &PostgresSinkOptions,
) -> impl Fn(tokio_postgres::Error) -> Error + use<> {
    let place = options.describe();
    let context = context.to_string();
    move |e| {
        let detail = error_detail(&e);
        Error::Network(format!("PostgreSQL sink ({place}): {context}: {detail}"))
    }
}

/// The sink: a connection (re-opened when it drops) and the statements of its table.
pub struct PostgresSink {
    options: PostgresSinkOptions,
    query_id: String,
    write: TableWrite,
    /// Column names (as written) and PostgreSQL types, in output order.
    columns: Vec<(String, Type)>,
    /// The Arrow types columns are cast to before sending.
    cast_to: Vec<DataType>,
    /// `"schema"."table"` or `"table"`.
    target: String,
    runtime: Option<tokio::runtime::Runtime>,
    client: Option<Client>,
}

impl PostgresSink {
    /// Connects, creates the table (when absent and allowed) and millrace's batch table,
    /// and checks an existing table's columns against the query's.
    pub fn open(
        options: PostgresSinkOptions,
        schema: &SchemaRef,
        query_id: &str,
        write: TableWrite,
    ) -> Result<Self> {
        let mut columns = Vec::new();
        let mut cast_to = Vec::new();
        for field in schema.fields() {
            let (ty, _, arrow) = column_type(field.data_type()).ok_or_else(|| {
                Error::Unsupported(format!(
                    "column '{}' of PostgreSQL sink {} is {}, which the sink cannot write: \
                     CAST it to a number, VARCHAR, BOOLEAN, DATE or TIMESTAMP in the SELECT \
                     (for a window, select window.start / window.end)",
                    field.name(),
                    options.table,
                    field.data_type()
                ))
            })?;
            columns.push((field.name().clone(), ty));
            cast_to.push(arrow);
        }
        let target = options
            .table
            .split('.')
            .map(quote)
            .collect::<Vec<_>>()
            .join(".");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::Network(format!("PostgreSQL sink: cannot start its runtime: {e}"))
            })?;
        let mut sink = PostgresSink {
            options,
            query_id: query_id.to_string(),
            write,
            columns,
            cast_to,
            target,
            runtime: Some(runtime),
            client: None,
        };
        sink.connect()?;
        sink.prepare_tables(schema)?;
        Ok(sink)
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::Network("PostgreSQL sink already closed".to_string()))
    }

    /// (Re)connects when there is no open connection.
    fn connect(&mut self) -> Result<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let mut config = self.options.config()?;
        let tls = self.options.tls.connector()?;
        let place = self.options.describe();
        let tls_text = self.options.tls.describe();
        let host = self.options.host.clone();
        let verify_full = self.options.tls.mode == tls::SslMode::VerifyFull;
        let runtime = self.runtime()?;
        let client = block_on(runtime, async move {
            let (client, connection) = match tls {
                None => {
                    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
                        Error::Network(format!(
                            "PostgreSQL sink: cannot connect to {place}: {}",
                            error_detail(&e)
                        ))
                    })?;
                    (client, connection.boxed())
                }
                Some(tls) => {
                    // TLS or nothing: never a fall-back to clear text.
                    config.ssl_mode(tokio_postgres::config::SslMode::Require);
                    let (client, connection) = config.connect(tls).await.map_err(|e| {
                        let name = if verify_full {
                            format!(" and name the host '{host}'")
                        } else {
                            String::new()
                        };
                        Error::Network(format!(
                            "PostgreSQL sink: cannot connect to {place} with {tls_text}: {}. \
                             The server must accept TLS (ssl = on) and, unless sslmode is \
                             'require', its certificate must be signed by a CA of sslrootcert{name}; \
                             change sslmode or sslrootcert otherwise",
                            error_detail(&e)
                        ))
                    })?;
                    (client, connection.boxed())
                }
            };
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("PostgreSQL sink connection ended: {e}");
                }
            });
            Ok(client)
        })?;
        self.client = Some(client);
        Ok(())
    }

    /// Keys of update mode, as quoted column names.
    fn key_columns(&self) -> Vec<String> {
        match &self.write {
            TableWrite::Upsert(keys) => keys.iter().map(|k| quote(&self.columns[*k].0)).collect(),
            _ => Vec::new(),
        }
    }

    fn prepare_tables(&mut self, schema: &SchemaRef) -> Result<()> {
        let (schema_name, table_name) = match self.options.table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, self.options.table.clone()),
        };
        let column_defs: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let (_, sql_type, _) = column_type(f.data_type()).expect("checked in open");
                format!("{} {sql_type}", quote(f.name()))
            })
            .collect();
        let keys = self.key_columns();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} ({}{})",
            self.target,
            column_defs.join(", "),
            if keys.is_empty() {
                String::new()
            } else {
                format!(", UNIQUE NULLS NOT DISTINCT ({})", keys.join(", "))
            }
        );
        let batches = format!(
            "CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} (query_id text NOT NULL, \
             target text NOT NULL, batch_id bigint NOT NULL, committed_at timestamptz NOT NULL \
             DEFAULT now(), PRIMARY KEY (query_id, target))"
        );
        let options = self.options.clone();
        let columns = self.columns.clone();
        let create_table = self.options.create_table;
        let runtime = self.runtime.as_ref().expect("open");
        let client = self.client.as_mut().expect("connected");
        block_on(runtime, async move {
            let existing = client
                .query(
                    "SELECT column_name::text, udt_name::text FROM information_schema.columns \
                     WHERE table_name = $1 AND table_schema = coalesce($2, current_schema())",
                    &[&table_name, &schema_name],
                )
                .await
                .map_err(db_error("reading the table's columns", &options))?;
            if existing.is_empty() {
                if !create_table {
                    return Err(Error::Sql(format!(
                        "table {} does not exist in {} and create_table is false: create it first",
                        options.table,
                        options.describe()
                    )));
                }
                client
                    .batch_execute(&create)
                    .await
                    .map_err(db_error("creating the table", &options))?;
            } else {
                let found: Vec<(String, String)> =
                    existing.iter().map(|r| (r.get(0), r.get(1))).collect();
                for (name, ty) in &columns {
                    match found.iter().find(|(n, _)| n == name) {
                        Some((_, udt)) if compatible(udt, ty) => {}
                        Some((_, udt)) => {
                            return Err(Error::Data(format!(
                                "column '{name}' of table {} is {udt}, but the query writes {}: \
                                 change the query's type (CAST) or the table",
                                options.table,
                                ty.name()
                            )));
                        }
                        None => {
                            return Err(Error::Data(format!(
                                "table {} has no column '{name}' that the query writes (it has {}): \
                                 rename the query's column or add it to the table",
                                options.table,
                                found
                                    .iter()
                                    .map(|(n, _)| n.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    }
                }
            }
            // Concurrent queries may race to create millrace's table: a unique
            // violation on the catalog means another one just did.
            if let Err(e) = client.batch_execute(&batches).await
                && e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            {
                return Err(db_error("creating millrace_sink_batches", &options)(e));
            }
            Ok(())
        })
    }
}

impl Sink for PostgresSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        self.connect()?;
        let prepared: Vec<Columns> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| Columns::new(b, &self.cast_to))
            .collect::<Result<_>>()?;
        let names: Vec<String> = self.columns.iter().map(|(n, _)| quote(n)).collect();
        let types: Vec<Type> = self.columns.iter().map(|(_, t)| t.clone()).collect();
        let keys = self.key_columns();
        let target = self.target.clone();
        let write = self.write.clone();
        let options = self.options.clone();
        let query_id = self.query_id.clone();
        let column_count = self.columns.len();
        let runtime = self.runtime.as_ref().expect("open");
        let client = self.client.as_mut().expect("connected");
        let written = block_on(runtime, async move {
            let err = |context: &str| db_error(context, &options);
            let tx = client
                .transaction()
                .await
                .map_err(err("starting a transaction"))?;
            let last: Option<i64> = tx
                .query_opt(
                    &format!(
                        "SELECT batch_id FROM {BATCHES_TABLE} WHERE query_id = $1 AND target = $2 \
                         FOR UPDATE"
                    ),
                    &[&query_id, &target],
                )
                .await
                .map_err(err("reading the last batch id"))?
                .map(|row| row.get(0));
            if last.is_some_and(|last| last >= batch_id as i64) {
                tx.rollback().await.map_err(err("rolling back"))?;
                return Ok(false);
            }
            let copy_into = match &write {
                TableWrite::Upsert(_) => {
                    tx.batch_execute(&format!(
                        "CREATE TEMPORARY TABLE IF NOT EXISTS millrace_stage \
                         (LIKE {target}) ON COMMIT DELETE ROWS"
                    ))
                    .await
                    .map_err(err("creating the staging table"))?;
                    "millrace_stage".to_string()
                }
                TableWrite::Replace => {
                    tx.execute(&format!("DELETE FROM {target}"), &[])
                        .await
                        .map_err(err("emptying the table (complete mode)"))?;
                    target.clone()
                }
                TableWrite::Append => target.clone(),
            };
            let sink = tx
                .copy_in(&format!(
                    "COPY {copy_into} ({}) FROM STDIN (FORMAT binary)",
                    names.join(", ")
                ))
                .await
                .map_err(err("starting COPY"))?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            pin_mut!(writer);
            for columns in &prepared {
                let rows = columns.arrays.first().map_or(0, |a| a.len());
                for row in 0..rows {
                    let values = (0..column_count)
                        .map(|c| columns.value(c, row))
                        .collect::<Result<Vec<_>>>()?;
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    writer
                        .as_mut()
                        .write(&refs)
                        .await
                        .map_err(err("sending rows"))?;
                }
            }
            writer.finish().await.map_err(err("finishing COPY"))?;
            if let TableWrite::Upsert(_) = &write {
                let non_keys: Vec<&String> = names.iter().filter(|n| !keys.contains(n)).collect();
                let action = if non_keys.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!(
                        "DO UPDATE SET {}",
                        non_keys
                            .iter()
                            .map(|n| format!("{n} = EXCLUDED.{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let upsert = format!(
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM millrace_stage \
                     ON CONFLICT ({keys}) {action}",
                    cols = names.join(", "),
                    keys = keys.join(", ")
                );
                if let Err(e) = tx.execute(&upsert, &[]).await {
                    if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_COLUMN_REFERENCE)
                    {
                        return Err(Error::Sql(format!(
                            "table {} needs a unique constraint on the GROUP BY columns ({}) \
                             for update mode: ALTER TABLE {} ADD UNIQUE NULLS NOT DISTINCT ({})",
                            options.table,
                            keys.join(", "),
                            target,
                            keys.join(", ")
                        )));
                    }
                    return Err(err("upserting the rows")(e));
                }
            }
            tx.execute(
                &format!(
                    "INSERT INTO {BATCHES_TABLE} (query_id, target, batch_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (query_id, target) DO UPDATE SET batch_id = EXCLUDED.batch_id, \
                     committed_at = now()"
                ),
                &[&query_id, &target, &(batch_id as i64)],
            )
            .await
            .map_err(err("recording the batch id"))?;
            crash_point("postgres-before-commit");
            tx.commit().await.map_err(err("committing"))?;
            Ok(true)
        });
        match written {
            Ok(true) => crash_point("postgres-after-commit"),
            Ok(false) => tracing::info!(
                "PostgreSQL sink {}: batch {batch_id} is already in the database (replay skipped)",
                self.options.table
            ),
            Err(e) => {
                // The connection may be in an unknown state: open a new one next time.
                self.client = None;
                return Err(e);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("PostgresSink[{}]", self.options.describe())
    }
}

impl Drop for PostgresSink {
    fn drop(&mut self) {
        self.client = None;
        // Dropping a runtime blocks, which panics inside the engine's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<PostgresSinkOptions> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut options = Options::new("POSTGRES sink 's'", pairs)?;
        let parsed = PostgresSinkOptions::parse(&mut options, "alerts", true, "POSTGRES sink 's'")?;
        options.finish(OPTIONS)?;
        Ok(parsed)
    }

    #[test]
    fn options_have_loopback_defaults_and_refuse_two_passwords() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.describe(), "127.0.0.1:5432/postgres alerts");
        assert_eq!(o.password, Password::None);
        let o = parse(&[("password_env", "PGPASS"), ("port", "6000")]).unwrap();
        assert_eq!(o.password, Password::Env("PGPASS".into()));
        assert_eq!(o.port, 6000);
        assert_eq!(o.tls.mode, tls::SslMode::Disable);
        let o = parse(&[("host", "db.example.com")]).unwrap();
        assert_eq!(o.tls.mode, tls::SslMode::VerifyFull);
        let e = parse(&[("password_env", "A"), ("password_file", "f")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = parse(&[("port", "x")]).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn types_map_and_identifiers_are_quoted() {
        assert_eq!(column_type(&DataType::Utf8View).unwrap().1, "text");
        assert_eq!(column_type(&DataType::UInt8).unwrap().1, "smallint");
        assert!(column_type(&DataType::Null).is_none());
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert!(compatible("varchar", &Type::TEXT));
        assert!(!compatible("int4", &Type::INT8));
    }
}
