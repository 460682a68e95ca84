//! The Rust DataFrame API (Spark's `readStream` → transformations → `writeStream`)
//! runs the same engine as SQL: these tests build real queries over real files and
//! check the rows they deliver.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use millrace::prelude::*;

fn readings_schema() -> Schema {
    Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("temp", DataType::Float64, true),
    ])
}

/// Lands a JSON-lines file of `(sensor, second after 10:00:00, temp)` readings.
fn land(dir: &Path, name: &str, rows: &[(&str, u32, f64)]) {
    let text: String = rows
        .iter()
        .map(|(s, sec, t)| {
            format!(
                "{{\"sensor\":\"{s}\",\"ts\":\"2026-01-01T10:{:02}:{:02}\",\"temp\":{t}}}\n",
                sec / 60,
                sec % 60
            )
        })
        .collect();
    common::write_atomic(dir, name, text.as_bytes());
}

/// The JSON readings in `dir` as a stream read one file per batch.
async fn one_file_per_batch(ctx: &StreamingContext, dir: &Path) -> StreamFrame {
    ctx.read_stream()
        .format("json")
        .schema(readings_schema())
        .option("max_files_per_trigger", "1")
        .load(dir.to_str().unwrap())
        .await
        .unwrap()
}

/// `(column a as text, column b as i64)` of every row, sorted.
fn pairs(batches: &[RecordBatch], a: &str, b: &str) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for batch in batches {
        let a = datafusion::arrow::compute::cast(batch.column_by_name(a).unwrap(), &DataType::Utf8)
            .unwrap();
        let b =
            datafusion::arrow::compute::cast(batch.column_by_name(b).unwrap(), &DataType::Int64)
                .unwrap();
        for i in 0..batch.num_rows() {
            rows.push((
                a.as_string::<i32>().value(i).to_string(),
                b.as_primitive::<Int64Type>().value(i),
            ));
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_pipeline_counts_readings_per_window_into_parquet() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    land(
        &input,
        "a.json",
        &[("s1", 1, 10.0), ("s1", 4, 20.0), ("s2", 12, 5.0)],
    );
    land(&input, "b.json", &[("s1", 13, 7.0), ("s2", 31, 1.0)]);

    let ctx = StreamingContext::new();
    let readings = one_file_per_batch(&ctx, &input)
        .await
        .with_watermark("ts", "5 seconds")
        .unwrap();
    let counts = readings
        .group_by(vec![window(col("ts"), "10 seconds", None), col("sensor")])
        .agg(vec![
            count(lit(1)).alias("n"),
            avg(col("temp")).alias("avg_temp"),
        ])
        .unwrap();
    let names: Vec<String> = counts
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["window", "sensor", "n", "avg_temp"]);
    let out = tmp.path().join("out");
    let query = counts
        .select(vec![
            col("sensor"),
            datafusion::functions::core::expr_fn::get_field(col("window"), "start").alias("start"),
            col("n"),
        ])
        .unwrap()
        .write_stream()
        .format("parquet")
        .option("path", out.to_str().unwrap())
        .option("checkpoint", tmp.path().join("ckpt").to_str().unwrap())
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();

    // The watermark ends at 10:00:31 - 5 s = 10:00:26: the windows of 10:00:00 and
    // 10:00:10 are final and written once; 10:00:30 is still open.
    let batches = common::read_parquet_dir(&out);
    let mut rows: Vec<(String, i64)> = Vec::new();
    for batch in &batches {
        let sensors = batch.column_by_name("sensor").unwrap();
        let sensors = datafusion::arrow::compute::cast(sensors, &DataType::Utf8).unwrap();
        let starts = datafusion::arrow::compute::cast(
            batch.column_by_name("start").unwrap(),
            &DataType::Utf8,
        )
        .unwrap();
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            rows.push((
                format!(
                    "{} {}",
                    sensors.as_string::<i32>().value(i),
                    starts.as_string::<i32>().value(i)
                ),
                n.value(i),
            ));
        }
    }
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("s1 2026-01-01T10:00:00".to_string(), 2),
            ("s1 2026-01-01T10:00:10".to_string(), 1),
            ("s2 2026-01-01T10:00:10".to_string(), 1),
        ]
    );
    let last = query.last_progress().expect("progress");
    assert_eq!(
        last.event_time.watermark.as_deref(),
        Some("2026-01-01T10:00:26.000Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_duplicates_by_columns_and_within_the_watermark() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    // s1 at 00 and 03: the same key, within the delay. Watermarks (delay 10 s): batch
    // b runs with none, c with 10:00:25 (s1's key, first seen at 00, expires at 10 and
    // is forgotten after batch c, as in Spark), d with 10:00:40: s1 at 60 is new again.
    land(
        &input,
        "a.json",
        &[("s1", 0, 1.0), ("s2", 5, 2.0), ("s1", 3, 3.0)],
    );
    land(&input, "b.json", &[("s3", 35, 4.0)]);
    land(&input, "c.json", &[("s4", 50, 5.0)]);
    land(&input, "d.json", &[("s1", 60, 6.0)]);
    let ctx = StreamingContext::new();
    let events = one_file_per_batch(&ctx, &input)
        .await
        .with_watermark("ts", "10 seconds")
        .unwrap();

    // By key, for ever: s1 once (its first reading), s2, s3, s4. Within the
    // watermark: s1 again at 60.
    let first = to_memory(events.drop_duplicates(Some(&["sensor"])).unwrap(), "first").await;
    let within = to_memory(
        events
            .drop_duplicates_within_watermark(&["sensor"])
            .unwrap(),
        "within",
    )
    .await;
    first.await_termination().await.unwrap();
    within.await_termination().await.unwrap();
    let expected = |extra: Option<(&str, i64)>| {
        let mut rows: Vec<(String, i64)> = [("s1", 1), ("s2", 2), ("s3", 4), ("s4", 5)]
            .into_iter()
            .chain(extra)
            .map(|(s, t)| (s.to_string(), t))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(sensor_temps(&ctx, "first").await, expected(None));
    assert_eq!(
        sensor_temps(&ctx, "within").await,
        expected(Some(("s1", 6)))
    );
}

/// Runs `frame` to a memory table `name` over what is available now.
async fn to_memory(frame: StreamFrame, name: &str) -> StreamingQuery {
    frame
        .write_stream()
        .format("memory")
        .query_name(name)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap()
}

/// `(sensor, temp as integer)` rows of a memory table, sorted.
async fn sensor_temps(ctx: &StreamingContext, table: &str) -> Vec<(String, i64)> {
    let sql = format!("SELECT sensor, CAST(temp AS BIGINT) AS t FROM {table}");
    pairs(&ctx.session().query(&sql).await.unwrap(), "sensor", "t")
}

/// What a `foreach_batch` function saw: (sensor, vendor) rows per batch id.
type RowsByBatch = BTreeMap<u64, Vec<(String, i64)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreach_batch_sees_every_batch_with_its_id_and_a_static_join_enriches_rows() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    land(&input, "a.json", &[("s1", 1, 1.0), ("s2", 2, 2.0)]);
    land(&input, "b.json", &[("s1", 3, 3.0), ("s9", 4, 4.0)]);
    let ctx = StreamingContext::new();
    let vendors = ctx
        .session()
        .context()
        .read_batch(
            RecordBatch::try_from_iter(vec![
                (
                    "id",
                    Arc::new(datafusion::arrow::array::StringArray::from(vec![
                        "s1", "s2",
                    ])) as _,
                ),
                (
                    "vendor",
                    Arc::new(datafusion::arrow::array::Int64Array::from(vec![100, 200])) as _,
                ),
            ])
            .unwrap(),
        )
        .unwrap();
    let enriched = one_file_per_batch(&ctx, &input)
        .await
        .join(vendors, JoinType::Inner, &["sensor"], &["id"])
        .unwrap()
        .select(vec![col("sensor"), col("vendor")])
        .unwrap();
    let seen: Arc<Mutex<RowsByBatch>> = Arc::default();
    let sink = seen.clone();
    let query = enriched
        .write_stream()
        .foreach_batch(move |batch_id, frame| {
            let sink = sink.clone();
            async move {
                let rows = pairs(&frame.collect().await?, "sensor", "vendor");
                sink.lock().unwrap().insert(batch_id, rows);
                Ok(())
            }
        })
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        BTreeMap::from([
            (0, vec![("s1".to_string(), 100), ("s2".to_string(), 200)]),
            (1, vec![("s1".to_string(), 100)]),
        ])
    );
}

/// Counts the progress events a query reports.
#[derive(Default)]
struct Counter {
    started: AtomicUsize,
    progress: AtomicUsize,
    terminated: AtomicUsize,
}

impl StreamingQueryListener for Counter {
    fn on_query_started(&self, _query: &StreamingQuery) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn on_query_progress(&self, _query: &StreamingQuery, _progress: &QueryProgress) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
    fn on_query_terminated(&self, _query: &StreamingQuery, _error: Option<&str>) {
        self.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_processes_what_is_available_and_mixes_with_sql() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let ctx = StreamingContext::new();
    let listener = Arc::new(Counter::default());
    ctx.add_listener(listener.clone());
    // A table declared in SQL, picked up as a frame; the frame registered as a view,
    // and a sink started from SQL over the view.
    ctx.sql(&format!(
        "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, \
         temp DOUBLE) STORED AS JSON LOCATION '{}'",
        input.display()
    ))
    .await
    .unwrap();
    let hot = ctx
        .table("readings")
        .await
        .unwrap()
        .filter(col("temp").gt(lit(5.0)))
        .unwrap();
    hot.create_or_replace_temp_view("hot").unwrap();
    ctx.sql(
        "CREATE SINK hot_counts STORED AS MEMORY OPTIONS ('output_mode' 'complete') AS \
         SELECT sensor, count(*) AS n FROM hot GROUP BY sensor",
    )
    .await
    .unwrap();
    let query = ctx
        .queries()
        .into_iter()
        .find(|q| q.name() == "hot_counts")
        .unwrap();

    land(
        &input,
        "a.json",
        &[("s1", 1, 9.0), ("s1", 2, 1.0), ("s2", 3, 7.0)],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        hot_counts(&ctx).await,
        vec![("s1".into(), 1), ("s2".into(), 1)]
    );
    land(&input, "b.json", &[("s1", 4, 8.0)]);
    query.process_all_available().await.unwrap();
    assert_eq!(
        hot_counts(&ctx).await,
        vec![("s1".into(), 2), ("s2".into(), 1)]
    );

    assert!(query.is_active());
    query.stop();
    query.await_termination().await.unwrap();
    assert_eq!(query.exception(), None);
    assert_eq!(query.status().message, "Stopped");
    assert_eq!(listener.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        listener.progress.load(Ordering::SeqCst),
        query.recent_progress().len()
    );
    assert!(query.recent_progress().len() >= 2);
    assert_eq!(listener.terminated.load(Ordering::SeqCst), 1);
}

/// The `hot_counts` memory table, sorted.
async fn hot_counts(ctx: &StreamingContext) -> Vec<(String, i64)> {
    let rows = ctx
        .session()
        .query("SELECT sensor, n FROM hot_counts")
        .await;
    pairs(&rows.unwrap(), "sensor", "n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_refused_with_messages_that_say_what_to_do() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let ctx = StreamingContext::new();
    let error = ctx
        .read_stream()
        .format("json")
        .schema(readings_schema())
        .option("max_files_per_triger", "1")
        .load(input.to_str().unwrap())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("max_files_per_triger"), "{error}");
    let frame = ctx
        .read_stream()
        .format("json")
        .schema(readings_schema())
        .load(input.to_str().unwrap())
        .await
        .unwrap();
    let error = frame
        .with_watermark("temp", "5 seconds")
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not a timestamp"), "{error}");
    let error = frame
        .with_watermark("nope", "5 seconds")
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no unbounded table"), "{error}");
    let error = frame
        .write_stream()
        .format("memory")
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("query_name"), "{error}");
    let error = frame
        .write_stream()
        .format("parquet")
        .option("path", "out")
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("checkpoint"), "{error}");
    let error = frame
        .group_by(vec![col("sensor")])
        .agg(vec![count(lit(1))])
        .unwrap()
        .write_stream()
        .output_mode(OutputMode::Append)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("output_mode 'update'"), "{error}");
    assert!(fs::read_dir(tmp.path()).is_ok());
}

// ---------------------------------------------------------------------------------
// format("kafka"): the SQL Kafka sink from the writer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_kafka_writes_each_batchs_changed_counts_keyed_by_sensor() {
    use common::kafka::shared;
    use common::topic::read_topic;

    let broker = shared();
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let files: [&[(&str, u32, f64)]; 3] = [
        &[("s1", 1, 10.0), ("s1", 4, 20.0), ("s2", 12, 5.0)],
        &[("s1", 13, 7.0), ("s3", 31, 1.0)],
        &[("s2", 40, 2.0), ("s2", 41, 3.0), ("s3", 42, 4.0)],
    ];
    for (i, rows) in files.iter().enumerate() {
        land(&input, &format!("{i}.json"), rows);
    }

    let ctx = StreamingContext::new();
    let query = one_file_per_batch(&ctx, &input)
        .await
        .group_by(vec![col("sensor")])
        .agg(vec![count(lit(1)).alias("n")])
        .unwrap()
        .write_stream()
        .format("kafka")
        .option("topic", "sensor_counts")
        .option("bootstrap.servers", &broker.bootstrap)
        .option("key", "sensor")
        .option("delivery", "at_least_once")
        .option("create_topic", "true")
        .option(
            "checkpointLocation",
            tmp.path().join("ckpt").to_str().unwrap(),
        )
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(query.exception(), None);

    // Update mode: each batch (one file) writes one record per sensor it counted,
    // with the running count, keyed by the sensor; batches in order in the one
    // partition.
    let mut running: BTreeMap<&str, i64> = BTreeMap::new();
    let mut expected = Vec::new();
    for rows in files {
        let mut changed = BTreeMap::new();
        for (sensor, _, _) in rows {
            *running.entry(sensor).or_default() += 1;
            changed.insert(*sensor, running[sensor]);
        }
        let mut batch: Vec<(String, String, i64)> = changed
            .into_iter()
            .map(|(s, n)| (s.to_string(), s.to_string(), n))
            .collect();
        batch.sort();
        expected.push(batch);
    }
    let records =
        tokio::task::spawn_blocking(move || read_topic(&broker.bootstrap, "sensor_counts", false))
            .await
            .unwrap();
    assert!(records.iter().all(|r| r.partition == 0), "{records:?}");
    let decoded: Vec<(String, String, i64)> = records
        .iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_str(r.value.as_deref().expect("a value")).unwrap();
            (
                r.key.clone().expect("a key"),
                value["sensor"].as_str().expect("a sensor").to_string(),
                value["n"].as_i64().expect("a count"),
            )
        })
        .collect();
    let mut at = 0;
    for (id, batch) in expected.iter().enumerate() {
        let mut written = decoded
            .get(at..at + batch.len())
            .unwrap_or_else(|| panic!("batch {id} is missing; written: {decoded:?}"))
            .to_vec();
        written.sort();
        assert_eq!(&written, batch, "batch {id}; all written: {decoded:?}");
        at += batch.len();
    }
    assert_eq!(decoded.len(), at, "only the batches' records: {decoded:?}");
    assert_eq!(
        running,
        BTreeMap::from([("s1", 3), ("s2", 3), ("s3", 2)]),
        "the input's counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_kafka_options_are_refused_as_the_sql_sink_refuses_them() {
    let tmp = common::temp_dir();
    let input = common::make_dir(tmp.path(), "in");
    let ctx = StreamingContext::new();
    let frame = one_file_per_batch(&ctx, &input).await;
    frame.create_or_replace_temp_view("readings").unwrap();
    // The same options through the writer and through CREATE SINK.
    let refusals = |options: &'static [(&'static str, &'static str)]| {
        let (ctx, frame) = (ctx.clone(), frame.clone());
        async move {
            let mut writer = frame.write_stream().format("kafka").query_name("q");
            for (key, value) in options {
                writer = writer.option(key, value);
            }
            let from_writer = writer.start().await.err().expect("refused").to_string();
            let location = options
                .iter()
                .find(|(k, _)| *k == "topic")
                .map(|(_, t)| format!(" LOCATION '{t}'"))
                .unwrap_or_default();
            let sql_options: Vec<String> = options
                .iter()
                .filter(|(k, _)| *k != "topic")
                .map(|(k, v)| format!("'{k}' '{v}'"))
                .collect();
            let from_sql = ctx
                .sql(&format!(
                    "CREATE SINK q STORED AS KAFKA{location} OPTIONS ({}) AS SELECT * FROM readings",
                    sql_options.join(", ")
                ))
                .await
                .err()
                .expect("refused")
                .to_string();
            (from_writer, from_sql)
        }
    };
    let (writer, sql) = refusals(&[
        ("topic", "t"),
        ("bootstrap.servers", "127.0.0.1:1"),
        ("delivery", "at_least_once"),
        ("kye", "sensor"),
    ])
    .await;
    for error in [&writer, &sql] {
        assert!(
            error.contains("unknown option 'kye' for KAFKA sink 'q' (known options: "),
            "{error}"
        );
    }
    assert!(writer.contains("topic, checkpoint, bootstrap.servers, format, key, delivery"));

    // Exactly-once without a checkpoint, a misspelt delivery, no brokers, a bad topic
    // name: word for word the same.
    const SAME: [&[(&str, &str)]; 4] = [
        &[("topic", "t"), ("bootstrap.servers", "127.0.0.1:1")],
        &[
            ("topic", "t"),
            ("bootstrap.servers", "127.0.0.1:1"),
            ("delivery", "at-least-once"),
        ],
        &[("topic", "t"), ("delivery", "at_least_once")],
        &[
            ("topic", "no topic"),
            ("bootstrap.servers", "127.0.0.1:1"),
            ("delivery", "at_least_once"),
        ],
    ];
    for options in SAME {
        let (writer, sql) = refusals(options).await;
        assert_eq!(writer, sql, "with {options:?}");
    }
    let (writer, _) = refusals(&[("checkpoint", "c"), ("bootstrap.servers", "b:1")]).await;
    assert!(
        writer.contains("needs option('topic', '<topic>')"),
        "{writer}"
    );
}

// ---------------------------------------------------------------------------------
// examples/kafka_word_count.rs, run against a real broker

#[path = "../examples/kafka_word_count.rs"]
#[allow(dead_code)]
mod kafka_word_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_word_count_example_writes_each_runs_changed_counts_keyed_by_word() {
    use common::kafka::shared;
    use common::topic::{create_topic, produce, read_topic};

    let broker = shared();
    let tmp = common::temp_dir();
    let bootstrap = broker.bootstrap.clone();
    tokio::task::spawn_blocking(move || create_topic(&bootstrap, "lines", 2))
        .await
        .unwrap();
    // Words as the example defines them: runs of a-z, 0-9 and `'`, lower-cased.
    let words = |line: &str| -> Vec<String> {
        line.to_lowercase()
            .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '\''))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let runs: [&[&str]; 2] = [
        &[
            "The quick brown fox",
            "jumps over the lazy dog.",
            "",
            "Don't  panic, the DOG said",
        ],
        &["the dog sleeps", "fox-trot 2026"],
    ];
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for (run, lines) in runs.iter().enumerate() {
        let bootstrap = broker.bootstrap.clone();
        let to_send: Vec<&'static str> = lines.to_vec();
        tokio::task::spawn_blocking(move || produce(&bootstrap, "lines", &to_send))
            .await
            .unwrap();
        let settings = kafka_word_count::Settings {
            bootstrap: broker.bootstrap.clone(),
            input: "lines".to_string(),
            output: "word_counts".to_string(),
            checkpoint: tmp.path().join("ckpt").display().to_string(),
            delivery: "at_least_once".to_string(),
            available_now: true,
        };
        kafka_word_count::run(settings).await.unwrap();

        // This run's records: one per word of its lines, with the count over all runs.
        let mut changed = BTreeMap::new();
        for word in lines.iter().flat_map(|l| words(l)) {
            *totals.entry(word.clone()).or_default() += 1;
            changed.insert(word.clone(), totals[&word]);
        }
        let bootstrap = broker.bootstrap.clone();
        let records =
            tokio::task::spawn_blocking(move || read_topic(&bootstrap, "word_counts", false))
                .await
                .unwrap();
        let written_before: usize = runs[..run]
            .iter()
            .map(|lines| {
                lines
                    .iter()
                    .flat_map(|l| words(l))
                    .collect::<BTreeSet<_>>()
                    .len()
            })
            .sum();
        let mut this_run: Vec<(String, i64)> = records[written_before..]
            .iter()
            .map(|r| {
                let key = r.key.clone().expect("a key");
                let value: serde_json::Value =
                    serde_json::from_str(r.value.as_deref().expect("a value")).unwrap();
                assert_eq!(value["word"].as_str(), Some(key.as_str()), "{r:?}");
                (key, value["n"].as_i64().expect("a count"))
            })
            .collect();
        this_run.sort();
        assert_eq!(
            this_run,
            changed.into_iter().collect::<Vec<_>>(),
            "run {run}: every changed word once, with its count so far; all records: {records:?}"
        );
    }
    assert_eq!(totals["the"], 4);
    assert_eq!(totals["dog"], 3);
    assert_eq!(totals["don't"], 1);
}

// ---------------------------------------------------------------------------------
// examples/pump_low_pressure_episodes.rs: a user-defined stateful operator

#[path = "../examples/pump_low_pressure_episodes.rs"]
#[allow(dead_code)]
mod pump_low_pressure_episodes;

/// The episodes of `readings` computed in plain Rust, one pump at a time in event-time
/// order, as the example defines them; open episodes at the end count only if the
/// final watermark (largest event time - delay) passed their timeout.
fn expected_episodes(readings: &[(String, i64, f64)]) -> BTreeSet<(String, i64, i64, i64, String)> {
    use pump_low_pressure_episodes::{LOW_PSI, OPEN_AFTER, TIMEOUT_MS, WATERMARK_DELAY_MS};
    let final_watermark = readings.iter().map(|r| r.1).max().unwrap() - WATERMARK_DELAY_MS;
    let mut by_pump: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for (pump, ts, psi) in readings {
        by_pump.entry(pump).or_default().push((*ts, *psi));
    }
    let mut episodes = BTreeSet::new();
    for (pump, mut series) in by_pump {
        series.sort_by_key(|r| r.0);
        // (first low, last low, count) of the current run of low readings.
        let mut run: Option<(i64, i64, i64)> = None;
        let mut close = |run: (i64, i64, i64), how: &str| {
            if run.2 >= OPEN_AFTER as i64 {
                episodes.insert((pump.to_string(), run.0, run.1, run.2, how.to_string()));
            }
        };
        for (ts, psi) in series {
            if let Some(r) = run
                && ts - r.1 > TIMEOUT_MS
            {
                close(r, "timeout");
                run = None;
            }
            if psi < LOW_PSI {
                let r = run.get_or_insert((ts, ts, 0));
                r.1 = ts;
                r.2 += 1;
            } else if let Some(r) = run.take() {
                close(r, "recovery");
            }
        }
        if let Some(r) = run
            && r.1 + TIMEOUT_MS < final_watermark
        {
            close(r, "timeout");
        }
    }
    episodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pump_episodes_example_emits_each_low_pressure_episode_once() {
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    let tmp = common::temp_dir();
    let readings = pump_low_pressure_episodes::readings();
    pump_low_pressure_episodes::write_files(&tmp.path().join("in"), &readings);
    let ctx = StreamingContext::new();
    let query =
        pump_low_pressure_episodes::run(&ctx, &tmp.path().join("in"), &tmp.path().join("ckpt"))
            .await
            .unwrap();
    assert!(query.exception().is_none(), "{:?}", query.exception());
    let batches = ctx.session().query("SELECT * FROM episodes").await.unwrap();
    let mut got = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            got.push((
                b.column(0).as_string::<i32>().value(i).to_string(),
                b.column(1)
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i),
                b.column(2)
                    .as_primitive::<TimestampMillisecondType>()
                    .value(i),
                b.column(3).as_primitive::<Int64Type>().value(i),
                b.column(5).as_string::<i32>().value(i).to_string(),
            ));
        }
    }
    let emitted = got.len();
    let got: BTreeSet<_> = got.into_iter().collect();
    assert_eq!(emitted, got.len(), "an episode was emitted twice: {got:?}");
    let expected = expected_episodes(&readings);
    assert_eq!(got, expected);
    // The data has both kinds of ending, so both paths are exercised.
    assert!(expected.iter().any(|e| e.4 == "recovery"), "{expected:?}");
    assert!(expected.iter().any(|e| e.4 == "timeout"), "{expected:?}");
}

/// What a stream-stream join delivered: (left sensor, right temp or None) per batch.
type JoinedByBatch = BTreeMap<u64, Vec<(String, Option<f64>)>>;

/// A stream-stream LEFT OUTER join through the DataFrame API (`join_stream`): the
/// joined row in the batch that finds it, the NULL-padded row of the never-matched
/// left reading in the batch whose watermark passes it (the closing no-data batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_stream_joins_two_streams_and_emits_outer_rows_at_the_watermark() {
    let tmp = common::temp_dir();
    let left_dir = common::make_dir(tmp.path(), "left");
    let right_dir = common::make_dir(tmp.path(), "right");
    land(&left_dir, "1.json", &[("s1", 5, 1.0), ("s3", 5, 3.0)]);
    land(&left_dir, "2.json", &[("s1", 30, 4.0)]);
    land(&right_dir, "1.json", &[("s1", 10, 10.0)]);
    land(&right_dir, "2.json", &[("s0", 30, 0.0)]);
    let ctx = StreamingContext::new();
    let seconds = |n: i64| lit(ScalarValue::new_interval_mdn(0, 0, n * 1_000_000_000));
    let left = one_file_per_batch(&ctx, &left_dir)
        .await
        .with_watermark("ts", "10 seconds")
        .unwrap()
        .alias("l")
        .unwrap();
    let right = one_file_per_batch(&ctx, &right_dir)
        .await
        .with_watermark("ts", "10 seconds")
        .unwrap()
        .alias("r")
        .unwrap();
    let joined = left
        .join_stream(
            &right,
            JoinType::Left,
            col("l.sensor")
                .eq(col("r.sensor"))
                .and(col("l.ts").between(col("r.ts") - seconds(5), col("r.ts") + seconds(5))),
        )
        .unwrap()
        .select(vec![
            col("l.sensor").alias("sensor"),
            col("r.temp").alias("right_temp"),
        ])
        .unwrap();
    let seen: Arc<Mutex<JoinedByBatch>> = Arc::default();
    let sink = seen.clone();
    let query = joined
        .write_stream()
        .foreach_batch(move |batch_id, frame| {
            let sink = sink.clone();
            async move {
                let mut rows = Vec::new();
                for batch in frame.collect().await? {
                    let sensor = datafusion::arrow::compute::cast(
                        batch.column_by_name("sensor").unwrap(),
                        &DataType::Utf8,
                    )?;
                    let temp = batch.column_by_name("right_temp").unwrap();
                    let temp = temp.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
                    for i in 0..batch.num_rows() {
                        rows.push((
                            sensor.as_string::<i32>().value(i).to_string(),
                            temp.iter().nth(i).flatten(),
                        ));
                    }
                }
                sink.lock().unwrap().insert(batch_id, rows);
                Ok(())
            }
        })
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        BTreeMap::from([
            (0, vec![("s1".to_string(), Some(10.0))]),
            (1, vec![]),
            (2, vec![("s3".to_string(), None)]),
        ])
    );
    let progress = query.last_progress().unwrap();
    assert_eq!(
        progress.state_operators[0]["operatorName"],
        "symmetricHashJoin"
    );
}
