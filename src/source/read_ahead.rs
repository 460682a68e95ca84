//! Reading the next batch's files while the current batch runs.
//!
//! When a file source has more new files than one batch takes
//! (`max_files_per_trigger`), the files the next batch will most likely take are
//! known as soon as the current batch's are. [`ReadAhead`] decodes them on a
//! background thread while the engine folds the current batch into its state and
//! commits it, so the cores that would otherwise wait on a serial step or on `fsync`
//! decode the next batch instead.
//!
//! The read-ahead is only a cache: what a batch reads is still decided by the
//! source's log. A file is taken from the cache only when the log lists it with the
//! size and modification time it had both before and after it was read ahead;
//! anything else (a file rewritten in between, a decode that failed, a file the
//! next batch did not take) is read again the ordinary way, so errors are reported
//! by the batch that reads the file, exactly as without the read-ahead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use datafusion::arrow::datatypes::SchemaRef;

use super::file::{FileEntry, stat};
use super::format::{Decoded, FileFormat};

/// What a read-ahead decoded: each file's decoded rows by path, with the size and
/// modification time the file had while it was read.
type ReadFiles = HashMap<PathBuf, (FileEntry, Decoded)>;

/// Files being decoded in the background for the next batch.
pub struct ReadAhead {
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<ReadFiles>>,
    done: ReadFiles,
}

impl ReadAhead {
    /// Starts decoding `files` (as listed now) with `format` into `schema`, reading
    /// only `columns` (as [`FileFormat::read_file_columns`]), on one thread per core.
    pub fn start(
        files: Vec<FileEntry>,
        format: FileFormat,
        schema: SchemaRef,
        columns: Option<Vec<usize>>,
    ) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("millrace-read-ahead".into())
            .spawn(move || {
                let decoded = map_on_all_cores(&files, |listed| {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    // Kept only if the file did not change while it was read.
                    let before = stat(&listed.path).ok()?;
                    let decoded = format
                        .read_file_columns(&listed.path, &schema, columns.as_deref())
                        .ok()?;
                    let after = stat(&listed.path).ok()?;
                    (before == after).then_some((before, decoded))
                });
                decoded
                    .into_iter()
                    .flatten()
                    .map(|(entry, decoded)| (entry.path.clone(), (entry, decoded)))
                    .collect()
            })
            .ok();
        ReadAhead {
            cancel,
            handle,
            done: HashMap::new(),
        }
    }

    /// Waits until every file is decoded (or skipped).
    pub fn wait(&mut self) {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(decoded)) => self.done = decoded,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => {}
        }
    }

    /// Waits for the read-ahead to end and gives each file it decoded, by path, with
    /// the size and modification time it had while it was read.
    pub fn finish(mut self) -> ReadFiles {
        self.wait();
        std::mem::take(&mut self.done)
    }
}

impl Drop for ReadAhead {
    /// A read-ahead nobody will use (the query stopped) stops before its next file and
    /// is waited for, so no thread outlives the source.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Runs `f` over every item on one thread per core (each thread taking the next item
/// no thread has taken yet) and returns the results in the items' order.
pub fn map_on_all_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return done;
                        };
                        done.push((i, f(item)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(done) => done,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_spread_over_the_cores_comes_back_in_the_items_order() {
        let items: Vec<u64> = (0..100).collect();
        let squares = map_on_all_cores(&items, |i| i * i);
        assert_eq!(squares, items.iter().map(|i| i * i).collect::<Vec<_>>());
        assert!(map_on_all_cores(&[] as &[u64], |i| *i).is_empty());
    }
}
