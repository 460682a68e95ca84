//! The line editor's helper: tab completion of SQL keywords, table, column, function
//! and query names and shell commands, and multi-line input (Enter inside an
//! unfinished statement starts a new line instead of running it).
//!
//! Completion works from a [`Catalog`] snapshot the shell takes before each prompt,
//! so a key press never waits for the session.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Cmd, ConditionalEventHandler, Context, Event, EventContext, Helper, RepeatCount};

use super::commands::COMMAND_NAMES;
use crate::sql::split::ends_statement;

/// SQL keywords offered by completion: DataFusion's everyday ones and millrace's own
/// (connector formats and options come from the connector registry, see
/// [`crate::connector::registry::completion_words`]).
const KEYWORDS: &[&str] = &[
    "ADD",
    "ALL",
    "ALTER",
    "AND",
    "ANTI",
    "AS",
    "ASC",
    "BETWEEN",
    "BIGINT",
    "BOOLEAN",
    "BY",
    "CASE",
    "CAST",
    "COPY",
    "CREATE",
    "CROSS",
    "DATE",
    "DECIMAL",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DOUBLE",
    "DROP",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "EXPLAIN",
    "EXTERNAL",
    "FALSE",
    "FLOAT",
    "FOR",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IF",
    "ILIKE",
    "IN",
    "INNER",
    "INSERT",
    "INT",
    "INTEGER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCATION",
    "NOT",
    "NULL",
    "NULLS",
    "OFFSET",
    "ON",
    "OPTIONS",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "QUERIES",
    "QUERY",
    "REPLACE",
    "RIGHT",
    "SELECT",
    "SEMI",
    "SET",
    "SHOW",
    "SINK",
    "SMALLINT",
    "STOP",
    "STORED",
    "TABLE",
    "TABLES",
    "THEN",
    "TIMESTAMP",
    "TO",
    "TRUE",
    "UNBOUNDED",
    "UNION",
    "UPDATE",
    "USING",
    "VALUES",
    "VARCHAR",
    "VIEW",
    "WATERMARK",
    "WHEN",
    "WHERE",
    "WITH",
];

/// Words after which a table name is expected.
const BEFORE_TABLE: &[&str] = &["FROM", "JOIN", "TABLE", "INTO", "DESCRIBE", "UPDATE"];

/// What completion knows about the session, taken before each prompt.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Table names (static, unbounded, views, memory sinks), as they are typed.
    pub tables: Vec<String>,
    /// Each table's columns.
    pub columns: BTreeMap<String, Vec<String>>,
    /// Scalar, aggregate and window function names.
    pub functions: Vec<String>,
    /// Streaming query names.
    pub queries: Vec<String>,
}

/// The rustyline helper of the shell.
pub struct ShellHelper {
    /// The snapshot completion works from.
    pub catalog: Catalog,
    files: FilenameCompleter,
}

impl ShellHelper {
    /// A helper with an empty catalog.
    pub fn new() -> Self {
        ShellHelper {
            catalog: Catalog::default(),
            files: FilenameCompleter::new(),
        }
    }

    /// Candidates for the word before `pos`: `(start of the word, replacements)`.
    pub fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<Pair>) {
        let before = &line[..pos];
        let statement_start = before.rfind(';').map_or(0, |i| i + 1);
        let current = &before[statement_start..];
        if current.trim_start().starts_with('\\') {
            return self.command_candidates(before, current.len() - current.trim_start().len());
        }
        if let Some(quote) = open_quote(current) {
            let from = statement_start + quote + 1;
            return self.file_candidates(line, from, pos);
        }
        let start = word_start(before);
        let word = &before[start..];
        let previous: Vec<String> = before[statement_start..start]
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(')
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        let last = previous.last().map(String::as_str);
        if let Some((table, column)) = word.rsplit_once('.') {
            let columns = self
                .catalog
                .columns
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(table))
                .flat_map(|(_, columns)| columns);
            let pairs = matching(columns.map(|c| ident(c)), column)
                .into_iter()
                .map(|c| pair(format!("{table}.{c}")))
                .collect();
            return (start, pairs);
        }
        if last == Some("QUERY") {
            let queries = self.catalog.queries.iter().map(|q| ident(q));
            return (start, to_pairs(matching(queries, word)));
        }
        let tables = || self.catalog.tables.iter().map(|t| ident(t));
        if last.is_some_and(|w| BEFORE_TABLE.contains(&w)) {
            let found = matching(tables(), word);
            if !found.is_empty() || word.is_empty() {
                return (start, to_pairs(found));
            }
        }
        if word.is_empty() {
            return (start, Vec::new());
        }
        let lower = word.chars().any(|c| c.is_ascii_lowercase())
            && !word.chars().any(|c| c.is_ascii_uppercase());
        let connector_words = crate::connector::registry::completion_words();
        let keywords = KEYWORDS
            .iter()
            .map(|k| k.to_string())
            .chain(connector_words)
            .map(|k| if lower { k.to_ascii_lowercase() } else { k });
        let columns = self.catalog.columns.values().flatten().map(|c| ident(c));
        let functions = self.catalog.functions.iter().cloned();
        let mut found = matching(columns.chain(tables()), word);
        found.extend(matching(functions, word));
        found.extend(matching(keywords, word));
        let mut seen = BTreeSet::new();
        found.retain(|c| seen.insert(c.clone()));
        (start, to_pairs(found))
    }

    /// Completes a shell command, or its argument (`\d table`, `\p query`, `\i file`,
    /// `\pset format json`).
    fn command_candidates(&self, before: &str, indent: usize) -> (usize, Vec<Pair>) {
        let line_start = before.rfind('\n').map_or(0, |i| i + 1) + indent;
        let text = &before[line_start.min(before.len())..];
        let words: Vec<&str> = text.split_whitespace().collect();
        let typing_new_word = text.ends_with(char::is_whitespace);
        let start = if typing_new_word {
            before.len()
        } else {
            before.len() - words.last().map_or(0, |w| w.len())
        };
        let word = &before[start..];
        let argument_of = match (words.as_slice(), typing_new_word) {
            ([], _) | ([_], false) => {
                let commands = COMMAND_NAMES.iter().map(|c| c.to_string());
                return (start, to_pairs(matching(commands, word)));
            }
            ([command], true) | ([command, _], false) => *command,
            ([_, "format"], true) | ([_, "format", _], false) => "\\pset format",
            _ => return (start, Vec::new()),
        };
        let names: Vec<String> = match argument_of {
            "\\d" => self.catalog.tables.iter().map(|t| ident(t)).collect(),
            "\\p" | "\\stop" => self.catalog.queries.iter().map(|q| ident(q)).collect(),
            "\\pset" => vec!["format".into(), "limit".into()],
            "\\pset format" => vec!["table".into(), "csv".into(), "json".into()],
            "\\i" => return self.file_candidates(before, start, before.len()),
            _ => Vec::new(),
        };
        (start, to_pairs(matching(names.into_iter(), word)))
    }

    /// File names completing `line[from..pos]`.
    fn file_candidates(&self, line: &str, from: usize, pos: usize) -> (usize, Vec<Pair>) {
        match self.files.complete_path(&line[from..pos], pos - from) {
            Ok((start, pairs)) => (from + start, pairs),
            Err(_) => (pos, Vec::new()),
        }
    }
}

impl Default for ShellHelper {
    fn default() -> Self {
        Self::new()
    }
}

/// The candidates among `names` that start with `prefix` (ignoring case), sorted.
fn matching(names: impl Iterator<Item = String>, prefix: &str) -> Vec<String> {
    let prefix = prefix.trim_start_matches('"').to_ascii_lowercase();
    let mut found: Vec<String> = names
        .filter(|n| {
            n.trim_start_matches('"')
                .to_ascii_lowercase()
                .starts_with(&prefix)
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

fn pair(text: String) -> Pair {
    Pair {
        display: text.clone(),
        replacement: text,
    }
}

fn to_pairs(names: Vec<String>) -> Vec<Pair> {
    names.into_iter().map(pair).collect()
}

/// A name as it must be typed: as it is when DataFusion would not change it, in
/// double quotes otherwise (upper case, spaces, ...).
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Where the word being typed starts: letters, digits, `_` and `.` (for
/// `table.column`).
fn word_start(before: &str) -> usize {
    before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// The byte offset of the `'` that opens a string still open at the end of `text`.
fn open_quote(text: &str) -> Option<usize> {
    let mut open = None;
    for (i, c) in text.char_indices() {
        if c == '\'' {
            open = if open.is_some() { None } else { Some(i) };
        }
    }
    open
}

/// Whether `input` (all the lines typed so far) is ready to run: a shell command, or
/// statements whose last one ends with `;`.
pub fn input_complete(input: &str) -> bool {
    let trimmed = input.trim();
    trimmed.is_empty() || is_command(trimmed) || ends_statement(input)
}

/// Whether a line is a shell command rather than SQL.
pub fn is_command(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('\\') || ["quit", "exit", "help"].contains(&line.to_ascii_lowercase().as_str())
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.candidates(line, pos))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        Cow::Borrowed(line)
    }
}

impl Validator for ShellHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if input_complete(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

impl Helper for ShellHelper {}

/// Ctrl-C at the prompt: interrupts the line (rustyline's default) and records
/// whether the line was empty, so that only a second Ctrl-C at an empty prompt quits.
pub struct InterruptHandler(pub Arc<AtomicBool>);

impl ConditionalEventHandler for InterruptHandler {
    fn handle(
        &self,
        _event: &Event,
        _count: RepeatCount,
        _positive: bool,
        ctx: &EventContext,
    ) -> Option<Cmd> {
        self.0.store(ctx.line().trim().is_empty(), Ordering::SeqCst);
        Some(Cmd::Interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> ShellHelper {
        let mut helper = ShellHelper::new();
        helper.catalog = Catalog {
            tables: vec!["readings".into(), "vendors".into(), "Mixed".into()],
            columns: BTreeMap::from([
                ("readings".into(), vec!["sensor".into(), "ts".into()]),
                ("vendors".into(), vec!["vendor".into()]),
            ]),
            functions: vec!["window".into(), "session_window".into(), "sum".into()],
            queries: vec!["alerts".into()],
        };
        helper
    }

    fn complete(line: &str) -> (usize, Vec<String>) {
        let (start, pairs) = helper().candidates(line, line.len());
        (start, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn completes_tables_columns_functions_and_keywords() {
        assert_eq!(complete("SELECT * FROM rea"), (14, vec!["readings".into()]));
        assert_eq!(
            complete("select * from "),
            (
                14,
                vec!["\"Mixed\"".into(), "readings".into(), "vendors".into()]
            )
        );
        assert_eq!(complete("SELECT sen"), (7, vec!["sensor".into()]));
        assert_eq!(
            complete("SELECT readings.t"),
            (7, vec!["readings.ts".into()])
        );
        assert_eq!(complete("SELECT sess"), (7, vec!["session_window".into()]));
        assert_eq!(complete("sel"), (0, vec!["select".into()]));
        assert_eq!(complete("SEL"), (0, vec!["SELECT".into()]));
        assert_eq!(
            complete("SELECT 1; CREATE UNB").1,
            vec!["UNBOUNDED".to_string()]
        );
        assert_eq!(complete("STOP QUERY al").1, vec!["alerts".to_string()]);
        assert!(complete("SELECT ").1.is_empty());
    }

    #[test]
    fn completes_commands_and_their_arguments() {
        assert_eq!(complete("\\ps"), (0, vec!["\\pset".into()]));
        assert_eq!(complete("\\d ve"), (3, vec!["vendors".into()]));
        assert_eq!(complete("\\p a"), (3, vec!["alerts".into()]));
        assert_eq!(complete("\\pset format j"), (13, vec!["json".into()]));
        assert_eq!(complete("\\pset l"), (6, vec!["limit".into()]));
    }

    #[test]
    fn input_is_complete_at_a_semicolon_or_a_command() {
        assert!(input_complete("SELECT 1;"));
        assert!(!input_complete("SELECT 1"));
        assert!(!input_complete("SELECT ';"));
        assert!(input_complete("\\d"));
        assert!(input_complete("quit"));
        assert!(input_complete("   "));
    }
}
