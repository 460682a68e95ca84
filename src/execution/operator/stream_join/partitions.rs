//! The join's state split into partitions by a hash of the equality key, the same
//! hash on both sides, so that a key's rows of both sides are in the same partition
//! number and a batch's matching, insertion and eviction run per partition, sharing
//! nothing (in parallel, as the aggregation's partitions).
//!
//! ```text
//! state/<operator id>/
//!   partitions.json          {"partitions": N}: fixed when the checkpoint is created
//!   left/<p>/, right/<p>/    partition p of each side: one StateStore each (side.rs)
//! ```
//!
//! The number is the aggregation's setting and rule
//! ([`crate::state::partitioned::settle_partitions`]): `SET millrace.state_partitions =
//! N` (default 4) for a new checkpoint, then fixed. A key's partition is
//! [`partition_of`] its encoded key (Arrow `RowConverter` bytes, after both sides' keys
//! are cast to one type), the aggregation's routing hash.
//!
//! **Checkpoints of the single-partition layout** (millrace before partitioned join
//! state: version files directly in `left/` and `right/`) are read as one partition,
//! in place, and go on being written there; `partitions.json` then records 1, and
//! asking for another number is refused as for any checkpoint.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::side::SideState;
use crate::error::{Error, Result};
use crate::state::StateStoreConfig;
use crate::state::partitioned::{holds_unpartitioned_versions, par_map, settle_partitions};

pub use crate::state::partitioned::partition_of;

/// One partition: both sides' rows of the keys that hash to it.
#[derive(Debug)]
pub struct JoinPartition {
    /// The left side's rows of this partition.
    pub left: SideState,
    /// The right side's rows of this partition.
    pub right: SideState,
}

impl JoinPartition {
    /// The side `left` (or the right one).
    pub fn side(&self, left: bool) -> &SideState {
        if left { &self.left } else { &self.right }
    }
}

/// What committing a batch did to one side, over all partitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct SideCommit {
    /// Rows written (stored, or whose matched flag changed).
    pub updated: usize,
    /// Rows evicted.
    pub removed: usize,
}

/// Where partition `p` of a side keeps its files: `<dir>/<side>/<p>/`, or `<dir>/<side>/`
/// in the single-partition layout.
fn side_dir(dir: &Path, single_layout: bool, left: bool, p: usize) -> PathBuf {
    let side = dir.join(if left { "left" } else { "right" });
    if single_layout {
        side
    } else {
        side.join(p.to_string())
    }
}

/// The join's state: its partitions, in order (partition `p` of a side lives in
/// `<dir>/<side>/<p>/`, or in `<dir>/<side>/` for the single-partition layout).
#[derive(Debug)]
pub struct JoinState {
    /// The partitions, in order.
    pub partitions: Vec<JoinPartition>,
}

/// Encodes the equality keys of rows of one side (`true`: left) of the join.
pub type KeyEncoder<'a> = dyn Fn(bool, &RecordBatch) -> Result<Vec<Box<[u8]>>> + Sync + 'a;

impl JoinState {
    /// Opens the state in `dir` (`state/<operator id>/`) and restores version
    /// `committed` (`None`: empty state) of every partition of both sides; `keys`
    /// encodes restored rows' keys. The number of partitions follows
    /// `config.state_partitions` and the checkpoint (see the module docs); a restored
    /// row whose key belongs to another partition is refused as damage.
    pub fn open(
        dir: &Path,
        committed: Option<u64>,
        config: StateStoreConfig,
        schemas: (SchemaRef, SchemaRef),
        keys: &KeyEncoder<'_>,
    ) -> Result<Self> {
        let mut old_files = None;
        for side in ["left", "right"] {
            if let Some(name) = holds_unpartitioned_versions(&dir.join(side))? {
                old_files = Some(dir.join(side).join(name));
            }
        }
        let single_layout = old_files.is_some() && committed.is_some();
        if !single_layout && old_files.is_some() {
            // Files of a first batch that never committed, in the old layout: the state
            // is empty; loading nothing deletes them.
            for (side, schema) in [("left", &schemas.0), ("right", &schemas.1)] {
                SideState::new(schema.clone())
                    .open(&dir.join(side), None, config, |_| Ok(Vec::new()))?;
            }
        }
        let n = settle_partitions(
            dir,
            config.state_partitions,
            committed,
            single_layout.then_some(1),
        )?;
        if single_layout && n != 1 {
            return Err(Error::Checkpoint(format!(
                "{} records {n} state partitions, but {} is of the single-partition layout: \
                 the checkpoint is damaged; restore it or start the query with a new \
                 checkpoint directory",
                dir.join("partitions.json").display(),
                old_files.expect("found").display()
            )));
        }
        let opened = par_map((0..n).collect(), |p| -> Result<JoinPartition> {
            let mut sides = Vec::with_capacity(2);
            for (i, (left, schema)) in [(true, &schemas.0), (false, &schemas.1)]
                .into_iter()
                .enumerate()
            {
                let side_dir = side_dir(dir, single_layout, left, p);
                let config = if single_layout {
                    config
                } else {
                    // Staggered, so that partitions do not all snapshot in one batch.
                    StateStoreConfig {
                        snapshot_phase: (2 * p + i) as u64,
                        ..config
                    }
                };
                let mut side = SideState::new(schema.clone());
                side.open(&side_dir, committed, config, |rows| {
                    let encoded = keys(left, rows)?;
                    if let Some(other) =
                        encoded.iter().map(|k| partition_of(k, n)).find(|&q| q != p)
                    {
                        return Err(Error::Checkpoint(format!(
                            "{} holds rows of partition {other}: the join state was written \
                             with another partitioning (another millrace version or a \
                             damaged checkpoint); start the query with a new checkpoint \
                             directory",
                            side_dir.display()
                        )));
                    }
                    Ok(encoded)
                })?;
                sides.push(side);
            }
            let right = sides.pop().expect("two sides");
            let left = sides.pop().expect("two sides");
            Ok(JoinPartition { left, right })
        })?;
        Ok(JoinState { partitions: opened })
    }

    /// Number of partitions.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Writes every partition's changes of both sides as version `version`, the
    /// partitions in parallel (every partition writes every version, as the
    /// aggregation's: a version is loadable only with all its files), in the
    /// background: durable once [`wait_committed`](Self::wait_committed) returns.
    pub fn commit(&mut self, version: u64) -> Result<(SideCommit, SideCommit)> {
        let parts: Vec<&mut JoinPartition> = self.partitions.iter_mut().collect();
        let done = par_map(parts, |part| -> Result<_> {
            Ok((part.left.commit(version)?, part.right.commit(version)?))
        })?;
        let mut left = SideCommit::default();
        let mut right = SideCommit::default();
        for ((lu, lr), (ru, rr)) in done {
            left.updated += lu;
            left.removed += lr;
            right.updated += ru;
            right.removed += rr;
        }
        Ok((left, right))
    }

    /// Waits until the version [`commit`](Self::commit) started is durable in every
    /// partition of both sides; the first failure is the error.
    pub fn wait_committed(&mut self) -> Result<()> {
        // Every side is waited for, even after a failure: no write is left running.
        self.partitions
            .iter_mut()
            .flat_map(|part| [&mut part.left, &mut part.right])
            .map(|side| side.wait_committed())
            .fold(Ok(()), Result::and)
    }

    /// Rows held by a side, over all partitions.
    pub fn rows(&self, left: bool) -> usize {
        self.partitions.iter().map(|p| p.side(left).len()).sum()
    }

    /// Bytes held by a side, over all partitions.
    pub fn memory_bytes(&self, left: bool) -> usize {
        self.partitions
            .iter()
            .map(|p| p.side(left).memory_bytes())
            .sum()
    }
}
