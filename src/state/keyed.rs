//! The in-memory rows of one state partition, indexed by key, so that a batch reads and
//! rewrites only the keys it touches.
//!
//! Rows live in append-only Arrow chunks (the state schema: key columns, then the
//! accumulators' states). Writing a key's new row appends it to a chunk and points the
//! key at it; the row it replaces stays in its chunk, marked dead in the chunk's live
//! bitmap, until [`KeyedRows::compact`] filters the dead rows out (Arrow's `filter`
//! kernel) once they outnumber a fraction of the live ones. So a batch costs O(keys it
//! touches) plus, now and then, a compaction that copies the live rows once — never a
//! merge of the whole state.
//!
//! Each key held gets a **group id**: a small number that stays the key's while it is
//! held (ids of removed keys are reused). The index is a [`hashbrown::HashTable`] of
//! group ids, hashed with [`key_hash`] over the key's [`RowConverter`] encoding, which
//! is kept once per group id (back to back when every key has the same width, as keys
//! of fixed-width types do); a second array maps each group id to its live row. A
//! batch's keys are looked up **once**: [`KeyedRows::touch`] finds or registers each
//! key's group id, and [`KeyedRows::settle`] writes the merged rows back through those
//! ids without hashing again. [`key_hash`] is a fixed function (not a per-process
//! random seed) because the partition a key belongs to must be the same after a
//! restart.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBufferBuilder, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::error::{Error, Result};

/// Compact once dead rows exceed this fraction (1 / `COMPACT_RATIO`) of the live ones:
/// it bounds the dead rows' memory to that fraction of the state.
const COMPACT_RATIO: usize = 4;

/// The position of a group id that has no row: a free id, or a key registered by
/// [`KeyedRows::touch`] whose row [`KeyedRows::settle`] has not written yet.
const NO_ROW: u64 = u64::MAX;

/// While [`KeyedRows::touch`] runs, a group id it has met holds `TOUCHED | group` in
/// place of its row position (restored before it returns): a key met again in the
/// batch finds its group number there, without a second array as large as the index.
const TOUCHED: u64 = 1 << 63;

/// Chunks kept before a compaction is forced: a position's chunk number stays below
/// 2^31, so a position never has the [`TOUCHED`] bit.
const MAX_CHUNKS: usize = (u32::MAX >> 1) as usize;

/// Grows `vec` to hold `additional` more items by a quarter of its length at a time,
/// not by doubling: the index's arrays are a large part of the state's memory, and
/// doubling would leave up to half of them unused.
fn reserve_gently<T>(vec: &mut Vec<T>, additional: usize) {
    if vec.capacity() - vec.len() < additional {
        vec.reserve_exact(additional.max(vec.len() / 4).max(1024));
    }
}

/// The key encodings of the held keys, by group id. Every probe of the index compares
/// a stored key, at a random place in memory, so their layout matters.
#[derive(Debug)]
enum KeyStore {
    /// No key columns (a global aggregate): every key is the empty one.
    Empty,
    /// Every key encodes to `width` bytes (keys of fixed-width types, such as `BIGINT`
    /// or timestamps): group id `g`'s key is at `g * width`, found by a multiplication
    /// without reading an offsets array (one cache miss less per probe).
    Fixed { width: usize, bytes: Vec<u8> },
    /// Encodings of varying length (strings, ...): `(start, len)` of each id's bytes.
    /// The bytes of removed keys stay until [`KeyStore::compact`] drops them.
    Varying {
        bytes: Vec<u8>,
        spans: Vec<(usize, usize)>,
        garbage: usize,
    },
}

impl KeyStore {
    #[inline]
    fn key(&self, gid: u32) -> &[u8] {
        let g = gid as usize;
        match self {
            KeyStore::Empty => &[],
            KeyStore::Fixed { width, bytes } => &bytes[g * width..(g + 1) * width],
            KeyStore::Varying { bytes, spans, .. } => {
                let (start, len) = spans[g];
                &bytes[start..start + len]
            }
        }
    }

    /// Stores `key` as group id `gid`'s: `gid` is a reused id or the next new one.
    fn set(&mut self, gid: u32, key: &[u8]) {
        let g = gid as usize;
        if let KeyStore::Fixed { width, bytes } = self {
            if key.len() == *width || (bytes.is_empty() && g == 0) {
                *width = key.len();
                let at = g * *width;
                if at == bytes.len() {
                    reserve_gently(bytes, key.len());
                    bytes.extend_from_slice(key);
                } else {
                    bytes[at..at + *width].copy_from_slice(key);
                }
                return;
            }
            // A key of another width: keep every key with its own span from now on.
            let width = *width;
            let spans = (0..bytes.len() / width.max(1))
                .map(|i| (i * width, width))
                .collect();
            *self = KeyStore::Varying {
                bytes: std::mem::take(bytes),
                spans,
                garbage: 0,
            };
        }
        if let KeyStore::Varying {
            bytes,
            spans,
            garbage,
        } = self
        {
            let span = (bytes.len(), key.len());
            reserve_gently(bytes, key.len());
            bytes.extend_from_slice(key);
            if g == spans.len() {
                reserve_gently(spans, 1);
                spans.push(span);
            } else {
                *garbage += spans[g].1;
                spans[g] = span;
            }
        }
    }

    /// Marks a removed id's bytes as garbage (they stay until [`KeyStore::compact`]).
    fn free(&mut self, gid: u32) {
        if let KeyStore::Varying { spans, garbage, .. } = self {
            *garbage += spans[gid as usize].1;
            spans[gid as usize] = (0, 0);
        }
    }

    /// Rewrites varying-length keys without the garbage once it exceeds a fraction of
    /// the bytes (group ids do not change, so the index is not touched).
    fn compact(&mut self) {
        if let KeyStore::Varying {
            bytes,
            spans,
            garbage,
        } = self
            && *garbage * COMPACT_RATIO > bytes.len()
        {
            let mut out = Vec::with_capacity(bytes.len() - *garbage);
            for span in spans.iter_mut() {
                let start = out.len();
                out.extend_from_slice(&bytes[span.0..span.0 + span.1]);
                span.0 = start;
            }
            *bytes = out;
            *garbage = 0;
        }
    }

    /// Bytes held.
    fn size(&self) -> usize {
        match self {
            KeyStore::Empty => 0,
            KeyStore::Fixed { bytes, .. } => bytes.capacity(),
            KeyStore::Varying { bytes, spans, .. } => {
                bytes.capacity() + spans.capacity() * std::mem::size_of::<(usize, usize)>()
            }
        }
    }
}

/// One append-only chunk of state rows.
#[derive(Debug)]
struct Chunk {
    rows: RecordBatch,
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
    /// The group ids of the held keys, hashed by key.
    index: HashTable<u32>,
    /// Each group id's key encoding.
    keys: KeyStore,
    /// Packed `(chunk << 32) | row` of each group id's live row ([`NO_ROW`]: none).
    rows_of: Vec<u64>,
    /// Group ids free for reuse.
    free: Vec<u32>,
    dead: usize,
}

/// The groups one batch touches, found by [`KeyedRows::touch`]: one lookup per row.
/// Groups are numbered from 0 in the order they were looked up (the order of their
/// index buckets).
#[derive(Debug)]
pub struct Touched {
    /// For each row of the batch, its group's number (as DataFusion's
    /// `GroupsAccumulator::merge_batch` takes group indices).
    pub group_of_row: Vec<usize>,
    /// For each group, a row of the batch that names it.
    pub first_row: Vec<u32>,
    /// For each group, its group id.
    gids: Vec<u32>,
    /// For each group, the packed position of its held row ([`NO_ROW`]: a new key).
    held: Vec<u64>,
}

impl Touched {
    /// Number of groups touched.
    pub fn groups(&self) -> usize {
        self.gids.len()
    }

    /// Whether group `group` was held before the batch.
    pub fn was_held(&self, group: usize) -> bool {
        self.held[group] != NO_ROW
    }
}

/// A batch's keys in the order the index is probed in (see
/// `KeyedRows::in_bucket_order`).
struct BucketOrder<'k> {
    /// Each key's hash and row, in probe order.
    entries: Vec<(u64, u32)>,
    /// The keys' width when they all have the same one (then `bytes` holds them in
    /// probe order, back to back), else 0.
    width: usize,
    bytes: Vec<u8>,
    /// The keys by row.
    keys: &'k [&'k [u8]],
}

impl BucketOrder<'_> {
    /// The key of the `i`-th entry.
    #[inline]
    fn key(&self, i: usize) -> &[u8] {
        if self.width == 0 {
            self.keys[self.entries[i].1 as usize]
        } else {
            &self.bytes[i * self.width..(i + 1) * self.width]
        }
    }
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
        let keys = if converter.is_some() {
            KeyStore::Fixed {
                width: 0,
                bytes: Vec::new(),
            }
        } else {
            KeyStore::Empty
        };
        Ok(KeyedRows {
            schema,
            key_columns,
            converter,
            chunks: Vec::new(),
            index: HashTable::new(),
            keys,
            rows_of: Vec::new(),
            free: Vec::new(),
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

    /// The group id of `key`, if held.
    fn find(&self, key: &[u8]) -> Option<u32> {
        let keys = &self.keys;
        self.index
            .find(key_hash(key), |&g| key_eq(keys.key(g), key))
            .copied()
    }

    /// The group id of `key` (whose [`key_hash`] is `hash`), registered (with no row
    /// yet) if the key is new.
    fn find_or_register(&mut self, key: &[u8], hash: u64) -> u32 {
        let keys = &self.keys;
        let entry = self.index.entry(
            hash,
            |&g| key_eq(keys.key(g), key),
            |&g| key_hash(keys.key(g)),
        );
        match entry {
            Entry::Occupied(slot) => *slot.get(),
            Entry::Vacant(slot) => {
                let gid = match self.free.pop() {
                    Some(gid) => gid,
                    None => {
                        reserve_gently(&mut self.rows_of, 1);
                        self.rows_of.push(NO_ROW);
                        (self.rows_of.len() - 1) as u32
                    }
                };
                slot.insert(gid);
                self.keys.set(gid, key);
                gid
            }
        }
    }

    /// Drops group id `gid` from the index and frees it (its row, if any, is the
    /// caller's to mark dead).
    fn unregister(&mut self, gid: u32) {
        let hash = key_hash(self.keys.key(gid));
        if let Ok(entry) = self.index.find_entry(hash, |&g| g == gid) {
            entry.remove();
        }
        self.keys.free(gid);
        self.rows_of[gid as usize] = NO_ROW;
        self.free.push(gid);
    }

    /// Marks the row at `position` dead.
    fn kill(&mut self, position: u64) {
        let (c, r) = unpack(position);
        self.chunks[c].live.set_bit(r, false);
        self.chunks[c].live_count -= 1;
        self.dead += 1;
    }

    /// Looks up every row's key of `batch` once, registering the new keys, and numbers
    /// the groups the batch touches. The caller merges the held rows
    /// ([`Self::held_rows`]) with the batch's, then writes the result with
    /// [`Self::settle`] — or, if the merge failed, undoes the registration with
    /// [`Self::abandon`].
    pub fn touch(&mut self, batch: &RecordBatch) -> Result<Touched> {
        let encoded = self.encode(batch)?;
        let n = batch.num_rows();
        let mut touched = Touched {
            group_of_row: vec![0; n],
            // A batch touches at most one group per row (most rows name a group of
            // their own when keys are many): sized once, not grown push by push.
            first_row: Vec::with_capacity(n),
            gids: Vec::with_capacity(n),
            held: Vec::with_capacity(n),
        };
        let keys = key_slices(&encoded, n);
        let order = self.in_bucket_order(&keys);
        for (i, &(hash, row)) in order.entries.iter().enumerate() {
            let row = row as usize;
            let gid = self.find_or_register(order.key(i), hash);
            let slot = &mut self.rows_of[gid as usize];
            let group = if *slot != NO_ROW && *slot & TOUCHED != 0 {
                (*slot & !TOUCHED) as usize
            } else {
                let group = touched.gids.len();
                touched.gids.push(gid);
                touched.first_row.push(row as u32);
                touched
                    .held
                    .push(std::mem::replace(slot, TOUCHED | group as u64));
                group
            };
            touched.group_of_row[row] = group;
        }
        for (&gid, &held) in touched.gids.iter().zip(&touched.held) {
            self.rows_of[gid as usize] = held;
        }
        Ok(touched)
    }

    /// The rows of `keys` with their key hashes, in the order of the index buckets
    /// their keys fall in (as the index will be once the new keys are in).
    ///
    /// Probing in that order walks the hash table forwards instead of jumping about it,
    /// and, because new keys get group ids in the order they are registered, it walks
    /// the group ids' keys and row positions nearly forwards too (keys registered in
    /// one batch come back in the order of their ids): most probes then find their
    /// memory in cache, where in row order nearly each one would miss several times.
    /// The keys' bytes are copied into that order as well ([`BucketOrder::key`]), so
    /// the probes read them forwards instead of at random rows of the batch.
    fn in_bucket_order<'k>(&self, keys: &'k [&'k [u8]]) -> BucketOrder<'k> {
        let n = keys.len();
        // hashbrown picks a key's first bucket from the hash's low bits, as many as the
        // table has buckets (a power of two, at most 7/8 full).
        let buckets = ((self.index.len() + n).max(self.index.capacity()) * 8 / 7)
            .next_power_of_two()
            .max(1);
        let mask = buckets as u64 - 1;
        // A counting sort into at most 2^16 runs of neighbouring buckets: the order
        // within a run does not matter for the memory walked, and it keeps a key's
        // rows in row order (a stable sort), which `upsert` relies on. (Coarser runs,
        // of 512 buckets, measured slower.)
        let shift = buckets.trailing_zeros().saturating_sub(16);
        let bin = |hash: u64| ((hash & mask) >> shift) as usize;
        let hashes: Vec<u64> = keys.iter().map(|key| key_hash(key)).collect();
        let mut starts = vec![0u32; (buckets >> shift) + 1];
        for &hash in &hashes {
            starts[bin(hash) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let width = keys.first().map_or(0, |key| key.len());
        let packed = keys.iter().all(|key| key.len() == width) && width > 0;
        let mut entries = vec![(0u64, 0u32); n];
        let mut bytes = if packed {
            vec![0u8; n * width]
        } else {
            Vec::new()
        };
        for (row, &hash) in hashes.iter().enumerate() {
            let at = &mut starts[bin(hash)];
            let i = *at as usize;
            entries[i] = (hash, row as u32);
            if packed {
                bytes[i * width..(i + 1) * width].copy_from_slice(keys[row]);
            }
            *at += 1;
        }
        BucketOrder {
            entries,
            width: if packed { width } else { 0 },
            bytes,
            keys,
        }
    }

    /// The held rows of `touched`'s groups, and each one's group number (read in the
    /// order they are stored, so the gather walks the chunks forwards).
    pub fn held_rows(&self, touched: &Touched) -> Result<(RecordBatch, Vec<usize>)> {
        // Each held row's number over all chunks (chunk by chunk, in storage order).
        let mut chunk_start = Vec::with_capacity(self.chunks.len());
        let mut total = 0usize;
        for chunk in &self.chunks {
            chunk_start.push(total);
            total += chunk.rows.num_rows();
        }
        let mut held: Vec<(u64, u32)> = touched
            .held
            .iter()
            .enumerate()
            .filter(|(_, p)| **p != NO_ROW)
            .map(|(group, &p)| {
                let (c, r) = unpack(p);
                ((chunk_start[c] + r) as u64, group as u32)
            })
            .collect();
        sort_by_row(&mut held, total);
        let mut positions = Vec::with_capacity(held.len());
        let mut groups = Vec::with_capacity(held.len());
        let mut chunk = 0;
        for &(row, group) in &held {
            let row = row as usize;
            while chunk + 1 < chunk_start.len() && chunk_start[chunk + 1] <= row {
                chunk += 1;
            }
            positions.push((chunk, row - chunk_start[chunk]));
            groups.push(group as usize);
        }
        Ok((self.gather(&positions)?, groups))
    }

    /// Writes `rows` (one per touched group, in group order) as the groups' live rows;
    /// with `keep`, the groups it does not select are removed instead.
    pub fn settle(
        &mut self,
        touched: Touched,
        rows: RecordBatch,
        keep: Option<&BooleanArray>,
    ) -> Result<()> {
        if rows.num_rows() != touched.groups() {
            let message = format!(
                "internal error: {} merged rows for {} touched groups",
                rows.num_rows(),
                touched.groups()
            );
            self.abandon(touched);
            return Err(Error::Unsupported(message));
        }
        let kept = match keep {
            Some(mask) => filter_record_batch(&rows, mask)?,
            None => rows,
        };
        if self.chunks.len() >= MAX_CHUNKS || kept.num_rows() > u32::MAX as usize {
            self.compact()?;
        }
        let chunk = self.chunks.len();
        self.push_chunk(kept);
        let mut next_row = 0;
        for (group, (&gid, &old)) in touched.gids.iter().zip(&touched.held).enumerate() {
            if old != NO_ROW {
                self.kill(old);
            }
            if keep.is_none_or(|mask| mask.value(group)) {
                self.rows_of[gid as usize] = pack(chunk, next_row);
                next_row += 1;
            } else {
                self.unregister(gid);
            }
        }
        Ok(())
    }

    /// Undoes [`Self::touch`]: the keys it registered are dropped again.
    pub fn abandon(&mut self, touched: Touched) {
        for (&gid, &old) in touched.gids.iter().zip(&touched.held) {
            if old == NO_ROW {
                self.unregister(gid);
            }
        }
    }

    fn push_chunk(&mut self, rows: RecordBatch) {
        let n = rows.num_rows();
        if n == 0 {
            return;
        }
        let mut live = BooleanBufferBuilder::new(n);
        live.append_n(n, true);
        self.chunks.push(Chunk {
            rows,
            live,
            live_count: n,
        });
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
        if self.chunks.len() >= MAX_CHUNKS || rows.num_rows() > u32::MAX as usize {
            self.compact()?;
        }
        let encoded = self.encode(&rows)?;
        let (chunk, n) = (self.chunks.len(), rows.num_rows());
        self.push_chunk(rows);
        // In bucket order (see `in_bucket_order`); a key's rows stay in row order.
        let keys = key_slices(&encoded, n);
        let order = self.in_bucket_order(&keys);
        for (i, &(hash, row)) in order.entries.iter().enumerate() {
            let row = row as usize;
            let gid = self.find_or_register(order.key(i), hash);
            // A key met twice in `rows` kills its first row, in the chunk just pushed.
            let old = std::mem::replace(&mut self.rows_of[gid as usize], pack(chunk, row));
            if old != NO_ROW {
                self.kill(old);
            }
        }
        Ok(())
    }

    /// Drops the keys of `keys`'s first key columns (absent keys are ignored).
    pub fn remove(&mut self, keys: &RecordBatch) -> Result<()> {
        let encoded = self.encode(keys)?;
        for row in 0..keys.num_rows() {
            if let Some(gid) = self.find(key_at(&encoded, row)) {
                let old = self.rows_of[gid as usize];
                self.unregister(gid);
                if old != NO_ROW {
                    self.kill(old);
                }
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

    /// Filters the dead rows out: one chunk of the live rows; each group id's position
    /// is remapped without rehashing any key.
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
        for position in self.rows_of.iter_mut().filter(|p| **p != NO_ROW) {
            let (c, r) = unpack(*position);
            *position = pack(0, new_positions[c][r] as usize);
        }
        self.chunks.clear();
        self.push_chunk(rows);
        self.dead = 0;
        self.keys.compact();
        Ok(())
    }

    /// Bytes of the state rows' Arrow arrays, dead rows included.
    pub fn row_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.rows.get_array_memory_size())
            .sum()
    }

    /// Bytes of the index: the hash table, the key encodings, the group ids' row
    /// positions and marks, and the live bitmaps.
    pub fn index_bytes(&self) -> usize {
        self.index.allocation_size()
            + self.keys.size()
            + self.rows_of.capacity() * 8
            + self.free.capacity() * 4
            + self
                .chunks
                .iter()
                .map(|c| c.live.capacity() / 8)
                .sum::<usize>()
    }

    /// Rows kept that are no longer the live row of their key.
    pub fn dead_rows(&self) -> usize {
        self.dead
    }
}

/// Sorts `(row, group)` pairs by row (each below `rows`). Two counting passes of 16
/// bits each (a radix sort) when the rows fit in 32 bits: linear in the pairs, where a
/// comparison sort took a few percent of a large batch's time; small inputs and
/// larger row numbers use the standard sort.
fn sort_by_row(pairs: &mut Vec<(u64, u32)>, rows: usize) {
    if pairs.len() < 4096 || rows > u32::MAX as usize {
        pairs.sort_unstable();
        return;
    }
    let mut scratch = vec![(0u64, 0u32); pairs.len()];
    for pass in 0..2 {
        let digit = |row: u64| ((row >> (16 * pass)) & 0xffff) as usize;
        let mut starts = vec![0usize; 1 << 16];
        for &(row, _) in pairs.iter() {
            starts[digit(row)] += 1;
        }
        let mut next = 0;
        for start in starts.iter_mut() {
            let count = *start;
            *start = next;
            next += count;
        }
        for &pair in pairs.iter() {
            let at = &mut starts[digit(pair.0)];
            scratch[*at] = pair;
            *at += 1;
        }
        std::mem::swap(pairs, &mut scratch);
    }
}

/// The encoded key of each of the `n` rows (empty keys without key columns).
fn key_slices(keys: &Option<Rows>, n: usize) -> Vec<&[u8]> {
    match keys {
        Some(rows) => rows.iter().map(|row| row.data()).collect(),
        None => vec![&[]; n],
    }
}

/// Whether two encoded keys are equal. Keys are short (9 bytes for a `BIGINT`), and a
/// slice comparison calls `memcmp` for them; up to 16 bytes, two word loads do.
#[inline]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
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
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
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

    /// The held rows of `batch`'s keys, looked up as a batch does and left unchanged.
    fn held_of(state: &mut KeyedRows, batch: &RecordBatch) -> RecordBatch {
        let touched = state.touch(batch).unwrap();
        let (held, _) = state.held_rows(&touched).unwrap();
        state.abandon(touched);
        held
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
            to_map(&held_of(&mut state, &rows(&[(2, 0), (9, 0), (2, 0)]))),
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
            to_map(&held_of(&mut state, &rows(&[(4, 0), (3, 0)]))),
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
            as_map(&held_of(&mut state, &probe)),
            BTreeMap::from([
                (None, 5),
                (Some("bb".to_string()), 7),
                (Some("ddd".to_string()), 4)
            ])
        );
        state.upsert(batch(&[(Some("c"), 9)])).unwrap();
        assert_eq!(state.len(), 5);
        assert_eq!(as_map(&held_of(&mut state, &probe)).len(), 3);
    }

    #[test]
    fn a_touch_looks_each_key_up_once_and_settle_writes_or_removes_the_groups() {
        let mut state = KeyedRows::new(schema(), 1).unwrap();
        state.upsert(rows(&[(1, 10), (2, 20), (3, 30)])).unwrap();
        // Key 2 twice, key 7 new, key 1 held.
        let batch = [(2, 1), (7, 1), (2, 1), (1, 1)];
        let touched = state.touch(&rows(&batch)).unwrap();
        let g = touched.group_of_row.clone();
        assert_eq!(touched.groups(), 3);
        assert_eq!(g[0], g[2]);
        assert!(g[0] != g[1] && g[1] != g[3] && g[0] != g[3]);
        for (group, &row) in touched.first_row.iter().enumerate() {
            assert_eq!(g[row as usize], group, "first_row names its group");
        }
        assert!(touched.was_held(g[0]) && !touched.was_held(g[1]) && touched.was_held(g[3]));
        let (held, groups) = state.held_rows(&touched).unwrap();
        let held_by_group: BTreeMap<usize, i64> = groups
            .iter()
            .zip(held.column(1).as_primitive::<Int64Type>().values())
            .map(|(&g, &n)| (g, n))
            .collect();
        assert_eq!(held_by_group, BTreeMap::from([(g[0], 20), (g[3], 10)]));
        // Keys 2 and 7 keep their new rows; key 1 is removed. Rows go in group order.
        let new_row = |key: i64| match key {
            2 => (2, 22),
            7 => (7, 7),
            _ => (1, 11),
        };
        let merged: Vec<(i64, i64)> = touched
            .first_row
            .iter()
            .map(|&row| new_row(batch[row as usize].0))
            .collect();
        let keep: BooleanArray = merged.iter().map(|&(k, _)| Some(k != 1)).collect();
        state.settle(touched, rows(&merged), Some(&keep)).unwrap();
        assert_eq!(
            to_map(&state.live_rows().unwrap()),
            BTreeMap::from([(2, 22), (3, 30), (7, 7)])
        );
        assert_eq!(state.len(), 3);
        // An abandoned touch leaves the held keys as they were and forgets the new ones;
        // a removed key's group id is reused without confusing the keys.
        let touched = state.touch(&rows(&[(8, 0), (3, 0)])).unwrap();
        state.abandon(touched);
        assert_eq!(state.len(), 3);
        let eight = state.encode(&rows(&[(8, 0)])).unwrap();
        assert!(
            state.find(key_at(&eight, 0)).is_none(),
            "key 8 is not in the index"
        );
        state.upsert(rows(&[(9, 9), (1, 1)])).unwrap();
        state.compact().unwrap();
        assert_eq!(
            to_map(&state.live_rows().unwrap()),
            BTreeMap::from([(1, 1), (2, 22), (3, 30), (7, 7), (9, 9)])
        );
        assert_eq!(
            to_map(&held_of(&mut state, &rows(&[(9, 0), (1, 0), (8, 0)]))),
            BTreeMap::from([(1, 1), (9, 9)])
        );
    }

    #[test]
    fn short_keys_compare_by_every_byte() {
        for n in 0..=20usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(key_eq(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!key_eq(&a, &b), "length {n}, byte {i}");
            }
            assert!(!key_eq(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn key_hash_is_fixed() {
        // Partition assignment depends on it across restarts: it must never change.
        assert_eq!(key_hash(&[]), fmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(key_hash(b"abc"), key_hash(b"abc"));
        assert_ne!(key_hash(b"abc"), key_hash(b"abd"));
        assert_eq!(key_hash(&1u64.to_le_bytes()), 1_960_296_129_580_152_315);
    }

    #[test]
    fn held_rows_are_sorted_by_their_place_in_the_chunks_for_any_count() {
        // Pseudo-random distinct rows below 2^20 (the radix sort's two passes both
        // matter), and a small count that takes the comparison sort.
        for count in [10usize, 100_000] {
            let mut seed = 7u64;
            let mut rows: Vec<u64> = (0..(1u64 << 20)).collect();
            for i in (1..rows.len()).rev() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                rows.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let mut pairs: Vec<(u64, u32)> = rows[..count]
                .iter()
                .enumerate()
                .map(|(group, &row)| (row, group as u32))
                .collect();
            let mut expected = pairs.clone();
            expected.sort_unstable();
            sort_by_row(&mut pairs, 1 << 20);
            assert_eq!(pairs, expected);
        }
    }

    #[test]
    fn keys_of_varying_width_are_looked_up_by_row() {
        // Text keys of different lengths are not packed into the probe order: each
        // probe reads its own row's key, and every group still gets its own rows.
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let mut state = KeyedRows::new(schema.clone(), 1).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "bb", "a", "ccc", "bb"])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            ],
        )
        .unwrap();
        let touched = state.touch(&batch).unwrap();
        assert_eq!(touched.groups(), 3);
        let g = &touched.group_of_row;
        assert_eq!((g[0] == g[2], g[1] == g[4]), (true, true));
        assert_eq!([g[0] == g[1], g[0] == g[3], g[1] == g[3]], [false; 3]);
    }
}
