//! The connector registry: every source and sink millrace knows, by name, with the
//! options it takes.
//!
//! This is the single list the front ends read (as DataFusion keeps table factories
//! by name): `CREATE UNBOUNDED EXTERNAL TABLE ... STORED AS x` and `CREATE SINK ...
//! STORED AS x` look the format up here, the DataFrame API's `format("x")` too, the
//! shell completes the names and options listed here, and an unknown format or option
//! is answered with the lists from here. A test (`tests/connectors.rs`) checks that SQL,
//! the DataFrame API and completion agree with it.

use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::sink::SinkParser;
use crate::source::SourceParser;

/// Whether a connector reads (an unbounded table) or writes (a sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `CREATE UNBOUNDED EXTERNAL TABLE ... STORED AS name`.
    Source,
    /// `CREATE SINK ... STORED AS name` and the DataFrame API's `format("name")`.
    Sink,
}

/// What a connector's `LOCATION` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The connector takes no `LOCATION`.
    None,
    /// `LOCATION` is required; the text says what it is (`"<directory>"`).
    Required(&'static str),
    /// `LOCATION` may be given; the text says what it is.
    Optional(&'static str),
}

/// One source or sink as the front ends know it.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    /// The `STORED AS` name, upper case (`PARQUET`); the DataFrame API takes it in
    /// lower case (`format("parquet")`).
    pub name: &'static str,
    /// Source or sink.
    pub role: Role,
    /// What `LOCATION` is.
    pub location: Location,
    /// The DataFrame option that stands for `LOCATION` (`path`, Kafka's `topic`),
    /// for sinks with a location; `None` when the DataFrame API does not offer the
    /// sink (or it takes no location).
    pub location_option: Option<&'static str>,
    /// The connector's own options (for sinks, besides [`SINK_COMMON_OPTIONS`]).
    /// `prefix.<...>` entries stand for pass-through settings (`kafka.<librdkafka
    /// setting>`).
    pub options: &'static [&'static str],
    /// Offered by SQL (`false` for `foreach_batch`, which takes a function).
    pub sql: bool,
    /// Offered by the DataFrame API's `format(...)` (`false` for sources: the
    /// DataFrame reader renders SQL, so it takes every SQL source).
    pub dataframe: bool,
    /// One line for `\d` listings and docs.
    pub summary: &'static str,
    /// The sink's parse function (sinks offered by `STORED AS` / `format(...)`): it
    /// reads the options into the sink's [`SinkDefinition`](crate::sink::SinkDefinition),
    /// so the engine opens the sink without naming it. `None` for sources, and for
    /// `FOREACH_BATCH`, which the DataFrame API builds from its function.
    pub parse_sink: Option<SinkParser>,
    /// The source's parse function: reads the declaration into the source's
    /// [`SourceDefinition`](crate::source::SourceDefinition), schema and location.
    /// `None` for sinks.
    pub parse_source: Option<SourceParser>,
}

/// Options every SQL sink takes, whatever its format.
pub const SINK_COMMON_OPTIONS: &[&str] = &["checkpoint", "output_mode", "trigger"];

/// Option of a table with a watermark, whatever its format.
pub const SOURCE_COMMON_OPTIONS: &[&str] = &["watermark_max_future", "watermark_idle_timeout"];

const FILE_SOURCE_CSV: &[&str] = &[
    "has_header",
    "delimiter",
    "mode",
    "max_files_per_trigger",
    "path_glob_filter",
];
const FILE_SOURCE_JSON: &[&str] = &["mode", "max_files_per_trigger", "path_glob_filter"];
const FILE_SOURCE_OTHER: &[&str] = &["max_files_per_trigger", "path_glob_filter"];

/// A source offered by SQL (and so by the DataFrame reader), declared through `parse`.
pub const fn source(
    name: &'static str,
    location: Location,
    options: &'static [&'static str],
    summary: &'static str,
    parse: SourceParser,
) -> Connector {
    Connector {
        name,
        role: Role::Source,
        location,
        location_option: None,
        options,
        sql: true,
        dataframe: false,
        summary,
        parse_sink: None,
        parse_source: Some(parse),
    }
}

/// A sink offered by SQL and the DataFrame API, opened through `parse`.
pub const fn sink(
    name: &'static str,
    location: Location,
    location_option: Option<&'static str>,
    options: &'static [&'static str],
    summary: &'static str,
    parse: SinkParser,
) -> Connector {
    Connector {
        name,
        role: Role::Sink,
        location,
        location_option,
        options,
        sql: true,
        dataframe: true,
        summary,
        parse_sink: Some(parse),
        parse_source: None,
    }
}

/// Every connector, sources then sinks, each in the order listed to users.
pub static CONNECTORS: &[Connector] = &[
    source(
        "CSV",
        Location::Required("<directory>"),
        FILE_SOURCE_CSV,
        "CSV files landing in a directory",
        crate::source::file::parse_csv,
    ),
    source(
        "JSON",
        Location::Required("<directory>"),
        FILE_SOURCE_JSON,
        "JSON lines files landing in a directory",
        crate::source::file::parse_json,
    ),
    source(
        "PARQUET",
        Location::Required("<directory>"),
        FILE_SOURCE_OTHER,
        "Parquet files landing in a directory",
        crate::source::file::parse_parquet,
    ),
    source(
        "TEXT",
        Location::Required("<directory>"),
        FILE_SOURCE_OTHER,
        "text files landing in a directory, one row per line",
        crate::source::file::parse_text,
    ),
    source(
        "RATE",
        Location::None,
        &["rows_per_second", "num_partitions", "max_rows_per_trigger"],
        "generated (timestamp, value) rows at a fixed rate",
        crate::source::rate::parse,
    ),
    source(
        "SOCKET",
        Location::Required("<host>:<port>"),
        &[],
        "lines from a TCP server",
        crate::source::socket::parse,
    ),
    source(
        "KAFKA",
        Location::Optional("<topic>[,<topic>...]"),
        &crate::source::kafka::OPTION_KEYS,
        "records of Kafka topics",
        crate::source::kafka::parse_source,
    ),
    source(
        "DELTA",
        Location::Required("<table directory>"),
        crate::connector::delta::source::OPTIONS,
        "rows of a Delta Lake table's new commits",
        crate::connector::delta::source::parse_source,
    ),
    sink(
        "CONSOLE",
        Location::None,
        None,
        &["num_rows"],
        "tables printed on standard output",
        crate::sink::console::parse,
    ),
    sink(
        "MEMORY",
        Location::None,
        None,
        &[],
        "a session table named after the query",
        crate::sink::memory::parse,
    ),
    sink(
        "NOOP",
        Location::None,
        None,
        &[],
        "rows dropped (for measuring a query)",
        crate::sink::noop::parse,
    ),
    sink(
        "PARQUET",
        Location::Required("<output directory>"),
        Some("path"),
        &[],
        "Parquet files in a directory",
        crate::sink::file::parse_parquet,
    ),
    sink(
        "CSV",
        Location::Required("<output directory>"),
        Some("path"),
        &[],
        "CSV files in a directory",
        crate::sink::file::parse_csv,
    ),
    sink(
        "JSON",
        Location::Required("<output directory>"),
        Some("path"),
        &[],
        "JSON lines files in a directory",
        crate::sink::file::parse_json,
    ),
    sink(
        "KAFKA",
        Location::Required("<topic>"),
        Some("topic"),
        crate::sink::kafka::KAFKA_SINK_OPTIONS,
        "records of a Kafka topic",
        crate::sink::kafka::parse_sink,
    ),
    sink(
        "POSTGRES",
        Location::Required("<table>"),
        Some("table"),
        crate::connector::postgres::OPTIONS,
        "rows of a PostgreSQL table",
        crate::connector::postgres::parse_sink,
    ),
    sink(
        "DELTA",
        Location::Required("<table directory>"),
        Some("path"),
        crate::connector::delta::sink::OPTIONS,
        "commits of a Delta Lake table",
        crate::connector::delta::sink::parse_sink,
    ),
    Connector {
        name: "FOREACH_BATCH",
        role: Role::Sink,
        location: Location::None,
        location_option: None,
        options: &[],
        sql: false,
        dataframe: true,
        summary: "a Rust function per batch (DataFrame API's foreach_batch)",
        parse_sink: None,
        parse_source: None,
    },
];

/// Connectors registered while the process runs ([`register`]), after the built-in
/// ones.
static REGISTERED: RwLock<Vec<&'static Connector>> = RwLock::new(Vec::new());

/// Adds a connector to the registry for the rest of the process: SQL, the DataFrame
/// API, completion and `\dc` offer it from then on, as they do the built-in
/// [`CONNECTORS`] (the way to add a connector from outside this crate, or from a
/// test). Refused if a connector of the same role and name exists.
pub fn register(connector: Connector) -> Result<()> {
    let mut registered = REGISTERED
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if CONNECTORS
        .iter()
        .chain(registered.iter().copied())
        .any(|c| c.role == connector.role && c.name.eq_ignore_ascii_case(connector.name))
    {
        return Err(Error::Option(format!(
            "a {:?} connector named {} is already registered",
            connector.role, connector.name
        )));
    }
    registered.push(Box::leak(Box::new(connector)));
    Ok(())
}

/// Every connector: the built-in ones, then the ones added with [`register`].
pub fn all() -> Vec<&'static Connector> {
    let registered = REGISTERED
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    CONNECTORS
        .iter()
        .chain(registered.iter().copied())
        .collect()
}

/// The connector `name` (any case) in `role`, if registered.
pub fn find(role: Role, name: &str) -> Option<&'static Connector> {
    all()
        .into_iter()
        .find(|c| c.role == role && c.name.eq_ignore_ascii_case(name))
}

/// The connectors of `role` offered by SQL (`sql = true`) or by the DataFrame API.
pub fn names(role: Role, sql: bool) -> Vec<&'static str> {
    all()
        .into_iter()
        .filter(|c| c.role == role && if sql { c.sql } else { c.dataframe })
        .map(|c| c.name)
        .collect()
}

/// Every name and option the shell completes: format names and option keys of all
/// connectors, and the common options (pass-through placeholders as their prefix,
/// `kafka.`).
pub fn completion_words() -> Vec<String> {
    let mut words: Vec<String> = all()
        .into_iter()
        .filter(|c| c.sql)
        .map(|c| c.name.to_string())
        .collect();
    words.extend(option_words());
    words.sort();
    words.dedup();
    words
}

/// Every option key of every connector and the common ones, as typed.
pub fn option_words() -> Vec<String> {
    let mut words: Vec<String> = all()
        .into_iter()
        .flat_map(|c| c.options.iter())
        .chain(SINK_COMMON_OPTIONS)
        .chain(SOURCE_COMMON_OPTIONS)
        .map(|o| option_key(o).to_string())
        .collect();
    words.sort();
    words.dedup();
    words
}

/// `kafka.<librdkafka setting>` → `kafka.`; other keys unchanged.
fn option_key(option: &str) -> &str {
    option.find('<').map_or(option, |i| &option[..i])
}

impl Connector {
    /// The options `CREATE ...` accepts for this connector: its own, then the common
    /// ones of its role.
    pub fn sql_options(&self) -> Vec<&'static str> {
        let common = match self.role {
            Role::Source => SOURCE_COMMON_OPTIONS,
            Role::Sink => SINK_COMMON_OPTIONS,
        };
        self.options.iter().chain(common).copied().collect()
    }

    /// The options `write_stream().format(..).option(..)` accepts: the location option,
    /// `checkpoint` (also `checkpointLocation`), then the connector's own (output mode
    /// and trigger are builder methods there).
    pub fn dataframe_options(&self) -> Vec<&'static str> {
        let mut options: Vec<&'static str> = self.location_option.into_iter().collect();
        options.push("checkpoint");
        options.extend(self.options);
        options
    }
}

/// The error for a `STORED AS` format no connector of `role` has, listing the known
/// ones.
pub fn unknown_sql_format(role: Role, format: &str, what: &str) -> Error {
    let known = names(role, true).join(", ");
    let statement = match role {
        Role::Source => "CREATE UNBOUNDED EXTERNAL TABLE",
        Role::Sink => "CREATE SINK",
    };
    Error::Sql(format!(
        "unknown format '{format}' for {what}: {statement} ... STORED AS one of {known}"
    ))
}

/// The error for a DataFrame sink format no connector has, listing the known ones.
pub fn unknown_dataframe_format(format: &str) -> Error {
    let known: Vec<String> = names(Role::Sink, false)
        .iter()
        .filter(|n| **n != "FOREACH_BATCH")
        .map(|n| n.to_ascii_lowercase())
        .collect();
    Error::Option(format!(
        "unknown sink format '{format}': use format(...) with one of {}, or foreach_batch(...)",
        known.join(", ")
    ))
}

/// Checks that `name` is a registered SQL connector of `role`, returning it.
pub fn sql_connector(role: Role, name: &str, what: &str) -> Result<&'static Connector> {
    find(role, name)
        .filter(|c| c.sql)
        .ok_or_else(|| unknown_sql_format(role, name, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_role_and_upper_case() {
        for role in [Role::Source, Role::Sink] {
            let mut seen = std::collections::BTreeSet::new();
            for c in CONNECTORS.iter().filter(|c| c.role == role) {
                assert_eq!(c.name, c.name.to_ascii_uppercase());
                assert!(seen.insert(c.name), "{} twice", c.name);
            }
        }
        assert!(find(Role::Sink, "postgres").is_some());
        assert!(find(Role::Source, "postgres").is_none());
        assert!(completion_words().contains(&"kafka.".to_string()));
    }

    #[test]
    fn unknown_format_lists_the_known_ones() {
        let e = unknown_sql_format(Role::Sink, "ORC", "sink 'x'").to_string();
        assert!(e.contains("CONSOLE") && e.contains("POSTGRES"), "{e}");
        assert!(!e.contains("FOREACH_BATCH"), "{e}");
    }
}
