//! The shell's backslash commands: `\q`, `\?`, `\d [name]`, `\i file`, `\pset`,
//! `\p name`, and the older `\queries` / `\stop name`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::datasource::TableType;

use super::output::{OutputFormat, OutputSettings, render};
use super::{Flow, Pending, Shell, print_stdout};
use crate::error::{Error, Result};
use crate::planning::{BatchTable, StreamTable};
use crate::session::{Session, query_state};
use crate::source::StreamDef;

/// Every command name, for completion and help.
pub const COMMAND_NAMES: &[&str] = &[
    "\\?",
    "\\d",
    "\\dc",
    "\\h",
    "\\help",
    "\\i",
    "\\p",
    "\\pset",
    "\\q",
    "\\queries",
    "\\stop",
];

const HELP: &str = "\
Statements end with ';' and may span lines; Tab completes keywords, tables, columns,
functions and query names; Up/Down browse the history.

  \\d               tables (unbounded ones marked) and the running queries reading them
  \\d NAME          columns of table NAME; for an unbounded table also its source,
                   options and watermark
  \\dc              the connectors: every STORED AS format of tables and sinks, with
                   its LOCATION and options
  \\i FILE          run the statements and commands in FILE (stops at the first error)
  \\pset            show the output settings
  \\pset format table|csv|json
                   how rows are printed (csv and json print every row)
  \\pset limit N    rows a table shows (0: all)
  \\p NAME          status and latest progress of query NAME (DESCRIBE QUERY NAME)
  \\queries         the streaming queries (SHOW QUERIES)
  \\stop NAME       stop query NAME after its current batch (STOP QUERY NAME)
  \\?               this help
  \\q               stop every query after its current batch and quit (also Ctrl-D, or
                   Ctrl-C twice at an empty prompt)

A SELECT over an unbounded table runs live: its result is shown as batches come
(a table redrawn in place when it aggregates, rows appended otherwise) until Ctrl-C
stops it. CREATE SINK ... runs its query in the background; SHOW QUERIES,
DESCRIBE QUERY NAME and STOP QUERY NAME watch and stop it. Ctrl-C also cancels a
running static query.";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Quit,
    Help,
    Tables,
    Connectors,
    Describe(String),
    Include(String),
    Pset(Vec<String>),
    Progress(String),
    Queries,
    Stop(String),
}

/// Reads a command line (`\d readings`, `quit`, ...).
fn parse(line: &str) -> Result<Command> {
    let line = line.trim();
    let (name, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(name, rest)| (name, rest.trim()));
    let argument = |what: &str| -> Result<String> {
        if rest.is_empty() {
            Err(Error::Sql(format!("{name} needs {what}")))
        } else {
            Ok(rest.to_string())
        }
    };
    let none = |command: Command| -> Result<Command> {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(Error::Sql(format!("{name} takes no argument")))
        }
    };
    match name {
        "\\q" | "quit" | "exit" => none(Command::Quit),
        "\\?" | "\\h" | "\\help" | "help" => Ok(Command::Help),
        "\\d" if rest.is_empty() => Ok(Command::Tables),
        "\\dc" => none(Command::Connectors),
        "\\d" => Ok(Command::Describe(rest.to_string())),
        "\\i" => Ok(Command::Include(unquote(&argument("a file name")?))),
        "\\pset" => Ok(Command::Pset(
            rest.split_whitespace().map(str::to_string).collect(),
        )),
        "\\p" => Ok(Command::Progress(argument("a query name")?)),
        "\\queries" => none(Command::Queries),
        "\\stop" => Ok(Command::Stop(argument("a query name")?)),
        other => Err(Error::Sql(format!(
            "unknown command {other}; \\? lists the commands"
        ))),
    }
}

/// `\\dc`: the connector registry, sources then sinks, one connector a line with its
/// `LOCATION` and options (each sink also takes checkpoint, output_mode and trigger).
pub fn connectors_text() -> String {
    use crate::connector::registry::{Location, Role, SINK_COMMON_OPTIONS};
    let mut text = String::new();
    for (role, title) in [
        (
            Role::Source,
            "Unbounded tables (CREATE UNBOUNDED EXTERNAL TABLE ... STORED AS)",
        ),
        (Role::Sink, "Sinks (CREATE SINK ... STORED AS)"),
    ] {
        text.push_str(title);
        text.push('\n');
        for c in crate::connector::registry::all()
            .into_iter()
            .filter(|c| c.role == role && c.sql)
        {
            let location = match c.location {
                Location::None => String::new(),
                Location::Required(x) => format!(" LOCATION '{x}'"),
                Location::Optional(x) => format!(" [LOCATION '{x}']"),
            };
            text.push_str(&format!("  {}{location}: {}\n", c.name, c.summary));
            if !c.options.is_empty() {
                text.push_str(&format!("      options: {}\n", c.options.join(", ")));
            }
        }
    }
    text.push_str(&format!(
        "Every sink also takes: {}; a table with a WATERMARK also takes watermark_max_future and watermark_idle_timeout.\n",
        SINK_COMMON_OPTIONS.join(", ")
    ));
    text
}

/// A file name as typed, without the quotes around it.
fn unquote(text: &str) -> String {
    let text = text.trim();
    for quote in ['\'', '"'] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner.to_string();
        }
    }
    text.to_string()
}

impl Shell<'_> {
    /// Runs a command line.
    pub(super) fn command(&mut self, line: &str) -> Flow {
        let command = match parse(line) {
            Ok(command) => command,
            Err(e) => {
                eprintln!("error: {}", e.to_string().trim_start_matches("SQL error: "));
                return Flow::Failed;
            }
        };
        let outcome = match command {
            Command::Quit => return Flow::Quit,
            Command::Help => {
                println!("{HELP}");
                Ok(())
            }
            Command::Tables => self.list_tables(),
            Command::Connectors => {
                print!("{}", connectors_text());
                Ok(())
            }
            Command::Describe(name) => self.describe_table(&name),
            Command::Include(path) => return self.include(&path),
            Command::Pset(words) => self.pset(&words),
            Command::Progress(name) => return self.sql(&format!("DESCRIBE QUERY {name}")),
            Command::Queries => return self.sql("SHOW QUERIES"),
            Command::Stop(name) => return self.sql(&format!("STOP QUERY {name}")),
        };
        match outcome {
            Ok(()) => Flow::Continue,
            Err(e) => {
                eprintln!("error: {e}");
                Flow::Failed
            }
        }
    }

    fn sql(&mut self, statement: &str) -> Flow {
        if self.run_statement(statement) {
            Flow::Continue
        } else {
            Flow::Failed
        }
    }

    /// `\d`: every table with its kind, where an unbounded table reads from, and the
    /// running queries that read it (or fill it, for a memory sink's table).
    fn list_tables(&mut self) -> Result<()> {
        let tables = self.runtime.block_on(tables(self.session));
        if tables.is_empty() {
            eprintln!(
                "no tables yet (CREATE UNBOUNDED EXTERNAL TABLE, CREATE EXTERNAL TABLE, ...)"
            );
            return Ok(());
        }
        let queries = self.session.queries();
        let mut rows: Vec<[Option<String>; 4]> = Vec::new();
        for (name, provider) in &tables {
            let (kind, source, readers): (&str, Option<String>, Vec<String>) =
                match TableKind::of(provider) {
                    TableKind::Unbounded(def) => (
                        "unbounded",
                        Some(source_summary(&def)),
                        queries
                            .iter()
                            .filter(|q| q.is_active() && q.source_tables().contains(&def.name))
                            .map(|q| q.name().to_string())
                            .collect(),
                    ),
                    TableKind::MemorySink => (
                        "memory sink",
                        None,
                        queries
                            .iter()
                            .filter(|q| q.is_active() && q.name() == name)
                            .map(|q| q.name().to_string())
                            .collect(),
                    ),
                    TableKind::View => ("view", None, Vec::new()),
                    TableKind::Static => ("table", None, Vec::new()),
                };
            rows.push([
                Some(name.clone()),
                Some(kind.to_string()),
                source,
                (!readers.is_empty()).then(|| readers.join(", ")),
            ]);
        }
        self.print_rows(&["name", "kind", "source", "running queries"], &rows)
    }

    /// `\d name`: the columns, and for an unbounded table its source, options and
    /// watermark (declared, and in force in the queries reading it).
    fn describe_table(&mut self, name: &str) -> Result<()> {
        let provider = self
            .runtime
            .block_on(self.session.context().table_provider(name))
            .map_err(|_| Error::Sql(format!("no table named {name} (\\d lists them)")))?;
        let kind = TableKind::of(&provider);
        let title = match &kind {
            TableKind::Unbounded(_) => "unbounded table",
            TableKind::MemorySink => "memory sink table",
            TableKind::View => "view",
            TableKind::Static => "table",
        };
        println!("{title} {name}");
        let schema = provider.schema();
        let rows: Vec<[Option<String>; 3]> = schema
            .fields()
            .iter()
            .map(|f| {
                [
                    Some(f.name().clone()),
                    Some(f.data_type().to_string()),
                    Some(if f.is_nullable() { "YES" } else { "NO" }.to_string()),
                ]
            })
            .collect();
        self.print_rows(&["column", "type", "nullable"], &rows)?;
        let queries = self.session.queries();
        let details: Vec<(&str, String)> = match kind {
            TableKind::Unbounded(def) => {
                let mut details = stream_details(&def);
                let reading: Vec<_> = queries
                    .iter()
                    .filter(|q| q.is_active() && q.source_tables().contains(&def.name))
                    .collect();
                if def.watermark.is_some() {
                    for query in &reading {
                        let current = query
                            .last_progress()
                            .and_then(|p| p.event_time.watermark)
                            .unwrap_or_else(|| "none yet".to_string());
                        details.push((
                            "watermark now",
                            format!("{current} (query {})", query.name()),
                        ));
                    }
                }
                details.push((
                    "running queries",
                    if reading.is_empty() {
                        "none".to_string()
                    } else {
                        reading
                            .iter()
                            .map(|q| q.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ));
                details
            }
            TableKind::MemorySink => queries
                .iter()
                .rev()
                .find(|q| q.name() == name)
                .map(|q| {
                    vec![(
                        "filled by query",
                        format!("{} ({})", q.name(), query_state(q)),
                    )]
                })
                .unwrap_or_default(),
            TableKind::View | TableKind::Static => Vec::new(),
        };
        for (key, value) in details {
            println!("{:<16} {value}", format!("{key}:"));
        }
        Ok(())
    }

    /// `\i file`: runs the file's statements and commands as if typed, until the
    /// first error.
    fn include(&mut self, path: &str) -> Flow {
        const MAX_DEPTH: usize = 16;
        if self.depth >= MAX_DEPTH {
            eprintln!("error: \\i nested more than {MAX_DEPTH} deep; is a file including itself?");
            return Flow::Failed;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}");
                return Flow::Failed;
            }
        };
        self.depth += 1;
        let mut pending = Pending::default();
        let mut flow = Flow::Continue;
        for line in text.split_inclusive('\n') {
            if let Some(input) = pending.push(line) {
                flow = self.handle(&input);
                if flow != Flow::Continue {
                    break;
                }
            }
        }
        if flow == Flow::Continue
            && let Some(rest) = pending.finish()
        {
            flow = self.handle(&rest);
        }
        self.depth -= 1;
        if flow == Flow::Failed {
            eprintln!("{path}: stopped at the first error");
        }
        flow
    }

    /// `\pset`, `\pset format F`, `\pset limit N`.
    fn pset(&mut self, words: &[String]) -> Result<()> {
        match words {
            [] => {}
            [key, value] if key == "format" => {
                self.settings.format = OutputFormat::parse(value)?;
            }
            [key, value] if key == "limit" => {
                self.settings.limit = value.parse().map_err(|_| {
                    Error::Option(format!(
                        "\\pset limit needs a number of rows (0: all), not '{value}'"
                    ))
                })?;
            }
            _ => {
                return Err(Error::Option(
                    "use \\pset format table|csv|json, or \\pset limit N".to_string(),
                ));
            }
        }
        let OutputSettings { format, limit } = self.settings;
        let limit = if limit == 0 {
            "0 (all rows)".to_string()
        } else {
            limit.to_string()
        };
        eprintln!("format {}, limit {limit}", format.name());
        Ok(())
    }

    /// Prints string rows in the current output format.
    fn print_rows<const N: usize>(
        &self,
        names: &[&str; N],
        rows: &[[Option<String>; N]],
    ) -> Result<()> {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, datafusion::arrow::datatypes::DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<ArrayRef> = (0..N)
            .map(|i| {
                Arc::new(rows.iter().map(|r| r[i].clone()).collect::<StringArray>()) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let settings = OutputSettings {
            limit: 0,
            ..self.settings
        };
        print_stdout(&render(&schema, &[batch], &settings, true)?.text);
        Ok(())
    }
}

/// What kind of table a provider is.
enum TableKind {
    Unbounded(Arc<StreamDef>),
    MemorySink,
    View,
    Static,
}

impl TableKind {
    fn of(provider: &Arc<dyn TableProvider>) -> TableKind {
        if let Some(stream) = provider.downcast_ref::<StreamTable>() {
            TableKind::Unbounded(stream.def.clone())
        } else if provider
            .downcast_ref::<BatchTable>()
            .is_some_and(|t| !t.is_stream_input())
        {
            TableKind::MemorySink
        } else if provider.table_type() == TableType::View {
            TableKind::View
        } else {
            TableKind::Static
        }
    }
}

/// Every table of the session, by the name to type (qualified outside the default
/// schema), sorted; `information_schema` left out.
pub(super) async fn tables(session: &Session) -> Vec<(String, Arc<dyn TableProvider>)> {
    let ctx = session.context();
    let defaults = ctx.state().config_options().catalog.clone();
    let mut found = Vec::new();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            if schema_name == "information_schema" {
                continue;
            }
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for table in schema.table_names() {
                let Ok(Some(provider)) = schema.table(&table).await else {
                    continue;
                };
                let name = if catalog_name != defaults.default_catalog {
                    format!("{catalog_name}.{schema_name}.{table}")
                } else if schema_name != defaults.default_schema {
                    format!("{schema_name}.{table}")
                } else {
                    table
                };
                found.push((name, provider));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// `CSV in/`, `RATE`, `SOCKET localhost:9999`: where an unbounded table reads from.
fn source_summary(def: &StreamDef) -> String {
    format!("{} {}", format_name(def), def.location)
        .trim()
        .to_string()
}

fn format_name(def: &StreamDef) -> &'static str {
    def.kind.format_name()
}

/// The declaration of an unbounded table, as `\d name` shows it.
fn stream_details(def: &StreamDef) -> Vec<(&'static str, String)> {
    let mut details = vec![("format", format_name(def).to_string())];
    if !def.location.is_empty() {
        details.push(("location", def.location.clone()));
    }
    let mut options: Vec<String> = def.kind.details();
    if let Some(watermark) = &def.watermark {
        options.push(format!(
            "watermark_max_future '{}'",
            human_duration(watermark.max_future)
        ));
        if let Some(idle) = watermark.idle_timeout {
            options.push(format!("watermark_idle_timeout '{}'", human_duration(idle)));
        }
    }
    if !options.is_empty() {
        details.push(("options", options.join(", ")));
    }
    details.push((
        "watermark",
        def.watermark.as_ref().map_or("none".to_string(), |w| {
            if w.delay.is_zero() {
                w.column.clone()
            } else {
                format!("{} - INTERVAL '{}'", w.column, human_duration(w.delay))
            }
        }),
    ));
    details
}

/// `10 seconds`, `1 day`, `1500 milliseconds`: a duration in the largest whole unit.
fn human_duration(duration: std::time::Duration) -> String {
    let millis = duration.as_millis();
    let (count, unit) = if !millis.is_multiple_of(1000) {
        (millis, "millisecond")
    } else {
        let seconds = millis / 1000;
        [
            (86_400, "day"),
            (3_600, "hour"),
            (60, "minute"),
            (1, "second"),
        ]
        .into_iter()
        .find(|(size, _)| seconds.is_multiple_of(*size) && seconds >= *size)
        .map_or((0, "second"), |(size, unit)| (seconds / size, unit))
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("\\q").unwrap(), Command::Quit);
        assert_eq!(parse("exit").unwrap(), Command::Quit);
        assert_eq!(parse("\\d").unwrap(), Command::Tables);
        assert_eq!(
            parse("\\d  readings ").unwrap(),
            Command::Describe("readings".into())
        );
        assert_eq!(
            parse("\\i 'my file.sql'").unwrap(),
            Command::Include("my file.sql".into())
        );
        assert_eq!(
            parse("\\pset format csv").unwrap(),
            Command::Pset(vec!["format".into(), "csv".into()])
        );
        assert_eq!(
            parse("\\p alerts").unwrap(),
            Command::Progress("alerts".into())
        );
        assert!(
            parse("\\p")
                .unwrap_err()
                .to_string()
                .contains("needs a query name")
        );
        assert!(parse("\\q now").is_err());
        assert!(
            parse("\\x")
                .unwrap_err()
                .to_string()
                .contains("unknown command")
        );
    }

    #[test]
    fn durations_show_in_their_largest_whole_unit() {
        assert_eq!(human_duration(Duration::from_secs(10)), "10 seconds");
        assert_eq!(human_duration(Duration::from_secs(86_400)), "1 day");
        assert_eq!(human_duration(Duration::from_secs(90)), "90 seconds");
        assert_eq!(human_duration(Duration::from_secs(120)), "2 minutes");
        assert_eq!(
            human_duration(Duration::from_millis(1500)),
            "1500 milliseconds"
        );
        assert_eq!(human_duration(Duration::ZERO), "0 seconds");
    }
}
