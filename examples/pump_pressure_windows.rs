//! Per-pump max/min/avg pressure over a 60-second window sliding every 30 seconds,
//! with the Rust DataFrame API: CSV readings landing in a directory, a 30-second
//! watermark, append mode (each window emitted once, when the watermark passes its
//! end) into a memory table that is printed at the end.
//!
//! ```sh
//! cargo run --example pump_pressure_windows
//! ```

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::functions::core::expr_fn::get_field;
use millrace::prelude::*;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> millrace::Result<()> {
    let dir = std::env::temp_dir().join(format!("millrace-pumps-{}", std::process::id()));
    let input = dir.join("readings");
    std::fs::create_dir_all(&input).expect("create the input directory");
    // Three pumps, one reading every 5 seconds for 4 minutes, one file per minute.
    for minute in 0..4 {
        let mut text = String::new();
        for second in (0..60).step_by(5) {
            for pump in 1..=3 {
                let pressure = 40.0 + pump as f64 * 5.0 + ((minute * 60 + second) % 17) as f64;
                text.push_str(&format!(
                    "pump-{pump},2026-01-01 10:{minute:02}:{second:02},{pressure}\n"
                ));
            }
        }
        std::fs::write(input.join(format!("minute-{minute}.csv")), text).expect("write input");
    }

    let ctx = StreamingContext::new();
    let readings = ctx
        .read_stream()
        .format("csv")
        .schema(Schema::new(vec![
            Field::new("pump", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("pressure", DataType::Float64, true),
        ]))
        .option("max_files_per_trigger", "1")
        .load(input.to_str().expect("a UTF-8 path"))
        .await?
        .with_watermark("ts", "30 seconds")?;
    let stats = readings
        .group_by(vec![
            window(col("ts"), "60 seconds", Some("30 seconds")),
            col("pump"),
        ])
        .agg(vec![
            max(col("pressure")).alias("max_pressure"),
            min(col("pressure")).alias("min_pressure"),
            avg(col("pressure")).alias("avg_pressure"),
        ])?
        .select(vec![
            col("pump"),
            get_field(col("window"), "start").alias("window_start"),
            col("max_pressure"),
            col("min_pressure"),
            col("avg_pressure"),
        ])?;
    let query = stats
        .write_stream()
        .format("memory")
        .query_name("pump_stats")
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    query.await_termination().await?;

    let rows = ctx
        .session()
        .query("SELECT * FROM pump_stats ORDER BY window_start, pump")
        .await?;
    println!("{}", pretty_format_batches(&rows)?);
    if let Some(progress) = query.last_progress() {
        println!("final watermark: {:?}", progress.event_time.watermark);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
