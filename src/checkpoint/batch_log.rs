//! A directory of JSON entries keyed by batch id: the shape of both the offset log
//! and the commit log (Spark's `HDFSMetadataLog`).

use std::fs;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{create_dir_all, read_file, write_atomic};
use crate::error::{Error, Result};

/// A log of one JSON file per batch id, each written atomically.
#[derive(Debug)]
pub struct BatchLog<T> {
    dir: PathBuf,
    _entry: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> BatchLog<T> {
    /// Opens the log in `dir`, creating the directory if needed, and removes the
    /// temporaries of writes a crash interrupted (their entries were never written).
    pub fn open(dir: PathBuf) -> Result<Self> {
        create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
            }
        }
        Ok(BatchLog {
            dir,
            _entry: PhantomData,
        })
    }

    /// Writes the entry for `batch_id` durably (temp file, fsync, rename, fsync dir).
    pub fn add(&self, batch_id: u64, entry: &T) -> Result<()> {
        write_atomic(
            &self.dir.join(batch_id.to_string()),
            &serde_json::to_vec(entry)?,
        )
    }

    /// Reads the entry for `batch_id`, if it exists.
    pub fn get(&self, batch_id: u64) -> Result<Option<T>> {
        let path = self.dir.join(batch_id.to_string());
        match read_file(&path)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Checkpoint(format!(
                    "{} is damaged ({e}); restore it from a backup or use a new checkpoint",
                    path.display()
                ))
            }),
            None => Ok(None),
        }
    }

    /// Every batch id present, ascending. Temporary files are not entries; an error
    /// while listing is an error, not a shorter list.
    pub fn batch_ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir))? {
            let entry = entry.map_err(Error::io(&self.dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The newest entry, if any.
    pub fn latest(&self) -> Result<Option<(u64, T)>> {
        match self.batch_ids()?.last() {
            Some(&id) => Ok(self.get(id)?.map(|entry| (id, entry))),
            None => Ok(None),
        }
    }

    /// Deletes all but the newest `keep` entries.
    pub fn purge(&self, keep: u64) -> Result<()> {
        let ids = self.batch_ids()?;
        let excess = ids.len().saturating_sub(keep.max(1) as usize);
        for id in &ids[..excess] {
            let path = self.dir.join(id.to_string());
            fs::remove_file(&path).map_err(Error::io(&path))?;
        }
        Ok(())
    }
}
