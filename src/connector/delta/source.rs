//! The Delta Lake source (`CREATE UNBOUNDED EXTERNAL TABLE t STORED AS DELTA LOCATION
//! '<table directory>'`): the rows of a Delta table's new commits, as Spark's Delta
//! source reads them.
//!
//! **What is read.** By default, first the table's snapshot at the version current when
//! the query first starts (every file of it), then the files each later commit adds.
//! With `starting_version` N, the files added by commits N, N+1, ... (no snapshot);
//! `'latest'` starts after the version current at the first batch.
//!
//! **Offsets** are positions in that sequence of files: `{"origin", "snapshot",
//! "version", "index"}` = every file before file `index` of version `version` has been
//! read (the snapshot counts as the unit of version `origin` when `snapshot` is true).
//! The files of a version are ordered as its commit lists them (the snapshot's by
//! path), so a position names the same files after a restart; `max_files_per_trigger`
//! (default 1000, as Spark's `maxFilesPerTrigger`) cuts a batch inside a version.
//!
//! **Commits that change data.** A commit that removes files with `dataChange = true`
//! (DELETE, UPDATE, MERGE, an overwrite) cannot be followed by an append-only stream:
//! the query stops with a message naming the version, unless `skip_change_commits` is
//! true (Spark's `skipChangeCommits`), which skips such commits whole (their added
//! files too). Commits that only rearrange data (`OPTIMIZE`: `dataChange = false`)
//! add nothing to the stream.

use std::collections::HashMap;
use std::path::PathBuf;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::kernel::Add;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{block_on, delta_error, open_table, runtime};
use crate::error::{Error, Result};
use crate::source::options::Options;
use crate::source::{
    DeclaredSource, Offset, SourceArgs, SourceBatch, SourceDefinition, StreamDef, StreamSource,
};

/// The source's own options.
pub const OPTIONS: &[&str] = &[
    "starting_version",
    "max_files_per_trigger",
    "skip_change_commits",
];

/// Default of `max_files_per_trigger` (Spark's Delta source reads 1000 files a batch).
pub const DEFAULT_MAX_FILES_PER_TRIGGER: usize = 1000;

/// Where the stream starts (`starting_version`).
#[derive(Debug, Clone, PartialEq)]
pub enum StartingVersion {
    /// The snapshot at the version current at the first batch, then later commits.
    Snapshot,
    /// The commits from this version on.
    Version(u64),
    /// The commits after the version current at the first batch.
    Latest,
}

/// A Delta source as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSourceOptions {
    /// The table's directory (absolute).
    pub path: PathBuf,
    /// `starting_version`.
    pub starting_version: StartingVersion,
    /// `max_files_per_trigger`.
    pub max_files_per_trigger: usize,
    /// `skip_change_commits`.
    pub skip_change_commits: bool,
}

impl SourceDefinition for DeltaSourceOptions {
    fn format_name(&self) -> &'static str {
        "DELTA"
    }

    fn open(
        &self,
        table: &StreamDef,
        _state_dir: &std::path::Path,
    ) -> Result<Box<dyn StreamSource>> {
        Ok(Box::new(DeltaSource::open(
            table.schema.clone(),
            self.clone(),
        )?))
    }

    fn details(&self) -> Vec<String> {
        vec![
            format!(
                "starting_version {}",
                match self.starting_version {
                    StartingVersion::Snapshot => "(snapshot, then new commits)".to_string(),
                    StartingVersion::Version(v) => v.to_string(),
                    StartingVersion::Latest => "latest".to_string(),
                }
            ),
            format!("max_files_per_trigger {}", self.max_files_per_trigger),
            format!("skip_change_commits {}", self.skip_change_commits),
        ]
    }
}

/// `STORED AS DELTA` (table): the registry's parse function.
pub fn parse_source(args: SourceArgs<'_>, options: &mut Options) -> Result<DeclaredSource> {
    let (delta, schema) = declare(args.declared, args.location, options, args.what)?;
    let location = delta.path.display().to_string();
    Ok(DeclaredSource {
        definition: std::sync::Arc::new(delta),
        schema,
        location,
    })
}

/// Reads a `CREATE UNBOUNDED EXTERNAL TABLE ... STORED AS DELTA` declaration: the
/// options, and the schema (the table's own when no columns are declared; declared
/// columns must all be in the table).
pub fn declare(
    declared: Schema,
    location: Option<String>,
    options: &mut Options,
    what: &str,
) -> Result<(DeltaSourceOptions, SchemaRef)> {
    let location =
        location.ok_or_else(|| Error::Sql(format!("{what} needs LOCATION '<table directory>'")))?;
    if location.contains("://") && !location.starts_with("file://") {
        return Err(Error::Unsupported(format!(
            "{what}: only local Delta tables are supported (a directory or file:// URL), got \
             '{location}'"
        )));
    }
    let path = PathBuf::from(location.strip_prefix("file://").unwrap_or(&location));
    let path = std::path::absolute(&path).map_err(Error::io(&path))?;
    let starting_version = match options.take("starting_version") {
        None => StartingVersion::Snapshot,
        Some(v) if v.eq_ignore_ascii_case("latest") => StartingVersion::Latest,
        Some(v) => StartingVersion::Version(v.parse().map_err(|_| {
            Error::Option(format!(
                "'starting_version' of {what} must be a table version (0, 1, ...) or 'latest', \
                 got '{v}'"
            ))
        })?),
    };
    let max_files_per_trigger = options
        .take_parsed::<usize>("max_files_per_trigger", "a positive whole number")?
        .unwrap_or(DEFAULT_MAX_FILES_PER_TRIGGER);
    if max_files_per_trigger == 0 {
        return Err(Error::Option(format!(
            "'max_files_per_trigger' of {what} must be at least 1"
        )));
    }
    let skip_change_commits = options.take_bool("skip_change_commits")?.unwrap_or(false);
    let runtime = runtime("Delta source")?;
    let table_schema = block_on(&runtime, async {
        let table = open_table(&path).await?;
        if table.version().is_none() {
            return Err(Error::Data(format!(
                "{what}: {} is not a Delta table (no _delta_log): create the table first, \
                 or point LOCATION at one",
                path.display()
            )));
        }
        let provider = table
            .table_provider()
            .await
            .map_err(|e| delta_error(&path, "reading the schema", e))?;
        Ok(provider.schema())
    })?;
    runtime.shutdown_background();
    let schema = if declared.fields().is_empty() {
        table_schema
    } else {
        for field in declared.fields() {
            if table_schema.field_with_name(field.name()).is_err() {
                return Err(Error::Sql(format!(
                    "{what} declares column '{}', which the Delta table at {} does not have \
                     (it has {}): leave the column list out to take the table's",
                    field.name(),
                    path.display(),
                    table_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        SchemaRef::new(declared)
    };
    Ok((
        DeltaSourceOptions {
            path,
            starting_version,
            max_files_per_trigger,
            skip_change_commits,
        },
        schema,
    ))
}

/// A position in the stream of files (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The stream's first version (the snapshot's, or `starting_version`).
    origin: u64,
    /// Whether the stream starts with the snapshot at `origin`.
    snapshot: bool,
    /// The version being read.
    version: u64,
    /// Files of `version` before this index have been read.
    index: usize,
}

impl Position {
    fn parse(offset: &Offset) -> Result<Self> {
        serde_json::from_value(offset.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "offset {offset} is not a Delta source offset ({e}): was the checkpoint made \
                 by a query reading another kind of table?"
            ))
        })
    }

    fn to_offset(self) -> Offset {
        serde_json::to_value(self).expect("a position serialises")
    }

    /// Whether `version` is read as the snapshot (every file of it) or as a commit.
    fn is_snapshot(&self, version: u64) -> bool {
        self.snapshot && version == self.origin
    }
}

/// The source opened for one run of a query.
pub struct DeltaSource {
    schema: SchemaRef,
    options: DeltaSourceOptions,
    runtime: Option<tokio::runtime::Runtime>,
    /// Files of each (version, as snapshot) read so far.
    files: HashMap<(u64, bool), Vec<Add>>,
    /// The latest version frozen by `prepare_for_available_now`.
    frozen: Option<u64>,
}

impl DeltaSource {
    /// Opens the source (nothing is read until the first batch).
    pub fn open(schema: SchemaRef, options: DeltaSourceOptions) -> Result<Self> {
        Ok(DeltaSource {
            schema,
            options,
            runtime: Some(runtime("Delta source")?),
            files: HashMap::new(),
            frozen: None,
        })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| Error::Data("Delta source already closed".into()))
    }

    /// The table's latest version now (or the frozen one).
    fn latest_version(&self) -> Result<u64> {
        if let Some(v) = self.frozen {
            return Ok(v);
        }
        let path = self.options.path.clone();
        block_on(self.runtime()?, async move {
            let table = open_table(&path).await?;
            table
                .get_latest_version()
                .await
                .map_err(|e| delta_error(&path, "reading the latest version", e))
        })
    }

    /// The stream's first position, fixed at the first batch.
    fn initial(&self) -> Result<Position> {
        let latest = self.latest_version()?;
        let (origin, snapshot) = match self.options.starting_version {
            StartingVersion::Snapshot => (latest, true),
            StartingVersion::Version(v) => (v, false),
            StartingVersion::Latest => (latest + 1, false),
        };
        Ok(Position {
            origin,
            snapshot,
            version: origin,
            index: 0,
        })
    }

    /// The files version `version` contributes (loaded once).
    fn files(&mut self, version: u64, snapshot: bool) -> Result<&[Add]> {
        if !self.files.contains_key(&(version, snapshot)) {
            let files = if snapshot {
                self.snapshot_files(version)?
            } else {
                self.commit_files(version)?
            };
            self.files.insert((version, snapshot), files);
        }
        Ok(&self.files[&(version, snapshot)])
    }

    /// Every file of the table at `version`, by path.
    fn snapshot_files(&self, version: u64) -> Result<Vec<Add>> {
        let path = self.options.path.clone();
        block_on(self.runtime()?, async move {
            let mut table = open_table(&path).await?;
            table
                .load_version(version)
                .await
                .map_err(|e| delta_error(&path, &format!("loading version {version}"), e))?;
            let snapshot = table
                .snapshot()
                .map_err(|e| delta_error(&path, "reading the snapshot", e))?;
            // As Add actions, the form a file selection of the scan takes for commits too
            // (deprecated in delta-rs for Arrow arrays, which this pinned version keeps).
            #[allow(deprecated)]
            let mut adds: Vec<Add> = snapshot.log_data().iter().map(|f| f.add_action()).collect();
            adds.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(adds)
        })
    }

    /// The files commit `version` adds, refusing (or skipping) a commit that removes data.
    fn commit_files(&self, version: u64) -> Result<Vec<Add>> {
        let path = &self.options.path;
        let file = path.join("_delta_log").join(format!("{version:020}.json"));
        let text = std::fs::read_to_string(&file).map_err(|e| {
            Error::Data(format!(
                "Delta table {}: cannot read the commit of version {version} ({}: {e}); if the \
                 log was cleaned up, restart the query from a later starting_version with a new \
                 checkpoint",
                path.display(),
                file.display()
            ))
        })?;
        let mut adds = Vec::new();
        let mut removes_data = false;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let action: Value = serde_json::from_str(line)
                .map_err(|e| Error::Data(format!("{}: not a Delta commit: {e}", file.display())))?;
            if let Some(add) = action.get("add") {
                let add: Add = serde_json::from_value(add.clone()).map_err(|e| {
                    Error::Data(format!("{}: unreadable add action: {e}", file.display()))
                })?;
                if add.data_change {
                    adds.push(add);
                }
            } else if let Some(remove) = action.get("remove")
                && remove.get("dataChange").and_then(Value::as_bool) != Some(false)
            {
                removes_data = true;
            }
        }
        if removes_data {
            if self.options.skip_change_commits {
                tracing::info!(
                    "Delta source {}: version {version} removes or rewrites data; skipped \
                     (skip_change_commits)",
                    path.display()
                );
                return Ok(Vec::new());
            }
            return Err(Error::Data(format!(
                "Delta table {}: version {version} removes or rewrites data (a DELETE, UPDATE, \
                 MERGE or overwrite), which a stream of appended rows cannot follow: set \
                 OPTIONS ('skip_change_commits' 'true') to skip such commits whole (their \
                 added rows too), or read the table from a later starting_version with a new \
                 checkpoint",
                path.display()
            )));
        }
        Ok(adds)
    }

    /// Reads `adds` (files of `version`) and casts them to the source's schema.
    fn read(&self, version: u64, adds: Vec<Add>) -> Result<Vec<RecordBatch>> {
        if adds.is_empty() {
            return Ok(Vec::new());
        }
        let path = self.options.path.clone();
        let batches = block_on(self.runtime()?, async move {
            let mut table = open_table(&path).await?;
            table
                .load_version(version)
                .await
                .map_err(|e| delta_error(&path, &format!("loading version {version}"), e))?;
            let ctx = SessionContext::new();
            table
                .update_datafusion_session(&ctx.state())
                .map_err(|e| delta_error(&path, "reading", e))?;
            let provider = table
                .table_provider()
                .with_adds(adds)
                .await
                .map_err(|e| delta_error(&path, &format!("reading version {version}"), e))?;
            let mut stream = ctx
                .read_table(provider)
                .map_err(|e| delta_error(&path, "reading", e))?
                .execute_stream()
                .await
                .map_err(|e| delta_error(&path, "reading", e))?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.map_err(|e| delta_error(&path, "reading", e))?);
            }
            Ok(batches)
        })?;
        batches.iter().map(|b| self.conform(b)).collect()
    }

    /// The batch's columns in the source's schema, by name.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    Error::Data(format!(
                        "Delta table {}: column '{}' is missing from a commit's files (was \
                         the table's schema changed?)",
                        self.options.path.display(),
                        field.name()
                    ))
                })?;
                Ok(cast(column, field.data_type())?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

impl StreamSource for DeltaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn latest_offset(&mut self, start: Option<&Offset>) -> Result<Option<Offset>> {
        let initial = match start {
            Some(start) => Position::parse(start)?,
            None => self.initial()?,
        };
        let latest = self.latest_version()?;
        let mut at = initial;
        let mut budget = self.options.max_files_per_trigger;
        while at.version <= latest && budget > 0 {
            let count = self.files(at.version, at.is_snapshot(at.version))?.len();
            let take = count.saturating_sub(at.index).min(budget);
            at.index += take;
            budget -= take;
            if at.index >= count && at.version < latest {
                at.version += 1;
                at.index = 0;
            } else if at.index >= count {
                break;
            }
        }
        // Without data yet, 'latest' still fixes where the stream starts (an empty
        // first batch, as Spark runs): recomputed later, it would skip the commits made
        // in between.
        if start.is_none()
            && at == initial
            && self.options.starting_version != StartingVersion::Latest
        {
            return Ok(None);
        }
        Ok(Some(at.to_offset()))
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        self.frozen = None;
        self.frozen = Some(self.latest_version()?);
        Ok(())
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<SourceBatch> {
        let end = Position::parse(end)?;
        let start = match start {
            Some(start) => Position::parse(start)?,
            None => Position {
                version: end.origin,
                index: 0,
                ..end
            },
        };
        let mut batches = Vec::new();
        for version in start.version..=end.version {
            let lo = if version == start.version {
                start.index
            } else {
                0
            };
            if version == end.version && lo >= end.index {
                // Nothing of this version (which may not exist yet) is in the range.
                continue;
            }
            let snapshot = end.is_snapshot(version);
            let files = self.files(version, snapshot)?;
            let hi = if version == end.version {
                end.index
            } else {
                files.len()
            };
            if lo >= hi {
                continue;
            }
            let adds = files[lo..hi.min(files.len())].to_vec();
            batches.extend(self.read(version, adds)?);
        }
        Ok(SourceBatch {
            batches,
            ..SourceBatch::default()
        })
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        let end = Position::parse(end)?;
        self.files.retain(|(version, _), _| *version >= end.version);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("DeltaSource[{}]", self.options.path.display())
    }
}

impl Drop for DeltaSource {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside the engine's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_know_the_snapshot_unit() {
        let p = Position {
            origin: 3,
            snapshot: true,
            version: 4,
            index: 2,
        };
        assert_eq!(Position::parse(&p.to_offset()).unwrap(), p);
        assert!(p.is_snapshot(3) && !p.is_snapshot(4));
        let e = Position::parse(&serde_json::json!({"topic": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Delta source offset"), "{e}");
    }
}
