//! The main job through the Rust library instead of the command line: generate the
//! oil-well sensor data, run `sql/examples/sensor_alerts.sql` in a `Session`, wait for
//! its queries, and read the Parquet output back with an ordinary DataFusion query.
//!
//! ```sh
//! cargo run --example sensor_alerts
//! ```

use millrace::demo::{SENSOR_ALERTS_SQL, SensorDataOptions, generate_sensor_data};
use millrace::{Session, SessionSettings, StatementResult};

fn main() -> millrace::Result<()> {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let workdir = std::env::temp_dir().join(format!("millrace-example-{}", std::process::id()));
    let options = SensorDataOptions {
        files: 4,
        ..SensorDataOptions::default()
    };
    let counts = generate_sensor_data(&workdir.join("data"), &options)?;
    println!(
        "{} readings, {} below 5 psi, in {}",
        counts.readings,
        counts.low_pressure,
        workdir.display()
    );
    // The script uses paths relative to the working directory, as a user's would.
    std::env::set_current_dir(&workdir).expect("enter the example directory");

    let session = Session::new(runtime.handle().clone(), SessionSettings::default());
    for result in runtime.block_on(session.execute_script(SENSOR_ALERTS_SQL))? {
        if let StatementResult::QueryStarted(query) = result {
            println!("started streaming query '{}'", query.name());
        }
    }
    // Both sinks use trigger 'available_now': they end once the files are processed.
    session.await_all()?;

    let rows = runtime.block_on(async {
        session
            .query("CREATE EXTERNAL TABLE alerts_written STORED AS PARQUET LOCATION 'out/alerts/'")
            .await?;
        session
            .query("SELECT pump, count(*) AS alerts, min(psi) AS lowest_psi FROM alerts_written GROUP BY pump ORDER BY pump")
            .await
    })?;
    println!(
        "{}",
        datafusion::arrow::util::pretty::pretty_format_batches(&rows)?
    );
    std::fs::remove_dir_all(&workdir).ok();
    Ok(())
}
