//! A streaming query into a memory sink, read with ordinary SQL while it runs: files
//! dropped into a directory show up in the session table named after the sink.
//!
//! ```sh
//! cargo run --example live_memory_table
//! ```

use std::time::{Duration, Instant};

use millrace::{Session, SessionSettings, StatementResult};

fn main() -> millrace::Result<()> {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = std::env::temp_dir().join(format!("millrace-live-{}", std::process::id()));
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("input directory");

    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    let script = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR, temp DOUBLE)
           STORED AS JSON LOCATION '{}';
         CREATE SINK hot STORED AS MEMORY
           AS SELECT sensor, temp, temp * 1.8 + 32 AS fahrenheit FROM readings WHERE temp > 30",
        input.display()
    );
    let query = match runtime.block_on(session.execute_script(&script))?.pop() {
        Some(StatementResult::QueryStarted(query)) => query,
        _ => unreachable!("the last statement starts a query"),
    };

    for (n, temp) in [(1, 25.0), (2, 31.5), (3, 40.0)] {
        // Files must appear whole: write elsewhere, then rename into the directory.
        let staged = dir.join(format!("reading-{n}.json"));
        std::fs::write(
            &staged,
            format!("{{\"sensor\": \"s{n}\", \"temp\": {temp}}}\n"),
        )
        .expect("write a reading");
        std::fs::rename(&staged, input.join(format!("reading-{n}.json"))).expect("land it");
    }

    // Poll the live table until the query has caught up (or give up after a while).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = runtime.block_on(session.query("SELECT * FROM hot ORDER BY sensor"))?;
        let count: usize = rows.iter().map(|b| b.num_rows()).sum();
        if count == 2 || Instant::now() > deadline {
            println!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&rows)?
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(progress) = query.last_progress() {
        println!(
            "last batch: {} ({} input rows)",
            progress.batch_id, progress.num_input_rows
        );
    }
    query.stop();
    query.await_termination_blocking()?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
