//! Word counts from Kafka to Kafka with the Rust DataFrame API, the job of
//! `sql/examples/kafka_wordcount.sql`: lines arrive as records of topic `lines`;
//! every batch writes one record per word whose count changed, keyed by the word,
//! with the running count as value (`{"word":"the","n":2}`) to topic `word_counts`
//! (update mode: a compacted topic keeps the latest count per word).
//!
//! Needs a broker (`scripts/kafka-broker.sh start 9092`: Apache Kafka on 127.0.0.1:9092). From
//! the repository root:
//!
//! ```sh
//! printf 'the quick brown fox\nthe lazy dog\n' | cargo run -- kafka produce lines
//! cargo run --example kafka_word_count -- --available-now   # what is there, then stop
//! cargo run -- kafka consume word_counts --from-beginning --keys
//! ```
//!
//! Without `--available-now` it keeps reading until Ctrl-C. It prints one line per
//! batch (`batch 0: 2 line(s) read, 6 count(s) written to 'word_counts'`).
//!
//! Settings, as `--name value` arguments or environment variables (defaults as in the
//! SQL example): `--bootstrap` / `KAFKA_BOOTSTRAP` (`127.0.0.1:9092`), `--input` /
//! `INPUT_TOPIC` (`lines`), `--output` / `OUTPUT_TOPIC` (`word_counts`),
//! `--checkpoint` / `CHECKPOINT` (`checkpoints/kafka_word_count`), `--delivery` /
//! `DELIVERY` (`at_least_once`; `exactly_once` for one transaction per batch, read with
//! `--read-committed`).
//!
//! The input topic is read from its first record on the query's first run
//! (`starting_offsets` `earliest`); a restarted run resumes from its checkpoint.
//! A word is a run of letters, digits and apostrophes, lower-cased, as in
//! `sql/examples/word_count.sql`.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::functions::expr_fn::{lower, regexp_replace};
use datafusion::functions_nested::expr_fn::string_to_array;
use datafusion::prelude::cast;
use millrace::prelude::*;

/// The example's settings.
pub struct Settings {
    /// The brokers, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// The topic of lines.
    pub input: String,
    /// The topic of counts.
    pub output: String,
    /// The query's checkpoint directory.
    pub checkpoint: String,
    /// The Kafka sink's `delivery`.
    pub delivery: String,
    /// Process what is in the input topic, then stop.
    pub available_now: bool,
}

impl Settings {
    /// `--name value` arguments, then environment variables, then the defaults.
    pub fn read() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Some(unknown) = args.iter().find(|a| {
            a.starts_with("--")
                && ![
                    "--bootstrap",
                    "--input",
                    "--output",
                    "--checkpoint",
                    "--delivery",
                    "--available-now",
                ]
                .contains(&a.as_str())
        }) {
            eprintln!(
                "unknown argument {unknown}; the arguments are --bootstrap, --input, --output, \
                 --checkpoint, --delivery (each followed by a value) and --available-now"
            );
            std::process::exit(2);
        }
        let setting = |flag: &str, env: &str, default: &str| -> String {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
                .or_else(|| std::env::var(env).ok())
                .unwrap_or_else(|| default.to_string())
        };
        Settings {
            bootstrap: setting("--bootstrap", "KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            input: setting("--input", "INPUT_TOPIC", "lines"),
            output: setting("--output", "OUTPUT_TOPIC", "word_counts"),
            checkpoint: setting("--checkpoint", "CHECKPOINT", "checkpoints/kafka_word_count"),
            delivery: setting("--delivery", "DELIVERY", "at_least_once"),
            available_now: args.iter().any(|a| a == "--available-now"),
        }
    }
}

/// Prints one line per batch.
struct PrintBatches {
    topic: String,
}

impl StreamingQueryListener for PrintBatches {
    fn on_query_progress(&self, _query: &StreamingQuery, progress: &QueryProgress) {
        println!(
            "batch {}: {} line(s) read, {} count(s) written to '{}'",
            progress.batch_id, progress.num_input_rows, progress.sink.num_output_rows, self.topic
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> millrace::Result<()> {
    run(Settings::read()).await
}

/// Runs the word count until it stops (`available_now`) or Ctrl-C.
/// (`tests/dataframe_api.rs` runs this function against a real broker.)
pub async fn run(settings: Settings) -> millrace::Result<()> {
    let ctx = StreamingContext::new();
    ctx.add_listener(Arc::new(PrintBatches {
        topic: settings.output.clone(),
    }));

    // No columns declared: format `raw`, each record's value as bytes in `value`.
    let records = ctx
        .read_stream()
        .format("kafka")
        .option("bootstrap.servers", &settings.bootstrap)
        .option("starting_offsets", "earliest")
        .load(&settings.input)
        .await?;
    let line = lower(cast(col("value"), DataType::Utf8));
    let words = records
        .select(vec![
            string_to_array(
                regexp_replace(line, lit("[^a-z0-9']+"), lit(" "), Some(lit("g"))),
                lit(" "),
                lit(ScalarValue::Utf8(None)),
            )
            .alias("word"),
        ])?
        .unnest("word")?
        .filter(col("word").not_eq(lit("")))?;
    let query = words
        .group_by(vec![col("word")])
        .agg(vec![count(lit(1)).alias("n")])?
        .write_stream()
        .format("kafka")
        .option("topic", &settings.output)
        .option("bootstrap.servers", &settings.bootstrap)
        .option("format", "json")
        .option("key", "word")
        .option("delivery", &settings.delivery)
        .option("create_topic", "true")
        .option("checkpoint", &settings.checkpoint)
        .output_mode(OutputMode::Update)
        .trigger(if settings.available_now {
            Trigger::AvailableNow
        } else {
            Trigger::default()
        })
        .query_name("kafka_word_count")
        .start()
        .await?;

    if !settings.available_now {
        let stopper = query.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping after the current batch");
            stopper.stop();
        });
    }
    query.await_termination().await
}
