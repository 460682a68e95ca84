//! `foreach_batch`: each micro-batch's result handed to user code as a DataFusion
//! `DataFrame`, so a query can write anywhere (Spark's `foreachBatch`).
//!
//! **Delivery: at-least-once.** After a crash, the batch that was running is run again
//! with the same id and the same rows, and the function is called again. Writers that
//! are idempotent on the batch id (skip an id already written, or overwrite by it) get
//! exactly-once; that is why the id is passed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionContext};

use super::{Sink, SinkContext, SinkDefinition, SinkSpec};
use crate::error::{Error, Result};

/// The future a `foreach_batch` function returns.
pub type BatchFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A user function called with each batch's id and rows.
#[derive(Clone)]
pub struct ForeachBatchFn(pub Arc<dyn Fn(u64, DataFrame) -> BatchFuture + Send + Sync>);

impl fmt::Debug for ForeachBatchFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForeachBatchFn")
    }
}

/// The sink calling a [`ForeachBatchFn`].
pub struct ForeachBatchSink {
    function: ForeachBatchFn,
}

impl ForeachBatchSink {
    /// A sink calling `function` once per batch (again on replay).
    pub fn new(function: ForeachBatchFn) -> Self {
        ForeachBatchSink { function }
    }
}

impl Sink for ForeachBatchSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema.clone(), vec![batches.to_vec()])?;
        let frame = ctx.read_table(Arc::new(table))?;
        // The query thread is inside the runtime's `block_on`: run the user's future
        // on this thread (tokio I/O and timers in it are driven by the runtime's
        // workers).
        futures::executor::block_on((self.function.0)(batch_id, frame)).map_err(|e| {
            Error::Stopped(format!(
                "the foreach_batch function failed on batch {batch_id}: {e}"
            ))
        })
    }

    fn describe(&self) -> String {
        "ForeachBatchSink".to_string()
    }
}

impl SinkDefinition for ForeachBatchFn {
    fn open(&self, _ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ForeachBatchSink::new(self.clone())))
    }
}

/// A sink calling `function` per batch: the DataFrame API's `foreach_batch(...)` and
/// the shell's live `SELECT` build it directly (it takes a function, so SQL has no
/// `STORED AS` for it).
pub fn spec(function: ForeachBatchFn) -> SinkSpec {
    SinkSpec::new(function)
}
