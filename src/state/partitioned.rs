//! Keyed state split by a hash of the key into a fixed number of partitions, each with
//! its own in-memory rows and its own versioned files.
//!
//! ```text
//! <dir>/                   given by the operator (today `state/0`)
//!   partitions.json        {"partitions": N}: fixed when the checkpoint is created
//!   0/ 1/ ... N-1/         one StateStore each (see the parent module)
//! ```
//!
//! A key's partition is [`partition_of`] its routing columns (the key columns, less a
//! session window, whose sessions of one key must meet in one partition). Partitions
//! share nothing — each holds its own [`KeyedRows`] and [`StateStore`] — so they can
//! be worked on in parallel, and later be moved between processes, as Spark's state
//! store partitions are. The number is recorded in `partitions.json` and fixed for
//! the checkpoint: a key's partition depends on it.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;
use serde::{Deserialize, Serialize};

use super::keyed::{fmix64, key_converter, key_hash};
use super::{KeyedRows, StateStore, StateStoreConfig};
use crate::checkpoint::{create_dir_all, write_atomic};
use crate::error::{Error, Result};

/// The default number of state partitions (`SET millrace.state_partitions`).
pub const DEFAULT_STATE_PARTITIONS: usize = 4;

/// The most state partitions a query may ask for.
pub const MAX_STATE_PARTITIONS: usize = 1024;

/// `SET millrace.state_partitions = N`, carried to a query in its DataFusion session
/// config (`SessionConfig::with_extension`); absent means "the checkpoint's number, or
/// the default for a new checkpoint".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePartitions(pub usize);

impl StatePartitions {
    /// Parses the setting's value: a whole number from 1 to [`MAX_STATE_PARTITIONS`].
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_STATE_PARTITIONS).contains(&n) => Ok(StatePartitions(n)),
            _ => Err(Error::Option(format!(
                "millrace.state_partitions must be a whole number from 1 to \
                 {MAX_STATE_PARTITIONS}, not '{value}'"
            ))),
        }
    }
}

/// The contents of `partitions.json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Layout {
    partitions: usize,
}

const LAYOUT_FILE: &str = "partitions.json";

/// The partition of a key whose routing columns encode to `bytes`, out of `n`.
///
/// A second mix of [`key_hash`] so that the bits picking the partition are not the
/// bits the in-memory index uses (keys of one partition would otherwise crowd into a
/// fraction of the index's buckets).
pub fn partition_of(bytes: &[u8], n: usize) -> usize {
    (fmix64(key_hash(bytes) ^ 0x9e37_79b9_7f4a_7c15) % n as u64) as usize
}

/// One partition: its rows in memory, its files, and what the running batch changed.
#[derive(Debug)]
pub struct StatePartition {
    /// The partition's live state rows, by key.
    pub rows: KeyedRows,
    store: StateStore,
    /// Rows upserted and keys removed by the batch not yet committed.
    pending: Option<(RecordBatch, RecordBatch)>,
}

impl StatePartition {
    /// Records what the running batch did to this partition, for [`PartitionedState::commit`].
    pub fn set_pending(&mut self, upserted: RecordBatch, removed: RecordBatch) {
        self.pending = Some((upserted, removed));
    }

    fn start_commit(&mut self, version: u64) -> Result<()> {
        let schema = self.rows.schema().clone();
        let (upserted, removed) = self.pending.take().unwrap_or_else(|| {
            (
                RecordBatch::new_empty(schema.clone()),
                RecordBatch::new_empty(schema.clone()),
            )
        });
        let rows = &self.rows;
        self.store
            .start_commit(version, &upserted, &removed, || rows.live_rows())
    }
}

/// The partitioned, versioned keyed state of one stateful operator.
#[derive(Debug)]
pub struct PartitionedState {
    dir: PathBuf,
    /// The partitions, in order: partition `p` lives in `<dir>/<p>/`.
    pub partitions: Vec<StatePartition>,
    /// Which columns pick a row's partition.
    route_columns: Vec<usize>,
    route_converter: Option<RowConverter>,
}

impl PartitionedState {
    /// Opens the state in `dir` and loads version `committed` (the last committed batch;
    /// `None`: empty state, every version deleted) of every partition.
    ///
    /// `asked` is the `millrace.state_partitions` setting, if set. A checkpoint keeps
    /// the number it was created with; asking for another is refused. Rows are `schema`,
    /// keyed by the first `key_columns` columns; `route_columns` pick the partition.
    pub fn open(
        dir: &Path,
        schema: SchemaRef,
        key_columns: usize,
        route_columns: Vec<usize>,
        asked: Option<StatePartitions>,
        config: StateStoreConfig,
        committed: Option<u64>,
    ) -> Result<Self> {
        create_dir_all(dir)?;
        refuse_unpartitioned_layout(dir)?;
        // A state without key columns (a global aggregate) has one key, so one
        // partition; spreading it would give every partition a row of its own.
        let partitions = if route_columns.is_empty() {
            settle(dir, Some(StatePartitions(1)), None, None)?
        } else {
            settle(dir, asked, committed, None)?
        };
        let route_converter = {
            let route_schema = std::sync::Arc::new(schema.project(&route_columns)?);
            key_converter(&route_schema, route_columns.len())?
        };
        let mut state = PartitionedState {
            dir: dir.to_path_buf(),
            partitions: Vec::with_capacity(partitions),
            route_columns,
            route_converter,
        };
        for p in 0..partitions {
            let mut store = StateStore::open(
                &dir.join(p.to_string()),
                schema.clone(),
                key_columns,
                StateStoreConfig {
                    snapshot_phase: p as u64,
                    ..config
                },
            )?;
            let loaded = store.load(committed)?;
            let misplaced = state.route(&loaded, partitions)?;
            if let Some((other, _)) = misplaced
                .iter()
                .enumerate()
                .find(|(q, rows)| *q != p && rows.num_rows() > 0)
            {
                return Err(Error::Checkpoint(format!(
                    "{} holds keys of partition {other}: the state was written with another \
                     partitioning (another millrace version or a damaged checkpoint); start \
                     the query with a new checkpoint directory",
                    store.dir().display()
                )));
            }
            let mut rows = KeyedRows::new(schema.clone(), key_columns)?;
            rows.upsert(loaded)?;
            state.partitions.push(StatePartition {
                rows,
                store,
                pending: None,
            });
        }
        Ok(state)
    }

    /// The directory of the whole state (partitions are below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of partitions.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Always false: there is at least one partition.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Splits `batch` (rows of the state schema) by partition: element `p` holds the
    /// rows of partition `p`, in their order (Arrow's `take` kernel).
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        self.route(batch, self.partitions.len())
    }

    /// [`Self::split`] for many batches at once, on as many threads as there are cores
    /// (each splitting a run of consecutive batches): per partition, its rows of every
    /// batch, in the batches' order (a key's rows keep their order, as `split` keeps
    /// it). The caller concatenates each partition's pieces where it works on that
    /// partition, in parallel, instead of once for the whole batch beforehand.
    pub fn split_all(&self, batches: &[RecordBatch]) -> Result<Vec<Vec<RecordBatch>>> {
        let n = self.partitions.len();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let per_thread = batches.len().div_ceil(threads).max(1);
        let runs: Vec<&[RecordBatch]> = batches.chunks(per_thread).collect();
        let routed = par_map(runs, |run| {
            run.iter()
                .map(|batch| self.route(batch, n))
                .collect::<Result<Vec<_>>>()
        })?;
        let mut pieces = vec![Vec::new(); n];
        for split in routed.into_iter().flatten() {
            for (partition, rows) in split.into_iter().enumerate() {
                if rows.num_rows() > 0 {
                    pieces[partition].push(rows);
                }
            }
        }
        Ok(pieces)
    }

    fn route(&self, batch: &RecordBatch, n: usize) -> Result<Vec<RecordBatch>> {
        if n == 1 || batch.num_rows() == 0 {
            let mut out = vec![RecordBatch::new_empty(batch.schema()); n];
            out[0] = batch.clone();
            return Ok(out);
        }
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
        match &self.route_converter {
            Some(converter) => {
                let columns: Vec<_> = self
                    .route_columns
                    .iter()
                    .map(|&c| batch.column(c).clone())
                    .collect();
                let keys = converter.convert_columns(&columns)?;
                for (row, key) in keys.iter().enumerate() {
                    indices[partition_of(key.data(), n)].push(row as u32);
                }
            }
            None => indices[partition_of(&[], n)].extend(0..batch.num_rows() as u32),
        }
        indices
            .into_iter()
            .map(|rows| Ok(take_record_batch(batch, &UInt32Array::from(rows))?))
            .collect()
    }

    /// Writes the running batch's changes of every partition as version `version`
    /// (see [`StateStore::commit`]) and waits until they are durable.
    pub fn commit(&mut self, version: u64) -> Result<()> {
        self.start_commit(version)?;
        self.wait_committed()
    }

    /// Starts writing the running batch's changes of every partition as version
    /// `version` ([`StateStore::start_commit`]: each partition's files on a thread of
    /// their own); the in-memory rows may change again as soon as this returns. The
    /// version is durable once [`wait_committed`](Self::wait_committed) returns.
    pub fn start_commit(&mut self, version: u64) -> Result<()> {
        let partitions: Vec<&mut StatePartition> = self.partitions.iter_mut().collect();
        par_map(partitions, |p| p.start_commit(version))?;
        Ok(())
    }

    /// Waits until the version [`start_commit`](Self::start_commit) began is durable in
    /// every partition; the first failure is the error.
    pub fn wait_committed(&mut self) -> Result<()> {
        // Every partition is waited for, even after a failure: no write is left running.
        self.partitions
            .iter_mut()
            .map(|partition| partition.store.wait_committed())
            .fold(Ok(()), Result::and)
    }

    /// Keys held, over all partitions.
    pub fn num_rows(&self) -> usize {
        self.partitions.iter().map(|p| p.rows.len()).sum()
    }

    /// Bytes of the state rows (dead rows awaiting compaction included).
    pub fn row_bytes(&self) -> usize {
        self.partitions.iter().map(|p| p.rows.row_bytes()).sum()
    }

    /// Bytes of the partitions' indexes.
    pub fn index_bytes(&self) -> usize {
        self.partitions.iter().map(|p| p.rows.index_bytes()).sum()
    }

    /// Every live row of every partition (complete mode).
    pub fn live_rows(&self) -> Result<Vec<RecordBatch>> {
        self.partitions.iter().map(|p| p.rows.live_rows()).collect()
    }
}

/// Settles how many partitions the state in `dir` has, and records it in
/// `dir/partitions.json`, for an operator that keeps its own partitions (the
/// stream-stream join) under the same rules as [`PartitionedState::open`]: the number
/// recorded when the checkpoint was created holds; `asked` (the
/// `millrace.state_partitions` setting) may change it only while nothing is committed
/// (`committed` is `None`: the state is empty), and asking for another number once
/// something is committed is refused with what to do. Without a record and a setting,
/// a new checkpoint gets [`DEFAULT_STATE_PARTITIONS`]; `implied` is the number an older
/// layout without `partitions.json` stands for (it is recorded from then on).
pub fn settle_partitions(
    dir: &Path,
    asked: Option<StatePartitions>,
    committed: Option<u64>,
    implied: Option<usize>,
) -> Result<usize> {
    create_dir_all(dir)?;
    settle(dir, asked, committed, implied)
}

fn settle(
    dir: &Path,
    asked: Option<StatePartitions>,
    committed: Option<u64>,
    implied: Option<usize>,
) -> Result<usize> {
    let layout_path = dir.join(LAYOUT_FILE);
    let on_disk = match std::fs::read(&layout_path) {
        Ok(bytes) => Some(serde_json::from_slice::<Layout>(&bytes).map_err(|e| {
            Error::Checkpoint(format!(
                "{} is damaged ({e}); restore it or start the query with a new \
                 checkpoint directory",
                layout_path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&layout_path)(e)),
    };
    let recorded = on_disk.or(implied.map(|partitions| Layout { partitions }));
    let partitions = match (recorded, asked, committed) {
        // Nothing committed yet: the state is empty, the number can still change.
        (_, Some(StatePartitions(n)), None) => n,
        (Some(layout), Some(StatePartitions(n)), Some(_)) if layout.partitions != n => {
            return Err(Error::Checkpoint(format!(
                "this checkpoint's state has {} partition{}, but millrace.state_partitions \
                 is {n}: the number of state partitions is fixed when a checkpoint is \
                 created (a key's partition depends on it); SET \
                 millrace.state_partitions = {} (or leave it unset) to resume this \
                 checkpoint, or use a new checkpoint directory",
                layout.partitions,
                if layout.partitions == 1 { "" } else { "s" },
                layout.partitions
            )));
        }
        (Some(layout), _, _) => layout.partitions,
        (None, Some(StatePartitions(n)), _) => n,
        (None, None, _) => DEFAULT_STATE_PARTITIONS,
    };
    if !(1..=MAX_STATE_PARTITIONS).contains(&partitions) {
        return Err(Error::Checkpoint(format!(
            "{} records {partitions} state partitions, outside 1 to \
             {MAX_STATE_PARTITIONS}: the checkpoint is damaged",
            layout_path.display()
        )));
    }
    if on_disk.is_none_or(|l| l.partitions != partitions) {
        let bytes = serde_json::to_vec(&Layout { partitions }).expect("plain JSON");
        write_atomic(&layout_path, &bytes)?;
    }
    Ok(partitions)
}

/// The name of a version file of a [`StateStore`] directly in `dir` (not in partition
/// directories below it), if there is one: state written before it was partitioned.
pub fn holds_unpartitioned_versions(dir: &Path) -> Result<Option<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snapshot.arrow")
            || name.ends_with(".delta.arrow")
            || name.ends_with(".removed.arrow")
        {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Refuses a state directory written before state was partitioned (version files
/// directly in it).
fn refuse_unpartitioned_layout(dir: &Path) -> Result<()> {
    if let Some(name) = holds_unpartitioned_versions(dir)? {
        return Err(Error::Checkpoint(format!(
            "{} holds state in the layout of an earlier millrace, without partitions \
             (found {name}); this version cannot resume it: start the query with a new \
             checkpoint directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Runs `f` over `items` on one thread each (inline when there is one), keeping order.
pub fn par_map<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn rows(keys: impl Iterator<Item = i64>) -> RecordBatch {
        let keys: Vec<i64> = keys.collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(keys.clone())),
                Arc::new(Int64Array::from(vec![1; keys.len()])),
            ],
        )
        .unwrap()
    }

    fn open(dir: &Path, asked: Option<usize>, committed: Option<u64>) -> Result<PartitionedState> {
        PartitionedState::open(
            dir,
            schema(),
            1,
            vec![0],
            asked.map(StatePartitions),
            StateStoreConfig::default(),
            committed,
        )
    }

    #[test]
    fn each_key_goes_to_one_partition_and_a_restart_finds_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = open(dir.path(), Some(3), None).unwrap();
        let parts = state.split(&rows(0..1_000)).unwrap();
        assert_eq!(
            parts.iter().map(RecordBatch::num_rows).sum::<usize>(),
            1_000
        );
        for (p, part) in parts.iter().enumerate() {
            assert!(part.num_rows() > 250, "partition {p}: {}", part.num_rows());
            // Splitting a partition's own rows again keeps them all there.
            let again = state.split(part).unwrap();
            assert_eq!(again[p].num_rows(), part.num_rows());
        }
        for (partition, part) in state.partitions.iter_mut().zip(parts) {
            partition.rows.upsert(part.clone()).unwrap();
            partition.set_pending(part, rows(0..0));
        }
        state.commit(0).unwrap();

        let restarted = open(dir.path(), None, Some(0)).unwrap();
        assert_eq!(restarted.len(), 3);
        assert_eq!(restarted.num_rows(), 1_000);
        let mut keys: Vec<i64> = restarted
            .live_rows()
            .unwrap()
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        keys.sort();
        assert_eq!(keys, (0..1_000).collect::<Vec<_>>());

        let Err(Error::Checkpoint(message)) = open(dir.path(), Some(4), Some(0)) else {
            panic!("another number of partitions must be refused");
        };
        assert!(message.contains("3 partitions"), "{message}");
        // Before anything is committed, the number may change.
        assert_eq!(open(dir.path(), Some(4), None).unwrap().len(), 4);
    }

    #[test]
    fn splitting_many_batches_at_once_gives_each_partition_its_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), Some(3), None).unwrap();
        // Keys repeat across the batches, each row with its position as `n`.
        let batches: Vec<RecordBatch> = (0..7)
            .map(|b| {
                let keys: Vec<i64> = (0..100).map(|i| (b * 37 + i) % 50).collect();
                let order: Vec<i64> = (0..100).map(|i| b * 100 + i).collect();
                RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(Int64Array::from(keys)),
                        Arc::new(Int64Array::from(order)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let whole = concat_batches(&schema(), &batches).unwrap();
        let expected = state.split(&whole).unwrap();
        let pieces = state.split_all(&batches).unwrap();
        assert_eq!(pieces.len(), 3);
        for (p, (pieces, expected)) in pieces.iter().zip(&expected).enumerate() {
            let got = concat_batches(&schema(), pieces).unwrap();
            assert_eq!(&got, expected, "partition {p}");
        }
    }

    #[test]
    fn state_of_the_unpartitioned_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0.snapshot.arrow"), b"old").unwrap();
        let Err(Error::Checkpoint(message)) = open(dir.path(), None, Some(0)) else {
            panic!("the old layout must be refused");
        };
        assert!(message.contains("new checkpoint directory"), "{message}");
    }

    #[test]
    fn the_setting_takes_a_whole_number_in_range() {
        assert_eq!(StatePartitions::parse(" 8 ").unwrap(), StatePartitions(8));
        for bad in ["0", "-1", "two", "1025"] {
            assert!(StatePartitions::parse(bad).is_err(), "{bad}");
        }
    }
}
