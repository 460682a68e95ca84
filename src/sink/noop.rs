//! The no-op sink (Spark's `noop` format): the query runs in full — sources, state,
//! checkpoint, progress — and each batch's rows are dropped. It exists to measure a
//! query without the cost of delivering its result (`millrace bench --workload
//! groupby`), or to dry-run a query; nothing is delivered, so there is no guarantee to
//! keep.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec};
use crate::error::Result;
use crate::source::options::Options;

/// Discards every batch.
pub struct NoopSink;

impl Sink for NoopSink {
    fn add_batch(
        &mut self,
        _batch_id: u64,
        _schema: &SchemaRef,
        _batches: &[RecordBatch],
    ) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "NoopSink".to_string()
    }
}

/// A declared no-op sink.
#[derive(Debug)]
pub struct NoopDefinition;

impl SinkDefinition for NoopDefinition {
    fn open(&self, _ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(NoopSink))
    }
}

/// `STORED AS NOOP` (no options).
pub fn parse(_args: SinkArgs<'_>, _options: &mut Options) -> Result<SinkSpec> {
    Ok(SinkSpec::new(NoopDefinition))
}
