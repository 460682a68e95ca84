//! The checkpoint directory: what makes a streaming query restartable exactly-once.
//!
//! ```text
//! <checkpoint>/
//!   metadata            query id and the identity of its sources
//!   offsets/<N>         what batch N reads (every source's end offset) + its watermark;
//!                       written and fsynced BEFORE batch N runs
//!   commits/<N>         batch N's output is committed in the sink; written AFTER the sink commit
//!   sources/<name>/     each source's own durable state (file list per batch, socket WAL, ...)
//!   progress.jsonl      one StreamingQueryProgress JSON object per batch
//! ```
//!
//! Recovery rule (as in Spark): if the newest `offsets/N` has no `commits/N`, batch N
//! is run again with exactly the offsets recorded for it; sinks make that re-run
//! idempotent by batch id.

mod batch_log;
pub mod fault;

pub use batch_log::BatchLog;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a reader (or a restart after `kill -9`) sees
/// either the old content or the whole new content, never a torn file.
///
/// Write a hidden temporary beside the target, fsync it, rename it over the target,
/// then fsync the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    fault::check(path, fault::Op::Write).map_err(Error::io(path))?;
    let mut file = File::create(&tmp).map_err(Error::io(&tmp))?;
    file.write_all(bytes).map_err(Error::io(&tmp))?;
    file.sync_all().map_err(Error::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(dir)
}

/// Reads a file of the checkpoint: `None` only if it does not exist.
///
/// Any other failure (permission denied, an I/O error, a directory where the file
/// should be) is an error naming the file: treating it as "absent" would make the
/// caller write a fresh file over state it could not read, and move or replay batches.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let read = fault::check(path, fault::Op::Read).and_then(|()| fs::read(path));
    match read {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path)(e)),
    }
}

/// Whether `path` exists; an error (other than "not found") if that cannot be told.
/// (`Path::exists` answers `false` on any error, which is the mistake `read_file`
/// avoids.)
pub fn exists(path: &Path) -> Result<bool> {
    fault::check(path, fault::Op::Read).map_err(Error::io(path))?;
    path.try_exists().map_err(Error::io(path))
}

/// Fsyncs a directory so that renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(Error::io(dir))?;
    handle.sync_all().map_err(Error::io(dir))
}

/// Creates `dir` and its parents, with an error that names it.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io(dir))
}

/// Size at which `progress.jsonl` is rotated to `progress.jsonl.1` (about 1,000
/// reports).
pub const PROGRESS_ROTATE_BYTES: u64 = 1 << 20;

/// The `metadata` file: which query owns this checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryMetadata {
    /// Stable query id: survives restarts, names the query's output files.
    pub id: String,
    /// Identity of each source (`name -> "FORMAT location"`), to refuse a checkpoint
    /// that was made by a query reading something else.
    pub sources: BTreeMap<String, String>,
}

/// The `offsets/<N>` entry: everything needed to run batch N again identically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OffsetEntry {
    /// The batch these offsets belong to.
    pub batch_id: u64,
    /// Wall-clock time the batch was planned (ms since epoch); a replay reuses it.
    pub batch_timestamp_ms: i64,
    /// The event-time watermark in force for this batch (ms since epoch), if any.
    pub batch_watermark_ms: Option<i64>,
    /// Per-source event-time maximum seen before this batch, so the watermark carries over a restart.
    #[serde(default)]
    pub source_max_event_time_ms: BTreeMap<String, i64>,
    /// End offset of every source for this batch (its start is the previous entry's end).
    pub sources: BTreeMap<String, serde_json::Value>,
}

/// The `commits/<N>` entry: batch N is done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommitEntry {
    /// The committed batch.
    pub batch_id: u64,
    /// Rows the sink received for this batch.
    pub num_output_rows: u64,
    /// Largest event time per watermarked source after this batch, so the next
    /// batch's watermark survives a restart.
    #[serde(default)]
    pub source_max_event_time_ms: BTreeMap<String, i64>,
}

/// A query's checkpoint directory, opened for one run of the query.
#[derive(Debug)]
pub struct Checkpoint {
    root: PathBuf,
    /// The write-before-run log of what each batch reads.
    pub offsets: BatchLog<OffsetEntry>,
    /// The log of batches whose sink output is committed.
    pub commits: BatchLog<CommitEntry>,
    metadata: QueryMetadata,
    /// An exclusive lock on `<checkpoint>/.lock`, held while the query runs: a second
    /// process on the same checkpoint would interleave batches and corrupt both.
    /// The operating system releases it when the process ends, even by `kill -9`.
    _lock: File,
}

impl Checkpoint {
    /// Opens (or creates) the checkpoint at `root` for a query reading `sources`.
    ///
    /// A new checkpoint gets a fresh query id. An existing one must have been made by a
    /// query over the same sources; otherwise it is refused, since replaying its
    /// offsets against other sources would silently lose or duplicate data.
    pub fn open(root: &Path, sources: BTreeMap<String, String>) -> Result<Self> {
        create_dir_all(root)?;
        let lock_path = root.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} is in use by another running query; stop that query first, \
                     or give this one its own checkpoint directory",
                    root.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path)(e)),
        }
        let meta_path = root.join("metadata");
        let metadata = if let Some(bytes) = read_file(&meta_path)? {
            let found: QueryMetadata = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Checkpoint(format!(
                    "{} is damaged ({e}); restore it or start the query with a new checkpoint directory",
                    meta_path.display()
                ))
            })?;
            if found.sources != sources {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} was made by a query reading {:?}, but this query reads {:?}; \
                     use a new checkpoint directory for a changed query",
                    root.display(),
                    found.sources,
                    sources
                )));
            }
            found
        } else {
            let fresh = QueryMetadata {
                id: uuid::Uuid::new_v4().to_string(),
                sources,
            };
            write_atomic(&meta_path, &serde_json::to_vec_pretty(&fresh)?)?;
            fresh
        };
        Ok(Checkpoint {
            offsets: BatchLog::open(root.join("offsets"))?,
            commits: BatchLog::open(root.join("commits"))?,
            root: root.to_path_buf(),
            metadata,
            _lock: lock,
        })
    }

    /// The stable query id stored in `metadata`.
    pub fn query_id(&self) -> &str {
        &self.metadata.id
    }

    /// The checkpoint's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory a source keeps its own durable state in.
    pub fn source_dir(&self, source_name: &str) -> PathBuf {
        self.root.join("sources").join(source_name)
    }

    /// Appends one progress report as a JSON line to `progress.jsonl`.
    ///
    /// The line goes out in one write. A `kill -9` during an earlier append may have
    /// left a last line without its newline: it is ended first, so that this report
    /// starts on a line of its own instead of being glued to the torn one.
    ///
    /// Once the file holds [`PROGRESS_ROTATE_BYTES`] it is renamed to
    /// `progress.jsonl.1` (replacing the previous one) and a new file is started, so
    /// the reports of a query running for months take at most twice that much space.
    pub fn append_progress(&self, json: &str) -> Result<()> {
        let path = self.root.join("progress.jsonl");
        match fs::metadata(&path) {
            Ok(meta) if meta.len() >= PROGRESS_ROTATE_BYTES => {
                let older = self.root.join("progress.jsonl.1");
                fs::rename(&path, &older).map_err(Error::io(&older))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path)(e)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let mut line = String::with_capacity(json.len() + 2);
        if ends_without_newline(&mut file).map_err(Error::io(&path))? {
            line.push('\n');
        }
        line.push_str(json);
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(Error::io(&path))
    }

    /// Drops offset and commit entries older than the newest `keep` batches.
    pub fn purge(&self, keep: u64) -> Result<()> {
        self.offsets.purge(keep)?;
        self.commits.purge(keep)
    }
}

/// Whether a non-empty file's last byte is not a newline (a torn last line).
fn ends_without_newline(file: &mut File) -> std::io::Result<bool> {
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> BTreeMap<String, String> {
        BTreeMap::from([("t".to_string(), "RATE ".to_string())])
    }

    /// `metadata` that cannot be read (a symbolic link loop: `ELOOP`, not
    /// "not found") must not be replaced by a fresh query id, which would orphan the
    /// query's output and state.
    #[test]
    fn unreadable_metadata_is_an_error_not_a_new_query() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        std::os::unix::fs::symlink(&meta, &meta).unwrap();
        let error = Checkpoint::open(dir.path(), sources())
            .expect_err("an error")
            .to_string();
        assert!(error.contains("metadata"), "{error}");
        assert!(meta.symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[test]
    fn read_errors_of_log_entries_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::open(dir.path(), sources()).unwrap();
        let entry = CommitEntry {
            batch_id: 0,
            num_output_rows: 1,
            source_max_event_time_ms: BTreeMap::new(),
        };
        checkpoint.commits.add(0, &entry).unwrap();
        let commits = dir.path().join("commits");
        let _eacces = fault::inject(&commits, fault::Op::Read, libc::EACCES);
        let error = checkpoint.commits.get(0).unwrap_err().to_string();
        assert!(error.contains("commits/0"), "{error}");
        assert!(error.contains("read and write access"), "{error}");
        let missing = checkpoint.commits.get(1).unwrap_err().to_string();
        assert!(
            missing.contains("commits/1"),
            "an error, not None: {missing}"
        );
    }

    /// 3,000 reports of 1 KiB: the newest are kept, the space stays bounded.
    #[test]
    fn progress_reports_are_rotated_not_kept_forever() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::open(dir.path(), sources()).unwrap();
        let padding = "x".repeat(1000);
        for i in 0..3000 {
            checkpoint
                .append_progress(&format!("{{\"batchId\": {i}, \"pad\": \"{padding}\"}}"))
                .unwrap();
        }
        let current = fs::read_to_string(dir.path().join("progress.jsonl")).unwrap();
        let older = fs::metadata(dir.path().join("progress.jsonl.1"))
            .unwrap()
            .len();
        assert!(current.len() as u64 + older <= 2 * PROGRESS_ROTATE_BYTES + 2048);
        assert!(
            current
                .trim_end()
                .ends_with(&format!("\"batchId\": 2999, \"pad\": \"{padding}\"}}"))
        );
    }

    #[test]
    fn a_full_disk_fails_the_write_and_keeps_the_old_entry() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::open(dir.path(), sources()).unwrap();
        let entry = |rows| CommitEntry {
            batch_id: 0,
            num_output_rows: rows,
            source_max_event_time_ms: BTreeMap::new(),
        };
        checkpoint.commits.add(0, &entry(1)).unwrap();
        {
            let _full = fault::inject(dir.path(), fault::Op::Write, libc::ENOSPC);
            let error = checkpoint
                .commits
                .add(0, &entry(2))
                .unwrap_err()
                .to_string();
            assert!(error.contains("commits/0"), "{error}");
            assert!(error.contains("free space"), "{error}");
        }
        assert_eq!(checkpoint.commits.get(0).unwrap(), Some(entry(1)));
    }
}
