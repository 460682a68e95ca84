//! The in-memory rows of one state partition, indexed by key, so that a batch reads and
//! rewrites only the keys it touches.
//!
//! Rows live in append-only Arrow chunks (the state schema: key columns, then the
//! accumulators' states). An upsert appends the new rows as a chunk and points the index
//! at them; the rows they replace stay in their chunk, marked dead in the chunk's live
//! bitmap, until [`KeyedRows::compact`] filters them out (Arrow's `filter` kernel) once
//! dead rows outnumber a fraction of the live ones. So a batch costs O(keys it touches)
//! plus, now and then, a compaction that copies the live rows once — never a merge of
//! the whole state.
//!
//! The index is a [`hashbrown::HashTable`] of packed `(chunk, row)` positions; keys are
//! compared on their [`RowConverter`] encoding, kept per chunk (back to back when every
//! key of the chunk has the same width, as fixed-width key types do), and hashed with
//! [`key_hash`], a fixed function (not a per-process random seed) because the
//! partition a key belongs to must be the same after a restart.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBufferBuilder, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;

use crate::error::{Error, Result};

/// Compact once dead rows exceed this fraction (1 / `COMPACT_RATIO`) of the live ones:
/// it bounds the dead rows' memory to that fraction of the state.
const COMPACT_RATIO: usize = 4;

/// The key encodings of one chunk's rows, as the index reads them: every probe of the
/// index compares a stored key, at a random place in memory, so its layout matters.
#[derive(Debug)]
enum ChunkKeys {
    /// No key columns (a global aggregate): every key is the empty one.
    Empty,
    /// Every key of the chunk encodes to `width` bytes (keys of fixed-width types, such
    /// as `BIGINT` or timestamps): the encodings back to back, so a row's key is found
    /// by a multiplication, without reading an offsets array (one cache miss less per
    /// probe, and 8 bytes less per key).
    Fixed { width: usize, bytes: Vec<u8> },
    /// Encodings of varying length (strings, ...), as Arrow's row format keeps them.
    Varying(Rows),
}

impl ChunkKeys {
    /// The chunk's keys from their row encoding (`None`: no key columns).
    fn new(rows: Option<Rows>) -> Self {
        let Some(rows) = rows else {
            return ChunkKeys::Empty;
        };
        let width = rows.iter().next().map_or(0, |r| r.data().len());
        if rows.iter().any(|r| r.data().len() != width) {
            return ChunkKeys::Varying(rows);
        }
        let mut bytes = Vec::with_capacity(width * rows.num_rows());
        for row in rows.iter() {
            bytes.extend_from_slice(row.data());
        }
        ChunkKeys::Fixed { width, bytes }
    }

    /// The encoded key of row `row`.
    fn key(&self, row: usize) -> &[u8] {
        match self {
            ChunkKeys::Empty => &[],
            ChunkKeys::Fixed { width, bytes } => &bytes[row * width..(row + 1) * width],
            ChunkKeys::Varying(rows) => rows.row(row).data(),
        }
    }

    /// Bytes held.
    fn size(&self) -> usize {
        match self {
            ChunkKeys::Empty => 0,
            ChunkKeys::Fixed { bytes, .. } => bytes.capacity(),
            ChunkKeys::Varying(rows) => rows.size(),
        }
    }
}

/// One append-only chunk of state rows.
#[derive(Debug)]
struct Chunk {
    rows: RecordBatch,
    /// The key columns' encodings.
    keys: ChunkKeys,
    /// Which rows are still the live row of their key.
    live: BooleanBufferBuilder,
    live_count: usize,
}

/// The state rows of one partition, indexed by key (see the module doc).
#[derive(Debug)]
pub struct KeyedRows {
    schema: SchemaRef,
    key_columns: usize,
    /// `None` when there are no key columns (a global aggregate: one key for all rows).
    converter: Option<RowConverter>,
    chunks: Vec<Chunk>,
    /// Packed `(chunk << 32) | row` of each key's live row.
    index: HashTable<u64>,
    dead: usize,
}

/// A deterministic 64-bit hash of a key's encoded bytes (FNV-1a over 8-byte words,
/// then MurmurHash3's finaliser). Stable across processes and runs, unlike the
/// randomly seeded hashers of `std` and DataFusion.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &byte in words.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finaliser: spreads every input bit over the output.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn pack(chunk: usize, row: usize) -> u64 {
    ((chunk as u64) << 32) | row as u64
}

fn unpack(position: u64) -> (usize, usize) {
    ((position >> 32) as usize, (position & 0xffff_ffff) as usize)
}

/// The row converter of the first `key_columns` columns of `schema` (`None` for none).
pub fn key_converter(schema: &SchemaRef, key_columns: usize) -> Result<Option<RowConverter>> {
    if key_columns == 0 {
        return Ok(None);
    }
    let fields = schema.fields()[..key_columns]
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    RowConverter::new(fields).map(Some).map_err(|e| {
        Error::Unsupported(format!(
            "state keyed by {:?} cannot be kept: {e}",
            schema.fields()[..key_columns]
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        ))
    })
}

impl KeyedRows {
    /// An empty partition of rows of `schema`, keyed by its first `key_columns` columns.
    pub fn new(schema: SchemaRef, key_columns: usize) -> Result<Self> {
        let converter = key_converter(&schema, key_columns)?;
        Ok(KeyedRows {
            schema,
            key_columns,
            converter,
            chunks: Vec::new(),
            index: HashTable::new(),
            dead: 0,
        })
    }

    /// The state schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of keys (live rows).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The key encoding of `batch`'s key columns.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Option<Rows>> {
        match &self.converter {
            Some(converter) => Ok(Some(
                converter.convert_columns(&batch.columns()[..self.key_columns])?,
            )),
            None => Ok(None),
        }
    }

    fn find(&self, key: &[u8]) -> Option<u64> {
        let chunks = &self.chunks;
        self.index
            .find(key_hash(key), |&p| stored_key(chunks, p) == key)
            .copied()
    }

    /// The live state rows of the keys of `batch` that are held, each once, in the
    /// order they are stored (sorted positions: the gather then reads the chunks in
    /// order, and a key met twice in `batch` is read once without a hash set).
    pub fn rows_for_keys_of(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let keys = self.encode(batch)?;
        let mut found: Vec<u64> = (0..batch.num_rows())
            .filter_map(|row| self.find(key_at(&keys, row)))
            .collect();
        found.sort_unstable();
        found.dedup();
        let positions: Vec<(usize, usize)> = found.into_iter().map(unpack).collect();
        self.gather(&positions)
    }

    /// Whether each row's key of `batch` is held.
    pub fn contains_keys_of(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let keys = self.encode(batch)?;
        Ok((0..batch.num_rows())
            .map(|row| Some(self.find(key_at(&keys, row)).is_some()))
            .collect())
    }

    /// The rows at `positions`, as one batch (Arrow's `interleave` kernel).
    fn gather(&self, positions: &[(usize, usize)]) -> Result<RecordBatch> {
        if positions.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = self
                    .chunks
                    .iter()
                    .map(|chunk| chunk.rows.column(c).as_ref())
                    .collect();
                interleave(&arrays, positions)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        with_rows(&self.schema, columns, positions.len())
    }

    /// Makes each row of `rows` the live row of its key (the last one wins within
    /// `rows`); the rows they replace become dead.
    pub fn upsert(&mut self, rows: RecordBatch) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        if self.chunks.len() >= u32::MAX as usize || rows.num_rows() > u32::MAX as usize {
            self.compact()?;
        }
        let keys = ChunkKeys::new(self.encode(&rows)?);
        let chunk_index = self.chunks.len();
        let mut live = BooleanBufferBuilder::new(rows.num_rows());
        live.append_n(rows.num_rows(), true);
        self.chunks.push(Chunk {
            live_count: rows.num_rows(),
            rows,
            keys,
            live,
        });
        let n = self.chunks[chunk_index].rows.num_rows();
        for row in 0..n {
            let new = pack(chunk_index, row);
            let (chunks, index) = (&mut self.chunks, &mut self.index);
            let key = chunks[chunk_index].keys.key(row);
            let hash = key_hash(key);
            let replaced = match index.find_mut(hash, |&p| stored_key(chunks, p) == key) {
                Some(slot) => Some(std::mem::replace(slot, new)),
                None => {
                    index.insert_unique(hash, new, |&p| key_hash(stored_key(chunks, p)));
                    None
                }
            };
            if let Some(old) = replaced {
                let (c, r) = unpack(old);
                chunks[c].live.set_bit(r, false);
                chunks[c].live_count -= 1;
                self.dead += 1;
            }
        }
        Ok(())
    }

    /// Drops the keys of `keys`'s first key columns (absent keys are ignored).
    pub fn remove(&mut self, keys: &RecordBatch) -> Result<()> {
        let encoded = self.encode(keys)?;
        for row in 0..keys.num_rows() {
            let key = key_at(&encoded, row);
            let chunks = &self.chunks;
            if let Ok(entry) = self
                .index
                .find_entry(key_hash(key), |&p| stored_key(chunks, p) == key)
            {
                let (old, _) = entry.remove();
                let (c, r) = unpack(old);
                self.chunks[c].live.set_bit(r, false);
                self.chunks[c].live_count -= 1;
                self.dead += 1;
            }
        }
        Ok(())
    }

    /// Every live row, as one batch (for snapshots, complete mode and sessions).
    pub fn live_rows(&self) -> Result<RecordBatch> {
        let mut parts = Vec::with_capacity(self.chunks.len());
        for chunk in &self.chunks {
            if chunk.live_count == chunk.rows.num_rows() {
                parts.push(chunk.rows.clone());
            } else if chunk.live_count > 0 {
                let mask = BooleanArray::new(chunk.live.finish_cloned(), None);
                parts.push(filter_record_batch(&chunk.rows, &mask)?);
            }
        }
        Ok(concat_batches(&self.schema, &parts)?)
    }

    /// The live rows `ended` selects (given each chunk's rows, it returns a mask).
    pub fn live_rows_where(
        &self,
        ended: impl Fn(&RecordBatch) -> Result<BooleanArray>,
    ) -> Result<RecordBatch> {
        let mut parts = Vec::new();
        for chunk in &self.chunks {
            if chunk.live_count == 0 {
                continue;
            }
            let selected = ended(&chunk.rows)?;
            let live = BooleanArray::new(chunk.live.finish_cloned(), None);
            let mask = datafusion::arrow::compute::and(&selected, &live)?;
            if mask.true_count() > 0 {
                parts.push(filter_record_batch(&chunk.rows, &mask)?);
            }
        }
        Ok(concat_batches(&self.schema, &parts)?)
    }

    /// Compacts when the dead rows exceed 1 / `COMPACT_RATIO` of the live ones.
    pub fn maybe_compact(&mut self) -> Result<bool> {
        if self.dead > 0 && self.dead * COMPACT_RATIO > self.index.len() {
            self.compact()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Filters the dead rows out: one chunk of the live rows; index positions are
    /// remapped without rehashing any key.
    pub fn compact(&mut self) -> Result<()> {
        if self.chunks.len() <= 1 && self.dead == 0 {
            return Ok(());
        }
        // The new position of each live row: live rows before it, over all chunks.
        let mut base = 0usize;
        let mut new_positions: Vec<Vec<u32>> = Vec::with_capacity(self.chunks.len());
        for chunk in &self.chunks {
            let mut positions = vec![u32::MAX; chunk.rows.num_rows()];
            for (row, slot) in positions.iter_mut().enumerate() {
                if chunk.live.get_bit(row) {
                    *slot = base as u32;
                    base += 1;
                }
            }
            new_positions.push(positions);
        }
        let rows = self.live_rows()?;
        let keys = match &self.converter {
            Some(converter) => {
                let mut live_keys: Vec<&[u8]> = Vec::with_capacity(self.index.len());
                let mut bytes = 0;
                for chunk in &self.chunks {
                    for row in 0..chunk.rows.num_rows() {
                        if chunk.live.get_bit(row) {
                            let key = chunk.keys.key(row);
                            bytes += key.len();
                            live_keys.push(key);
                        }
                    }
                }
                // Sized exactly: the index's memory is part of the state's.
                let width = live_keys.first().map_or(0, |k| k.len());
                if live_keys.iter().all(|k| k.len() == width) {
                    let mut out = Vec::with_capacity(bytes);
                    for key in &live_keys {
                        out.extend_from_slice(key);
                    }
                    ChunkKeys::Fixed { width, bytes: out }
                } else {
                    let parser = converter.parser();
                    let mut out = converter.empty_rows(live_keys.len(), bytes);
                    for key in live_keys {
                        out.push(parser.parse(key));
                    }
                    ChunkKeys::Varying(out)
                }
            }
            None => ChunkKeys::Empty,
        };
        for position in self.index.iter_mut() {
            let (c, r) = unpack(*position);
            *position = pack(0, new_positions[c][r] as usize);
        }
        let n = rows.num_rows();
        let mut live = BooleanBufferBuilder::new(n);
        live.append_n(n, true);
        self.chunks = vec![Chunk {
            rows,
            keys,
            live,
            live_count: n,
        }];
        self.dead = 0;
        Ok(())
    }

    /// Bytes of the state rows' Arrow arrays, dead rows included.
    pub fn row_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.rows.get_array_memory_size())
            .sum()
    }

    /// Bytes of the index: the hash table, the key encodings and the live bitmaps.
    pub fn index_bytes(&self) -> usize {
        self.index.allocation_size()
            + self
                .chunks
                .iter()
                .map(|c| c.keys.size() + c.live.capacity() / 8)
                .sum::<usize>()
    }

    /// Rows kept that are no longer the live row of their key.
    pub fn dead_rows(&self) -> usize {
        self.dead
    }
}

fn stored_key(chunks: &[Chunk], position: u64) -> &[u8] {
    let (c, r) = unpack(position);
    chunks[c].keys.key(r)
}

fn key_at(keys: &Option<Rows>, row: usize) -> &[u8] {
    match keys {
        Some(rows) => rows.row(row).data(),
        None => &[],
    }
}

fn with_rows(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::collections::BTreeMap;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn rows(pairs: &[(i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.0))),
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.1))),
            ],
        )
        .unwrap()
    }

    fn to_map(batch: &RecordBatch) -> BTreeMap<i64, i64> {
        let k = batch.column(0).as_primitive::<Int64Type>();
        let n = batch.column(1).as_primitive::<Int64Type>();
        (0..batch.num_rows())
            .map(|i| (k.value(i), n.value(i)))
            .collect()
    }

    #[test]
    fn upserts_replace_removes_drop_and_compaction_keeps_the_live_rows() {
        let mut state = KeyedRows::new(schema(), 1).unwrap();
        state.upsert(rows(&[(1, 1), (2, 1), (3, 1)])).unwrap();
        state.upsert(rows(&[(2, 5), (4, 1)])).unwrap();
        assert_eq!(state.len(), 4);
        assert_eq!(state.dead_rows(), 1);
        assert_eq!(
            to_map(
                &state
                    .rows_for_keys_of(&rows(&[(2, 0), (9, 0), (2, 0)]))
                    .unwrap()
            ),
            BTreeMap::from([(2, 5)])
        );
        state.remove(&rows(&[(1, 0), (7, 0)])).unwrap();
        let expected = BTreeMap::from([(2, 5), (3, 1), (4, 1)]);
        assert_eq!(to_map(&state.live_rows().unwrap()), expected);
        assert!(state.maybe_compact().unwrap());
        assert_eq!(state.dead_rows(), 0);
        assert_eq!(to_map(&state.live_rows().unwrap()), expected);
        // The index still finds every key after compaction.
        assert_eq!(
            to_map(&state.rows_for_keys_of(&rows(&[(4, 0), (3, 0)])).unwrap()),
            BTreeMap::from([(3, 1), (4, 1)])
        );
        state.upsert(rows(&[(3, 9)])).unwrap();
        assert_eq!(
            to_map(&state.live_rows().unwrap()),
            BTreeMap::from([(2, 5), (3, 9), (4, 1)])
        );
    }

    #[test]
    fn keys_of_varying_and_fixed_width_mix_in_one_partition_and_survive_compaction() {
        use datafusion::arrow::array::StringArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |pairs: &[(Option<&str>, i64)]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter(pairs.iter().map(|p| p.0))),
                    Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.1))),
                ],
            )
            .unwrap()
        };
        let as_map = |b: &RecordBatch| -> BTreeMap<Option<String>, i64> {
            let k = b.column(0).as_string::<i32>();
            let n = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|i| (k.is_valid(i).then(|| k.value(i).to_string()), n.value(i)))
                .collect()
        };
        let mut state = KeyedRows::new(schema.clone(), 1).unwrap();
        // Keys of one length (stored back to back), then of several (and a NULL).
        state
            .upsert(batch(&[(Some("aa"), 1), (Some("bb"), 2)]))
            .unwrap();
        state
            .upsert(batch(&[
                (Some("c"), 3),
                (Some("ddd"), 4),
                (None, 5),
                (Some("aa"), 6),
            ]))
            .unwrap();
        state.upsert(batch(&[(Some("bb"), 7)])).unwrap();
        let expected = BTreeMap::from([
            (None, 5),
            (Some("aa".to_string()), 6),
            (Some("bb".to_string()), 7),
            (Some("c".to_string()), 3),
            (Some("ddd".to_string()), 4),
        ]);
        assert_eq!(as_map(&state.live_rows().unwrap()), expected);
        state.compact().unwrap();
        assert_eq!(state.dead_rows(), 0);
        // Every key is still found through the rebuilt encodings.
        let probe = batch(&[
            (None, 0),
            (Some("ddd"), 0),
            (Some("bb"), 0),
            (Some("zz"), 0),
        ]);
        assert_eq!(
            as_map(&state.rows_for_keys_of(&probe).unwrap()),
            BTreeMap::from([
                (None, 5),
                (Some("bb".to_string()), 7),
                (Some("ddd".to_string()), 4)
            ])
        );
        state.upsert(batch(&[(Some("c"), 9)])).unwrap();
        assert_eq!(state.len(), 5);
        assert_eq!(as_map(&state.rows_for_keys_of(&probe).unwrap()).len(), 3);
    }

    #[test]
    fn key_hash_is_fixed() {
        // Partition assignment depends on it across restarts: it must never change.
        assert_eq!(key_hash(&[]), fmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(key_hash(b"abc"), key_hash(b"abc"));
        assert_ne!(key_hash(b"abc"), key_hash(b"abd"));
        assert_eq!(key_hash(&1u64.to_le_bytes()), 1_960_296_129_580_152_315);
    }
}
