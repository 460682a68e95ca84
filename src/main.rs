//! The `millrace` command: run SQL scripts (`-f`), inline statements (`-c`), the
//! interactive shell (no arguments), the bundled demo, and the pipeline benchmark.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use millrace::bench::{self, BenchFormat};
use millrace::repl::{self, print_result};
use millrace::{Error, Result, Session, SessionSettings};
use tokio::runtime::Runtime;

#[derive(Parser)]
#[command(
    name = "millrace",
    version,
    about = "Streaming SQL on Arrow and DataFusion"
)]
struct Cli {
    /// Run the SQL script in FILE: declarations, then every CREATE SINK starts a query;
    /// returns when all queries have ended.
    #[arg(short = 'f', long = "file", conflicts_with = "command")]
    file: Option<PathBuf>,
    /// Run the statements given inline (separated by ';').
    #[arg(short = 'c', long = "command")]
    command: Option<String>,
    /// Print each batch's progress report (JSON) on standard error.
    #[arg(long)]
    progress: bool,
    /// The shell's history file (default: $MILLRACE_HISTORY, else ~/.millrace_history).
    #[arg(long, value_name = "FILE")]
    history_file: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Generate the oil-well sensor data into DIR and run sql/examples/sensor_alerts.sql there.
    Demo {
        /// Directory for the data, checkpoint and output (recreated on every run).
        #[arg(long, default_value = "millrace-demo")]
        dir: PathBuf,
        /// Sensor files to generate (one hour of readings each).
        #[arg(long, default_value_t = 8)]
        files: u32,
    },
    /// Write the oil-well sensor example data (sensors/, vendors.csv, maintenance.csv) into DIR.
    GenerateSensors {
        /// Target directory.
        dir: PathBuf,
        /// Sensor files to generate.
        #[arg(long, default_value_t = 8)]
        files: u32,
        /// Readings per pump per file (one a minute).
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Measure rows/s and per-batch latency of files → filter/project → Parquet (use --release).
    Bench {
        /// Input rows per format.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Input files per format.
        #[arg(long, default_value_t = 40)]
        files: usize,
        /// Files per micro-batch.
        #[arg(long, default_value_t = 4)]
        files_per_trigger: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, &runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, runtime: &Runtime) -> Result<()> {
    let settings = SessionSettings {
        print_progress: cli.progress,
        ..SessionSettings::default()
    };
    let session = Session::new(runtime.handle().clone(), settings);
    match cli.action {
        Some(Action::Demo { dir, files }) => return demo(&session, runtime, &dir, files),
        Some(Action::GenerateSensors {
            dir,
            files,
            minutes,
            seed,
        }) => {
            let counts = millrace::demo::generate_sensor_data(&dir, files, minutes, seed)?;
            eprintln!(
                "wrote {} readings ({} with PressureLbs < 5) under {}",
                counts.readings,
                counts.low_pressure,
                dir.display()
            );
            return Ok(());
        }
        Some(Action::Bench {
            rows,
            files,
            files_per_trigger,
        }) => return run_bench(runtime, rows, files, files_per_trigger),
        None => {}
    }
    let script = match (&cli.file, &cli.command) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(Error::io(path))?,
        (None, Some(sql)) => sql.clone(),
        (None, None) => {
            return repl::run(
                &session,
                runtime,
                &repl::ShellOptions::new(cli.history_file),
            );
        }
    };
    run_script(&session, runtime, &script)
}

/// Runs a script, then waits for its queries; Ctrl-C or SIGTERM stops them gracefully.
///
/// The signals are listened for before the first statement runs: one that arrives
/// while the script is still running (a query starting, a long batch statement) ends
/// the script there and stops the queries already started after their current batch,
/// instead of killing the process with the signal's default action.
fn run_script(session: &Session, runtime: &Runtime, script: &str) -> Result<()> {
    let mut signals = {
        let _entered = runtime.enter();
        ShutdownSignals::listen()
    };
    let mut signalled = false;
    for statement in millrace::sql::split::split_statements(script) {
        let outcome = runtime.block_on(async {
            tokio::select! {
                result = session.execute(&statement) => Some(result),
                _ = signals.recv() => None,
            }
        });
        let Some(outcome) = outcome else {
            signalled = true;
            break;
        };
        if let Err(e) = outcome.and_then(|result| print_result(&result)) {
            session.stop_all();
            let _ = session.await_all();
            return Err(e);
        }
    }
    let stopper = {
        let queries = session.queries();
        runtime.spawn(async move {
            if !signalled {
                signals.recv().await;
            }
            for q in &queries {
                q.stop();
            }
            // Stderr may be a closed pipe: a failed note must not stop the shutdown.
            let _ = writeln!(
                std::io::stderr(),
                "millrace: stopping after the current batch (press Ctrl-C again to abort)"
            );
            signals.recv().await;
            std::process::exit(130);
        })
    };
    let outcome = session.await_all();
    stopper.abort();
    outcome
}

/// Ctrl-C and, on Unix, SIGTERM, listened for from the moment this is made: a signal
/// that comes before anyone waits for it is kept, not left to its default action.
struct ShutdownSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    /// Starts listening (inside the runtime).
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::interrupt())
                .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)))
                .ok();
            ShutdownSignals { streams }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = &mut self.streams {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn demo(session: &Session, runtime: &Runtime, dir: &std::path::Path, files: u32) -> Result<()> {
    let marker = dir.join(".millrace-demo");
    if dir.exists() {
        if !marker.exists() {
            return Err(Error::Sql(format!(
                "{} exists and was not made by `millrace demo`; choose another --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).map_err(Error::io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    std::fs::write(&marker, b"").map_err(Error::io(&marker))?;
    let counts = millrace::demo::generate_sensor_data(&dir.join("data"), files, 60, 7)?;
    eprintln!(
        "generated {} sensor readings ({} below 5 psi) in {}",
        counts.readings,
        counts.low_pressure,
        dir.join("data").display()
    );
    std::env::set_current_dir(dir).map_err(Error::io(dir))?;
    run_script(session, runtime, millrace::demo::SENSOR_ALERTS_SQL)?;
    let rows = runtime
        .block_on(session.query(
            "CREATE EXTERNAL TABLE written_alerts STORED AS PARQUET LOCATION 'out/alerts/'",
        ));
    rows?;
    let count = runtime
        .block_on(session.query(
            "SELECT count(*) AS alerts, count(DISTINCT pump) AS pumps FROM written_alerts",
        ))?;
    eprintln!(
        "alerts written exactly once to {}:",
        dir.join("out/alerts").display()
    );
    println!(
        "{}",
        datafusion::arrow::util::pretty::pretty_format_batches(&count)?
    );
    Ok(())
}

fn run_bench(runtime: &Runtime, rows: usize, files: usize, files_per_trigger: usize) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    let files = files.max(1);
    for format in [BenchFormat::Json, BenchFormat::Csv] {
        let dir = std::env::temp_dir().join(format!("millrace-bench-{}", uuid::Uuid::new_v4()));
        let written = bench::write_input(&dir, format, files, rows.div_ceil(files))?;
        let report = bench::run_pipeline(runtime, &dir, format, files_per_trigger, written);
        let _ = std::fs::remove_dir_all(&dir);
        println!("{}", report?);
    }
    Ok(())
}
