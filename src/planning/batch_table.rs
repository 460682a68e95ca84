//! A table whose rows are swapped from outside: the bridge between the micro-batch
//! loop and DataFusion.
//!
//! A streaming query's logical plan is built once; its scans of unbounded tables read
//! [`BatchTable`]s. Before each batch the engine puts that batch's source rows in the
//! table, then DataFusion runs the plan over them. The memory sink uses the same type
//! for the session table it fills.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use std::collections::HashSet;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// In-memory rows of a fixed schema, replaced or extended between scans.
#[derive(Debug)]
pub struct BatchTable {
    schema: SchemaRef,
    batches: RwLock<Vec<RecordBatch>>,
    /// Whether the table feeds a streaming query one micro-batch at a time (as opposed
    /// to holding results, like a memory sink's table): such scans mark a plan as streaming.
    stream_input: bool,
}

impl BatchTable {
    /// An empty table of `schema` holding results (a memory sink's table).
    pub fn new(schema: SchemaRef) -> Arc<Self> {
        Arc::new(BatchTable {
            schema,
            batches: RwLock::new(Vec::new()),
            stream_input: false,
        })
    }

    /// An empty table of `schema` that feeds a streaming query its micro-batches.
    pub fn stream_input(schema: SchemaRef) -> Arc<Self> {
        Arc::new(BatchTable {
            schema,
            batches: RwLock::new(Vec::new()),
            stream_input: true,
        })
    }

    /// Whether this table feeds a streaming query (see [`BatchTable::stream_input`]).
    pub fn is_stream_input(&self) -> bool {
        self.stream_input
    }

    /// Replaces the rows (the next micro-batch's input).
    pub fn replace(&self, batches: Vec<RecordBatch>) {
        *self.batches.write().unwrap_or_else(|p| p.into_inner()) = batches;
    }

    /// Adds rows after the existing ones.
    pub fn append(&self, batches: impl IntoIterator<Item = RecordBatch>) {
        self.batches
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(batches);
    }

    /// Replaces the rows whose `keys` columns equal those of a new row, and adds the
    /// others: the memory sink's update mode.
    pub fn upsert(&self, rows: Vec<RecordBatch>, keys: &[usize]) -> Result<(), ArrowError> {
        let mut table = self.batches.write().unwrap_or_else(|p| p.into_inner());
        let converter = RowConverter::new(
            keys.iter()
                .map(|&k| SortField::new(self.schema.field(k).data_type().clone()))
                .collect(),
        )?;
        let key_columns = |batch: &RecordBatch| -> Vec<ArrayRef> {
            keys.iter().map(|&k| batch.column(k).clone()).collect()
        };
        let mut incoming = HashSet::new();
        for batch in &rows {
            let encoded = converter.convert_columns(&key_columns(batch))?;
            incoming.extend(encoded.iter().map(|r| r.as_ref().to_vec()));
        }
        let mut kept = Vec::with_capacity(table.len() + rows.len());
        for batch in table.drain(..) {
            let encoded = converter.convert_columns(&key_columns(&batch))?;
            let keep: BooleanArray = encoded
                .iter()
                .map(|r| Some(!incoming.contains(r.as_ref())))
                .collect();
            let batch = filter_record_batch(&batch, &keep)?;
            if batch.num_rows() > 0 {
                kept.push(batch);
            }
        }
        kept.extend(rows);
        *table = kept;
        Ok(())
    }

    /// A snapshot of the current rows.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl TableProvider for BatchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(MemorySourceConfig::try_new_exec(
            &[self.batches()],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
