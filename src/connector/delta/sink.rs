//! The Delta Lake sink (`CREATE SINK ... STORED AS DELTA LOCATION '<directory>'`,
//! DataFrame `format("delta")` with `option("path", ..)`): each batch becomes one
//! commit of a Delta table, exactly-once for any Delta reader (Spark, delta-rs, the
//! Python `deltalake` package, DuckDB's delta extension).
//!
//! **Exactly-once.** Delta's own idempotent-write mechanism, as Spark's Delta sink and
//! its `txnAppId`/`txnVersion` options use it: the commit of batch N carries a `txn`
//! action with `appId` = the query id (from the checkpoint, stable across restarts) and
//! `version` = N, in the same atomic log entry (`_delta_log/<v>.json`) as the batch's
//! data files. Before writing, the sink reads the table's latest `txn` version for its
//! query; if it is N or more, batch N is a replay of a batch the table already has (the
//! process died after the Delta commit, before `commits/N`) and nothing is written.
//! A crash before the Delta commit leaves at most data files no log entry names, which
//! no Delta reader sees (`VACUUM` removes them).
//!
//! **Modes.** Append adds the batch's rows; complete overwrites the table (one commit
//! removing every file and adding the new ones); update MERGEs on the GROUP BY columns
//! (matched rows updated, others inserted; keys compared null-safely). All three carry
//! the `txn` action in their one commit.
//!
//! **Table.** Created on the first write with the query's schema, partitioned by the
//! `partition_by` columns (comma-separated) if given. An existing table must have the
//! query's columns with the same Delta types (and, if `partition_by` is given, the same
//! partitioning); otherwise the query is refused before it runs, naming both schemas.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::logical_expr::{Operator, binary_expr};
use datafusion::prelude::{Expr, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::schema::cast::normalize_for_delta;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;

use super::{block_on, delta_error, open_table, runtime};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::sink::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec, TableWrite};
use crate::source::options::Options;

/// The sink's own options (besides `checkpoint`, `output_mode`, `trigger`).
pub const OPTIONS: &[&str] = &["partition_by"];

/// `STORED AS DELTA` (sink): the registry's parse function.
pub fn parse_sink(args: SinkArgs<'_>, options: &mut Options) -> Result<SinkSpec> {
    Ok(SinkSpec::new(DeltaSinkOptions::parse(
        options,
        args.location.as_deref().unwrap_or_default(),
        args.has_checkpoint,
        args.what,
    )?))
}

impl SinkDefinition for DeltaSinkOptions {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(DeltaSink::open(
            self.clone(),
            ctx.schema,
            ctx.query_id,
            ctx.table_write("DELTA")?,
        )?))
    }
}

/// A Delta sink as declared: where the table is and how a new one is partitioned.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSinkOptions {
    /// The table's directory (absolute).
    pub path: PathBuf,
    /// Partition columns of a table this sink creates (`partition_by`); an existing
    /// table must already be partitioned so when given.
    pub partition_by: Vec<String>,
}

impl DeltaSinkOptions {
    /// Reads the options (taking them from `options`); `location` is the table's
    /// directory.
    pub fn parse(
        options: &mut Options,
        location: &str,
        has_checkpoint: bool,
        what: &str,
    ) -> Result<Self> {
        if !has_checkpoint {
            return Err(Error::Option(format!(
                "{what} needs a checkpoint ('checkpoint' option): its commits are recognised on \
                 replay by the query id and batch id the checkpoint keeps"
            )));
        }
        if location.trim().is_empty() {
            return Err(Error::Sql(format!(
                "{what} needs the table's directory as LOCATION"
            )));
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::Unsupported(format!(
                "{what}: only local Delta tables are supported (a directory or file:// URL), got \
                 '{location}'"
            )));
        }
        let path = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        let partition_by = options
            .take("partition_by")
            .map(|s| {
                s.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(DeltaSinkOptions {
            path: std::path::absolute(&path).map_err(Error::io(&path))?,
            partition_by,
        })
    }
}

/// The sink opened for one run of a query.
pub struct DeltaSink {
    options: DeltaSinkOptions,
    /// The `txn` action's `appId`.
    query_id: String,
    write: TableWrite,
    /// Column names of the query's output, in order.
    columns: Vec<String>,
    /// The query's schema with Delta's physical types (timestamps in microseconds,
    /// views as plain strings): batches are cast to it before they are written.
    stored: SchemaRef,
    runtime: Option<tokio::runtime::Runtime>,
}

/// `name: type, ...` of a Delta schema, for messages.
fn describe_schema(schema: &StructType) -> String {
    schema
        .fields()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Delta schema a query's output is written with.
fn delta_schema(schema: &SchemaRef) -> Result<StructType> {
    normalize_for_delta(schema).try_into_kernel().map_err(|e| {
        Error::Unsupported(format!(
            "the query's output cannot be stored in a Delta table: {e}"
        ))
    })
}

/// Checks that an existing table takes the query's rows: every column of the query,
/// with the same Delta type, and no column of the table the query does not write
/// (it would be filled with nulls, silently).
fn check_schema(path: &Path, table: &StructType, query: &StructType) -> Result<()> {
    let same = table.fields().count() == query.fields().count()
        && query.fields().all(|q| {
            table
                .field(q.name())
                .is_some_and(|t| t.data_type() == q.data_type())
        });
    if same {
        return Ok(());
    }
    Err(Error::Data(format!(
        "the Delta table at {} has the schema ({}), but the query writes ({}): write to a new \
         LOCATION, or make the query's columns and types match the table's (rename, CAST)",
        path.display(),
        describe_schema(table),
        describe_schema(query)
    )))
}

impl DeltaSink {
    /// Opens the sink: checks an existing table's schema and partitioning against the
    /// query's (refusing a mismatch before any batch runs).
    pub fn open(
        options: DeltaSinkOptions,
        schema: &SchemaRef,
        query_id: &str,
        write: TableWrite,
    ) -> Result<Self> {
        let query_schema = delta_schema(schema)?;
        for column in &options.partition_by {
            if schema.field_with_name(column).is_err() {
                return Err(Error::Option(format!(
                    "partition_by column '{column}' is not a column of the query's output ({})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let runtime = runtime("Delta sink")?;
        let path = options.path.clone();
        let partition_by = options.partition_by.clone();
        block_on(&runtime, async move {
            let table = open_table(&path).await?;
            if table.version().is_none() {
                return Ok(());
            }
            let snapshot = table
                .snapshot()
                .map_err(|e| delta_error(&path, "reading the table", e))?;
            check_schema(&path, &snapshot.schema(), &query_schema)?;
            let existing = snapshot.metadata().partition_columns().to_vec();
            if !partition_by.is_empty() && existing != partition_by {
                return Err(Error::Data(format!(
                    "the Delta table at {} is partitioned by ({}), but the sink's partition_by \
                     is ({}): drop the option to keep the table's partitioning, or write to a \
                     new LOCATION",
                    path.display(),
                    existing.join(", "),
                    partition_by.join(", ")
                )));
            }
            Ok(())
        })?;
        Ok(DeltaSink {
            options,
            query_id: query_id.to_string(),
            write,
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            stored: normalize_for_delta(schema),
            runtime: Some(runtime),
        })
    }
}

/// `target.<c>` or `source.<c>`, exactly as named (no case folding, dots allowed).
fn column(relation: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(relation), name))
}

/// Writes batch `batch_id` unless the table already has it; `Ok(false)` for a replay.
async fn write_batch(
    sink: &DeltaSinkRef<'_>,
    batch_id: u64,
    batches: &[RecordBatch],
) -> Result<bool> {
    let path = sink.path;
    let table = open_table(path).await?;
    if table.version().is_some() {
        let snapshot = table
            .snapshot()
            .map_err(|e| delta_error(path, "reading the table", e))?;
        let last = snapshot
            .transaction_version(table.log_store().as_ref(), sink.query_id)
            .await
            .map_err(|e| delta_error(path, "reading the query's last txn version", e))?;
        if last.is_some_and(|last| last >= batch_id as i64) {
            return Ok(false);
        }
    }
    let commit = CommitProperties::default()
        .with_application_transaction(Transaction::new(sink.query_id, batch_id as i64));
    let mut data: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| store_as(b, sink.stored))
        .collect::<Result<_>>()?;
    if data.is_empty() {
        // Still one commit (carrying the txn action), as Spark's Delta sink makes for an
        // empty batch; in complete mode it empties the table.
        data.push(RecordBatch::new_empty(sink.stored.clone()));
    }
    crash_point("delta-before-write");
    let is_new = table.version().is_none();
    match sink.write {
        TableWrite::Upsert(keys) if !is_new => {
            let predicate = keys
                .iter()
                .map(|k| {
                    let name = &sink.columns[*k];
                    binary_expr(
                        column("target", name),
                        Operator::IsNotDistinctFrom,
                        column("source", name),
                    )
                })
                .reduce(Expr::and)
                .ok_or_else(|| Error::Data("update mode without GROUP BY columns".into()))?;
            let source = SessionContext::new()
                .read_batches(data)
                .map_err(|e| delta_error(path, "staging the batch", e))?;
            let non_keys: Vec<&String> = sink
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !keys.contains(i))
                .map(|(_, c)| c)
                .collect();
            let mut merge = table
                .merge(source, predicate)
                .with_source_alias("source")
                .with_target_alias("target")
                .with_commit_properties(commit);
            if !non_keys.is_empty() {
                merge = merge
                    .when_matched_update(|update| {
                        non_keys.iter().fold(update, |u, c| {
                            u.update(Column::new_unqualified(c.as_str()), column("source", c))
                        })
                    })
                    .map_err(|e| delta_error(path, "planning the MERGE", e))?;
            }
            merge = merge
                .when_not_matched_insert(|insert| {
                    sink.columns.iter().fold(insert, |i, c| {
                        i.set(Column::new_unqualified(c.as_str()), column("source", c))
                    })
                })
                .map_err(|e| delta_error(path, "planning the MERGE", e))?;
            merge
                .await
                .map_err(|e| delta_error(path, "merging the batch (update mode)", e))?;
        }
        _ => {
            let mode = if matches!(sink.write, TableWrite::Replace) {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            };
            let mut write = table
                .write(data)
                .with_save_mode(mode)
                .with_commit_properties(commit);
            if is_new && !sink.partition_by.is_empty() {
                write = write.with_partition_columns(sink.partition_by.to_vec());
            }
            write
                .await
                .map_err(|e| delta_error(path, "writing the batch", e))?;
        }
    }
    Ok(true)
}

/// `batch` with the stored types (a timestamp loses its nanoseconds: Delta's
/// timestamps are microseconds).
fn store_as(batch: &RecordBatch, stored: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(stored.fields())
        .map(|(c, f)| Ok(datafusion::arrow::compute::cast(c, f.data_type())?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(stored.clone(), columns)?)
}

/// What [`write_batch`] reads of the sink (borrowed, so the future is `Send`).
struct DeltaSinkRef<'a> {
    path: &'a Path,
    query_id: &'a str,
    write: &'a TableWrite,
    columns: &'a [String],
    stored: &'a SchemaRef,
    partition_by: &'a [String],
}

impl Sink for DeltaSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let sink = DeltaSinkRef {
            path: &self.options.path,
            query_id: &self.query_id,
            write: &self.write,
            columns: &self.columns,
            stored: &self.stored,
            partition_by: &self.options.partition_by,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Data("Delta sink already closed".into()))?;
        let written = block_on(runtime, write_batch(&sink, batch_id, batches))?;
        if written {
            crash_point("delta-after-commit");
        } else {
            tracing::info!(
                "Delta sink {}: batch {batch_id} is already in the table (replay skipped)",
                self.options.path.display()
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("DeltaSink[{}]", self.options.path.display())
    }
}

impl Drop for DeltaSink {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside the engine's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every row of a table's current version, read with delta-rs (the tests compare it
/// with what other Delta readers see).
pub fn read_table(path: &Path) -> Result<Vec<RecordBatch>> {
    let runtime = runtime("Delta reader")?;
    block_on(&runtime, async move {
        let table = open_table(path).await?;
        let ctx = SessionContext::new();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| delta_error(path, "reading", e))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| delta_error(path, "reading", e))?;
        let df = ctx
            .read_table(provider)
            .map_err(|e| delta_error(path, "reading", e))?;
        df.collect()
            .await
            .map_err(|e| delta_error(path, "reading", e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(location: &str, pairs: &[(&str, &str)]) -> Result<DeltaSinkOptions> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut options = Options::new("DELTA sink 's'", pairs)?;
        let parsed = DeltaSinkOptions::parse(&mut options, location, true, "DELTA sink 's'")?;
        options.finish(OPTIONS)?;
        Ok(parsed)
    }

    #[test]
    fn options_take_partition_columns_and_refuse_remote_tables() {
        let o = parse("/tmp/t", &[("partition_by", "day, pump")]).unwrap();
        assert_eq!(o.partition_by, ["day", "pump"]);
        assert_eq!(o.path, PathBuf::from("/tmp/t"));
        let o = parse("file:///tmp/t", &[]).unwrap();
        assert_eq!(o.path, PathBuf::from("/tmp/t"));
        let e = parse("s3://bucket/t", &[]).unwrap_err().to_string();
        assert!(e.contains("only local"), "{e}");
        let e = parse("/tmp/t", &[("zorder", "x")]).unwrap_err().to_string();
        assert!(e.contains("zorder"), "{e}");
    }
}
