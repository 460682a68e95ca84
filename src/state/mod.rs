//! The versioned state store of stateful operators (incremental aggregations, and later
//! deduplication and windows), in the style of Spark's `HDFSBackedStateStore`.
//!
//! A stateful operator keeps its state as Arrow rows of one schema: the first
//! `key_columns` columns are the key (e.g. the `GROUP BY` values), the rest are the
//! state of that key (e.g. DataFusion accumulator states). Version `N` of the state is
//! the state after batch `N`; it is recorded by [`StateStore::commit`] while batch `N`
//! runs, before the batch is committed in the checkpoint's commit log.
//!
//! ```text
//! <dir>/
//!   <N>.delta.arrow      rows (full schema) whose state batch N changed or created
//!   <N>.removed.arrow    keys (key columns only) batch N dropped from the state
//!   <N>.snapshot.arrow   the whole state after batch N
//! ```
//!
//! All three are Arrow IPC files, each written atomically with
//! [`crate::checkpoint::write_atomic`]: after `kill -9` a file is either
//! absent or whole. Deltas and removed keys are two files rather than one with a marker
//! column because their schemas differ (a removed key has no state, and the state
//! columns may be non-nullable); both are written for every version, the removed file
//! possibly holding no rows, so that a missing one is recognised as damage.
//!
//! **Why deltas.** Writing the whole state every batch costs time proportional to the
//! state, which grows without bound for a `GROUP BY` over an unbounded table; a delta
//! costs time proportional to what the batch touched. Snapshots bound the replay work
//! on load: one is written every [`StateStoreConfig::snapshot_interval`] versions
//! (`N % interval == 0`), and also whenever version `N - 1` could not be rebuilt from
//! the files (the first version committed, or batch ids that skipped a version), so
//! that every committed version is always loadable.
//!
//! **Writes in the background.** [`StateStore::start_commit`] takes a version's rows
//! and returns; a thread of its own encodes and writes the delta and removed files,
//! syncs them and purges old versions, while the query folds its next batch (the
//! delta of a large state takes the disk tens of milliseconds). The batch loop waits
//! for that ([`StateStore::wait_committed`]) before it writes the batch's commit-log
//! entry, so a committed batch always has its state on disk. A periodic snapshot is
//! not needed to load the version it belongs to (its delta is written and synced
//! first), so the same thread writes it afterwards, as Spark's state store maintenance
//! writes its snapshots, and nothing waits for it until the store's next commit or
//! load; a failure to write it stops the query there, and until the snapshot is there,
//! loading and purging simply use the older one. A snapshot the version cannot do
//! without (the first version committed) is written in its delta's place, before the
//! version counts as committed.
//!
//! **Loading version `N`** starts from the newest snapshot at or before `N` and applies
//! the deltas after it up to `N` in order: each delta's rows replace the rows with the
//! same key, then its removed keys are deleted. Keys are matched on their
//! [`RowConverter`] encoding, which is exact for every key type it supports, strings
//! and nulls included (a null key is a key like any other, as in SQL `GROUP BY`).
//!
//! **Exactly once.** Files of versions after the one being loaded were written by a
//! batch that never committed; [`StateStore::load`] deletes them, so the batch's re-run
//! starts from the committed state and its [`StateStore::commit`] writes the version
//! anew (overwriting, never appending): nothing is counted twice.
//!
//! **Purge.** After each commit, versions older than the newest
//! [`StateStoreConfig::retain_versions`] are deleted, except the snapshot (and the
//! deltas after it) that the oldest retained version needs. At least two versions are
//! always retained: a crash between the state commit of batch `N` and the commit-log
//! entry of batch `N` restarts from version `N - 1`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{concat_batches, interleave};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::checkpoint::{create_dir_all, sync_dir, write_atomic};
use crate::error::{Error, Result};

pub mod keyed;
pub mod partitioned;

pub use keyed::{KeyedRows, Touched};
pub use partitioned::{PartitionedState, StatePartitions};

/// How often full snapshots are written and how many versions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateStoreConfig {
    /// A full snapshot is written for every version that is a multiple of this
    /// (default 10). Loading replays at most this many deltas. `0` is taken as `1`.
    pub snapshot_interval: u64,
    /// How many of the newest versions stay loadable after a commit (default 100).
    /// Values below `2` are taken as `2`, since a restart may need the version before
    /// the newest.
    pub retain_versions: u64,
    /// Shifts the versions that get a snapshot: `(N + snapshot_phase) % interval == 0`.
    /// The partitions of one operator get different phases so that they do not all
    /// write their snapshot in the same batch (default 0).
    pub snapshot_phase: u64,
    /// The `millrace.state_partitions` setting of the query, if set (see
    /// [`PartitionedState::open`]); a single store ignores it.
    pub state_partitions: Option<StatePartitions>,
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        StateStoreConfig {
            snapshot_interval: 10,
            retain_versions: 100,
            snapshot_phase: 0,
            state_partitions: None,
        }
    }
}

/// The kinds of file a version can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delta,
    Removed,
    Snapshot,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Delta, Kind::Removed, Kind::Snapshot];

    fn suffix(self) -> &'static str {
        match self {
            Kind::Delta => ".delta.arrow",
            Kind::Removed => ".removed.arrow",
            Kind::Snapshot => ".snapshot.arrow",
        }
    }
}

/// Which files of one version are present.
#[derive(Debug, Clone, Copy, Default)]
struct VersionFiles {
    delta: bool,
    removed: bool,
    snapshot: bool,
}

impl VersionFiles {
    fn has(self, kind: Kind) -> bool {
        match kind {
            Kind::Delta => self.delta,
            Kind::Removed => self.removed,
            Kind::Snapshot => self.snapshot,
        }
    }

    fn set(&mut self, kind: Kind) {
        match kind {
            Kind::Delta => self.delta = true,
            Kind::Removed => self.removed = true,
            Kind::Snapshot => self.snapshot = true,
        }
    }
}

/// The files present in the store's directory, by version.
type Listing = BTreeMap<u64, VersionFiles>;

/// The store's directory, and the file operations a background write needs too
/// (naming, listing, deleting and purging versions), apart from the rest of the store.
#[derive(Debug, Clone)]
struct StoreFiles {
    dir: PathBuf,
    /// [`StateStoreConfig::retain_versions`].
    retain_versions: u64,
}

impl StoreFiles {
    fn path(&self, version: u64, kind: Kind) -> PathBuf {
        self.dir.join(format!("{version}{}", kind.suffix()))
    }

    /// The state files present, by version. Other files are ignored.
    fn list(&self) -> Result<Listing> {
        let mut listing = Listing::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir))? {
            let entry = entry.map_err(Error::io(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            for kind in Kind::ALL {
                if let Some(version) = name
                    .strip_suffix(kind.suffix())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    listing.entry(version).or_default().set(kind);
                }
            }
        }
        Ok(listing)
    }

    /// Deletes every file of the versions `doomed` selects, then makes that durable.
    fn delete_versions(&self, listing: &Listing, doomed: impl Fn(u64) -> bool) -> Result<()> {
        let mut deleted = false;
        for (&version, &files) in listing {
            if !doomed(version) {
                continue;
            }
            for kind in Kind::ALL {
                if files.has(kind) {
                    remove_if_exists(&self.path(version, kind))?;
                    deleted = true;
                }
            }
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes versions older than the newest `retain_versions` (counting back from
    /// `latest`), keeping the snapshot and the deltas the oldest retained version needs.
    fn purge(&self, latest: u64) -> Result<()> {
        let retain = self.retain_versions.max(2);
        let oldest_retained = latest.saturating_sub(retain - 1);
        let listing = self.list()?;
        // The newest snapshot at or before the oldest retained version is where loading
        // any retained version may start; without one, no retained version needs older files.
        let keep_from = listing
            .range(..=oldest_retained)
            .rev()
            .find(|(_, files)| files.snapshot)
            .map_or(oldest_retained, |(&v, _)| v);
        self.delete_versions(&listing, |v| v < keep_from)
    }
}

/// The durable, versioned state of one stateful operator.
///
/// See the [module documentation](self) for the file layout and the recovery rules.
#[derive(Debug)]
pub struct StateStore {
    files: StoreFiles,
    schema: SchemaRef,
    key_schema: SchemaRef,
    key_columns: usize,
    config: StateStoreConfig,
    /// Encodes the key columns into comparable bytes; `None` when there are no key
    /// columns (a global aggregation: the state is at most one row).
    keys: Option<RowConverter>,
    /// What is being written in the background, if anything (see the module
    /// documentation).
    writer: Option<Writer>,
}

/// The thread writing a version's files (and then, maybe, its snapshot) while the
/// query goes on.
#[derive(Debug)]
struct Writer {
    thread: std::thread::JoinHandle<Result<()>>,
    /// Gets one message once the version's delta and removed files are written and
    /// synced and older versions purged, before any snapshot; `None` once received.
    /// Closed without a message if that failed (the thread's outcome says why). In a
    /// mutex only so that the store can be shared between threads (`Sync`).
    committed: Option<Mutex<mpsc::Receiver<()>>>,
}

/// The files of one version, as [`StateStore::start_commit`] hands them to its writer.
struct VersionWrite {
    files: StoreFiles,
    /// The store's files when the commit started.
    listing: Listing,
    version: u64,
    schema: SchemaRef,
    key_schema: SchemaRef,
    /// The rows upserted and the keys removed; `None` for a first version, which is
    /// its snapshot alone.
    delta: Option<(RecordBatch, RecordBatch)>,
    /// The whole state, when this version gets a snapshot.
    snapshot: Option<RecordBatch>,
}

impl VersionWrite {
    /// Writes the version: files of versions after it go first (a batch that never
    /// committed wrote them), then its delta and removed keys, synced (a first
    /// version: its snapshot); older versions are purged; `committed` is told; then
    /// the periodic snapshot, if any, is written — the delta already makes the version
    /// loadable, so the batch need not wait for it.
    fn run(self, committed: mpsc::Sender<()>) -> Result<()> {
        let (files, version) = (&self.files, self.version);
        let write_snapshot = |current: &RecordBatch| {
            write_atomic(
                &files.path(version, Kind::Snapshot),
                &ipc_bytes(&self.schema, current)?,
            )
        };
        match &self.delta {
            None => {
                // Files of an earlier attempt at this version go too.
                files.delete_versions(&self.listing, |v| v >= version)?;
                write_snapshot(
                    self.snapshot
                        .as_ref()
                        .expect("a first version has its snapshot"),
                )?;
            }
            Some((upserts, removed)) => {
                files.delete_versions(&self.listing, |v| v > version)?;
                write_atomic(
                    &files.path(version, Kind::Delta),
                    &ipc_bytes(&self.schema, upserts)?,
                )?;
                write_atomic(
                    &files.path(version, Kind::Removed),
                    &ipc_bytes(&self.key_schema, removed)?,
                )?;
                if self.snapshot.is_none() && self.listing.get(&version).is_some_and(|f| f.snapshot)
                {
                    // Left by an earlier attempt at this version: it may hold another state.
                    remove_if_exists(&files.path(version, Kind::Snapshot))?;
                    sync_dir(&files.dir)?;
                }
            }
        }
        files.purge(version)?;
        // The store may be gone (a query stopping); the files are written all the same.
        let _ = committed.send(());
        if self.delta.is_some()
            && let Some(current) = &self.snapshot
        {
            write_snapshot(current)?;
        }
        Ok(())
    }
}

impl StateStore {
    /// Opens the store of one operator in `dir` (created if missing): rows of `schema`
    /// whose first `key_columns` columns are the key.
    ///
    /// The temporaries of atomic writes a crash interrupted are removed. Fails if
    /// `key_columns` exceeds the schema or a key column has a type that rows cannot be
    /// matched on.
    pub fn open(
        dir: &Path,
        schema: SchemaRef,
        key_columns: usize,
        config: StateStoreConfig,
    ) -> Result<Self> {
        if schema.fields().is_empty() {
            return Err(Error::Unsupported(format!(
                "state store {}: the state schema has no columns",
                dir.display()
            )));
        }
        if key_columns > schema.fields().len() {
            return Err(Error::Unsupported(format!(
                "state store {}: {key_columns} key columns, but the state schema has only {}",
                dir.display(),
                schema.fields().len()
            )));
        }
        let key_schema = Arc::new(Schema::new(schema.fields()[..key_columns].to_vec()));
        let keys = if key_columns == 0 {
            None
        } else {
            let fields = key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            Some(RowConverter::new(fields).map_err(|e| {
                Error::Unsupported(format!(
                    "state keyed by {:?} cannot be kept: {e}",
                    key_schema
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                ))
            })?)
        };
        create_dir_all(dir)?;
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(StateStore {
            files: StoreFiles {
                dir: dir.to_path_buf(),
                retain_versions: config.retain_versions,
            },
            schema,
            key_schema,
            key_columns,
            config,
            keys,
            writer: None,
        })
    }

    /// Waits for everything being written in the background (the last version's files,
    /// a snapshot) and gives its outcome: call it before anything lists, deletes or
    /// loads the store's files.
    pub fn finish_writes(&mut self) -> Result<()> {
        match self.writer.take().map(|w| w.thread.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }

    /// Waits until the version the last [`start_commit`](Self::start_commit) began is
    /// durable (its files written and synced, older versions purged); a snapshot of it
    /// may still be being written. Fails with the write's error if it failed.
    pub fn wait_committed(&mut self) -> Result<()> {
        let Some(committed) = self.writer.as_mut().and_then(|w| w.committed.take()) else {
            return Ok(());
        };
        let received = committed
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv();
        match received {
            Ok(()) => Ok(()),
            // The thread ended without committing: its outcome is the error.
            Err(_) => self.finish_writes(),
        }
    }

    /// The directory the store keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The schema of the state rows: key columns first, then state columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// How many leading columns of [`schema`](Self::schema) form the key.
    pub fn key_columns(&self) -> usize {
        self.key_columns
    }

    /// The state as of `version` (the last committed batch id; `None` = nothing committed:
    /// empty state). Files of versions after `version` (written by a batch that never
    /// committed) are deleted. Returns one RecordBatch of `schema` (possibly 0 rows), one row per key.
    ///
    /// Fails with [`Error::Checkpoint`] if a file needed to rebuild `version` is
    /// missing or unreadable: the checkpoint is damaged.
    pub fn load(&mut self, version: Option<u64>) -> Result<RecordBatch> {
        self.finish_writes()?;
        let listing = self.files.list()?;
        self.files
            .delete_versions(&listing, |v| version.is_none_or(|keep| v > keep))?;
        let Some(version) = version else {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        };
        let (base, deltas) = self.plan(&listing, version)?;
        let snapshot = self.read(base, Kind::Snapshot)?;
        if deltas.is_empty() {
            return Ok(snapshot);
        }

        // Every batch that may hold a live row, and where the live row of each key is.
        let mut batches = vec![snapshot];
        let mut live: HashMap<Box<[u8]>, (usize, usize)> = HashMap::new();
        self.upsert(&mut live, &batches[0], 0)?;
        for delta_version in deltas {
            let delta = self.read(delta_version, Kind::Delta)?;
            let removed = self.read(delta_version, Kind::Removed)?;
            self.upsert(&mut live, &delta, batches.len())?;
            batches.push(delta);
            let removed_keys = self.encode_keys(&removed)?;
            for row in 0..removed.num_rows() {
                live.remove(key_of(&removed_keys, row));
            }
        }

        let mut indices: Vec<(usize, usize)> = live.into_values().collect();
        indices.sort_unstable();
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &indices)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Records the state after batch `version`. `upserts`: full rows (of `schema`) whose
    /// state changed or is new; `removed`: keys dropped from the state (a batch holding
    /// only the key columns, e.g. windows closed by the watermark; may have 0 rows);
    /// `current`: the whole state after this batch (used to write snapshots).
    /// Called again with the same `version` after a crash: must overwrite, not append.
    ///
    /// Call it for every batch the operator runs, even one that changed nothing (with
    /// empty `upserts` and `removed`). Within `upserts` the last row of a key wins; a key
    /// both upserted and removed is removed. `removed` may also be given as full rows:
    /// only its first `key_columns` columns are read. Files of versions after `version`
    /// are deleted (they belong to a batch that never committed), and versions beyond
    /// the retention are purged.
    pub fn commit(
        &mut self,
        version: u64,
        upserts: &RecordBatch,
        removed: &RecordBatch,
        current: &RecordBatch,
    ) -> Result<()> {
        self.start_commit(version, upserts, removed, || Ok(current.clone()))?;
        self.wait_committed()
    }

    /// [`commit`](Self::commit), returning once the rows are taken, with the whole state
    /// built by `current` only when this version gets a snapshot (so that other batches
    /// cost O(rows touched)): the files are written and synced on a thread of their own,
    /// so that the query can fold its next batch meanwhile. The version is durable only once
    /// [`wait_committed`](Self::wait_committed) has returned: the batch loop calls it
    /// before the batch's commit-log entry. `current` runs before this returns, so
    /// the snapshot is of this version's state whatever the caller changes next.
    pub fn start_commit(
        &mut self,
        version: u64,
        upserts: &RecordBatch,
        removed: &RecordBatch,
        current: impl FnOnce() -> Result<RecordBatch>,
    ) -> Result<()> {
        self.finish_writes()?;
        let upserts = self.conform(upserts, &self.schema, "the upserted rows")?;
        let removed = self.conform_removed(removed)?;

        let listing = self.files.list()?;
        let previous_loadable = version
            .checked_sub(1)
            .is_some_and(|previous| self.plan(&listing, previous).is_ok());
        // The first version (or the first after a gap) has no delta: its snapshot is its
        // only way to load, so it is part of the commit, and alone — loading starts at
        // the newest snapshot, so a delta here would never be read.
        let interval = self.config.snapshot_interval.max(1);
        let snapshot = if !previous_loadable
            || (version + self.config.snapshot_phase).is_multiple_of(interval)
        {
            Some(self.conform(&current()?, &self.schema, "the current state")?)
        } else {
            None
        };
        let write = VersionWrite {
            files: self.files.clone(),
            listing,
            version,
            schema: self.schema.clone(),
            key_schema: self.key_schema.clone(),
            delta: previous_loadable.then_some((upserts, removed)),
            snapshot,
        };
        let (committed, on_committed) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("millrace-state-writer".into())
            .spawn(move || write.run(committed))
            .map_err(Error::io(&self.files.dir))?;
        self.writer = Some(Writer {
            thread,
            committed: Some(Mutex::new(on_committed)),
        });
        Ok(())
    }

    /// Bytes of Arrow memory held by a state batch (for `memoryUsedBytes` in progress).
    pub fn memory_bytes(state: &RecordBatch) -> usize {
        state.get_array_memory_size()
    }

    /// The snapshot to start from and the deltas to apply to rebuild `version`, or the
    /// error naming the first missing file.
    fn plan(&self, listing: &Listing, version: u64) -> Result<(u64, Vec<u64>)> {
        let Some((&base, _)) = listing
            .range(..=version)
            .rev()
            .find(|(_, files)| files.snapshot)
        else {
            return Err(Error::Checkpoint(format!(
                "no state snapshot at or before version {version} in {}: the checkpoint is \
                 damaged (state files were deleted); restore them or start the query with a \
                 new checkpoint directory",
                self.files.dir.display()
            )));
        };
        for v in base + 1..=version {
            let files = listing.get(&v).copied().unwrap_or_default();
            for kind in [Kind::Delta, Kind::Removed] {
                if !files.has(kind) {
                    return Err(Error::Checkpoint(format!(
                        "{} is missing: the checkpoint is damaged (version {version} of the \
                         state cannot be rebuilt); restore the file or start the query with a \
                         new checkpoint directory",
                        self.files.path(v, kind).display()
                    )));
                }
            }
        }
        Ok((base, (base + 1..=version).collect()))
    }

    /// Records, for every row of `batch` (number `batch_index`), that it is now the
    /// live row of its key.
    fn upsert(
        &self,
        live: &mut HashMap<Box<[u8]>, (usize, usize)>,
        batch: &RecordBatch,
        batch_index: usize,
    ) -> Result<()> {
        let keys = self.encode_keys(batch)?;
        for row in 0..batch.num_rows() {
            live.insert(key_of(&keys, row).into(), (batch_index, row));
        }
        Ok(())
    }

    /// The comparable encoding of the key columns of `batch` (`None`: no key columns).
    fn encode_keys(&self, batch: &RecordBatch) -> Result<Option<Rows>> {
        match &self.keys {
            Some(converter) => Ok(Some(
                converter.convert_columns(&batch.columns()[..self.key_columns])?,
            )),
            None => Ok(None),
        }
    }

    /// `batch` with `schema` (names, nullability, metadata), after checking its types.
    fn conform(&self, batch: &RecordBatch, schema: &SchemaRef, what: &str) -> Result<RecordBatch> {
        let types_match = batch.num_columns() == schema.fields().len()
            && batch
                .columns()
                .iter()
                .zip(schema.fields())
                .all(|(column, field)| column.data_type() == field.data_type());
        if !types_match {
            return Err(Error::Data(format!(
                "state store {}: {what} have columns {} but the state needs {}",
                self.files.dir.display(),
                describe_types(batch.columns().iter().map(|c| c.data_type().to_string())),
                describe_types(schema.fields().iter().map(|f| f.data_type().to_string())),
            )));
        }
        with_schema(schema, batch.columns().to_vec(), batch.num_rows())
    }

    /// The removed keys as a batch of the key columns only.
    fn conform_removed(&self, removed: &RecordBatch) -> Result<RecordBatch> {
        if removed.num_columns() < self.key_columns {
            return Err(Error::Data(format!(
                "state store {}: the removed keys have {} columns, but the key has {}",
                self.files.dir.display(),
                removed.num_columns(),
                self.key_columns
            )));
        }
        let keys = removed.project(&(0..self.key_columns).collect::<Vec<_>>())?;
        self.conform(&keys, &self.key_schema, "the removed keys")
    }

    /// Reads one state file back as a single batch.
    fn read(&self, version: u64, kind: Kind) -> Result<RecordBatch> {
        let path = self.files.path(version, kind);
        let schema = match kind {
            Kind::Removed => &self.key_schema,
            Kind::Delta | Kind::Snapshot => &self.schema,
        };
        let damaged = |why: String| {
            Error::Checkpoint(format!(
                "{} is damaged ({why}): version {version} of the state cannot be rebuilt; \
                 restore the file or start the query with a new checkpoint directory",
                path.display()
            ))
        };
        let bytes = crate::checkpoint::read_file(&path)?
            .ok_or_else(|| damaged("the file is missing".into()))?;
        let reader =
            FileReader::try_new(Cursor::new(bytes), None).map_err(|e| damaged(e.to_string()))?;
        let found = reader.schema();
        let types_match = found.fields().len() == schema.fields().len()
            && found
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.data_type() == b.data_type());
        if !types_match {
            return Err(Error::Checkpoint(format!(
                "{} holds state of columns {}, but this query keeps state of columns {}: the \
                 checkpoint was made by a different query; use a new checkpoint directory \
                 for a changed query",
                path.display(),
                describe_types(found.fields().iter().map(|f| f.data_type().to_string())),
                describe_types(schema.fields().iter().map(|f| f.data_type().to_string())),
            )));
        }
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| damaged(e.to_string()))?;
            batches.push(with_schema(
                schema,
                batch.columns().to_vec(),
                batch.num_rows(),
            )?);
        }
        Ok(concat_batches(schema, &batches)?)
    }
}

impl Drop for StateStore {
    /// Files still being written when the query stops are waited for, so no thread
    /// outlives the store. A failure is only logged: a version whose files failed was
    /// never committed (the loop waits for them before the commit log) and runs again
    /// after a restart, and a failed snapshot leaves the older one and the deltas,
    /// which still load every version.
    fn drop(&mut self) {
        if let Err(e) = self.finish_writes() {
            tracing::warn!(store = %self.files.dir.display(), error = %e, "state files could not be written in the background; a restart loads the last version that was written");
        }
    }
}

/// The key bytes of `row` (empty when there are no key columns: one key for all rows).
fn key_of(keys: &Option<Rows>, row: usize) -> &[u8] {
    match keys {
        Some(rows) => rows.row(row).data(),
        None => &[],
    }
}

/// A batch of `columns` under `schema`, keeping `num_rows` even without columns.
fn with_schema(schema: &SchemaRef, columns: Vec<ArrayRef>, num_rows: usize) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(num_rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// One Arrow IPC file holding `batch` (no record batch at all when it has no rows).
fn ipc_bytes(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = FileWriter::try_new(Vec::new(), schema)?;
    if batch.num_rows() > 0 {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn describe_types(types: impl Iterator<Item = String>) -> String {
    format!("({})", types.collect::<Vec<_>>().join(", "))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};

    use super::*;

    /// State of a `GROUP BY k` count: key `k`, state `n`.
    fn count_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn rows(pairs: &[(i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            count_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.0))),
                Arc::new(Int64Array::from_iter_values(pairs.iter().map(|p| p.1))),
            ],
        )
        .unwrap()
    }

    fn keys(keys: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(keys.iter().copied()))],
        )
        .unwrap()
    }

    fn no_keys() -> RecordBatch {
        keys(&[])
    }

    fn from_map(state: &BTreeMap<i64, i64>) -> RecordBatch {
        rows(&state.iter().map(|(&k, &n)| (k, n)).collect::<Vec<_>>())
    }

    /// The state as a map, asserting each key appears once.
    fn to_map(batch: &RecordBatch) -> BTreeMap<i64, i64> {
        assert_eq!(batch.schema(), count_schema());
        let k = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let n = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let mut map = BTreeMap::new();
        for i in 0..batch.num_rows() {
            assert!(
                map.insert(k.value(i), n.value(i)).is_none(),
                "key {} twice",
                k.value(i)
            );
        }
        map
    }

    fn config(snapshot_interval: u64, retain_versions: u64) -> StateStoreConfig {
        StateStoreConfig {
            snapshot_interval,
            retain_versions,
            snapshot_phase: 0,
            state_partitions: None,
        }
    }

    fn open(dir: &Path, config: StateStoreConfig) -> StateStore {
        StateStore::open(dir, count_schema(), 1, config).unwrap()
    }

    /// File names in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn versions_with(dir: &Path, suffix: &str) -> Vec<u64> {
        let mut versions: Vec<u64> = files(dir)
            .iter()
            .filter_map(|n| n.strip_suffix(suffix)?.parse().ok())
            .collect();
        versions.sort_unstable();
        versions
    }

    /// A periodic snapshot is written in the background. The next commit waits for
    /// it; when it could not be written (a full disk) that commit fails with the error
    /// naming the file, nothing else is lost (the version loads from the older snapshot
    /// and the deltas), and the commit succeeds once retried.
    #[test]
    fn a_background_snapshot_is_waited_for_and_its_failure_stops_the_next_commit() {
        use crate::checkpoint::fault::{self, Op};
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(2, 100));
        let mut state = BTreeMap::new();
        run_batch(&mut store, &mut state, 0, &[1, 2], &[]);
        run_batch(&mut store, &mut state, 1, &[1], &[]);
        let snapshot = dir.path().join("2.snapshot.arrow");
        let full = fault::inject(&snapshot, Op::Write, libc::ENOSPC);
        run_batch(&mut store, &mut state, 2, &[2, 3], &[]);
        let at_two = state.clone();
        let error = store
            .commit(3, &rows(&[(3, 2)]), &no_keys(), &rows(&[]))
            .expect_err("the snapshot's failure is reported");
        assert!(
            error.to_string().contains(&snapshot.display().to_string()),
            "{error}"
        );
        assert!(!snapshot.exists());
        drop(full);
        run_batch(&mut store, &mut state, 3, &[3], &[]);
        run_batch(&mut store, &mut state, 4, &[4], &[]);
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![0, 4]);
        drop(store);
        for (version, expected) in [(2, &at_two), (4, &state)] {
            let mut restarted = open(dir.path(), config(2, 100));
            assert_eq!(&to_map(&restarted.load(Some(version)).unwrap()), expected);
            if version == 2 {
                // Loading 2 deleted 3 and 4; commit them again for the next load.
                let mut again = at_two.clone();
                run_batch(&mut restarted, &mut again, 3, &[3], &[]);
                run_batch(&mut restarted, &mut again, 4, &[4], &[]);
                assert_eq!(&again, &state);
            }
        }
    }

    #[test]
    fn a_commit_written_in_the_background_is_durable_once_waited_for_and_its_failure_is_the_wait_error()
     {
        use crate::checkpoint::fault::{self, Op};
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(10, 100));
        let mut state = BTreeMap::new();
        run_batch(&mut store, &mut state, 0, &[1, 2], &[]);
        // Version 1 is written on the writer's thread; once waited for, another store
        // (a restart) loads it.
        store
            .start_commit(1, &rows(&[(1, 2), (3, 1)]), &keys(&[2]), || {
                panic!("no snapshot is due at version 1")
            })
            .unwrap();
        store.wait_committed().unwrap();
        let expected = BTreeMap::from([(1, 2), (3, 1)]);
        assert_eq!(
            to_map(&open(dir.path(), config(10, 100)).load(Some(1)).unwrap()),
            expected
        );
        // A write that fails on the writer's thread is the error of the wait, naming
        // the file; version 2 is then not loadable, version 1 still is.
        let delta = dir.path().join("2.delta.arrow");
        let full = fault::inject(dir.path(), Op::Write, libc::ENOSPC);
        store
            .start_commit(2, &rows(&[(4, 1)]), &no_keys(), || unreachable!())
            .expect("the rows are taken; the write fails later");
        let error = store.wait_committed().expect_err("the write failed");
        assert!(
            error.to_string().contains(&delta.display().to_string()),
            "{error}"
        );
        assert!(!delta.exists());
        drop(full);
        drop(store);
        let mut restarted = open(dir.path(), config(10, 100));
        assert!(
            restarted.load(Some(2)).is_err(),
            "version 2 was never written"
        );
        assert_eq!(to_map(&restarted.load(Some(1)).unwrap()), expected);
    }

    /// Commits one batch of a counting operator: `adds` are counted, `drops` removed.
    fn run_batch(
        store: &mut StateStore,
        state: &mut BTreeMap<i64, i64>,
        version: u64,
        adds: &[i64],
        drops: &[i64],
    ) {
        let mut touched = BTreeMap::new();
        for &k in adds {
            let n = state.entry(k).or_insert(0);
            *n += 1;
            touched.insert(k, *n);
        }
        for k in drops {
            state.remove(k);
            touched.remove(k);
        }
        store
            .commit(version, &from_map(&touched), &keys(drops), &from_map(state))
            .unwrap();
    }

    #[test]
    fn defaults_snapshot_every_10_versions_and_retain_100() {
        assert_eq!(StateStoreConfig::default(), config(10, 100));
    }

    #[test]
    fn nothing_committed_is_the_empty_state_and_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), StateStoreConfig::default());
        store
            .commit(0, &rows(&[(1, 1)]), &no_keys(), &rows(&[(1, 1)]))
            .unwrap();

        // Batch 0 never committed: a restart loads "nothing committed".
        let mut store = open(dir.path(), StateStoreConfig::default());
        let state = store.load(None).unwrap();
        assert_eq!(state.num_rows(), 0);
        assert_eq!(state.schema(), count_schema());
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }

    #[test]
    fn every_version_round_trips_across_snapshots_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(3, 100));
        let mut state = BTreeMap::new();
        let mut history = Vec::new();
        for version in 0..20u64 {
            let v = version as i64;
            let adds = [v % 5, (v * 7) % 11, 100 + v];
            let drops: Vec<i64> = if version % 4 == 3 {
                vec![100 + v - 2]
            } else {
                vec![]
            };
            run_batch(&mut store, &mut state, version, &adds, &drops);
            history.push(state.clone());
        }
        store.finish_writes().unwrap();
        assert_eq!(
            versions_with(dir.path(), ".snapshot.arrow"),
            vec![0, 3, 6, 9, 12, 15, 18]
        );
        // The first version is a snapshot alone: nothing before it loads, so a delta
        // would never be read.
        assert_eq!(
            versions_with(dir.path(), ".delta.arrow"),
            (1..20).collect::<Vec<_>>()
        );
        assert_eq!(
            versions_with(dir.path(), ".removed.arrow"),
            (1..20).collect::<Vec<_>>()
        );

        // Newest first: loading a version deletes the versions after it.
        for version in (0..20u64).rev() {
            let mut restarted = open(dir.path(), config(3, 100));
            let loaded = restarted.load(Some(version)).unwrap();
            assert_eq!(
                to_map(&loaded),
                history[version as usize],
                "version {version}"
            );
        }
    }

    #[test]
    fn an_upsert_replaces_the_state_of_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(100, 100));
        store
            .commit(
                0,
                &rows(&[(1, 10), (2, 20)]),
                &no_keys(),
                &rows(&[(1, 10), (2, 20)]),
            )
            .unwrap();
        store
            .commit(
                1,
                &rows(&[(2, 21), (3, 30)]),
                &no_keys(),
                &rows(&[(1, 10), (2, 21), (3, 30)]),
            )
            .unwrap();
        // Within one delta the last row of a key wins.
        store
            .commit(
                2,
                &rows(&[(3, 31), (3, 32)]),
                &no_keys(),
                &rows(&[(1, 10), (2, 21), (3, 32)]),
            )
            .unwrap();

        let mut restarted = open(dir.path(), config(100, 100));
        let loaded = to_map(&restarted.load(Some(2)).unwrap());
        assert_eq!(loaded, BTreeMap::from([(1, 10), (2, 21), (3, 32)]));
    }

    #[test]
    fn removed_keys_vanish_from_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(100, 100));
        let all = rows(&[(1, 1), (2, 2), (3, 3)]);
        store.commit(0, &all, &no_keys(), &all).unwrap();
        // Key 2 is removed; key 9 was never there; key 4 is upserted and removed in one batch.
        store
            .commit(
                1,
                &rows(&[(4, 4)]),
                &keys(&[2, 9, 4]),
                &rows(&[(1, 1), (3, 3)]),
            )
            .unwrap();
        // Removed keys may also be given as full rows; only the key column is read.
        store
            .commit(2, &rows(&[]), &rows(&[(3, 3)]), &rows(&[(1, 1)]))
            .unwrap();

        let mut restarted = open(dir.path(), config(100, 100));
        assert_eq!(
            to_map(&restarted.load(Some(2)).unwrap()),
            BTreeMap::from([(1, 1)])
        );
        let mut restarted = open(dir.path(), config(100, 100));
        assert_eq!(
            to_map(&restarted.load(Some(1)).unwrap()),
            BTreeMap::from([(1, 1), (3, 3)])
        );
    }

    #[test]
    fn loading_an_older_version_ignores_and_deletes_newer_uncommitted_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(2, 100));
        let mut state = BTreeMap::new();
        for version in 0..5 {
            run_batch(&mut store, &mut state, version, &[version as i64], &[]);
        }
        // Batches 3 and 4 wrote their state but never reached the commit log.
        drop(store);
        let mut restarted = open(dir.path(), config(2, 100));
        let loaded = to_map(&restarted.load(Some(2)).unwrap());
        assert_eq!(loaded, BTreeMap::from([(0, 1), (1, 1), (2, 1)]));
        assert_eq!(
            files(dir.path()),
            [
                "0.snapshot.arrow",
                "1.delta.arrow",
                "1.removed.arrow",
                "2.delta.arrow",
                "2.removed.arrow",
                "2.snapshot.arrow"
            ]
        );
    }

    #[test]
    fn recommitting_a_version_after_a_crash_overwrites_it_without_double_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(2, 100));
        let mut state = BTreeMap::new();
        run_batch(&mut store, &mut state, 0, &[7], &[]);
        run_batch(&mut store, &mut state, 1, &[7, 7], &[]);
        run_batch(&mut store, &mut state, 2, &[7], &[]);
        assert_eq!(state[&7], 4);

        // Crash before batch 2 committed: restart from version 1 and run batch 2 again.
        let mut restarted = open(dir.path(), config(2, 100));
        let mut state = to_map(&restarted.load(Some(1)).unwrap());
        assert_eq!(state, BTreeMap::from([(7, 3)]));
        run_batch(&mut restarted, &mut state, 2, &[7], &[]);
        // The same version committed twice in a row (no load in between) also overwrites.
        let mut state = BTreeMap::from([(7, 3)]);
        run_batch(&mut restarted, &mut state, 2, &[7], &[]);

        let mut again = open(dir.path(), config(2, 100));
        assert_eq!(
            to_map(&again.load(Some(2)).unwrap()),
            BTreeMap::from([(7, 4)])
        );
    }

    #[test]
    fn a_recommit_that_writes_no_snapshot_removes_the_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(1, 100));
        store
            .commit(0, &rows(&[(1, 1)]), &no_keys(), &rows(&[(1, 1)]))
            .unwrap();
        store
            .commit(1, &rows(&[(1, 2)]), &no_keys(), &rows(&[(1, 2)]))
            .unwrap();
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![0, 1]);

        // Restarted with a longer interval, version 1 is committed again with another state.
        let mut store = open(dir.path(), config(10, 100));
        store
            .commit(1, &rows(&[(1, 5)]), &no_keys(), &rows(&[(1, 5)]))
            .unwrap();
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![0]);
        assert_eq!(
            to_map(&store.load(Some(1)).unwrap()),
            BTreeMap::from([(1, 5)])
        );
    }

    #[test]
    fn purge_keeps_the_retained_versions_and_the_snapshot_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(5, 3));
        let mut state = BTreeMap::new();
        let mut history = Vec::new();
        for version in 0..=13 {
            run_batch(&mut store, &mut state, version, &[version as i64 % 4], &[]);
            history.push(state.clone());
        }
        // Retained: 11, 12, 13. Loading 11 starts from snapshot 10, so 10 stays too.
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![10]);
        assert_eq!(
            versions_with(dir.path(), ".delta.arrow"),
            vec![10, 11, 12, 13]
        );
        assert_eq!(
            versions_with(dir.path(), ".removed.arrow"),
            vec![10, 11, 12, 13]
        );
        for version in [13u64, 12, 11] {
            let mut restarted = open(dir.path(), config(5, 3));
            let loaded = restarted.load(Some(version)).unwrap();
            assert_eq!(to_map(&loaded), history[version as usize]);
        }
        let mut restarted = open(dir.path(), config(5, 3));
        assert!(matches!(restarted.load(Some(9)), Err(Error::Checkpoint(_))));
    }

    #[test]
    fn purge_always_keeps_the_version_before_the_newest() {
        // A crash after the state commit of batch N but before its commit-log entry
        // restarts from version N - 1, so even retain_versions = 1 keeps it.
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(1, 1));
        let mut state = BTreeMap::new();
        for version in 0..6 {
            run_batch(&mut store, &mut state, version, &[1], &[]);
        }
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![4, 5]);
        let mut restarted = open(dir.path(), config(1, 1));
        assert_eq!(
            to_map(&restarted.load(Some(4)).unwrap()),
            BTreeMap::from([(1, 5)])
        );
    }

    #[test]
    fn a_missing_or_damaged_file_is_a_clear_checkpoint_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(100, 100));
        let mut state = BTreeMap::new();
        for version in 0..4 {
            run_batch(&mut store, &mut state, version, &[1], &[]);
        }

        fs::remove_file(dir.path().join("2.delta.arrow")).unwrap();
        let mut restarted = open(dir.path(), config(100, 100));
        let Err(Error::Checkpoint(message)) = restarted.load(Some(3)) else {
            panic!("a missing delta must be a checkpoint error");
        };
        assert!(message.contains("2.delta.arrow"), "{message}");
        assert!(message.contains("damaged"), "{message}");

        fs::write(dir.path().join("1.delta.arrow"), b"not an arrow file").unwrap();
        let mut restarted = open(dir.path(), config(100, 100));
        let Err(Error::Checkpoint(message)) = restarted.load(Some(1)) else {
            panic!("a damaged delta must be a checkpoint error");
        };
        assert!(message.contains("1.delta.arrow"), "{message}");
        assert!(message.contains("damaged"), "{message}");

        fs::remove_file(dir.path().join("1.removed.arrow")).unwrap();
        let mut restarted = open(dir.path(), config(100, 100));
        let Err(Error::Checkpoint(message)) = restarted.load(Some(1)) else {
            panic!("a missing removed-keys file must be a checkpoint error");
        };
        assert!(message.contains("1.removed.arrow"), "{message}");

        fs::remove_file(dir.path().join("0.snapshot.arrow")).unwrap();
        let mut restarted = open(dir.path(), config(100, 100));
        let Err(Error::Checkpoint(message)) = restarted.load(Some(0)) else {
            panic!("a missing snapshot must be a checkpoint error");
        };
        assert!(message.contains("no state snapshot"), "{message}");
    }

    #[test]
    fn state_written_by_another_query_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(10, 100));
        store
            .commit(0, &rows(&[(1, 1)]), &no_keys(), &rows(&[(1, 1)]))
            .unwrap();
        let other = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Float64, false),
        ]));
        let mut changed = StateStore::open(dir.path(), other, 1, config(10, 100)).unwrap();
        let Err(Error::Checkpoint(message)) = changed.load(Some(0)) else {
            panic!("another state schema must be refused");
        };
        assert!(message.contains("different query"), "{message}");
    }

    #[test]
    fn a_commit_of_rows_of_the_wrong_types_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(10, 100));
        let wrong = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(vec![1]))],
        )
        .unwrap();
        assert!(matches!(
            store.commit(0, &wrong, &no_keys(), &rows(&[])),
            Err(Error::Data(_))
        ));
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn keys_of_several_columns_with_strings_and_nulls_are_matched_exactly() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("city", DataType::Utf8, true),
            Field::new("year", DataType::Int32, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |rows: &[(Option<&str>, Option<i32>, i64)]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(rows.iter().map(|r| r.0).collect::<StringArray>()),
                    Arc::new(rows.iter().map(|r| r.1).collect::<Int32Array>()),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )
            .unwrap()
        };
        let key_batch = |rows: &[(Option<&str>, Option<i32>)]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(schema.fields()[..2].to_vec())),
                vec![
                    Arc::new(rows.iter().map(|r| r.0).collect::<StringArray>()),
                    Arc::new(rows.iter().map(|r| r.1).collect::<Int32Array>()),
                ],
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path(), schema.clone(), 2, config(10, 100)).unwrap();
        let first = batch(&[
            (Some("a"), Some(1), 1),
            (Some("a"), None, 2),
            (None, Some(1), 3),
            (None, None, 4),
            (Some(""), Some(1), 5),
            (Some("a,1"), None, 6),
        ]);
        store.commit(0, &first, &key_batch(&[]), &first).unwrap();
        let second = batch(&[(None, None, 40), (Some("a"), Some(1), 10)]);
        store
            .commit(
                1,
                &second,
                &key_batch(&[(Some("a"), None), (Some(""), Some(1))]),
                &first,
            )
            .unwrap();

        let mut restarted =
            StateStore::open(dir.path(), schema.clone(), 2, config(10, 100)).unwrap();
        let loaded = restarted.load(Some(1)).unwrap();
        assert_eq!(loaded.schema(), schema);
        let city = loaded
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let year = loaded
            .column(1)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        let n = loaded
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let mut got: Vec<(Option<String>, Option<i32>, i64)> = (0..loaded.num_rows())
            .map(|i| {
                (
                    city.is_valid(i).then(|| city.value(i).to_string()),
                    year.is_valid(i).then(|| year.value(i)),
                    n.value(i),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (None, None, 40),
                (None, Some(1), 3),
                (Some("a".into()), Some(1), 10),
                (Some("a,1".into()), None, 6),
            ]
        );
    }

    #[test]
    fn without_key_columns_the_state_is_a_single_row() {
        // A global aggregation (`SELECT count(*) FROM t`): every row has the same, empty key.
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let n = |v: &[i64]| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v.to_vec()))])
                .unwrap()
        };
        let no_columns = |rows: usize| {
            RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(rows)),
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path(), schema.clone(), 0, config(10, 100)).unwrap();
        store.commit(0, &n(&[3]), &no_columns(0), &n(&[3])).unwrap();
        store.commit(1, &n(&[5]), &no_columns(0), &n(&[5])).unwrap();
        store.commit(2, &n(&[]), &no_columns(1), &n(&[])).unwrap();

        let mut restarted =
            StateStore::open(dir.path(), schema.clone(), 0, config(10, 100)).unwrap();
        assert_eq!(restarted.load(Some(2)).unwrap().num_rows(), 0);
        let mut restarted =
            StateStore::open(dir.path(), schema.clone(), 0, config(10, 100)).unwrap();
        assert_eq!(restarted.load(Some(1)).unwrap(), n(&[5]));
    }

    #[test]
    fn a_skipped_version_gets_a_snapshot_so_every_commit_stays_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), config(10, 100));
        store
            .commit(3, &rows(&[(1, 1)]), &no_keys(), &rows(&[(1, 1)]))
            .unwrap();
        store
            .commit(4, &rows(&[(2, 1)]), &no_keys(), &rows(&[(1, 1), (2, 1)]))
            .unwrap();
        store
            .commit(7, &rows(&[(1, 2)]), &no_keys(), &rows(&[(1, 2), (2, 1)]))
            .unwrap();
        // The first version committed and the one after the gap are snapshots.
        store.finish_writes().unwrap();
        assert_eq!(versions_with(dir.path(), ".snapshot.arrow"), vec![3, 7]);
        let mut restarted = open(dir.path(), config(10, 100));
        assert_eq!(
            to_map(&restarted.load(Some(7)).unwrap()),
            BTreeMap::from([(1, 2), (2, 1)])
        );
    }

    #[test]
    fn open_removes_temporaries_of_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".5.delta.arrow.tmp"), b"torn").unwrap();
        let _store = open(dir.path(), StateStoreConfig::default());
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn open_refuses_more_key_columns_than_the_schema_has() {
        let dir = tempfile::tempdir().unwrap();
        let result = StateStore::open(dir.path(), count_schema(), 3, StateStoreConfig::default());
        assert!(matches!(result, Err(Error::Unsupported(_))));
    }

    #[test]
    fn memory_bytes_counts_the_arrow_buffers() {
        let small = StateStore::memory_bytes(&rows(&[(1, 1)]));
        let large =
            StateStore::memory_bytes(&rows(&(0..10_000).map(|k| (k, k)).collect::<Vec<_>>()));
        assert!(small > 0);
        assert!(large >= 2 * 8 * 10_000, "{large}");
    }
}
