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
//!
//! **Compaction** (Spark's `CompactibleFileStreamLog`): when batch-log entry `n` is
//! committed and [`COMPACT_INTERVAL`] entries have been added since the last
//! compaction, every entry up to `n`
//! (and the previous compaction) is folded into one file `<n>.compact`, written
//! atomically, and only then are the folded entries deleted. Opening the source reads
//! the newest compaction and the few entries after it, so restart time does not grow
//! with the number of batches. The compaction keeps the files still present in the
//! directory (a file deleted from it cannot be listed again); entries of batches not
//! yet committed are never folded, so a replay still finds its files. A crash between
//! writing the compaction and deleting what it folded leaves both: the next open
//! ignores (and deletes) entries the compaction covers.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::format::{CORRUPT_RECORD_COLUMN, Decoded, Encoding, FileFormat, MalformedMode};
use super::options::Options;
use super::read_ahead::{ReadAhead, map_on_all_cores};
use super::{
    DeclaredSource, Offset, SourceArgs, SourceBatch, SourceDefinition, StreamDef, StreamSource,
};
use crate::checkpoint::{BatchLog, create_dir_all, read_file, sync_dir, write_atomic};
use crate::error::{Error, Result};

/// Every this many batch-log entries are folded into one `<n>.compact` file (as
/// Spark's `spark.sql.streaming.fileSource.log.compactInterval`, default 10).
pub const COMPACT_INTERVAL: u64 = 10;

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
    log_dir: PathBuf,
    /// The newest compaction: the log entry it covers up to, if any.
    compacted: Option<u64>,
    seen: HashSet<PathBuf>,
    /// With `available_now`: only these files may be taken.
    bound: Option<HashSet<PathBuf>>,
    /// The columns the query reads (`None`: all), see [`StreamSource::read_columns`].
    columns: Option<Vec<usize>>,
    /// New files beyond the last batch's share, in order: the next batch's likely files.
    upcoming: Vec<FileEntry>,
    /// The next batch's likely files, being decoded while the current batch runs.
    read_ahead: Option<ReadAhead>,
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
        let log: BatchLog<Vec<FileEntry>> = BatchLog::open(log_dir.clone())?;
        let compactions = compaction_ids(&log_dir)?;
        let compacted = compactions.last().copied();
        let mut seen = HashSet::new();
        if let Some(c) = compacted {
            seen.extend(read_compaction(&log_dir, c)?.into_iter().map(|e| e.path));
        }
        for id in log.batch_ids()? {
            if compacted.is_some_and(|c| id <= c) {
                continue; // folded into the compaction (a crash stopped its cleanup)
            }
            for entry in log.get(id)?.unwrap_or_default() {
                seen.insert(entry.path);
            }
        }
        let source = FileSource {
            schema,
            options,
            dir: dir.to_path_buf(),
            glob,
            log,
            log_dir,
            compacted,
            seen,
            bound: None,
            columns: None,
            upcoming: Vec::new(),
            read_ahead: None,
        };
        if let Some(c) = compacted {
            source.delete_folded(c)?;
        }
        Ok(source)
    }

    /// Folds every log entry up to `upto` (all committed) and the previous
    /// compaction into `<upto>.compact`, then deletes what it folded.
    fn compact(&mut self, upto: u64) -> Result<()> {
        let mut entries = match self.compacted {
            Some(c) => read_compaction(&self.log_dir, c)?,
            None => Vec::new(),
        };
        for id in self.log.batch_ids()? {
            if id <= upto && self.compacted.is_none_or(|c| id > c) {
                entries.extend(self.log.get(id)?.unwrap_or_default());
            }
        }
        // A file no longer in the directory cannot be listed again: forget it, so the
        // compaction holds what is there, not everything ever read.
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries {
            match fs::symlink_metadata(&entry.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.seen.remove(&entry.path);
                }
                _ => kept.push(entry),
            }
        }
        write_atomic(
            &compaction_path(&self.log_dir, upto),
            &serde_json::to_vec(&kept)?,
        )?;
        crate::crash_point::crash_point("after-source-compaction");
        self.compacted = Some(upto);
        self.delete_folded(upto)
    }

    /// Deletes the log entries and older compactions that compaction `upto` covers.
    fn delete_folded(&self, upto: u64) -> Result<()> {
        let mut deleted = false;
        for id in self.log.batch_ids()? {
            if id <= upto {
                remove_file(&self.log_dir.join(id.to_string()))?;
                deleted = true;
            }
        }
        for c in compaction_ids(&self.log_dir)? {
            if c < upto {
                remove_file(&compaction_path(&self.log_dir, c))?;
                deleted = true;
            }
        }
        if deleted {
            sync_dir(&self.log_dir)?;
        }
        Ok(())
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

fn compaction_path(log_dir: &Path, upto: u64) -> PathBuf {
    log_dir.join(format!("{upto}.compact"))
}

/// The ids of the compactions present in the log directory, ascending.
fn compaction_ids(log_dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(log_dir).map_err(Error::io(log_dir))? {
        let name = entry.map_err(Error::io(log_dir))?.file_name();
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

fn read_compaction(log_dir: &Path, upto: u64) -> Result<Vec<FileEntry>> {
    let path = compaction_path(log_dir, upto);
    let bytes = read_file(&path)?.ok_or_else(|| {
        Error::Checkpoint(format!("{} vanished while it was read", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Checkpoint(format!(
            "{} is damaged ({e}); restore it from a backup or use a new checkpoint",
            path.display()
        ))
    })
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path)(e)),
        _ => Ok(()),
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
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Vanished between listing and stat: not there, so not new either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Any other error would hide a file that is there: stop and say so.
            Err(e) => return Err(Error::io(&path)(e)),
        };
        if !meta.is_file() {
            continue;
        }
        files.push(entry_of(path, &meta));
    }
    Ok(files)
}

/// The file at `path` as a listing would record it now (its size and modification
/// time), to tell whether it changed since it was listed.
pub fn stat(path: &Path) -> std::io::Result<FileEntry> {
    Ok(entry_of(path.to_path_buf(), &fs::symlink_metadata(path)?))
}

fn entry_of(path: PathBuf, meta: &fs::Metadata) -> FileEntry {
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    FileEntry {
        path,
        mtime_ms,
        size: meta.len(),
    }
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
        self.upcoming.clear();
        if self.log.get(next)?.is_some() {
            return Ok(Some(json!({ "logOffset": next })));
        }
        let mut files = self.new_files()?;
        if let Some(limit) = self.options.max_files_per_trigger {
            let rest = files.split_off(limit.min(files.len()));
            self.upcoming = rest.into_iter().take(limit).collect();
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
        let mut files = Vec::new();
        for id in (start + 1)..=end {
            files.extend(self.log.get(id as u64)?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "the file source log has no entry {id}: the checkpoint is damaged"
                ))
            })?);
        }
        // Files read ahead as they are listed are taken as they are; the others are
        // decoded now, on as many threads as there are cores, keeping their order.
        let mut ready = self
            .read_ahead
            .take()
            .map(ReadAhead::finish)
            .unwrap_or_default();
        let mut read_ahead = 0;
        let mut decoded: Vec<Option<Decoded>> = files
            .iter()
            .map(|listed| match ready.remove(&listed.path) {
                Some((seen, decoded)) if seen == *listed => {
                    read_ahead += 1;
                    Some(decoded)
                }
                _ => None,
            })
            .collect();
        let missing: Vec<&Path> = files
            .iter()
            .zip(&decoded)
            .filter(|(_, d)| d.is_none())
            .map(|(f, _)| f.path.as_path())
            .collect();
        let (format, schema) = (&self.options.format, &self.schema);
        let columns = self.columns.as_deref();
        let mut fresh = map_on_all_cores(&missing, |path| {
            format.read_file_columns(path, schema, columns)
        })
        .into_iter();
        for slot in decoded.iter_mut().filter(|d| d.is_none()) {
            *slot = fresh.next().transpose()?;
        }
        let mut out = SourceBatch::default();
        for decoded in decoded.into_iter().flatten() {
            out.malformed_dropped += decoded.malformed_dropped;
            if decoded.batch.num_rows() > 0 {
                out.batches.push(decoded.batch);
            }
        }
        out.metrics
            .insert("numFilesReadAhead".into(), read_ahead.to_string());
        // While this batch runs, decode the files the next one will most likely take.
        if !self.upcoming.is_empty() {
            self.read_ahead = Some(ReadAhead::start(
                std::mem::take(&mut self.upcoming),
                self.options.format.clone(),
                self.schema.clone(),
                self.columns.clone(),
            ));
        }
        Ok(out)
    }

    fn read_columns(&mut self, columns: &[usize]) {
        self.columns = Some(columns.to_vec());
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        let end = log_offset(Some(end))?;
        if end >= 0 {
            let end = end as u64;
            let folded = self.compacted.map_or(0, |c| c + 1);
            if end + 1 >= folded + COMPACT_INTERVAL {
                self.compact(end)?;
            }
        }
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

impl SourceDefinition for FileSourceOptions {
    fn format_name(&self) -> &'static str {
        self.format.name()
    }

    fn open(&self, table: &StreamDef, state_dir: &Path) -> Result<Box<dyn StreamSource>> {
        Ok(Box::new(FileSource::open(
            table.schema.clone(),
            self.clone(),
            Path::new(&table.location),
            state_dir,
        )?))
    }

    fn details(&self) -> Vec<String> {
        let mut options = Vec::new();
        if let Encoding::Csv {
            has_header,
            delimiter,
        } = &self.format.encoding
        {
            options.push(format!("has_header {has_header}"));
            let delimiter = match *delimiter {
                b'\t' => "\\t".to_string(),
                other => (other as char).to_string(),
            };
            options.push(format!("delimiter '{delimiter}'"));
        }
        if !matches!(self.format.encoding, Encoding::Parquet | Encoding::Text) {
            options.push(format!("mode {}", self.format.mode.name()));
        }
        options.push(format!(
            "max_files_per_trigger {}",
            self.max_files_per_trigger
                .map_or("(no limit)".to_string(), |n| n.to_string())
        ));
        if let Some(glob) = &self.path_glob_filter {
            options.push(format!("path_glob_filter '{glob}'"));
        }
        options
    }
}

/// `STORED AS CSV|JSON|PARQUET|TEXT` (tables): the directory must exist; the first
/// file already there must match the declared columns.
fn parse(format: &str, args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    let SourceArgs {
        what,
        table,
        declared,
        location,
    } = args;
    let dir = location
        .ok_or_else(|| Error::Sql(format!("{what} needs LOCATION '<directory>' to watch")))?;
    let dir = existing_dir(&dir, table)?;
    let (file, schema) = file_options(format, options, declared, what)?;
    check_first_file(&file, &dir, &schema)?;
    Ok(DeclaredSource {
        definition: Arc::new(file),
        schema,
        location: dir.display().to_string(),
    })
}

/// `STORED AS CSV` (table).
pub fn parse_csv(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    parse("CSV", args, options)
}

/// `STORED AS JSON` (table).
pub fn parse_json(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    parse("JSON", args, options)
}

/// `STORED AS PARQUET` (table).
pub fn parse_parquet(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    parse("PARQUET", args, options)
}

/// `STORED AS TEXT` (table).
pub fn parse_text(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    parse("TEXT", args, options)
}

fn existing_dir(location: &str, table: &str) -> Result<PathBuf> {
    let path = Path::new(location);
    if !path.is_dir() {
        return Err(Error::Sql(format!(
            "LOCATION '{location}' of table '{table}' is not an existing directory; create it first \
             (files are then moved into it as they arrive)"
        )));
    }
    path.canonicalize().map_err(Error::io(path))
}

fn file_options(
    format: &str,
    options: &mut Options,
    declared: Schema,
    what: &str,
) -> Result<(FileSourceOptions, Arc<Schema>)> {
    let mode = match format {
        "CSV" | "JSON" => options
            .take("mode")
            .map(|m| MalformedMode::parse(&m))
            .transpose()?
            .unwrap_or(MalformedMode::Permissive),
        _ => MalformedMode::FailFast,
    };
    let encoding = match format {
        "CSV" => {
            let has_header = options.take_bool("has_header")?.unwrap_or(false);
            let delimiter = match options.take("delimiter") {
                None => b',',
                Some(d) => {
                    let d = if d == "\\t" { "\t".to_string() } else { d };
                    match d.as_bytes() {
                        [byte] => *byte,
                        _ => {
                            return Err(Error::Option(format!(
                                "'delimiter' of {what} must be a single character, got '{d}'"
                            )));
                        }
                    }
                }
            };
            Encoding::Csv {
                has_header,
                delimiter,
            }
        }
        "JSON" => Encoding::Json,
        "TEXT" => Encoding::Text,
        _ => Encoding::Parquet,
    };
    let schema = if format == "TEXT" {
        match declared.fields().len() {
            0 => Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                "value",
                DataType::Utf8,
                true,
            )]),
            1 if is_string(declared.field(0).data_type()) => declared,
            _ => {
                return Err(Error::Sql(format!(
                    "{what} has one text column per line: declare `(value VARCHAR)` or no columns"
                )));
            }
        }
    } else {
        if declared.fields().is_empty() {
            return Err(Error::Sql(format!(
                "{what} needs its columns declared: CREATE UNBOUNDED EXTERNAL TABLE name (col TYPE, ...)"
            )));
        }
        declared
    };
    let schema = match schema.index_of(CORRUPT_RECORD_COLUMN) {
        Err(_) => schema,
        Ok(index) => {
            let field = schema.field(index);
            if !matches!(encoding, Encoding::Csv { .. } | Encoding::Json) {
                return Err(Error::Sql(format!(
                    "{what} cannot have a {CORRUPT_RECORD_COLUMN} column: only CSV and JSON records can be malformed"
                )));
            }
            if !is_string(field.data_type()) || !field.is_nullable() {
                return Err(Error::Sql(format!(
                    "column {CORRUPT_RECORD_COLUMN} of {what} must be a nullable VARCHAR"
                )));
            }
            // DataFusion plans VARCHAR as Utf8View; the decoders fill this column as Utf8.
            let mut fields = schema.fields().to_vec();
            fields[index] = Arc::new(field.clone().with_data_type(DataType::Utf8));
            Schema::new_with_metadata(fields, schema.metadata().clone())
        }
    };
    let max_files_per_trigger =
        options.take_parsed::<usize>("max_files_per_trigger", "a positive whole number")?;
    if max_files_per_trigger == Some(0) {
        return Err(Error::Option(format!(
            "'max_files_per_trigger' of {what} must be at least 1"
        )));
    }
    let path_glob_filter = options.take("path_glob_filter");
    compile_glob(path_glob_filter.as_deref())?;
    Ok((
        FileSourceOptions {
            format: FileFormat { encoding, mode },
            path_glob_filter,
            max_files_per_trigger,
        },
        Arc::new(schema),
    ))
}

/// Whether a declared column is text: DataFusion plans `VARCHAR` as `Utf8View` by
/// default (`datafusion.sql_parser.map_string_types_to_utf8view`).
fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
}

fn check_first_file(options: &FileSourceOptions, dir: &Path, schema: &Arc<Schema>) -> Result<()> {
    let glob = compile_glob(options.path_glob_filter.as_deref())?;
    let mut files = list_files(dir, glob.as_ref())?;
    files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
    match files.first() {
        Some(first) => options.format.check_file(&first.path, schema),
        None => Ok(()),
    }
}

#[cfg(test)]
impl FileSource {
    /// Waits until the running read-ahead (if any) has decoded its files.
    fn wait_for_read_ahead(&mut self) {
        if let Some(read_ahead) = self.read_ahead.as_mut() {
            read_ahead.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::source::format::{Encoding, MalformedMode};

    fn open(input: &Path, state: &Path) -> FileSource {
        let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
        let options = FileSourceOptions {
            format: FileFormat {
                encoding: Encoding::Text,
                mode: MalformedMode::FailFast,
            },
            path_glob_filter: None,
            max_files_per_trigger: Some(1),
        };
        FileSource::open(schema, options, input, state).unwrap()
    }

    /// Runs one batch (one file) to its commit; its offset.
    fn run_batch(source: &mut FileSource, start: Option<Offset>) -> Offset {
        let end = source.latest_offset(start.as_ref()).unwrap().unwrap();
        source.get_batch(start.as_ref(), &end).unwrap();
        source.commit(&end).unwrap();
        end
    }

    fn log_files(state: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(state.join("files"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The lines a batch read and how many of its files were read ahead.
    fn batch_lines(
        source: &mut FileSource,
        start: Option<&Offset>,
        end: &Offset,
    ) -> (Vec<String>, String) {
        use datafusion::arrow::array::AsArray;
        let batch = source.get_batch(start, end).unwrap();
        let lines = batch
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        (lines, batch.metrics["numFilesReadAhead"].clone())
    }

    /// With more new files than a batch takes, the next batch's files are decoded
    /// while the current batch runs, and the next batch takes them from there: the
    /// same rows as reading them then.
    #[test]
    fn the_next_batchs_files_are_read_ahead_and_give_the_same_rows() {
        let input = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        for i in 0..3 {
            fs::write(
                input.path().join(format!("{i}.txt")),
                format!("a{i}\nb{i}\n"),
            )
            .unwrap();
        }
        let mut source = open(input.path(), state.path());
        let mut start: Option<Offset> = None;
        let mut read = Vec::new();
        for i in 0..3 {
            let end = source.latest_offset(start.as_ref()).unwrap().unwrap();
            let (lines, read_ahead) = batch_lines(&mut source, start.as_ref(), &end);
            // The first batch has nothing read ahead; each later one its one file.
            assert_eq!(read_ahead, if i == 0 { "0" } else { "1" });
            read.extend(lines);
            source.commit(&end).unwrap();
            start = Some(end);
        }
        assert_eq!(read, ["a0", "b0", "a1", "b1", "a2", "b2"]);
        // Nothing is left to read ahead, and no batch follows.
        assert_eq!(source.latest_offset(start.as_ref()).unwrap(), start);
    }

    /// A file that changes after it was read ahead (here: rewritten before the next
    /// batch lists it) is read again: the read-ahead never hides what the file holds
    /// when its batch takes it.
    #[test]
    fn a_file_rewritten_after_it_was_read_ahead_is_read_again() {
        let input = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::write(input.path().join("0.txt"), "first\n").unwrap();
        fs::write(input.path().join("1.txt"), "old\n").unwrap();
        let mut source = open(input.path(), state.path());
        let end = source.latest_offset(None).unwrap().unwrap();
        assert_eq!(batch_lines(&mut source, None, &end).0, ["first"]);
        source.wait_for_read_ahead();
        fs::write(input.path().join("1.txt"), "rewritten, longer\n").unwrap();
        source.commit(&end).unwrap();
        let next = source.latest_offset(Some(&end)).unwrap().unwrap();
        let (lines, read_ahead) = batch_lines(&mut source, Some(&end), &next);
        assert_eq!(lines, ["rewritten, longer"]);
        assert_eq!(read_ahead, "0");
    }

    /// After 45 batches the log holds one compaction and at most
    /// `COMPACT_INTERVAL` entries (not 45), a reopened source takes no file twice,
    /// and files deleted from the directory are dropped from the compaction.
    #[test]
    fn the_log_is_compacted_and_restarts_read_a_bounded_number_of_files() {
        let input = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut source = open(input.path(), state.path());
        let mut offset = None;
        for i in 0..45 {
            fs::write(input.path().join(format!("{i:03}.txt")), format!("{i}\n")).unwrap();
            offset = Some(run_batch(&mut source, offset));
        }
        let files = log_files(state.path());
        assert!(files.len() <= COMPACT_INTERVAL as usize + 1, "{files:?}");
        assert!(files.contains(&"39.compact".to_string()), "{files:?}");
        drop(source);

        let mut reopened = open(input.path(), state.path());
        assert_eq!(
            reopened.latest_offset(offset.as_ref()).unwrap(),
            offset,
            "no file is new after a restart"
        );
        // Files 0..20 are cleaned up by the user; the next compaction forgets them.
        for i in 0..20 {
            fs::remove_file(input.path().join(format!("{i:03}.txt"))).unwrap();
        }
        for i in 45..50 {
            fs::write(input.path().join(format!("{i:03}.txt")), format!("{i}\n")).unwrap();
            offset = Some(run_batch(&mut reopened, offset));
        }
        let compaction = read_compaction(&state.path().join("files"), 49).unwrap();
        assert_eq!(compaction.len(), 30, "files 20..50 are still there");
        assert_eq!(reopened.latest_offset(offset.as_ref()).unwrap(), offset);
    }

    /// A crash after the compaction was written but before the entries it folds were
    /// deleted: the reopened source counts every file once and finishes the cleanup.
    #[test]
    fn a_crash_during_compaction_leaves_a_readable_log() {
        let input = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut source = open(input.path(), state.path());
        let mut offset = None;
        for i in 0..9 {
            fs::write(input.path().join(format!("{i:03}.txt")), format!("{i}\n")).unwrap();
            offset = Some(run_batch(&mut source, offset));
        }
        let saved: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(state.path().join("files"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        fs::write(input.path().join("009.txt"), "9\n").unwrap();
        offset = Some(run_batch(&mut source, offset));
        drop(source);
        // Put back what the compaction deleted: the state of a crash in between.
        for (path, bytes) in saved {
            fs::write(path, bytes).unwrap();
        }
        assert!(log_files(state.path()).len() > 2);
        let mut reopened = open(input.path(), state.path());
        assert_eq!(log_files(state.path()), ["9.compact"]);
        assert_eq!(reopened.latest_offset(offset.as_ref()).unwrap(), offset);
        fs::write(input.path().join("010.txt"), "10\n").unwrap();
        let next = reopened.latest_offset(offset.as_ref()).unwrap().unwrap();
        let rows: usize = reopened
            .get_batch(offset.as_ref(), &next)
            .unwrap()
            .batches
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 1, "only the new file");
    }
}
