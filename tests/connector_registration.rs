//! "A new sink connector is one module plus one registration": this file is that
//! module. It defines a tiny sink (`STORED AS COLLECT`: rows kept in a process-wide
//! list, tagged with its `label` option), registers it through the public
//! `registry::register`, and uses it from SQL, the DataFrame API and the shell's
//! completion, with no other engine file knowing it. (Its own test binary: the
//! registration lasts for the process, and `tests/connectors.rs` compares the front
//! ends with the built-in list.)

use std::sync::Mutex;

use millrace::connector::registry::{self, Location, Role};
use millrace::prelude::*;
use millrace::sink::{Sink, SinkArgs, SinkContext, SinkDefinition, SinkSpec};
use millrace::source::options::Options;
use millrace::{Result, StatementResult};

/// What the sinks of this connector received: (label, batch id, ids).
static COLLECTED: Mutex<Vec<(String, u64, Vec<i64>)>> = Mutex::new(Vec::new());

/// The declared sink: its options, checked.
#[derive(Debug)]
struct CollectDefinition {
    label: String,
}

impl SinkDefinition for CollectDefinition {
    fn open(&self, ctx: &SinkContext<'_>) -> Result<Box<dyn Sink>> {
        assert_eq!(ctx.output_mode, OutputMode::Append);
        Ok(Box::new(CollectSink {
            label: self.label.clone(),
        }))
    }

    fn supports(&self, mode: OutputMode) -> bool {
        mode == OutputMode::Append
    }
}

struct CollectSink {
    label: String,
}

impl Sink for CollectSink {
    fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let ids = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .expect("BIGINT id")
                    .values()
                    .to_vec()
            })
            .collect();
        COLLECTED
            .lock()
            .unwrap()
            .push((self.label.clone(), batch_id, ids));
        Ok(())
    }

    fn describe(&self) -> String {
        format!("CollectSink[{}]", self.label)
    }
}

/// The connector's parse function: takes `label` (required), leaves the rest.
fn parse(args: SinkArgs<'_>, options: &mut Options) -> Result<SinkSpec> {
    let label = options
        .take("label")
        .ok_or_else(|| millrace::Error::Option(format!("{} needs a 'label' option", args.what)))?;
    Ok(SinkSpec::new(CollectDefinition { label }))
}

/// The one registration.
fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        registry::register(registry::sink(
            "COLLECT",
            Location::None,
            None,
            &["label"],
            "rows kept in a list of the test process",
            parse,
        ))
        .unwrap();
    });
}

fn ids_of(label: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = COLLECTED
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _, _)| l == label)
        .flat_map(|(_, _, ids)| ids.clone())
        .collect();
    ids.sort();
    ids
}

async fn context_with_ids(dir: &std::path::Path) -> StreamingContext {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/a.json"), "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    std::fs::write(dir.join("in/b.json"), "{\"id\": 3}\n").unwrap();
    let ctx = StreamingContext::new();
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE ids (id BIGINT) STORED AS JSON LOCATION '{}/in'",
        dir.display()
    ))
    .await
    .unwrap();
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_sink_connector_runs_from_sql_and_the_dataframe_api() {
    register();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context_with_ids(tmp.path()).await;
    let started = ctx
        .sql(&format!(
            "CREATE SINK copy STORED AS collect OPTIONS ('label' 'sql', 'checkpoint' '{}', \
             'trigger' 'available_now') AS SELECT id FROM ids WHERE id > 1",
            tmp.path().join("ckpt").display()
        ))
        .await
        .unwrap();
    let StatementResult::QueryStarted(query) = started else {
        panic!("CREATE SINK did not start a query");
    };
    query.await_termination().await.unwrap();
    assert_eq!(ids_of("sql"), [2, 3]);

    let query = ctx
        .table("ids")
        .await
        .unwrap()
        .write_stream()
        .format("collect")
        .option("label", "dataframe")
        .trigger(Trigger::AvailableNow)
        .query_name("df_copy")
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(ids_of("dataframe"), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_connector_is_checked_listed_and_completed_like_the_built_in_ones() {
    register();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context_with_ids(tmp.path()).await;
    // Its own option rule and its option list, through the engine's messages.
    let e = ctx
        .sql("CREATE SINK c STORED AS COLLECT AS SELECT id FROM ids")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("COLLECT sink 'c' needs a 'label' option"), "{e}");
    let e = ctx
        .sql("CREATE SINK c STORED AS COLLECT OPTIONS ('label' 'x', 'colour' 'red') AS SELECT id FROM ids")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("colour") && e.contains("label"), "{e}");
    // Its supports(mode).
    let e = ctx
        .sql(
            "CREATE SINK c STORED AS COLLECT OPTIONS ('label' 'x', 'output_mode' 'complete') \
             AS SELECT count(*) AS n FROM ids",
        )
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("supports only output_mode 'append'"), "{e}");
    // Listed with the others, and completed by the shell.
    assert!(registry::names(Role::Sink, true).contains(&"COLLECT"));
    let e = ctx
        .sql("CREATE SINK c STORED AS ORC AS SELECT id FROM ids")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("COLLECT") && e.contains("POSTGRES"), "{e}");
    assert!(registry::completion_words().contains(&"COLLECT".to_string()));
    assert!(registry::completion_words().contains(&"label".to_string()));
    assert!(millrace::repl::commands::connectors_text().contains("COLLECT"));
    // A second connector of the same name is refused.
    let e = registry::register(registry::sink(
        "collect",
        Location::None,
        None,
        &[],
        "again",
        parse,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("already registered"), "{e}");
}
