//! File sinks (Parquet, CSV, JSON lines): exactly-once for *plain* readers.
//!
//! A plain reader (DuckDB, pyarrow, DataFusion's `CREATE EXTERNAL TABLE`) lists the
//! directory and reads every `*.parquet` (or `*.csv`, `*.json`) it finds; it knows
//! nothing of millrace's logs. So a result file may only become visible once its batch
//! is committed, and a replayed batch must not add a second copy. Batch N is written so:
//!
//! 1. the rows go to a hidden `.part-N-<query>-0.<ext>.tmp` (ignored by readers), fsynced;
//! 2. the manifest `_millrace_sink/N` (file names, row count, query id) is written
//!    atomically: this is the sink's commit point;
//! 3. the temporary file is renamed to `part-N-<query>-0.<ext>` and the directory fsynced.
//!
//! A replay of batch N finds the manifest and only finishes step 3; a crash before
//! step 2 leaves a hidden temporary that the replay overwrites (or that is removed
//! when the sink opens). Names are deterministic per batch, so nothing is written twice.
//! Batches with no rows write a manifest but no file.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::{FileSinkFormat, Sink};
use crate::checkpoint::{BatchLog, create_dir_all, sync_dir};
use crate::error::{Error, Result};

/// Name of the manifest directory inside the output directory.
pub const MANIFEST_DIR: &str = "_millrace_sink";

/// One batch's entry in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    /// The query that wrote the batch.
    pub query_id: String,
    /// The batch.
    pub batch_id: u64,
    /// Files of the batch, relative to the output directory.
    pub files: Vec<String>,
    /// Rows in those files.
    pub num_rows: u64,
}

/// A file sink opened for one query.
pub struct FileSink {
    format: FileSinkFormat,
    dir: PathBuf,
    query_id: String,
    manifest: BatchLog<ManifestEntry>,
}

impl FileSink {
    /// Opens the sink over `dir` for query `query_id`, cleaning up temporaries of batches
    /// that never reached their commit point.
    pub fn open(format: FileSinkFormat, dir: &Path, query_id: &str) -> Result<Self> {
        create_dir_all(dir)?;
        let manifest: BatchLog<ManifestEntry> = BatchLog::open(dir.join(MANIFEST_DIR))?;
        if let Some((batch, entry)) = manifest.latest()?
            && entry.query_id != query_id
        {
            return Err(Error::Checkpoint(format!(
                "output directory {} holds batch {batch} of another query ({}); a new checkpoint \
                 cannot append to it safely: use a new output directory or the original checkpoint",
                dir.display(),
                entry.query_id
            )));
        }
        let sink = FileSink {
            format,
            dir: dir.to_path_buf(),
            query_id: query_id.to_string(),
            manifest,
        };
        sink.remove_uncommitted_temporaries()?;
        Ok(sink)
    }

    fn file_name(&self, batch_id: u64, part: usize) -> String {
        let short = self.query_id.get(..8).unwrap_or(&self.query_id);
        format!(
            "part-{batch_id:06}-{short}-{part}.{}",
            self.format.extension()
        )
    }

    fn temporary(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.tmp"))
    }

    fn remove_uncommitted_temporaries(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir))? {
            let entry = entry.map_err(Error::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(batch) = name
                .strip_prefix(".part-")
                .filter(|_| name.ends_with(".tmp"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|b| b.parse::<u64>().ok())
            else {
                continue;
            };
            if self.manifest.get(batch)?.is_none() {
                fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
            }
        }
        Ok(())
    }

    /// Step 3: makes the batch's files visible (idempotent).
    fn publish(&self, entry: &ManifestEntry) -> Result<()> {
        for name in &entry.files {
            let target = self.dir.join(name);
            let temporary = self.temporary(name);
            if temporary.exists() {
                fs::rename(&temporary, &target).map_err(Error::io(&target))?;
            } else if !target.exists() {
                return Err(Error::Checkpoint(format!(
                    "committed output file {} of batch {} is missing; the output directory was \
                     changed by something other than this query",
                    target.display(),
                    entry.batch_id
                )));
            }
        }
        sync_dir(&self.dir)
    }

    fn write_file(&self, path: &Path, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
        let file = File::create(path).map_err(Error::io(path))?;
        let file = match self.format {
            FileSinkFormat::Parquet => {
                let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.into_inner()?
            }
            FileSinkFormat::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.into_inner()
            }
            FileSinkFormat::Json => {
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(file);
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                writer.into_inner()
            }
        };
        file.sync_all().map_err(Error::io(path))
    }
}

impl Sink for FileSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        if let Some(entry) = self.manifest.get(batch_id)? {
            // Replay of a batch that already reached its commit point.
            return self.publish(&entry);
        }
        let num_rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let mut files = Vec::new();
        if num_rows > 0 {
            let name = self.file_name(batch_id, 0);
            self.write_file(&self.temporary(&name), schema, batches)?;
            files.push(name);
        }
        let entry = ManifestEntry {
            query_id: self.query_id.clone(),
            batch_id,
            files,
            num_rows,
        };
        self.manifest.add(batch_id, &entry)?;
        crate::crash_point::crash_point("after-sink-manifest");
        self.publish(&entry)
    }

    fn describe(&self) -> String {
        format!(
            "FileSink[{}, {}]",
            self.format.extension(),
            self.dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn visible_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !n.starts_with('_'))
            .collect();
        names.sort();
        names
    }

    fn batch(values: Vec<i64>) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        (schema, batch)
    }

    #[test]
    fn a_replayed_batch_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, rows) = batch(vec![1, 2, 3]);
        let mut sink = FileSink::open(FileSinkFormat::Parquet, dir.path(), "query-a").unwrap();
        sink.add_batch(0, &schema, std::slice::from_ref(&rows))
            .unwrap();
        sink.add_batch(0, &schema, &[rows]).unwrap();
        sink.add_batch(1, &schema, &[]).unwrap();
        assert_eq!(
            visible_files(dir.path()),
            vec!["part-000000-query-a-0.parquet"]
        );
        assert_eq!(sink.manifest.get(1).unwrap().unwrap().num_rows, 0);
    }

    #[test]
    fn a_crash_between_manifest_and_rename_is_finished_by_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, rows) = batch(vec![1]);
        let mut sink = FileSink::open(FileSinkFormat::Json, dir.path(), "query-a").unwrap();
        sink.add_batch(0, &schema, &[rows]).unwrap();
        // Undo step 3 by hand: the state right after the commit point.
        let name = "part-000000-query-a-0.json";
        fs::rename(
            dir.path().join(name),
            dir.path().join(format!(".{name}.tmp")),
        )
        .unwrap();
        assert!(visible_files(dir.path()).is_empty());
        let (_, other_rows) = batch(vec![99]);
        let mut reopened = FileSink::open(FileSinkFormat::Json, dir.path(), "query-a").unwrap();
        reopened.add_batch(0, &schema, &[other_rows]).unwrap();
        assert_eq!(visible_files(dir.path()), vec![name]);
        let content = fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(
            content.trim(),
            "{\"v\":1}",
            "the committed file, not a rewrite"
        );
    }

    #[test]
    fn temporaries_of_uncommitted_batches_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".part-000004-query-a-0.csv.tmp"), "junk").unwrap();
        FileSink::open(FileSinkFormat::Csv, dir.path(), "query-a").unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the manifest dir is left"
        );
    }

    #[test]
    fn another_querys_output_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, rows) = batch(vec![1]);
        let mut sink = FileSink::open(FileSinkFormat::Csv, dir.path(), "query-a").unwrap();
        sink.add_batch(0, &schema, &[rows]).unwrap();
        let error = FileSink::open(FileSinkFormat::Csv, dir.path(), "query-b")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("another query (query-a)"), "{error}");
    }
}
