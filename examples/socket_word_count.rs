//! A running word count over lines from a TCP socket, with the Rust DataFrame API:
//! lines → words (`string_to_array` + `unnest`) → `count(*)` per word in complete mode.
//!
//! The example serves a few lines itself on a loopback port (as `nc -lk 9999` would),
//! then waits until the query has processed them and prints the memory table.
//!
//! ```sh
//! cargo run --example socket_word_count
//! ```

use std::io::Write;
use std::net::TcpListener;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::ScalarValue;
use datafusion::functions_nested::expr_fn::string_to_array;
use millrace::prelude::*;

const LINES: &str = "the quick brown fox\njumps over the lazy dog\nthe dog sleeps\n";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> millrace::Result<()> {
    // The text server: accepts one connection and sends the lines.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("its address").to_string();
    std::thread::spawn(move || {
        if let Ok((mut client, _)) = listener.accept() {
            let _ = client.write_all(LINES.as_bytes());
            // Keep the connection open, as a live source would.
            std::thread::park();
        }
    });

    let ctx = StreamingContext::new();
    let lines = ctx.read_stream().format("socket").load(&address).await?;
    let words = lines
        .select(vec![
            string_to_array(col("value"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        ])?
        .unnest("word")?;
    let query = words
        .group_by(vec![col("word")])
        .agg(vec![count(lit(1)).alias("n")])?
        .write_stream()
        .format("memory")
        .query_name("word_counts")
        .output_mode(OutputMode::Complete)
        .start()
        .await?;

    // Wait until the three lines are counted (they may arrive in several batches).
    let lines_read = |q: &StreamingQuery| -> u64 {
        q.recent_progress()
            .iter()
            .flat_map(|p| p.sources.iter().map(|s| s.num_input_rows))
            .sum()
    };
    while lines_read(&query) < 3 {
        query.process_all_available().await?;
    }
    let counts = ctx
        .session()
        .query("SELECT word, n FROM word_counts ORDER BY n DESC, word")
        .await?;
    println!("{}", pretty_format_batches(&counts)?);
    query.stop();
    query.await_termination().await
}
