//! The `millrace` command: run SQL scripts (`-f`), inline statements (`-c`), the
//! interactive shell (no arguments), the bundled demo and example data, and the
//! benchmarks.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use millrace::bench::{self, AggregationWorkload, BenchFormat, Workload};
use millrace::demo::SensorDataOptions;
use millrace::repl::{self, print_result};
use millrace::sensor_events::EventDataOptions;
use millrace::sink::kafka::KafkaDelivery;
use millrace::{Error, Result, Session, SessionSettings};
use tokio::runtime::Runtime;

/// mimalloc keeps freed memory for reuse instead of returning it to the kernel at once
/// as glibc's allocator does for large blocks: a batch's columns are large, short-lived
/// allocations, and with glibc each one came back as fresh pages the kernel had to
/// fault in and zero (about a fifth of the groupby benchmark's time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Serve the web UI, REST API and Prometheus /metrics on ADDR (HOST:PORT or a port;
    /// default 127.0.0.1:4040, port 0 picks a free one) for scripts, the shell and demo.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = millrace::ui::DEFAULT_ADDR, global = true)]
    ui: Option<String>,
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
        /// Minutes of readings per file.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// Readings per pump per minute (1 to 60); above 1, Time carries seconds (H:MM:SS).
        #[arg(long, default_value_t = 1)]
        readings_per_minute: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Write sensor events with a timestamp column (events/*.csv: sensor,ts,value) into DIR.
    GenerateEvents {
        /// Target directory.
        dir: PathBuf,
        /// Event files to generate.
        #[arg(long, default_value_t = 6)]
        files: u32,
        /// Seconds of event time per file.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Average events per second of event time.
        #[arg(long, default_value_t = 20)]
        events_per_second: u32,
        /// Distinct sensors.
        #[arg(long, default_value_t = 5)]
        sensors: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Measure rows/s and per-batch latency of a workload through the engine (use --release).
    Bench {
        /// filter (files → filter/project → Parquet, JSON then CSV), tumbling (windowed
        /// count/sum per key, append mode to Parquet), groupby (count/sum per key,
        /// update mode to a NOOP sink), kafka-filter (Kafka → filter/project → Kafka) or
        /// kafka-window (Kafka → count/avg per sensor and 1-minute window → Kafka) or
        /// kafka-latency (produce → Kafka → query → Kafka → read_committed consumer at a
        /// steady --rate for --seconds), join / join-outer (impressions JOIN / LEFT JOIN
        /// clicks within 10 minutes, --rows each, NOOP sink); the kafka workloads need
        /// --bootstrap.
        #[arg(long, default_value = "filter")]
        workload: Workload,
        /// Input rows (per format for filter, per input for join and join-outer).
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Input files (per format for filter).
        #[arg(long, default_value_t = 40)]
        files: usize,
        /// Files per micro-batch.
        #[arg(long, default_value_t = 4)]
        files_per_trigger: usize,
        /// Distinct keys of tumbling and groupby [default: 1000 for tumbling, 1000000 for groupby].
        #[arg(long)]
        keys: Option<usize>,
        /// Write the input of tumbling and groupby into DIR/in/ and keep it (to run
        /// another engine over the same files, e.g. scripts/duckdb-groupby.sh), instead
        /// of a temporary directory removed afterwards.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// The Kafka broker of kafka-filter and kafka-window (source and sink), HOST:PORT;
        /// start one with scripts/kafka-broker.sh start.
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap: Option<String>,
        /// The Kafka sink's delivery: exactly_once (one transaction per batch; needs a
        /// broker with transactions, as Apache Kafka is) or at_least_once.
        #[arg(long, default_value = "exactly_once", value_parser = bench::kafka::parse_delivery)]
        delivery: KafkaDelivery,
        /// Partitions of the kafka workloads' input and output topics.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Records per batch of the kafka workloads [default: a tenth of --rows].
        #[arg(long, value_name = "N")]
        max_offsets_per_trigger: Option<u64>,
        /// Records per second the kafka-latency producer sends.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// How long the kafka-latency producer sends.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Small Kafka helpers for the examples: lines to a topic, a topic to lines.
    Kafka {
        #[command(subcommand)]
        action: KafkaAction,
    },
}

#[derive(Subcommand)]
enum KafkaAction {
    /// Send each line of standard input as one record (value only) to TOPIC, creating
    /// the topic if it does not exist.
    Produce {
        /// The topic.
        topic: String,
        /// The broker(s) to connect to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Partitions of the topic if it has to be created.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
    },
    /// Print the records of TOPIC, one per line, until Ctrl-C (or --max / --idle).
    Consume {
        /// The topic.
        topic: String,
        /// The broker(s) to connect to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Start at the oldest records (default: only records produced from now on).
        #[arg(long)]
        from_beginning: bool,
        /// Stop after N records.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// Hide records of open and aborted transactions (on brokers that implement it).
        #[arg(long)]
        read_committed: bool,
        /// Print `key<TAB>value`.
        #[arg(long)]
        keys: bool,
        /// Stop when no record arrived for this long (e.g. '5 seconds').
        #[arg(long, value_name = "DURATION")]
        idle: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(note) = millrace::logging::init() {
        eprintln!("warning: {note}");
    }
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
    if let Some(addr) = &cli.ui {
        // `--ui` takes an optional value, so `millrace --ui demo` reads `demo` as the address.
        if [
            "demo",
            "generate-sensors",
            "generate-events",
            "bench",
            "kafka",
        ]
        .contains(&addr.as_str())
        {
            return Err(Error::Option(format!(
                "--ui took '{addr}' as its address; put --ui after the command \
                 (`millrace {addr} --ui`) or give the address (`--ui 127.0.0.1:4040`)"
            )));
        }
        if !matches!(cli.action, None | Some(Action::Demo { .. })) {
            return Err(Error::Option(
                "--ui serves the queries of a script (-f, -c), the shell or `demo`".into(),
            ));
        }
        let bound = session.start_ui(addr)?;
        eprintln!("millrace: web UI at http://{bound}/");
    }
    // A script or the demo ends when its queries do; with --ui the page stays to be
    // looked at. The shell's UI ends with the shell.
    let keep_serving =
        cli.ui.is_some() && (cli.action.is_some() || cli.file.is_some() || cli.command.is_some());
    let outcome = run_action(cli, &session, runtime);
    if outcome.is_ok()
        && keep_serving
        && let Some(address) = session.ui_address()
    {
        // Keep the charts and reports of the finished queries on screen.
        eprintln!(
            "millrace: the queries have ended; the web UI stays up at http://{address}/ until Ctrl-C"
        );
        runtime.block_on(async {
            let mut signals = ShutdownSignals::listen();
            signals.recv().await;
        });
    }
    outcome
}

fn run_action(cli: Cli, session: &Session, runtime: &Runtime) -> Result<()> {
    match cli.action {
        Some(Action::Demo { dir, files }) => return demo(session, runtime, &dir, files),
        Some(Action::GenerateSensors {
            dir,
            files,
            minutes,
            readings_per_minute,
            seed,
        }) => {
            let options = SensorDataOptions {
                files,
                minutes,
                readings_per_minute,
                seed,
            };
            let counts = millrace::demo::generate_sensor_data(&dir, &options)?;
            eprintln!(
                "wrote {} readings ({} with PressureLbs < 5) under {}",
                counts.readings,
                counts.low_pressure,
                dir.display()
            );
            return Ok(());
        }
        Some(Action::GenerateEvents {
            dir,
            files,
            seconds,
            events_per_second,
            sensors,
            seed,
        }) => {
            let options = EventDataOptions {
                files,
                seconds,
                events_per_second,
                sensors,
                seed,
            };
            let counts = millrace::sensor_events::generate_sensor_events(&dir, &options)?;
            eprintln!(
                "wrote {} events ({} stamped late) under {}",
                counts.events,
                counts.late,
                dir.join("events").display()
            );
            return Ok(());
        }
        Some(Action::Bench {
            workload,
            rows,
            files,
            files_per_trigger,
            keys,
            dir,
            bootstrap,
            delivery,
            partitions,
            max_offsets_per_trigger,
            rate,
            seconds,
        }) => {
            if workload == Workload::KafkaLatency {
                let Some(bootstrap) = bootstrap else {
                    return Err(Error::Option(
                        "--workload kafka-latency needs --bootstrap HOST:PORT, a running Kafka \
                         broker (scripts/kafka-broker.sh start)"
                            .into(),
                    ));
                };
                return run_latency_bench(runtime, &bootstrap, rate, seconds, partitions, delivery);
            }
            if let Some(kafka) = bench::KafkaWorkload::of(workload) {
                let Some(bootstrap) = bootstrap else {
                    return Err(Error::Option(format!(
                        "--workload {} needs --bootstrap HOST:PORT, a running Kafka broker \
                         (scripts/kafka-broker.sh start)",
                        workload.name()
                    )));
                };
                let options = KafkaBench {
                    bootstrap,
                    delivery,
                    partitions,
                    max_offsets_per_trigger: max_offsets_per_trigger
                        .unwrap_or((rows as u64).div_ceil(10)),
                };
                return run_kafka_bench(runtime, kafka, rows as u64, &options);
            }
            if bootstrap.is_some() || max_offsets_per_trigger.is_some() {
                return Err(Error::Option(
                    "--bootstrap and --max-offsets-per-trigger apply to the kafka-filter and \
                     kafka-window workloads"
                        .into(),
                ));
            }
            let size = BenchSize {
                rows,
                files: files.max(1),
                files_per_trigger,
            };
            return run_bench(runtime, workload, size, keys, dir);
        }
        Some(Action::Kafka { action }) => return kafka(action),
        None => {}
    }
    let script = match (&cli.file, &cli.command) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(Error::io(path))?,
        (None, Some(sql)) => sql.clone(),
        (None, None) => {
            return repl::run(session, runtime, &repl::ShellOptions::new(cli.history_file));
        }
    };
    run_script(session, runtime, &script)
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
    // Stderr may be a closed pipe: a failed note must not stop the shutdown.
    let note = || {
        let _ = writeln!(
            std::io::stderr(),
            "millrace: stopping after the current batch (press Ctrl-C again to abort)"
        );
    };
    if signalled {
        // Also stops a query whose start the abandoned statement had begun.
        session.stop_all();
        note();
    }
    let stopper = {
        let queries = session.queries();
        runtime.spawn(async move {
            if !signalled {
                // Every statement has run, so no query is still starting.
                signals.recv().await;
                for q in &queries {
                    q.stop();
                }
                note();
            }
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
    let options = SensorDataOptions {
        files,
        ..SensorDataOptions::default()
    };
    let counts = millrace::demo::generate_sensor_data(&dir.join("data"), &options)?;
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

fn kafka(action: KafkaAction) -> Result<()> {
    match action {
        KafkaAction::Produce {
            topic,
            bootstrap,
            partitions,
        } => {
            if partitions < 1 {
                return Err(Error::Option("--partitions must be at least 1".into()));
            }
            let sent = millrace::kafka_tool::produce(
                &bootstrap,
                &topic,
                partitions,
                std::io::stdin().lock(),
            )?;
            eprintln!("sent {sent} record(s) to '{topic}'");
        }
        KafkaAction::Consume {
            topic,
            bootstrap,
            from_beginning,
            max,
            read_committed,
            keys,
            idle,
        } => {
            let options = millrace::kafka_tool::ConsumeOptions {
                from_beginning,
                max,
                read_committed,
                keys,
                idle: idle
                    .map(|d| millrace::duration::parse_duration(&d))
                    .transpose()?,
            };
            millrace::kafka_tool::consume(&bootstrap, &topic, &options, std::io::stdout().lock())?;
        }
    }
    Ok(())
}

/// The input of a `millrace bench` run.
struct BenchSize {
    rows: usize,
    files: usize,
    files_per_trigger: usize,
}

fn run_bench(
    runtime: &Runtime,
    workload: Workload,
    size: BenchSize,
    keys: Option<usize>,
    keep_dir: Option<std::path::PathBuf>,
) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    let rows_per_file = size.rows.div_ceil(size.files);
    let temp_dir = || std::env::temp_dir().join(format!("millrace-bench-{}", uuid::Uuid::new_v4()));
    if let Some(join) = bench::JoinWorkload::of(workload) {
        if keys.is_some() {
            return Err(Error::Option(
                "--keys applies to the tumbling and groupby workloads".into(),
            ));
        }
        // --rows is per input: impressions and as many click rows.
        let dir = keep_dir.clone().unwrap_or_else(temp_dir);
        if keep_dir.is_some() {
            // A kept directory's checkpoint would make the run a restart with
            // nothing left to read.
            bench::reset_run_dirs(&dir)?;
        }
        let report = bench::write_join_input(&dir, size.files, rows_per_file).and_then(|written| {
            bench::run_join(runtime, &dir, join, size.files_per_trigger, written)
        });
        if keep_dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!("{}", report?);
        return Ok(());
    }
    let Some(aggregation) = AggregationWorkload::of(workload) else {
        if keys.is_some() || keep_dir.is_some() {
            return Err(Error::Option(
                "--keys applies to the tumbling and groupby workloads, --dir to those and \
                 the joins"
                    .into(),
            ));
        }
        for format in [BenchFormat::Json, BenchFormat::Csv] {
            let dir = temp_dir();
            let written = bench::write_input(&dir, format, size.files, rows_per_file)?;
            let report =
                bench::run_pipeline(runtime, &dir, format, size.files_per_trigger, written);
            let _ = std::fs::remove_dir_all(&dir);
            println!("{}", report?);
        }
        return Ok(());
    };
    let keys = keys.unwrap_or(aggregation.default_keys());
    let dir = keep_dir.clone().unwrap_or_else(temp_dir);
    if keep_dir.is_some() {
        bench::reset_run_dirs(&dir)?;
        let input = dir.join("in");
        if input.exists() {
            std::fs::remove_dir_all(&input).map_err(Error::io(&input))?;
        }
    }
    let report =
        bench::write_keyed_input(&dir, size.files, rows_per_file, keys).and_then(|written| {
            bench::run_aggregation(runtime, &dir, aggregation, size.files_per_trigger, written)
        });
    if keep_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{} ({keys} keys)", report?);
    Ok(())
}

/// `millrace bench --workload kafka-latency`: see [`bench::kafka_latency`].
fn run_latency_bench(
    runtime: &Runtime,
    bootstrap: &str,
    rate: u64,
    seconds: u64,
    partitions: i32,
    delivery: KafkaDelivery,
) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    bench::check_reachable(bootstrap)?;
    let id = format!("latency-{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("millrace-bench-{id}"));
    let run = bench::LatencyRun {
        bootstrap,
        rate,
        seconds,
        partitions,
        delivery,
        id: &id,
        checkpoint: &dir.join("checkpoint"),
    };
    let report = run.run(runtime);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} ({})", report?, bench::kafka::delivery_option(delivery));
    Ok(())
}

/// The options of a `millrace bench --workload kafka-*` run.
struct KafkaBench {
    bootstrap: String,
    delivery: KafkaDelivery,
    partitions: i32,
    max_offsets_per_trigger: u64,
}

/// Produces `rows` readings to a fresh input topic (untimed), runs the Kafka → Kafka
/// query to its end into a fresh output topic, prints the report; the topics are left
/// on the broker (the brokers here keep them in memory until stopped).
fn run_kafka_bench(
    runtime: &Runtime,
    workload: bench::KafkaWorkload,
    rows: u64,
    options: &KafkaBench,
) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    if options.partitions < 1 {
        return Err(Error::Option("--partitions must be at least 1".into()));
    }
    bench::check_reachable(&options.bootstrap)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (input, output) = (format!("bench-in-{id}"), format!("bench-out-{id}"));
    let produced = std::time::Instant::now();
    bench::produce_readings(&options.bootstrap, &input, options.partitions, rows)?;
    eprintln!(
        "produced {rows} records to '{input}' ({} partitions) in {:.1} s",
        options.partitions,
        produced.elapsed().as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("millrace-bench-{id}"));
    let run = bench::KafkaRun {
        bootstrap: &options.bootstrap,
        workload,
        input_topic: &input,
        output_topic: &output,
        partitions: options.partitions,
        delivery: options.delivery,
        max_offsets_per_trigger: options.max_offsets_per_trigger,
        checkpoint: &dir.join("checkpoint"),
    };
    let report = run.run(runtime, rows);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} (to '{output}')", report?);
    Ok(())
}
