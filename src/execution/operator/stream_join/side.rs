//! The state of one side of a stream-stream join: the side's rows (Arrow), bucketed by
//! the watermark at which they expire so that eviction drops whole buckets, with a
//! hash index from the equality key to the rows, a stored `matched` flag per row
//! (never recomputed: SPARK-26154), and its versions in a [`StateStore`] keyed by a
//! row id.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::state::{StateStore, StateStoreConfig};

/// Where a stored row is: (chunk id, row in the chunk).
pub type Loc = (u64, u32);

/// Expiry times (ms) per bucket: a bucket holds the rows expiring in one second.
const BUCKET_MS: i64 = 1_000;
/// The bucket of rows that never expire (an unbounded side).
const NEVER: i64 = i64::MAX;

const ROW_ID: &str = "__millrace_row_id";
const MATCHED: &str = "__millrace_matched";
const EXPIRES: &str = "__millrace_expires_ms";

/// Rows that arrived together and expire in the same bucket (the bucket lists its
/// chunks).
#[derive(Debug)]
struct Chunk {
    id: u64,
    data: RecordBatch,
    ids: Vec<u64>,
    /// The watermark (ms) at which the row leaves the state (`None`: never).
    expires: Vec<Option<i64>>,
    matched: Vec<bool>,
    live: Vec<bool>,
    keys: Vec<Box<[u8]>>,
    live_count: usize,
    /// Added by the batch not committed yet.
    fresh: bool,
}

/// New rows for [`SideState::insert`].
pub struct NewRows {
    /// The rows (the side's columns).
    pub data: RecordBatch,
    /// Each row's encoded equality key.
    pub keys: Vec<Box<[u8]>>,
    /// Each row's expiry watermark (ms).
    pub expires: Vec<Option<i64>>,
    /// Each row's matched flag.
    pub matched: Vec<bool>,
}

/// What [`SideState::evict`] removed.
pub struct Evicted {
    /// The evicted rows that never matched (the side's columns).
    pub unmatched: RecordBatch,
}

/// One side's rows, index and store.
#[derive(Debug)]
pub struct SideState {
    schema: SchemaRef,
    chunks: HashMap<u64, Chunk>,
    buckets: BTreeMap<i64, Vec<u64>>,
    index: HashMap<Box<[u8]>, Vec<Loc>>,
    next_chunk: u64,
    next_id: u64,
    rows: usize,
    store: Option<StateStore>,
    /// Committed rows whose matched flag changed since the last commit.
    flipped: Vec<Loc>,
    /// Ids of committed rows evicted since the last commit.
    removed: Vec<u64>,
    /// Rows evicted since the last commit (committed or not).
    evicted: usize,
    /// Chunks added since the last commit.
    fresh_chunks: Vec<u64>,
    /// Bytes of the Arrow rows and the key bytes held (kept up to date, so the
    /// progress figure costs nothing per batch).
    bytes: usize,
}

impl SideState {
    /// An empty side for rows of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        SideState {
            schema,
            chunks: HashMap::new(),
            buckets: BTreeMap::new(),
            index: HashMap::new(),
            next_chunk: 0,
            next_id: 0,
            rows: 0,
            store: None,
            flipped: Vec::new(),
            removed: Vec::new(),
            evicted: 0,
            fresh_chunks: Vec::new(),
            bytes: 0,
        }
    }

    /// The schema of the stored rows: row id (the store's key), matched flag, expiry,
    /// then the side's columns.
    fn state_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(ROW_ID, DataType::UInt64, false),
            Field::new(MATCHED, DataType::Boolean, false),
            Field::new(EXPIRES, DataType::Int64, true),
        ];
        fields.extend(self.schema.fields().iter().map(|f| f.as_ref().clone()));
        Arc::new(Schema::new(fields))
    }

    /// Opens the side's store in `dir` and restores version `version`; `keys` encodes
    /// the equality key of restored rows.
    pub fn open(
        &mut self,
        dir: &Path,
        version: Option<u64>,
        config: StateStoreConfig,
        keys: impl Fn(&RecordBatch) -> Result<Vec<Box<[u8]>>>,
    ) -> Result<()> {
        let mut store = StateStore::open(dir, self.state_schema(), 1, config)?;
        let restored = store.load(version)?;
        self.store = Some(store);
        if restored.num_rows() == 0 {
            return Ok(());
        }
        let ids = restored
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .expect("the row id column")
            .values()
            .to_vec();
        let matched = restored
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("the matched column");
        let matched = (0..restored.num_rows()).map(|i| matched.value(i)).collect();
        let expires = restored
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("the expiry column")
            .iter()
            .collect();
        let data = restored.project(&(3..restored.num_columns()).collect::<Vec<_>>())?;
        let data = RecordBatch::try_new(self.schema.clone(), data.columns().to_vec())?;
        self.next_id = ids.iter().max().map_or(0, |m| m + 1);
        let rows = NewRows {
            keys: keys(&data)?,
            data,
            expires,
            matched,
        };
        self.add(rows, Some(ids), false)?;
        Ok(())
    }

    /// Stores new rows; returns where each went.
    pub fn insert(&mut self, rows: NewRows) -> Result<Vec<Loc>> {
        self.add(rows, None, true)
    }

    fn add(&mut self, rows: NewRows, ids: Option<Vec<u64>>, fresh: bool) -> Result<Vec<Loc>> {
        let n = rows.data.num_rows();
        let ids = ids.unwrap_or_else(|| {
            let first = self.next_id;
            self.next_id += n as u64;
            (first..first + n as u64).collect()
        });
        let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, expires) in rows.expires.iter().enumerate() {
            let bucket = expires.map_or(NEVER, |e| e.div_euclid(BUCKET_MS));
            by_bucket.entry(bucket).or_default().push(row as u32);
        }
        let mut locs = vec![(0, 0); n];
        for (bucket, members) in by_bucket {
            let chunk_id = self.next_chunk;
            self.next_chunk += 1;
            let indices = UInt32Array::from(members.clone());
            let columns = rows
                .data
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let data = RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &datafusion::arrow::array::RecordBatchOptions::new()
                    .with_row_count(Some(members.len())),
            )?;
            let mut chunk = Chunk {
                id: chunk_id,
                data,
                ids: Vec::with_capacity(members.len()),
                expires: Vec::with_capacity(members.len()),
                matched: Vec::with_capacity(members.len()),
                live: vec![true; members.len()],
                keys: Vec::with_capacity(members.len()),
                live_count: members.len(),
                fresh,
            };
            for (i, &row) in members.iter().enumerate() {
                let row = row as usize;
                chunk.ids.push(ids[row]);
                chunk.expires.push(rows.expires[row]);
                chunk.matched.push(rows.matched[row]);
                chunk.keys.push(rows.keys[row].clone());
                self.index
                    .entry(rows.keys[row].clone())
                    .or_default()
                    .push((chunk_id, i as u32));
                locs[row] = (chunk_id, i as u32);
            }
            self.rows += members.len();
            self.bytes += chunk_bytes(&chunk);
            if fresh {
                self.fresh_chunks.push(chunk_id);
            }
            self.chunks.insert(chunk_id, chunk);
            self.buckets.entry(bucket).or_default().push(chunk_id);
        }
        Ok(locs)
    }

    /// The stored rows with key `key`.
    pub fn lookup(&self, key: &[u8]) -> &[Loc] {
        self.index.get(key).map_or(&[], |v| v.as_slice())
    }

    /// The rows at `locs` (the side's columns), in that order.
    pub fn gather(&self, locs: &[Loc]) -> Result<RecordBatch> {
        if locs.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let mut order: HashMap<u64, usize> = HashMap::new();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let indices: Vec<(usize, usize)> = locs
            .iter()
            .map(|(chunk, row)| {
                let b = *order.entry(*chunk).or_insert_with(|| {
                    batches.push(&self.chunks[chunk].data);
                    batches.len() - 1
                });
                (b, *row as usize)
            })
            .collect();
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &indices)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(locs.len())),
        )?)
    }

    /// Marks the row at `loc` matched; returns whether it was not before.
    pub fn mark_matched(&mut self, loc: Loc) -> bool {
        let chunk = self.chunks.get_mut(&loc.0).expect("a stored row");
        let row = loc.1 as usize;
        if chunk.matched[row] {
            return false;
        }
        chunk.matched[row] = true;
        if !chunk.fresh {
            self.flipped.push(loc);
        }
        true
    }

    /// Whether a bucket [`evict`](Self::evict) at `watermark` (ms) would look at holds
    /// rows (so a partition without new rows is worked on only when it may evict).
    pub fn may_evict(&self, watermark: i64) -> bool {
        self.buckets
            .range(..=watermark.div_euclid(BUCKET_MS))
            .next()
            .is_some()
    }

    /// Removes the rows that expire at or before `watermark` (ms): whole buckets, and
    /// the rows of the bucket the watermark is in that expired.
    pub fn evict(&mut self, watermark: i64) -> Result<Evicted> {
        let last = watermark.div_euclid(BUCKET_MS);
        let buckets: Vec<i64> = self.buckets.range(..=last).map(|(b, _)| *b).collect();
        // The unmatched evicted rows, as (chunk rows, row): gathered once at the end.
        let mut sources: Vec<RecordBatch> = Vec::new();
        let mut unmatched: Vec<(usize, usize)> = Vec::new();
        let mut rows = 0;
        // Keys that lost rows: their index entries are cleaned once, at the end (a key
        // with many rows is not rescanned per evicted row).
        let mut touched_keys: std::collections::HashSet<Box<[u8]>> =
            std::collections::HashSet::new();
        for bucket in buckets {
            let chunk_ids = self.buckets.remove(&bucket).unwrap_or_default();
            let mut kept = Vec::new();
            for chunk_id in chunk_ids {
                let mut chunk = self.chunks.remove(&chunk_id).expect("a bucket's chunk");
                let source = sources.len();
                for row in 0..chunk.ids.len() {
                    let expired =
                        chunk.live[row] && chunk.expires[row].is_some_and(|e| e <= watermark);
                    if !expired {
                        continue;
                    }
                    if !chunk.matched[row] {
                        if sources.len() == source {
                            sources.push(chunk.data.clone());
                        }
                        unmatched.push((source, row));
                    }
                    chunk.live[row] = false;
                    chunk.live_count -= 1;
                    rows += 1;
                    if !chunk.fresh {
                        self.removed.push(chunk.ids[row]);
                    }
                    touched_keys.insert(chunk.keys[row].clone());
                }
                if chunk.live_count > 0 {
                    kept.push(chunk_id);
                    self.chunks.insert(chunk_id, chunk);
                } else {
                    self.bytes -= chunk_bytes(&chunk);
                }
            }
            if !kept.is_empty() {
                self.buckets.insert(bucket, kept);
            }
        }
        for key in touched_keys {
            let Some(locs) = self.index.get_mut(&key) else {
                continue;
            };
            let chunks = &self.chunks;
            locs.retain(|(chunk, row)| chunks.get(chunk).is_some_and(|c| c.live[*row as usize]));
            if locs.is_empty() {
                self.index.remove(&key);
            }
        }
        self.rows -= rows;
        self.evicted += rows;
        let sources: Vec<&RecordBatch> = sources.iter().collect();
        Ok(Evicted {
            unmatched: interleave_rows(&self.schema, &sources, &unmatched)?,
        })
    }

    /// State rows (in the store's schema) of the live rows of `chunks` chosen by
    /// `pick`, in chunk order (gathered in one pass, whatever the number of chunks).
    fn state_rows(
        &self,
        chunks: impl IntoIterator<Item = u64>,
        pick: impl Fn(&Chunk, usize) -> bool,
    ) -> Result<RecordBatch> {
        let schema = self.state_schema();
        let mut ids: Vec<u64> = chunks.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut sources: Vec<&RecordBatch> = Vec::new();
        let mut indices: Vec<(usize, usize)> = Vec::new();
        let (mut row_ids, mut matched, mut expires) = (Vec::new(), Vec::new(), Vec::new());
        for id in ids {
            let Some(chunk) = self.chunks.get(&id) else {
                continue;
            };
            let source = sources.len();
            for row in 0..chunk.ids.len() {
                if !(chunk.live[row] && pick(chunk, row)) {
                    continue;
                }
                if sources.len() == source {
                    sources.push(&chunk.data);
                }
                indices.push((source, row));
                row_ids.push(chunk.ids[row]);
                matched.push(chunk.matched[row]);
                expires.push(chunk.expires[row]);
            }
        }
        let data = interleave_rows(&self.schema, &sources, &indices)?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(row_ids)),
            Arc::new(BooleanArray::from(matched)),
            Arc::new(Int64Array::from(expires)),
        ];
        columns.extend(data.columns().iter().cloned());
        Ok(RecordBatch::try_new_with_options(
            schema,
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(indices.len())),
        )?)
    }

    /// Saves version `version`: the rows added or whose flag changed, and the ids of
    /// the rows evicted since the last commit (only the chunks the batch touched are
    /// read; the whole state only for a snapshot). The files are written in the
    /// background ([`StateStore::start_commit`]): durable once
    /// [`wait_committed`](Self::wait_committed) returns. Returns (rows updated, rows
    /// removed).
    pub fn commit(&mut self, version: u64) -> Result<(usize, usize)> {
        let flipped: std::collections::HashSet<Loc> = self.flipped.drain(..).collect();
        let fresh = std::mem::take(&mut self.fresh_chunks);
        let touched = fresh.iter().copied().chain(flipped.iter().map(|(c, _)| *c));
        let updated = self.state_rows(touched, |chunk, row| {
            chunk.fresh || flipped.contains(&(chunk.id, row as u32))
        })?;
        let removed = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                ROW_ID,
                DataType::UInt64,
                false,
            )])),
            vec![Arc::new(UInt64Array::from(std::mem::take(
                &mut self.removed,
            )))],
        )?;
        // The store is taken out while the whole state (for a snapshot) is read.
        if let Some(mut store) = self.store.take() {
            let all: Vec<u64> = self.chunks.keys().copied().collect();
            let result = store.start_commit(version, &updated, &removed, || {
                self.state_rows(all, |_, _| true)
            });
            self.store = Some(store);
            result?;
        }
        for id in fresh {
            if let Some(chunk) = self.chunks.get_mut(&id) {
                chunk.fresh = false;
            }
        }
        let evicted = std::mem::take(&mut self.evicted);
        Ok((updated.num_rows(), evicted))
    }

    /// Waits until the version the last [`commit`](Self::commit) started is durable.
    pub fn wait_committed(&mut self) -> Result<()> {
        self.store
            .as_mut()
            .map_or(Ok(()), StateStore::wait_committed)
    }

    /// Rows in the state.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Bytes the rows, keys and index hold (approximately: the index at 40 bytes per
    /// row).
    pub fn memory_bytes(&self) -> usize {
        self.bytes + self.rows * 40
    }
}

/// Rows `(source, row)` of `sources` (all of `schema`), in that order, in one
/// `interleave` per column.
fn interleave_rows(
    schema: &SchemaRef,
    sources: &[&RecordBatch],
    indices: &[(usize, usize)],
) -> Result<RecordBatch> {
    if indices.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(c).as_ref()).collect();
            interleave(&arrays, indices)
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len())),
    )?)
}

/// Bytes a chunk holds: its Arrow rows, keys and per-row fields.
fn chunk_bytes(chunk: &Chunk) -> usize {
    chunk.data.get_array_memory_size()
        + chunk.keys.iter().map(|k| k.len() + 16).sum::<usize>()
        + chunk.ids.len() * (8 + 16 + 2)
}
