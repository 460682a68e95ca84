//! The PostgreSQL sink against a real server (Debian's postgresql, started on loopback
//! by `scripts/postgres.sh`, one per test binary; each test its own database), read
//! back with `psql`: append and update end to end, complete mode, a replayed batch
//! skipped, a table of the wrong shape refused, and `kill -9` at random instants
//! (at least 30 times) of files → windowed aggregation → PostgreSQL, compared with an
//! uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::postgres::{PASSWORD_ENV, PgServer};
use common::*;

const READINGS: &str = "CREATE UNBOUNDED EXTERNAL TABLE readings (pump VARCHAR, ts TIMESTAMP, \
     seq BIGINT, pressure DOUBLE) STORED AS JSON LOCATION '{input}/' \
     OPTIONS ('max_files_per_trigger' '1');\n";

fn readings(input: &Path) -> String {
    READINGS.replace("{input}", &input.display().to_string())
}

#[test]
fn append_mode_copies_each_row_once_with_its_types() {
    let pg = PgServer::shared();
    let db = pg.create_database("append_e2e");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    sensor_file(
        &input,
        "a.json",
        &[
            ("p1", "2026-01-01T10:00:00", 1, 4.5),
            ("p2", "2026-01-01T10:00:01", 2, 12.25),
        ],
    );
    sensor_file(&input, "b.json", &[("p'3", "2026-01-01T10:00:02", 3, 0.5)]);
    let job = write_job(
        root,
        "append.sql",
        &format!(
            "{}CREATE SINK low STORED AS POSTGRES LOCATION 'Low Readings'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', {})
               AS SELECT pump, ts, seq, pressure, pressure < 5 AS low FROM readings;\n",
            readings(&input),
            root.join("ckpt").display(),
            pg.sink_options(&db)
        ),
    );
    run_success(&job, &root.join("run1.err"));
    let rows = pg.psql(
        &db,
        "SELECT pump, ts, seq, pressure, low FROM \"Low Readings\" ORDER BY seq",
    );
    assert_eq!(
        rows,
        [
            "p1|2026-01-01 10:00:00|1|4.5|t",
            "p2|2026-01-01 10:00:01|2|12.25|f",
            "p'3|2026-01-01 10:00:02|3|0.5|t",
        ]
    );
    // The table was created with the query's types.
    let types = pg.psql(
        &db,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'Low Readings' ORDER BY ordinal_position",
    );
    assert_eq!(
        types,
        [
            "pump|text",
            "ts|timestamp without time zone",
            "seq|bigint",
            "pressure|double precision",
            "low|boolean"
        ]
    );
    // One transaction per batch: the last batch id is recorded with the rows.
    let marker = pg.psql(&db, "SELECT target, batch_id FROM millrace_sink_batches");
    assert_eq!(marker, ["\"Low Readings\"|1"]);

    // A second run with a new file adds only that file's rows (password from the
    // environment this time).
    sensor_file(&input, "c.json", &[("p4", "2026-01-01T10:00:03", 4, 7.0)]);
    let env_job = write_job(
        root,
        "append-env.sql",
        &std::fs::read_to_string(&job).unwrap().replace(
            &format!("'password_file' '{}'", pg.dir.join("password").display()),
            &format!("'password_env' '{PASSWORD_ENV}'"),
        ),
    );
    let mut run = Millrace::spawn(&env_job, &pg.env(), &root.join("run2.err"));
    run.wait_success(DEADLINE);
    let seqs = pg.psql(&db, "SELECT seq FROM \"Low Readings\" ORDER BY seq");
    assert_eq!(seqs, ["1", "2", "3", "4"]);
    assert!(
        !run.stderr().contains(&pg.password),
        "the password appeared in the output"
    );
}

/// Expected `pump|readings|total|min` rows of a GROUP BY pump over `files`.
fn expected_groups(files: &[Vec<(&str, &str, i64, f64)>]) -> Vec<String> {
    let mut groups: BTreeMap<&str, (i64, i64, f64)> = BTreeMap::new();
    for row in files.iter().flatten() {
        let entry = groups.entry(row.0).or_insert((0, 0, f64::MAX));
        entry.0 += 1;
        entry.1 += row.2;
        entry.2 = entry.2.min(row.3);
    }
    groups
        .into_iter()
        .map(|(pump, (n, total, min))| format!("{pump}|{n}|{total}|{min}"))
        .collect()
}

#[test]
fn update_mode_upserts_the_groups_and_complete_mode_replaces_the_table() {
    let pg = PgServer::shared();
    let db = pg.create_database("update_e2e");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let mut rng = XorShift::new(test_seed("postgres_update"));
    let files = random_sensor_files(&input, &mut rng, 12);
    let job = write_job(
        root,
        "update.sql",
        &format!(
            "{readings}CREATE SINK stats STORED AS POSTGRES LOCATION 'pump_stats'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'update', {opts})
               AS SELECT pump, count(*) AS readings, sum(seq) AS total, min(pressure) AS lowest
               FROM readings GROUP BY pump;
             CREATE SINK totals STORED AS POSTGRES LOCATION 'totals'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'complete', {opts})
               AS SELECT pump, count(*) AS readings FROM readings GROUP BY pump;\n",
            root.join("ckpt-update").display(),
            root.join("ckpt-complete").display(),
            readings = readings(&input),
            opts = pg.sink_options(&db)
        ),
    );
    run_success(&job, &root.join("run.err"));
    let expected = expected_groups(&files);
    assert_eq!(expected.len(), 4);
    let actual = pg.psql(
        &db,
        "SELECT pump, readings, total, lowest FROM pump_stats ORDER BY pump",
    );
    assert_eq!(actual, expected, "update mode's final table");
    // 12 batches, each upserting: the unique constraint kept one row per pump.
    let batches = pg.psql(&db, "SELECT batch_id FROM millrace_sink_batches ORDER BY 1");
    assert_eq!(batches, ["11", "11"]);
    let complete = pg.psql(&db, "SELECT pump, readings FROM totals ORDER BY pump");
    let expected_complete: Vec<String> = expected
        .iter()
        .map(|r| r.split('|').take(2).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(complete, expected_complete, "complete mode's table");
}

#[test]
fn a_batch_already_in_the_database_is_not_written_again() {
    let pg = PgServer::shared();
    let db = pg.create_database("replay");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    sensor_file(&input, "a.json", &[("p1", "2026-01-01T10:00:00", 1, 4.5)]);
    sensor_file(&input, "b.json", &[("p2", "2026-01-01T10:00:01", 2, 3.5)]);
    let job = write_job(
        root,
        "replay.sql",
        &format!(
            "{}CREATE SINK copy STORED AS POSTGRES LOCATION 'copy'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', {})
               AS SELECT pump, seq FROM readings;\n",
            readings(&input),
            root.join("ckpt").display(),
            pg.sink_options(&db)
        ),
    );
    // Committed in the database, then killed before commits/0: batch 0 is replayed.
    run_to_crash_point(&job, "postgres-after-commit", &root.join("crash1.err"));
    assert_eq!(pg.psql(&db, "SELECT seq FROM copy"), ["1"]);
    // Killed inside the transaction: nothing of batch 1 is visible.
    run_to_crash_point(&job, "postgres-before-commit", &root.join("crash2.err"));
    assert_eq!(pg.psql(&db, "SELECT seq FROM copy"), ["1"]);
    run_success(&job, &root.join("final.err"));
    assert_eq!(
        pg.psql(&db, "SELECT seq FROM copy ORDER BY seq"),
        ["1", "2"]
    );
}

#[test]
fn a_table_of_another_shape_is_refused_before_the_query_runs() {
    let pg = PgServer::shared();
    let db = pg.create_database("mismatch");
    pg.psql(&db, "CREATE TABLE alerts (pump integer, seq bigint)");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    let job = write_job(
        root,
        "mismatch.sql",
        &format!(
            "{}CREATE SINK alerts STORED AS POSTGRES LOCATION 'alerts'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', {})
               AS SELECT pump, seq FROM readings;\n",
            readings(&input),
            root.join("ckpt").display(),
            pg.sink_options(&db)
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &root.join("run.err"));
    assert!(!status.success());
    assert!(
        stderr.contains("column 'pump' of table alerts is int4, but the query writes text"),
        "{stderr}"
    );
    // A wrong password is a clear connection error.
    let bad = root.join("bad-password");
    std::fs::write(&bad, "wrong\n").unwrap();
    let job = write_job(
        root,
        "bad.sql",
        &std::fs::read_to_string(&job).unwrap().replace(
            &pg.dir.join("password").display().to_string(),
            &bad.display().to_string(),
        ),
    );
    let (status, stderr) = run_to_end(&job, &[], &root.join("bad.err"));
    assert!(!status.success());
    assert!(
        stderr.contains("cannot connect to 127.0.0.1") && stderr.contains("password"),
        "{stderr}"
    );
}

/// Windowed counts per pump in append mode: each window is emitted once, so a batch
/// written twice would show as duplicate rows (the table has no unique key).
fn windowed_job(
    root: &Path,
    name: &str,
    input: &Path,
    table: &str,
    db: &str,
) -> std::path::PathBuf {
    let pg = PgServer::shared();
    write_job(
        root,
        name,
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE events (k VARCHAR, ts TIMESTAMP, v BIGINT,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
               STORED AS JSON LOCATION '{}/' OPTIONS ('max_files_per_trigger' '1');
             CREATE SINK windows STORED AS POSTGRES LOCATION '{table}'
               OPTIONS ('checkpoint' '{}', 'trigger' 'available_now', 'output_mode' 'append', {})
               AS SELECT k, w.start AS start, n, total FROM (
                 SELECT k, window(ts, '10 seconds') AS w, count(*) AS n, sum(v) AS total
                 FROM events GROUP BY k, window(ts, '10 seconds'));\n",
            input.display(),
            root.join(format!("ckpt-{table}")).display(),
            pg.sink_options(db)
        ),
    )
}

#[test]
fn kill_9_during_files_to_aggregation_to_postgres_changes_nothing_in_the_table() {
    let pg = PgServer::shared();
    let db = pg.create_database("crash");
    let seed = test_seed("postgres_crash");
    let mut rng = XorShift::new(seed);
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    windowed_event_files(&input, &mut rng, 90);
    let select = |table: &str| format!("SELECT k, start, n, total FROM {table} ORDER BY k, start");

    let reference = windowed_job(root, "reference.sql", &input, "reference", &db);
    run_success(&reference, &root.join("reference.err"));
    let expected = pg.psql(&db, &select("reference"));
    assert!(expected.len() > 20, "the reference wrote only {expected:?}");

    let crashed = windowed_job(root, "crashed.sql", &input, "crashed", &db);
    for point in [
        "after-state-commit",
        "postgres-before-commit",
        "postgres-after-commit",
        "after-sink",
        "after-commit",
    ] {
        run_to_crash_point(&crashed, point, &root.join(format!("{point}.err")));
    }
    let kills = kill9_until_finished(&crashed, root, &mut rng, 30, 160);
    run_success(&crashed, &root.join("final.err"));

    let actual = pg.psql(&db, &select("crashed"));
    assert_eq!(
        actual, expected,
        "seed {seed}: table after {kills} kills differs from the uninterrupted run's"
    );
    let duplicates = pg.psql(
        &db,
        "SELECT count(*) FROM (SELECT k, start FROM crashed GROUP BY k, start \
         HAVING count(*) > 1) d",
    );
    assert_eq!(duplicates, ["0"], "seed {seed}: a window was written twice");
}

/// `(pump, day as YYYY-MM-DD, time, psi)` of every reading in the generated CSV files.
fn sensor_readings(dir: &Path) -> Vec<(String, String, String, f64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 9, "{line}");
            let date: Vec<u32> = fields[1].split('/').map(|n| n.parse().unwrap()).collect();
            let day = format!("{:04}-{:02}-{:02}", 2000 + date[2], date[0], date[1]);
            rows.push((
                fields[0].to_string(),
                day,
                fields[2].to_string(),
                fields[7].parse().unwrap(),
            ));
        }
    }
    rows
}

#[test]
fn the_sensor_alerts_postgres_example_writes_alerts_and_daily_statistics() {
    let pg = PgServer::shared();
    let db = pg.create_database("example");
    let tmp = temp_dir();
    let root = tmp.path();
    run_in(
        root,
        &[
            "generate-sensors",
            "data",
            "--files",
            "3",
            "--minutes",
            "30",
        ],
    );
    let readings = sensor_readings(&root.join("data/sensors"));
    // The example as shipped, pointed at the test server and database.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql/examples/sensor_alerts_postgres.sql"
    ))
    .unwrap()
    .replace(
        "'port' '5433'",
        &format!("'port' '{}', 'database' '{db}'", pg.port),
    )
    .replace("'data/", &format!("'{}/data/", root.display()))
    .replace(
        "'checkpoints/",
        &format!("'{}/checkpoints/", root.display()),
    );
    let job = write_job(root, "example.sql", &example);
    let mut run = Millrace::spawn(
        &job,
        &[("PGPASSWORD", pg.password.as_str())],
        &root.join("example.err"),
    );
    run.wait_success(DEADLINE);

    let mut expected_alerts: Vec<String> = readings
        .iter()
        .filter(|r| r.3 < 5.0)
        .map(|r| format!("{}|{}|{}", r.0, r.1, r.3))
        .collect();
    expected_alerts.sort();
    assert!(!expected_alerts.is_empty());
    let alerts = pg.psql(&db, "SELECT pump, ts::date, psi FROM pump_alerts");
    let mut alerts_sorted = alerts.clone();
    alerts_sorted.sort();
    assert_eq!(alerts_sorted, expected_alerts);

    let mut daily: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for r in &readings {
        let entry = daily.entry((r.0.clone(), r.1.clone())).or_default();
        entry.0 += 1;
        entry.1 += i64::from(r.3 < 5.0);
    }
    let expected_daily: Vec<String> = daily
        .iter()
        .map(|((pump, day), (n, low))| format!("{pump}|{day}|{n}|{low}"))
        .collect();
    let actual_daily = pg.psql(
        &db,
        "SELECT pump, day, readings, low_readings FROM pump_daily ORDER BY pump, day",
    );
    assert_eq!(actual_daily, expected_daily);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataframe_api_writes_to_postgres_in_update_mode() {
    use millrace::prelude::*;
    let pg = PgServer::shared();
    let db = pg.create_database("dataframe");
    let tmp = temp_dir();
    let root = tmp.path();
    let input = make_dir(root, "in");
    sensor_file(
        &input,
        "a.json",
        &[
            ("p1", "2026-01-01T10:00:00", 1, 4.5),
            ("p1", "2026-01-01T10:00:01", 2, 2.5),
        ],
    );
    sensor_file(&input, "b.json", &[("p2", "2026-01-01T10:00:02", 3, 9.0)]);
    sensor_file(&input, "c.json", &[("p1", "2026-01-01T10:00:03", 4, 1.0)]);
    let ctx = StreamingContext::new();
    ctx.sql(&readings(&input)).await.unwrap();
    let query = ctx
        .table("readings")
        .await
        .unwrap()
        .group_by(vec![col("pump")])
        .agg(vec![
            count(col("seq")).alias("n"),
            min(col("pressure")).alias("lowest"),
        ])
        .unwrap()
        .write_stream()
        .format("postgres")
        .option("table", "df_stats")
        .option("port", &pg.port.to_string())
        .option("database", &db)
        .option(
            "password_file",
            &pg.dir.join("password").display().to_string(),
        )
        .option("checkpoint", &root.join("ckpt").display().to_string())
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .query_name("df_stats")
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(
        pg.psql(&db, "SELECT pump, n, lowest FROM df_stats ORDER BY pump"),
        ["p1|3|1", "p2|1|9"]
    );
}
