//! Delta Lake tables (delta-rs, the `deltalake` crate, on the same arrow, parquet and
//! DataFusion as millrace):
//!
//! - [`sink`]: `CREATE SINK ... STORED AS DELTA LOCATION '<table directory>'`, one
//!   Delta commit per batch, exactly-once for any Delta reader through Delta's own
//!   idempotent-write mechanism (a `txn` action carrying the query id and batch id).
//! - [`source`]: `CREATE UNBOUNDED EXTERNAL TABLE ... STORED AS DELTA`, the rows of the
//!   table's new commits, with table versions (and a file index) as offsets.
//!
//! Both reach delta-rs through [`block_on`]: the engine calls sinks from inside
//! its own tokio runtime, where delta-rs's async API cannot be blocked on directly.

pub mod sink;
pub mod source;

use std::future::Future;
use std::path::Path;

use deltalake::DeltaTable;

use crate::error::{Error, Result};

/// A runtime of one thread for delta-rs's async calls, owned by a sink or source.
pub(crate) fn runtime(what: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Data(format!("{what}: cannot start its runtime: {e}")))
}

/// Runs `future` to completion on `runtime`, from a scoped thread of its own (blocking
/// on a runtime inside another one, the engine's, would panic).
pub(crate) fn block_on<T: Send>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T>> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .unwrap_or_else(|_| Err(Error::Data("the Delta Lake client thread panicked".into())))
    })
}

/// Opens the Delta table at `path`; a directory without a `_delta_log` gives a table
/// whose `version()` is `None` (created on the first write).
pub(crate) async fn open_table(path: &Path) -> Result<DeltaTable> {
    let url = deltalake::ensure_table_uri(path.display().to_string())
        .map_err(|e| delta_error(path, "opening", e))?;
    let has_log = std::fs::read_dir(path.join("_delta_log"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if !has_log {
        // Not a table yet: delta-rs's loader would log an error for the empty log.
        return deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .map_err(|e| delta_error(path, "opening", e));
    }
    DeltaTable::try_from_url(url)
        .await
        .map_err(|e| delta_error(path, "opening", e))
}

/// A delta-rs error with the table and what was being done.
pub(crate) fn delta_error(path: &Path, doing: &str, e: impl std::fmt::Display) -> Error {
    Error::Data(format!(
        "Delta table {}: {doing} failed: {e}",
        path.display()
    ))
}
