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
//!
//! **Compaction.** Only the newest manifest entry is ever needed again (a replay is
//! always of the newest batch: batch N runs only once N-1 is in `commits/`). When
//! batch N with N a multiple of [`COMPACT_INTERVAL`] has been published, the entries
//! before N (and the previous compaction) are folded into `_millrace_sink/<N-1>.compact`
//! — the query id, the last batch, and the totals of batches, files and rows — written
//! atomically before the entries are deleted. The file names are not kept: every
//! visible `part-*` file in the directory is committed output by construction, so the
//! directory listing is the list. The manifest thus holds at most
//! `COMPACT_INTERVAL + 1` files however long the query runs. Data files are never
//! touched by compaction, so plain readers see exactly the committed files throughout,
//! a crash during compaction included (the next open deletes entries a compaction covers).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::{FileSinkFormat, OutputMode, Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec};
use crate::checkpoint::fault::{self, Op};
use crate::checkpoint::{BatchLog, create_dir_all, exists, read_file, sync_dir, write_atomic};
use crate::error::{Error, Result};
use crate::source::options::Options;

/// Name of the manifest directory inside the output directory.
pub const MANIFEST_DIR: &str = "_millrace_sink";

/// Every this many batches the manifest's older entries are folded into one
/// `.compact` file (Spark's `spark.sql.streaming.fileSink.log.compactInterval`
/// default is 10).
pub const COMPACT_INTERVAL: u64 = 10;

/// A compaction of the manifest: what the folded entries said, in totals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestCompaction {
    /// The query that wrote the batches.
    pub query_id: String,
    /// The last batch folded in.
    pub last_batch_id: u64,
    /// Batches folded in (this and earlier compactions).
    pub batches: u64,
    /// Files those batches wrote.
    pub files: u64,
    /// Rows in those files.
    pub num_rows: u64,
}

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
    /// The newest compaction of the manifest, if any.
    compacted: Option<ManifestCompaction>,
}

impl FileSink {
    /// Opens the sink over `dir` for query `query_id`, cleaning up temporaries of batches
    /// that never reached their commit point.
    pub fn open(format: FileSinkFormat, dir: &Path, query_id: &str) -> Result<Self> {
        create_dir_all(dir)?;
        let manifest: BatchLog<ManifestEntry> = BatchLog::open(dir.join(MANIFEST_DIR))?;
        let mut sink = FileSink {
            format,
            dir: dir.to_path_buf(),
            query_id: query_id.to_string(),
            manifest,
            compacted: None,
        };
        sink.compacted = sink.latest_compaction()?;
        let owner = match sink.manifest.latest()? {
            Some((batch, entry)) => Some((batch, entry.query_id)),
            None => sink
                .compacted
                .as_ref()
                .map(|c| (c.last_batch_id, c.query_id.clone())),
        };
        if let Some((batch, owner)) = owner
            && owner != query_id
        {
            return Err(Error::Checkpoint(format!(
                "output directory {} holds batch {batch} of another query ({owner}); a new \
                 checkpoint cannot append to it safely: use a new output directory or the \
                 original checkpoint",
                dir.display(),
            )));
        }
        if let Some(c) = sink.compacted.clone() {
            sink.delete_folded(c.last_batch_id)?;
        }
        sink.remove_uncommitted_temporaries()?;
        Ok(sink)
    }

    fn manifest_dir(&self) -> PathBuf {
        self.dir.join(MANIFEST_DIR)
    }

    fn compaction_path(&self, last: u64) -> PathBuf {
        self.manifest_dir().join(format!("{last}.compact"))
    }

    /// The ids of the compactions present, ascending.
    fn compaction_ids(&self) -> Result<Vec<u64>> {
        let dir = self.manifest_dir();
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let name = entry.map_err(Error::io(&dir))?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".compact"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn latest_compaction(&self) -> Result<Option<ManifestCompaction>> {
        let Some(last) = self.compaction_ids()?.pop() else {
            return Ok(None);
        };
        let path = self.compaction_path(last);
        let bytes = read_file(&path)?.ok_or_else(|| {
            Error::Checkpoint(format!("{} vanished while it was read", path.display()))
        })?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Checkpoint(format!(
                "{} is damaged ({e}); restore it from a backup or use a new checkpoint",
                path.display()
            ))
        })
    }

    /// Folds every manifest entry before `batch_id` (all committed: `batch_id` is
    /// being written) and the previous compaction into one file, then deletes them.
    fn compact(&mut self, batch_id: u64) -> Result<()> {
        let Some(last) = batch_id.checked_sub(1) else {
            return Ok(());
        };
        let mut folded = self.compacted.clone().unwrap_or(ManifestCompaction {
            query_id: self.query_id.clone(),
            last_batch_id: last,
            batches: 0,
            files: 0,
            num_rows: 0,
        });
        let from = self.compacted.as_ref().map_or(0, |c| c.last_batch_id + 1);
        for id in self.manifest.batch_ids()? {
            if (from..=last).contains(&id)
                && let Some(entry) = self.manifest.get(id)?
            {
                folded.batches += 1;
                folded.files += entry.files.len() as u64;
                folded.num_rows += entry.num_rows;
            }
        }
        folded.last_batch_id = last;
        folded.query_id = self.query_id.clone();
        write_atomic(&self.compaction_path(last), &serde_json::to_vec(&folded)?)?;
        crate::crash_point::crash_point("after-sink-compaction");
        self.compacted = Some(folded);
        self.delete_folded(last)
    }

    /// Deletes the manifest entries and older compactions compaction `last` covers.
    fn delete_folded(&self, last: u64) -> Result<()> {
        let remove = |path: PathBuf| match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path)(e)),
            _ => Ok(true),
        };
        let mut deleted = false;
        for id in self.manifest.batch_ids()? {
            if id <= last {
                deleted |= remove(self.manifest_dir().join(id.to_string()))?;
            }
        }
        for c in self.compaction_ids()? {
            if c < last {
                deleted |= remove(self.compaction_path(c))?;
            }
        }
        if deleted {
            sync_dir(&self.manifest_dir())?;
        }
        Ok(())
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
            // Batches a compaction covers were all published: no temporary of theirs
            // is uncommitted.
            let folded = self
                .compacted
                .as_ref()
                .is_some_and(|c| batch <= c.last_batch_id);
            if !folded && self.manifest.get(batch)?.is_none() {
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
            if exists(&temporary)? {
                fs::rename(&temporary, &target).map_err(Error::io(&target))?;
            } else if !exists(&target)? {
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
        fault::check(path, Op::Write).map_err(Error::io(path))?;
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
        self.publish(&entry)?;
        if batch_id > 0 && batch_id.is_multiple_of(COMPACT_INTERVAL) {
            self.compact(batch_id)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "FileSink[{}, {}]",
            self.format.extension(),
            self.dir.display()
        )
    }
}

/// A declared file sink: the format and the output directory (absolute).
#[derive(Debug, Clone)]
pub struct FileSinkDefinition {
    /// File format written.
    pub format: FileSinkFormat,
    /// Output directory (absolute).
    pub path: PathBuf,
}

impl SinkDefinition for FileSinkDefinition {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink::open(
            self.format,
            &self.path,
            ctx.query_id,
        )?))
    }

    /// Files are never rewritten, so only append mode (as in Spark).
    fn supports(&self, mode: OutputMode) -> bool {
        mode == OutputMode::Append
    }
}

fn parse(format: FileSinkFormat, args: SinkArgs<'_>) -> Result<SinkSpec> {
    if !args.has_checkpoint {
        return Err(Error::Option(format!(
            "{} needs a checkpoint for exactly-once output: add OPTIONS ('checkpoint' \
             '<directory>') (DataFrame API: option('checkpoint', '<directory>'))",
            args.what
        )));
    }
    let path = PathBuf::from(args.location.unwrap_or_default());
    Ok(SinkSpec::new(FileSinkDefinition {
        format,
        path: std::path::absolute(&path).map_err(Error::io(&path))?,
    }))
}

/// `STORED AS PARQUET` (sink).
pub fn parse_parquet(args: SinkArgs<'_>, _options: &mut Options) -> Result<SinkSpec> {
    parse(FileSinkFormat::Parquet, args)
}

/// `STORED AS CSV` (sink).
pub fn parse_csv(args: SinkArgs<'_>, _options: &mut Options) -> Result<SinkSpec> {
    parse(FileSinkFormat::Csv, args)
}

/// `STORED AS JSON` (sink).
pub fn parse_json(args: SinkArgs<'_>, _options: &mut Options) -> Result<SinkSpec> {
    parse(FileSinkFormat::Json, args)
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

    fn manifest_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(MANIFEST_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// After 35 batches the manifest holds one compaction and the entries since (not
    /// 35 files); the compaction totals what it folded; every batch's file is
    /// visible exactly once; a replay of the newest batch still writes nothing twice;
    /// another query is still refused.
    #[test]
    fn the_manifest_is_compacted_and_the_output_stays_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, rows) = batch(vec![1, 2]);
        let mut sink = FileSink::open(FileSinkFormat::Json, dir.path(), "query-a").unwrap();
        for id in 0..35 {
            sink.add_batch(id, &schema, std::slice::from_ref(&rows))
                .unwrap();
        }
        let names = manifest_files(dir.path());
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names.contains(&"29.compact".to_string()), "{names:?}");
        let compaction = sink.latest_compaction().unwrap().unwrap();
        assert_eq!(
            (compaction.batches, compaction.files, compaction.num_rows),
            (30, 30, 60)
        );
        sink.add_batch(34, &schema, std::slice::from_ref(&rows))
            .unwrap();
        assert_eq!(visible_files(dir.path()).len(), 35);
        drop(sink);
        let mut reopened = FileSink::open(FileSinkFormat::Json, dir.path(), "query-a").unwrap();
        reopened
            .add_batch(34, &schema, std::slice::from_ref(&rows))
            .unwrap();
        reopened.add_batch(35, &schema, &[rows]).unwrap();
        assert_eq!(visible_files(dir.path()).len(), 36);
        // Only compactions left behind by a crash: the owner is still known.
        for name in manifest_files(dir.path()) {
            if !name.ends_with(".compact") {
                fs::remove_file(dir.path().join(MANIFEST_DIR).join(name)).unwrap();
            }
        }
        let error = FileSink::open(FileSinkFormat::Json, dir.path(), "query-b")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("another query (query-a)"), "{error}");
    }

    /// A crash between writing a compaction and deleting the entries it folds: the
    /// next open finishes the cleanup, and nothing visible changed.
    #[test]
    fn a_crash_during_manifest_compaction_is_cleaned_up_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, rows) = batch(vec![1]);
        let mut sink = FileSink::open(FileSinkFormat::Csv, dir.path(), "query-a").unwrap();
        for id in 0..10 {
            sink.add_batch(id, &schema, std::slice::from_ref(&rows))
                .unwrap();
        }
        let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.path().join(MANIFEST_DIR))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        sink.add_batch(10, &schema, std::slice::from_ref(&rows))
            .unwrap();
        drop(sink);
        for (path, bytes) in saved {
            fs::write(path, bytes).unwrap();
        }
        let visible = visible_files(dir.path());
        FileSink::open(FileSinkFormat::Csv, dir.path(), "query-a").unwrap();
        assert_eq!(manifest_files(dir.path()), ["10", "9.compact"]);
        assert_eq!(visible_files(dir.path()), visible);
        assert_eq!(visible.len(), 11);
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
