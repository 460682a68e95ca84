//! Behaviour pinned in `sql/tests/*.slt` scripts, in the spirit of DataFusion's
//! sqllogictest.
//!
//! Every script runs in its own fresh temporary directory with a fresh
//! [`millrace::Session`]; every failing record is reported with the script's name and
//! the record's line number, and a script's records all run even after one failed.
//!
//! # The format
//!
//! A script is a sequence of *records* separated by blank lines. A line starting with
//! `#` where a record may start is a comment. A record starts with one of:
//!
//! - `file <relative path>`, then the file's lines up to the next blank line (none: an
//!   empty file). The file is written atomically into the temporary directory (to a
//!   hidden temporary name, then renamed into place), creating parent directories, so
//!   a file source never sees it half-written. A blank line would end the record: write
//!   a line holding only `<empty>` for an empty line of the file.
//! - `mkdir <relative path>`: creates a directory (and its parents), e.g. the empty
//!   directory of a file source whose files come later.
//! - `statement ok`, then SQL (one or more lines): the statement must succeed. A
//!   statement that starts a streaming query (`CREATE SINK ...`) starts it and the
//!   script moves on.
//! - `statement error <substring>`, then SQL: the statement must fail, and the error's
//!   `Display` must contain `<substring>`.
//! - `await`: waits until every streaming query started since the previous `await` has
//!   ended (they should use `'trigger' 'available_now'` or `'once'`); fails if one of
//!   them failed, or (instead of hanging) if one is still running after two minutes.
//! - `await error <substring>`: the same, but at least one of those queries must have
//!   failed, and every failure must contain `<substring>`.
//! - `query`, then SQL, then a line `----`, then the expected rows up to the next blank
//!   line: each row is its column values joined by ` | `, formatted with Arrow's display
//!   formatting (default `FormatOptions`, nulls shown as `NULL`). Rows are compared in
//!   the order the query returns them, so queries should `ORDER BY`.
//!
//! `${DIR}` anywhere in SQL, file contents, expected rows and error substrings is
//! replaced with the (canonical) absolute path of the temporary directory, so
//! `LOCATION`s and checkpoints are absolute.
//!
//! When a script ends, queries still running are stopped; a query that was never
//! awaited and failed is reported too.
//!
//! Each script listed in `scripts!` below gets its own test; `unlisted_scripts` runs
//! every other `sql/tests/*.slt`, so a new script is never silently skipped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use millrace::sql::split::split_statements;
use millrace::{Session, SessionSettings, StreamingQuery};

/// A guard against scripts that start a query that never ends (e.g. without
/// `'trigger' 'available_now'`): the test fails instead of hanging. Not a timing
/// assumption: a well-formed script's queries end by themselves long before this.
const AWAIT_LIMIT: Duration = Duration::from_secs(120);

/// A line of a `file` record holding only this writes an empty line.
const EMPTY_LINE: &str = "<empty>";

/// One record of a script.
#[derive(Debug)]
enum Record {
    File { path: String, lines: Vec<String> },
    Mkdir { path: String },
    StatementOk { sql: String },
    StatementError { expected: String, sql: String },
    Await { error: Option<String> },
    Query { sql: String, expected: Vec<String> },
}

/// A record with the line its header is on (1-based).
#[derive(Debug)]
struct Located {
    line: usize,
    record: Record,
}

/// Parses a script into records; a malformed record is an error naming its line.
fn parse(text: &str) -> Result<Vec<Located>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let header = lines[i].trim_end();
        if header.trim().is_empty() || header.starts_with('#') {
            i += 1;
            continue;
        }
        let line = i + 1;
        // The record's body: the lines after the header up to a blank line.
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim().is_empty() {
            end += 1;
        }
        let body: Vec<String> = lines[start..end]
            .iter()
            .map(|l| l.trim_end().to_string())
            .collect();
        i = end;
        let sql_of = |body: &[String]| -> Result<String, String> {
            if body.is_empty() {
                Err(format!(
                    "line {line}: '{header}' needs SQL on the next lines"
                ))
            } else {
                Ok(body.join("\n"))
            }
        };
        let no_body = |what: &str| -> Result<(), String> {
            if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "line {line}: '{what}' takes no lines after it (add a blank line)"
                ))
            }
        };
        let words: Vec<&str> = header.split_whitespace().collect();
        let record = match words.as_slice() {
            ["file", path] => Record::File {
                path: path.to_string(),
                lines: body.clone(),
            },
            ["mkdir", path] => {
                no_body("mkdir")?;
                Record::Mkdir {
                    path: path.to_string(),
                }
            }
            ["statement", "ok"] => Record::StatementOk {
                sql: sql_of(&body)?,
            },
            ["statement", "error", ..] => Record::StatementError {
                expected: rest_after(header, 2, line)?,
                sql: sql_of(&body)?,
            },
            ["await"] => {
                no_body("await")?;
                Record::Await { error: None }
            }
            ["await", "error", ..] => {
                no_body("await error")?;
                Record::Await {
                    error: Some(rest_after(header, 2, line)?),
                }
            }
            ["query"] => {
                let split = body
                    .iter()
                    .position(|l| l.trim() == "----")
                    .ok_or_else(|| {
                        format!("line {line}: 'query' needs a '----' line before the expected rows")
                    })?;
                Record::Query {
                    sql: sql_of(&body[..split])?,
                    expected: body[split + 1..].to_vec(),
                }
            }
            _ => {
                return Err(format!(
                    "line {line}: unknown record '{header}' (expected file, mkdir, statement ok, \
                     statement error, await, await error or query)"
                ));
            }
        };
        records.push(Located { line, record });
    }
    Ok(records)
}

/// The header's text after its first `words` words (the expected error substring).
fn rest_after(header: &str, words: usize, line: usize) -> Result<String, String> {
    let mut rest = header.trim_start();
    for _ in 0..words {
        rest = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, r)| r)
            .trim_start();
    }
    if rest.is_empty() {
        Err(format!(
            "line {line}: '{header}' needs the expected error substring after it"
        ))
    } else {
        Ok(rest.to_string())
    }
}

/// Formats rows as `a | b | c`, nulls as `NULL`.
fn format_rows(batches: &[RecordBatch]) -> Result<Vec<String>, String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot format the result: {e}"))?;
        for row in 0..batch.num_rows() {
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            rows.push(values.join(" | "));
        }
    }
    Ok(rows)
}

/// Writes `content` to `path` atomically: a hidden temporary beside it, then a rename.
fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let parent = path.parent().expect("a file path has a parent");
    std::fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .expect("a file path has a name")
        .to_string_lossy();
    let temporary = parent.join(format!(".{name}.slt-tmp"));
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
}

/// Runs one script; returns every failure as `file:line: message`.
fn run_script(path: &Path) -> Vec<String> {
    let name = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![format!("{name}: cannot read: {e}")],
    };
    let records = match parse(&text) {
        Ok(records) => records,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp
        .path()
        .canonicalize()
        .expect("the temporary directory exists");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let mut runner = Runner {
        session,
        runtime: &runtime,
        dir: dir.clone(),
        awaited: 0,
        failures: Vec::new(),
    };
    for located in &records {
        if let Err(message) = runner.run(&located.record) {
            runner
                .failures
                .push(format!("{name}:{}: {message}", located.line));
        }
    }
    // Whatever is still running is stopped; failures nobody awaited are reported.
    runner.session.stop_all();
    for query in runner.pending() {
        if let Some(Err(e)) = query.await_termination_timeout(AWAIT_LIMIT) {
            runner.failures.push(format!(
                "{name}: query '{}' failed and no `await` checked it: {e}",
                query.name()
            ));
        }
    }
    runner.failures
}

struct Runner<'a> {
    session: Session,
    runtime: &'a tokio::runtime::Runtime,
    dir: PathBuf,
    /// How many of the session's queries an `await` has already waited for.
    awaited: usize,
    failures: Vec<String>,
}

impl Runner<'_> {
    fn expand(&self, text: &str) -> String {
        text.replace("${DIR}", &self.dir.display().to_string())
    }

    /// Queries started since the last `await`.
    fn pending(&mut self) -> Vec<StreamingQuery> {
        let queries = self.session.queries();
        let pending = queries[self.awaited.min(queries.len())..].to_vec();
        self.awaited = queries.len();
        pending
    }

    fn statements(&self, sql: &str) -> Result<(), millrace::Error> {
        let sql = self.expand(sql);
        self.runtime
            .block_on(self.session.execute_script(&sql))
            .map(|_| ())
    }

    fn run(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::File { path, lines } => {
                let mut content = String::new();
                for line in lines {
                    if line != EMPTY_LINE {
                        content.push_str(&self.expand(line));
                    }
                    content.push('\n');
                }
                let target = self.dir.join(path);
                write_atomically(&target, &content)
                    .map_err(|e| format!("cannot write {}: {e}", target.display()))
            }
            Record::Mkdir { path } => {
                let target = self.dir.join(path);
                std::fs::create_dir_all(&target)
                    .map_err(|e| format!("cannot create {}: {e}", target.display()))
            }
            Record::StatementOk { sql } => self
                .statements(sql)
                .map_err(|e| format!("statement failed: {e}\n  SQL: {sql}")),
            Record::StatementError { expected, sql } => {
                let expected = self.expand(expected);
                match self.statements(sql) {
                    Ok(()) => Err(format!(
                        "statement succeeded, but should fail with '{expected}'\n  SQL: {sql}"
                    )),
                    Err(e) if e.to_string().contains(&expected) => Ok(()),
                    Err(e) => Err(format!(
                        "statement failed with\n    {e}\n  which does not contain\n    {expected}"
                    )),
                }
            }
            Record::Await { error } => self.await_queries(error.as_deref()),
            Record::Query { sql, expected } => {
                let expanded = self.expand(sql);
                let statements = split_statements(&expanded);
                let [statement] = statements.as_slice() else {
                    return Err(format!(
                        "a query record holds exactly one statement, found {}",
                        statements.len()
                    ));
                };
                let batches = self
                    .runtime
                    .block_on(self.session.query(statement))
                    .map_err(|e| format!("query failed: {e}\n  SQL: {sql}"))?;
                let actual = format_rows(&batches)?;
                let expected: Vec<String> = expected.iter().map(|l| self.expand(l)).collect();
                if actual == expected {
                    Ok(())
                } else {
                    let mut message = format!("query results differ\n  SQL: {sql}\n  expected:");
                    for row in &expected {
                        let _ = write!(message, "\n    {row}");
                    }
                    message.push_str("\n  actual:");
                    for row in &actual {
                        let _ = write!(message, "\n    {row}");
                    }
                    Err(message)
                }
            }
        }
    }

    fn await_queries(&mut self, expected: Option<&str>) -> Result<(), String> {
        let queries = self.pending();
        if queries.is_empty() {
            return Err("nothing to await: no streaming query started since the last await".into());
        }
        let mut errors = Vec::new();
        for query in &queries {
            match query.await_termination_timeout(AWAIT_LIMIT) {
                None => {
                    query.stop();
                    return Err(format!(
                        "query '{}' did not end within {} s: do its sink OPTIONS set \
                         'trigger' 'available_now'?",
                        query.name(),
                        AWAIT_LIMIT.as_secs()
                    ));
                }
                Some(Ok(())) => {}
                Some(Err(e)) => errors.push(e.to_string()),
            }
        }
        match expected {
            None if errors.is_empty() => Ok(()),
            None => Err(format!("streaming query failed: {}", errors.join("; "))),
            Some(expected) => {
                let expected = self.expand(expected);
                if errors.is_empty() {
                    Err(format!(
                        "every query succeeded, but one should fail with '{expected}'"
                    ))
                } else if let Some(other) = errors.iter().find(|e| !e.contains(&expected)) {
                    Err(format!(
                        "a query failed with\n    {other}\n  which does not contain\n    {expected}"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sql")
        .join("tests")
}

/// Every `sql/tests/*.slt`, sorted by name.
fn all_scripts() -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .expect("sql/tests exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "slt"))
        .collect();
    scripts.sort();
    scripts
}

/// Runs scripts and panics listing every failure of every one of them.
fn check(scripts: &[PathBuf]) {
    let failures: Vec<String> = scripts.iter().flat_map(|s| run_script(s)).collect();
    if !failures.is_empty() {
        panic!(
            "{} failing record(s):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check(&[scripts_dir().join(concat!(stringify!($name), ".slt"))]);
            }
        )*
    };
}

scripts!(
    ddl_errors,
    deduplication,
    event_time_windows,
    file_sinks,
    file_sources,
    kafka_source_options,
    malformed_records,
    operator_chains,
    session_windows,
    stateless_select,
    stream_joins,
    stream_static_join,
    streaming_aggregation,
    unsupported_queries,
);

/// Scripts not listed in `scripts!` still run (add them there for a test of their own).
#[test]
fn unlisted_scripts() {
    let unlisted: Vec<PathBuf> = all_scripts()
        .into_iter()
        .filter(|path| {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            !LISTED.contains(&stem.as_ref())
        })
        .collect();
    check(&unlisted);
}

#[test]
fn the_format_parses() {
    let records = parse(
        "# a comment\nfile in/a.csv\n1,2\n\nstatement error not supported: x\nSELECT 1\n\n\
         await\n\nquery\nSELECT 1\n----\n1\n",
    )
    .unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(records[1].line, 5);
    assert!(matches!(
        &records[1].record,
        Record::StatementError { expected, .. } if expected == "not supported: x"
    ));
    assert!(matches!(
        &records[3].record,
        Record::Query { expected, .. } if expected == &["1".to_string()]
    ));
    assert!(parse("await\nSELECT 1\n").is_err());
    assert!(parse("query\nSELECT 1\n").is_err());
}
