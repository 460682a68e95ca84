//! The connector registry is the one list of formats and options: SQL's `STORED AS`
//! (tables and sinks), the DataFrame API's `format(...)`, the shell's completion and
//! `\dc` all answer from it. This test asks each front end for every format and every
//! option, through the errors it gives for an unknown one and what completion
//! offers, and checks that they agree with the registry and with each other.

use std::collections::BTreeSet;

use millrace::connector::registry::{self, CONNECTORS, Location, Role};
use millrace::prelude::*;
use millrace::repl::completion::ShellHelper;

/// The list after `marker` in an error message, up to `)` or the end: `a, b, c`.
fn listed(message: &str, marker: &str) -> BTreeSet<String> {
    let start = message
        .find(marker)
        .unwrap_or_else(|| panic!("'{marker}' not in: {message}"))
        + marker.len();
    let rest = &message[start..];
    let end = rest.find(')').unwrap_or(rest.len());
    rest[..end]
        .trim_end_matches(['.', ',', ' '])
        .split(", ")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn set(items: impl IntoIterator<Item = impl ToString>) -> BTreeSet<String> {
    items.into_iter().map(|s| s.to_string()).collect()
}

/// A valid location of a sink connector.
fn sink_location(name: &str, dir: &str) -> String {
    match name {
        "KAFKA" => "topic".to_string(),
        "POSTGRES" => "readings".to_string(),
        _ => format!("{dir}/out"),
    }
}

/// Options a connector needs before it gets to refusing an unknown one.
fn required(name: &str) -> &'static str {
    match name {
        "KAFKA" => "'bootstrap.servers' 'localhost:1', ",
        _ => "",
    }
}

/// A Delta table (one column `a`) for the DELTA source, which reads the table's schema
/// when declared.
async fn delta_table(dir: &str) -> String {
    use millrace::prelude::*;
    let path = format!("{dir}/delta");
    if !std::path::Path::new(&path).join("_delta_log").exists() {
        let ctx = StreamingContext::new();
        std::fs::create_dir_all(format!("{dir}/delta-in")).unwrap();
        std::fs::write(format!("{dir}/delta-in/a.json"), "{\"a\": \"x\"}\n").unwrap();
        ctx.sql(&format!(
            "CREATE UNBOUNDED EXTERNAL TABLE d (a VARCHAR) STORED AS JSON LOCATION '{dir}/delta-in'"
        ))
        .await
        .unwrap();
        let query = ctx
            .table("d")
            .await
            .unwrap()
            .write_stream()
            .format("delta")
            .option("path", &path)
            .option("checkpoint", &format!("{dir}/delta-ckpt"))
            .trigger(Trigger::AvailableNow)
            .query_name("make_delta")
            .start()
            .await
            .unwrap();
        query.await_termination().await.unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_dataframe_and_completion_agree_with_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let ctx = StreamingContext::new();
    ctx.sql("CREATE UNBOUNDED EXTERNAL TABLE r STORED AS RATE")
        .await
        .unwrap();

    // SQL sources: every registered format is accepted, with exactly its options.
    for c in CONNECTORS.iter().filter(|c| c.role == Role::Source) {
        let columns = match c.name {
            "RATE" | "SOCKET" | "KAFKA" => "",
            _ => "(a VARCHAR)",
        };
        let location = match c.name {
            "RATE" => String::new(),
            "SOCKET" => "LOCATION 'localhost:1'".to_string(),
            "KAFKA" => "LOCATION 'topic'".to_string(),
            "DELTA" => format!("LOCATION '{}'", delta_table(&dir).await),
            _ => format!("LOCATION '{dir}'"),
        };
        let sql = format!(
            "CREATE UNBOUNDED EXTERNAL TABLE t_{} {columns} STORED AS {} {location} \
             OPTIONS ({}'zz_unknown' '1')",
            c.name.to_ascii_lowercase(),
            c.name,
            required(c.name)
        );
        let error = ctx.sql(&sql).await.err().expect(&sql).to_string();
        assert_eq!(
            listed(&error, "known options: "),
            set(c.sql_options()),
            "{sql}: {error}"
        );
    }
    let error = ctx
        .sql("CREATE UNBOUNDED EXTERNAL TABLE t STORED AS ORC LOCATION 'x'")
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        listed(&error, "STORED AS one of "),
        set(registry::names(Role::Source, true))
    );

    // SQL sinks.
    for c in CONNECTORS.iter().filter(|c| c.role == Role::Sink && c.sql) {
        let location = match c.location {
            Location::None => String::new(),
            _ => format!("LOCATION '{}'", sink_location(c.name, &dir)),
        };
        let sql = format!(
            "CREATE SINK s_{} STORED AS {} {location} OPTIONS ('checkpoint' '{dir}/ckpt', {}\
             'zz_unknown' '1') AS SELECT * FROM r",
            c.name.to_ascii_lowercase(),
            c.name,
            required(c.name)
        );
        let error = ctx.sql(&sql).await.err().expect(&sql).to_string();
        assert_eq!(
            listed(&error, "known options: "),
            set(c.sql_options()),
            "{sql}: {error}"
        );
    }
    let error = ctx
        .sql("CREATE SINK s STORED AS ORC AS SELECT * FROM r")
        .await
        .err()
        .unwrap()
        .to_string();
    let sql_sinks = listed(&error, "STORED AS one of ");
    assert_eq!(sql_sinks, set(registry::names(Role::Sink, true)));

    // DataFrame sinks: the same formats (lower case) and the same options, with the
    // location as an option.
    let frame = ctx.table("r").await.unwrap();
    for c in CONNECTORS
        .iter()
        .filter(|c| c.role == Role::Sink && c.dataframe && c.sql)
    {
        let mut writer = frame
            .clone()
            .write_stream()
            .format(&c.name.to_ascii_lowercase())
            .query_name(&format!("df_{}", c.name.to_ascii_lowercase()))
            .option("checkpoint", &format!("{dir}/ckpt"))
            .option("zz_unknown", "1");
        if let Some(key) = c.location_option {
            writer = writer.option(key, &sink_location(c.name, &dir));
        }
        if c.name == "KAFKA" {
            writer = writer.option("bootstrap.servers", "localhost:1");
        }
        let error = writer.start().await.err().expect(c.name).to_string();
        assert_eq!(
            listed(&error, "known options: "),
            set(c.dataframe_options()),
            "{}: {error}",
            c.name
        );
    }
    let error = frame
        .clone()
        .write_stream()
        .format("orc")
        .query_name("q")
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    let dataframe_sinks: BTreeSet<String> = listed(&error, "with one of ")
        .into_iter()
        .filter(|s| !s.starts_with("or "))
        .map(|s| s.to_ascii_uppercase())
        .collect();
    assert_eq!(dataframe_sinks, sql_sinks, "{error}");

    // Completion offers every format and option name.
    let helper = ShellHelper::new();
    for word in registry::completion_words() {
        let prefix: String = word.chars().take(3).collect();
        let line = format!("CREATE SINK s STORED AS {prefix}");
        let (_, pairs) = helper.candidates(&line, line.len());
        let offered: BTreeSet<String> = pairs.into_iter().map(|p| p.replacement).collect();
        assert!(
            offered.contains(&word) || offered.contains(&word.to_ascii_lowercase()),
            "completion of '{prefix}' offers {offered:?}, not {word}"
        );
    }
    for c in CONNECTORS.iter().filter(|c| c.sql) {
        assert!(registry::completion_words().contains(&c.name.to_string()));
        for option in c.sql_options() {
            let key = option.split('<').next().unwrap();
            assert!(
                registry::completion_words().contains(&key.to_string()),
                "{key} of {} is not completed",
                c.name
            );
        }
    }
    // `\dc` lists every SQL connector.
    let text = millrace::repl::commands::connectors_text();
    for c in CONNECTORS.iter().filter(|c| c.sql) {
        assert!(text.contains(&format!("  {}", c.name)), "{text}");
    }
}
