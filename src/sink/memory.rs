//! The memory sink: results become a table of the session, named after the sink,
//! that ordinary `SELECT`s can read while the query runs and after it ends.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec};
use crate::error::{Error, Result};
use crate::planning::BatchTable;
use crate::source::options::Options;

/// How each batch's rows change the memory sink's table (the same as any table-like
/// sink's).
pub use super::TableWrite as MemoryWrite;

/// Writes each batch into a session table.
pub struct MemorySink {
    table: Arc<BatchTable>,
    write: MemoryWrite,
    /// The newest batch id added: a replayed id is ignored.
    last_batch_id: Option<u64>,
}

impl MemorySink {
    /// A sink filling `table` (registered in the session by the caller).
    pub fn new(table: Arc<BatchTable>, write: MemoryWrite) -> Self {
        MemorySink {
            table,
            write,
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
        let rows = batches.iter().filter(|b| b.num_rows() > 0).cloned();
        match &self.write {
            MemoryWrite::Append => self.table.append(rows),
            MemoryWrite::Replace => self.table.replace(rows.collect()),
            MemoryWrite::Upsert(keys) => self.table.upsert(rows.collect(), keys)?,
        }
        self.last_batch_id = Some(batch_id);
        Ok(())
    }

    fn describe(&self) -> String {
        "MemorySink".to_string()
    }
}

/// A declared memory sink: its table is the session's (see
/// [`SinkDefinition::fills_session_table`]).
#[derive(Debug)]
pub struct MemoryDefinition;

impl SinkDefinition for MemoryDefinition {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(MemorySink::new(
            ctx.memory_table.clone().ok_or_else(|| {
                Error::Option(
                    "a memory sink has no table: set QueryConfig::memory_table (the \
                     session's start_plan does), or use another sink"
                        .into(),
                )
            })?,
            ctx.table_write("memory")?,
        )))
    }

    fn fills_session_table(&self) -> bool {
        true
    }
}

/// A memory sink (its table is given by the session when the query starts).
pub fn spec() -> SinkSpec {
    SinkSpec::new(MemoryDefinition)
}

/// `STORED AS MEMORY` (no options).
pub fn parse(_args: SinkArgs<'_>, _options: &mut Options) -> Result<SinkSpec> {
    Ok(spec())
}
