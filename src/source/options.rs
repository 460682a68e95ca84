//! `OPTIONS ('key' 'value', ...)` of a DDL statement, read strictly: every option
//! must be used by the statement, so a misspelt key is an error instead of being
//! silently ignored.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Options not yet consumed by the statement that declares them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    what: String,
    values: BTreeMap<String, String>,
}

impl Options {
    /// Wraps the options of `what` (e.g. "CSV table readings"). Keys are case-insensitive,
    /// and DataFusion's `format.` prefix is accepted (`format.has_header` = `has_header`).
    pub fn new(what: impl Into<String>, pairs: Vec<(String, String)>) -> Result<Self> {
        let what = what.into();
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            let key = key.to_ascii_lowercase();
            let key = key.strip_prefix("format.").unwrap_or(&key).to_string();
            if values.insert(key.clone(), value).is_some() {
                return Err(Error::Option(format!(
                    "option '{key}' of {what} is given twice; keep one"
                )));
            }
        }
        Ok(Options { what, values })
    }

    /// Takes a string option.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Takes every option whose key starts with `prefix`, returned without the prefix
    /// and in key order: pass-through settings (e.g. `kafka.*` for the Kafka client)
    /// that millrace hands on instead of knowing each one.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self
            .values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let value = self.values.remove(&key)?;
                Some((key[prefix.len()..].to_string(), value))
            })
            .collect()
    }

    /// Takes an option and parses it, naming the option and value on failure.
    pub fn take_parsed<T: FromStr>(&mut self, key: &str, expected: &str) -> Result<Option<T>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                Error::Option(format!(
                    "option '{key}' of {} must be {expected}, got '{v}'",
                    self.what
                ))
            }),
        }
    }

    /// Takes a boolean option (`true`/`false`).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(Error::Option(format!(
                    "option '{key}' of {} must be 'true' or 'false', got '{v}'",
                    self.what
                ))),
            },
        }
    }

    /// Fails if any option is left: it was not understood by the statement.
    pub fn finish(self, allowed: &[&str]) -> Result<()> {
        if let Some(key) = self.values.keys().next() {
            let known = if allowed.is_empty() {
                "it takes no options".to_string()
            } else {
                format!("known options: {}", allowed.join(", "))
            };
            return Err(Error::Option(format!(
                "unknown option '{key}' for {} ({known})",
                self.what
            )));
        }
        Ok(())
    }
}
