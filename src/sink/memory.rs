//! The memory sink: results become a table of the session, named after the sink,
//! that ordinary `SELECT`s can read while the query runs and after it ends.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::Sink;
use crate::error::Result;
use crate::planning::BatchTable;

/// Appends each batch to a session table.
pub struct MemorySink {
    table: Arc<BatchTable>,
    /// The newest batch id added: a replayed id is ignored.
    last_batch_id: Option<u64>,
}

impl MemorySink {
    /// A sink filling `table` (registered in the session by the caller).
    pub fn new(table: Arc<BatchTable>) -> Self {
        MemorySink {
            table,
            last_batch_id: None,
        }
    }
}

impl Sink for MemorySink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        if self.last_batch_id.is_some_and(|last| batch_id <= last) {
            return Ok(());
        }
        self.table
            .append(batches.iter().filter(|b| b.num_rows() > 0).cloned());
        self.last_batch_id = Some(batch_id);
        Ok(())
    }

    fn describe(&self) -> String {
        "MemorySink".to_string()
    }
}
