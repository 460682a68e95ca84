//! The file source: every file that appears in a directory is read exactly once.
//!
//! Files are taken in a stable order (modification time, then name), at most
//! `max_files_per_trigger` per batch. The files each batch takes are written to the
//! source's own log (`<checkpoint>/sources/<table>/<n>`) *before* the batch's offset
//! is returned, and the offset is just `{"logOffset": n}`: a replayed batch re-reads
//! exactly the files listed, and a file is never taken twice because every logged file
//! counts as seen.
//!
//! Files must appear atomically: write them elsewhere (or under a name starting with
//! `.` or `_`, which are ignored) and rename them into the directory, as Spark asks.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::format::FileFormat;
use super::{Offset, SourceBatch, StreamSource};
use crate::checkpoint::{BatchLog, create_dir_all};
use crate::error::{Error, Result};

/// Options of a file source besides its format.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSourceOptions {
    /// How each file is decoded.
    pub format: FileFormat,
    /// Only file names matching this glob are read (`path_glob_filter`, e.g. `*.csv`).
    pub path_glob_filter: Option<String>,
    /// At most this many new files per batch.
    pub max_files_per_trigger: Option<usize>,
}

/// One file taken by a batch, as recorded in the source log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Full path of the file.
    pub path: PathBuf,
    /// Modification time (ms since epoch) when it was listed.
    pub mtime_ms: i64,
    /// Size in bytes when it was listed.
    pub size: u64,
}

/// A file source opened for one query.
pub struct FileSource {
    schema: SchemaRef,
    options: FileSourceOptions,
    dir: PathBuf,
    glob: Option<glob::Pattern>,
    log: BatchLog<Vec<FileEntry>>,
    seen: HashSet<PathBuf>,
    /// With `available_now`: only these files may be taken.
    bound: Option<HashSet<PathBuf>>,
}

impl FileSource {
    /// Opens the source over `dir`, with its file log in `state_dir`.
    pub fn open(
        schema: SchemaRef,
        options: FileSourceOptions,
        dir: &Path,
        state_dir: &Path,
    ) -> Result<Self> {
        let glob = compile_glob(options.path_glob_filter.as_deref())?;
        let log_dir = state_dir.join("files");
        create_dir_all(&log_dir)?;
        let log: BatchLog<Vec<FileEntry>> = BatchLog::open(log_dir)?;
        let mut seen = HashSet::new();
        for id in log.batch_ids()? {
            for entry in log.get(id)?.unwrap_or_default() {
                seen.insert(entry.path);
            }
        }
        Ok(FileSource {
            schema,
            options,
            dir: dir.to_path_buf(),
            glob,
            log,
            seen,
            bound: None,
        })
    }

    /// Files in the directory not yet taken, in the order they will be read.
    fn new_files(&self) -> Result<Vec<FileEntry>> {
        let mut files: Vec<FileEntry> = list_files(&self.dir, self.glob.as_ref())?
            .into_iter()
            .filter(|f| !self.seen.contains(&f.path))
            .filter(|f| self.bound.as_ref().is_none_or(|b| b.contains(&f.path)))
            .collect();
        files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
        Ok(files)
    }
}

/// Compiles the `path_glob_filter` option.
pub fn compile_glob(pattern: Option<&str>) -> Result<Option<glob::Pattern>> {
    pattern
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| {
                Error::Option(format!("'path_glob_filter' '{p}' is not a valid glob: {e}"))
            })
        })
        .transpose()
}

/// Lists the readable files of `dir` (not hidden, matching the glob).
pub fn list_files(dir: &Path, glob: Option<&glob::Pattern>) -> Result<Vec<FileEntry>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if glob.is_some_and(|g| !g.matches(&name)) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue; // vanished between listing and stat
        };
        if !meta.is_file() {
            continue;
        }
        let mtime_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        files.push(FileEntry {
            path,
            mtime_ms,
            size: meta.len(),
        });
    }
    Ok(files)
}

fn log_offset(offset: Option<&Offset>) -> Result<i64> {
    match offset {
        None => Ok(-1),
        Some(value) => value["logOffset"].as_i64().ok_or_else(|| {
            Error::Checkpoint(format!("file source offset {value} has no 'logOffset'"))
        }),
    }
}

impl StreamSource for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>> {
        let start = log_offset(start)?;
        let next = (start + 1) as u64;
        // A batch planned before a crash but not yet in the offset log: take it again.
        if self.log.get(next)?.is_some() {
            return Ok(Some(json!({ "logOffset": next })));
        }
        let mut files = self.new_files()?;
        if let Some(limit) = self.options.max_files_per_trigger {
            files.truncate(limit);
        }
        if files.is_empty() {
            return Ok((start >= 0).then(|| json!({ "logOffset": start })));
        }
        self.log.add(next, &files)?;
        self.seen.extend(files.into_iter().map(|f| f.path));
        Ok(Some(json!({ "logOffset": next })))
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        let files = self.new_files()?;
        self.bound = Some(files.into_iter().map(|f| f.path).collect());
        Ok(())
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch> {
        let (start, end) = (log_offset(start)?, log_offset(Some(end))?);
        let mut paths = Vec::new();
        for id in (start + 1)..=end {
            let files = self.log.get(id as u64)?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "the file source log has no entry {id}: the checkpoint is damaged"
                ))
            })?;
            paths.extend(files.into_iter().map(|f| f.path));
        }
        // Decode the files on as many threads as there are cores, keeping their order.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(paths.len())
            .max(1);
        let per_thread = paths.len().div_ceil(threads).max(1);
        let (format, schema) = (&self.options.format, &self.schema);
        let decoded = std::thread::scope(|scope| {
            let handles: Vec<_> = paths
                .chunks(per_thread)
                .map(|group| {
                    scope.spawn(move || {
                        group
                            .iter()
                            .map(|path| format.read_file(path, schema))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(result) => result,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut out = SourceBatch::default();
        for decoded in decoded.into_iter().flatten() {
            out.malformed_dropped += decoded.malformed_dropped;
            if decoded.batch.num_rows() > 0 {
                out.batches.push(decoded.batch);
            }
        }
        Ok(out)
    }

    fn commit(&mut self, _end: &Offset) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "FileStreamSource[{}, {}]",
            self.options.format.name(),
            self.dir.display()
        )
    }
}
