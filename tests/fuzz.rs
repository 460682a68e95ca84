//! Property tests over malformed input, bounded for CI: mutated SQL statements
//! (DDL, `OPTIONS`, `CREATE SINK`, durations, watermark expressions, `window()`)
//! through a real session, and mutated CSV / JSON lines / text files through the file
//! decoders in each malformed-record mode. The properties: no panic, no hang, and
//! every rejection is a message (never empty, never a panic or an internal error).
//!
//! Inputs come from a small seed corpus (below) mutated by a seeded generator: the
//! seed is printed, and `MILLRACE_TEST_SEED=<seed>` replays a run exactly;
//! `MILLRACE_FUZZ_CASES=<n>` changes how many inputs each test tries (default: the
//! number in each test, sized for about a minute in a debug build on a busy machine).
//! Each test prints how many inputs it tried and how many were rejected.

mod common;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use millrace::source::format::{Encoding, FileFormat, MalformedMode};
use millrace::{Session, SessionSettings};

/// A small deterministic generator (xorshift64*), so a failing input can be replayed
/// from the printed seed without any dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn cases(default: usize) -> usize {
    std::env::var("MILLRACE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Tokens the mutator inserts: SQL punctuation, keywords of millrace's own
/// statements, option names and values, extreme numbers and durations.
const TOKENS: &[&str] = &[
    "'",
    "\"",
    "(",
    ")",
    ",",
    ";",
    "--",
    "/*",
    "*/",
    " ",
    "\n",
    "''",
    "\\",
    "CREATE",
    "UNBOUNDED",
    "EXTERNAL",
    "TABLE",
    "SINK",
    "STORED AS",
    "CSV",
    "JSON",
    "TEXT",
    "PARQUET",
    "RATE",
    "MEMORY",
    "CONSOLE",
    "NOOP",
    "LOCATION",
    "OPTIONS",
    "WATERMARK FOR",
    "AS",
    "SELECT",
    "FROM",
    "GROUP BY",
    "WHERE",
    "INTERVAL",
    "SECOND",
    "DAY",
    "MONTH",
    "YEAR",
    "window(",
    "session_window(",
    "ts",
    "-",
    "+",
    "'mode'",
    "'fail_fast'",
    "'permissive'",
    "'drop_malformed'",
    "'has_header'",
    "'delimiter'",
    "'max_files_per_trigger'",
    "'rows_per_second'",
    "'max_rows_per_trigger'",
    "'num_partitions'",
    "'trigger'",
    "'output_mode'",
    "'checkpoint'",
    "'complete'",
    "'update'",
    "'append'",
    "'once'",
    "'available_now'",
    "'99999999999 days'",
    "'0 seconds'",
    "'-1 seconds'",
    "'1e309 ms'",
    "'NaN'",
    "'.'",
    "0",
    "-1",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e309",
    "NULL",
    "TIMESTAMP",
    "BIGINT",
    "DOUBLE",
    "VARCHAR",
    "BOOLEAN",
    "DECIMAL(38, 10)",
    "é",
    "🙂",
    "\u{0}",
    "STOP QUERY",
    "DESCRIBE QUERY",
    "SHOW QUERIES",
    "SET",
];

/// One random edit of `text` (on character boundaries, so the result stays text).
fn mutate(rng: &mut Rng, text: &str, corpus: &[String]) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = rng.below(chars.len() + 1);
    let end = (at + 1 + rng.below(12)).min(chars.len());
    let (before, after): (String, String) = (
        chars[..at].iter().collect(),
        chars[at.min(chars.len())..].iter().collect(),
    );
    match rng.below(7) {
        0 => format!(
            "{before}{}",
            chars[end.max(at)..].iter().collect::<String>()
        ),
        1 => format!("{before}{}{after}", rng.pick(TOKENS)),
        2 => {
            let piece: String = chars[at..end.max(at)].iter().collect();
            format!("{before}{piece}{piece}{after}")
        }
        3 => before,
        4 => {
            let other = rng.pick(corpus);
            let cut = other.chars().count();
            let from = rng.below(cut + 1);
            format!("{before}{}", other.chars().skip(from).collect::<String>())
        }
        5 => {
            let c = char::from_u32(rng.below(0x250) as u32).unwrap_or('?');
            format!(
                "{before}{c}{}",
                chars
                    .get(at + 1..)
                    .map_or(String::new(), |r| r.iter().collect())
            )
        }
        _ => {
            // A number replaced by an extreme one.
            let n = rng.pick(&[
                "0",
                "-1",
                "99999999999",
                "1e309",
                "18446744073709551616",
                ".5",
            ]);
            let digits = text.find(|c: char| c.is_ascii_digit());
            match digits {
                Some(i) => {
                    let tail: String = text[i..]
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .to_string();
                    format!("{}{n}{tail}", &text[..i])
                }
                None => format!("{text}{n}"),
            }
        }
    }
}

/// A message a user can act on: not empty, not a panic or an internal invariant.
fn assert_clear(input: &str, message: &str) {
    assert!(!message.trim().is_empty(), "empty error for {input:?}");
    for bad in [
        "panicked",
        "This was likely caused by a bug",
        "Internal error",
    ] {
        assert!(
            !message.contains(bad),
            "not a clear rejection of {input:?}: {message}"
        );
    }
}

/// Whether a mutated statement could name a path outside the test's directory (an
/// absolute path, `..`): not run, so the fuzzer never writes outside it.
fn leaves_the_test_dir(input: &str) -> bool {
    input.contains("..") || input.contains("'/") || input.contains("\"/") || input.contains('~')
}

/// The seed statements; paths are relative to the test's directory (the working
/// directory while the statements run).
fn sql_corpus() -> Vec<String> {
    [
        "CREATE UNBOUNDED EXTERNAL TABLE r (ts TIMESTAMP, v DOUBLE, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) STORED AS CSV LOCATION 'csv' \
             OPTIONS ('has_header' 'true', 'mode' 'permissive', 'max_files_per_trigger' '2')"
            .to_string(),
        "CREATE UNBOUNDED EXTERNAL TABLE j (id BIGINT, s VARCHAR) STORED AS JSON \
             LOCATION 'json' OPTIONS ('mode' 'drop_malformed', 'delimiter' ';')"
            .to_string(),
        "CREATE UNBOUNDED EXTERNAL TABLE t STORED AS RATE OPTIONS ('rows_per_second' '5', \
         'max_rows_per_trigger' '10', 'num_partitions' '2')"
            .to_string(),
        "CREATE SINK s1 STORED AS MEMORY OPTIONS ('output_mode' 'complete', 'trigger' \
         '2 seconds') AS SELECT window(ts, '10 seconds') AS w, count(*) AS n FROM base \
         GROUP BY window(ts, '10 seconds')"
            .to_string(),
        "CREATE SINK s2 STORED AS PARQUET LOCATION 'out' OPTIONS ('checkpoint' \
             'ckpt', 'trigger' 'available_now') AS SELECT id, s FROM jbase WHERE id > 3"
            .to_string(),
        "CREATE SINK s3 STORED AS NOOP OPTIONS ('trigger' 'once') AS SELECT value, \
         session_window(timestamp, '5 minutes') AS sw FROM tbase"
            .to_string(),
        "SELECT window(TIMESTAMP '2026-01-01T00:00:00', '1 hour', '10 minutes', '5 minutes') AS w"
            .to_string(),
        "SELECT window(TIMESTAMP '2262-04-01T00:00:00', INTERVAL '10' DAY) AS w".to_string(),
        "DESCRIBE QUERY s1".to_string(),
        "STOP QUERY s1".to_string(),
    ]
    .into()
}

/// Mutated statements through a real session: each ends in a result or a clear
/// error, within a bound, and never panics. Queries a statement starts are stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_sql_statements_are_answered_or_refused_clearly() {
    let seed = common::test_seed("mutated_sql_statements");
    let mut rng = Rng(seed | 1);
    let tmp = common::temp_dir();
    for sub in ["csv", "json"] {
        common::make_dir(tmp.path(), sub);
    }
    common::write_atomic(
        &tmp.path().join("csv"),
        "1.csv",
        b"ts,v\n2026-01-01T00:00:00,1.5\n",
    );
    common::write_atomic(
        &tmp.path().join("json"),
        "1.json",
        b"{\"id\": 4, \"s\": \"x\"}\n",
    );
    let corpus = sql_corpus();
    // Relative paths in statements resolve inside the test's directory.
    std::env::set_current_dir(tmp.path()).unwrap();
    let session = Arc::new(Session::new(
        tokio::runtime::Handle::current(),
        SessionSettings::default(),
    ));
    // The tables the sink statements read, declared once.
    for ddl in [
        "CREATE UNBOUNDED EXTERNAL TABLE base (ts TIMESTAMP, v DOUBLE, WATERMARK FOR ts AS \
             ts - INTERVAL '5' SECOND) STORED AS CSV LOCATION 'csv' OPTIONS ('has_header' 'true')".to_string(),
        "CREATE UNBOUNDED EXTERNAL TABLE jbase (id BIGINT, s VARCHAR) STORED AS JSON LOCATION 'json'".to_string(),
        "CREATE UNBOUNDED EXTERNAL TABLE tbase STORED AS RATE".to_string(),
    ] {
        session.execute(&ddl).await.unwrap();
    }
    let total = cases(600);
    let (mut rejected, mut skipped) = (0, 0);
    for case in 0..total {
        let mut input = rng.pick(&corpus).clone();
        for _ in 0..1 + rng.below(3) {
            input = mutate(&mut rng, &input, &corpus);
        }
        if leaves_the_test_dir(&input) {
            skipped += 1;
            continue;
        }
        let run = {
            let session = session.clone();
            let input = input.clone();
            tokio::spawn(async move { session.execute(&input).await.map(|_| ()) })
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("case {case} hangs (seed {seed}): {input:?}"));
        match outcome {
            Err(join) => panic!("case {case} panicked (seed {seed}): {input:?}: {join}"),
            Ok(Err(error)) => {
                rejected += 1;
                assert_clear(&input, &error.to_string());
            }
            Ok(Ok(())) => {}
        }
        session.stop_all();
        let session2 = session.clone();
        tokio::task::spawn_blocking(move || session2.await_all_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .map(|ended| assert!(ended, "a query of case {case} never stopped: {input:?}"))
            .ok();
    }
    eprintln!(
        "mutated SQL: {total} inputs made (seed {seed}), {} run, {rejected} rejected, {skipped} \
         skipped (a path outside the test's directory)",
        total - skipped
    );
}

fn decoder_schema(corrupt: bool) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("v", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("s", DataType::Utf8, true),
    ];
    if corrupt {
        fields.push(Field::new("_corrupt_record", DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

const CSV_SEED: &str = "id,ts,v,ok,s\n1,2026-01-01T00:00:00,1.5,true,a\n2,2026-01-01T00:00:01,-2e3,false,\"b,\"\"c\"\"\"\n,,,,\n";
const JSON_SEED: &str = "{\"id\": 1, \"ts\": \"2026-01-01T00:00:00\", \"v\": 1.5, \"ok\": true, \"s\": \"a\"}\n{\"id\": null, \"s\": \"\\u00e9\", \"v\": 1e308}\n{}\n";
const TEXT_SEED: &str = "first line\r\nsecond, with comma\n\nlast";

/// Mutated files through the CSV, JSON lines and text decoders in every
/// malformed-record mode: rows or a clear error, never a panic.
#[test]
fn mutated_files_are_decoded_or_refused_clearly_in_every_mode() {
    let seed = common::test_seed("mutated_files");
    let mut rng = Rng(seed | 1);
    let tmp = common::temp_dir();
    let path = tmp.path().join("input");
    let corpus: Vec<String> = [CSV_SEED, JSON_SEED, TEXT_SEED].map(String::from).into();
    let modes = [
        MalformedMode::Permissive,
        MalformedMode::DropMalformed,
        MalformedMode::FailFast,
    ];
    let encodings = [
        Encoding::Csv {
            has_header: true,
            delimiter: b',',
        },
        Encoding::Csv {
            has_header: false,
            delimiter: b';',
        },
        Encoding::Json,
        Encoding::Text,
    ];
    let total = cases(1500);
    let (mut tried, mut rejected) = (0, 0);
    for case in 0..total {
        let mut text = rng.pick(&corpus).clone();
        for _ in 0..1 + rng.below(4) {
            text = mutate(&mut rng, &text, &corpus);
        }
        let mut bytes = text.into_bytes();
        if rng.below(8) == 0 && !bytes.is_empty() {
            // Invalid UTF-8 too.
            let at = rng.below(bytes.len());
            bytes[at] = 0xff;
        }
        std::fs::write(&path, &bytes).unwrap();
        for encoding in &encodings {
            for mode in modes {
                let format = FileFormat {
                    encoding: encoding.clone(),
                    mode,
                };
                let schema = match encoding {
                    Encoding::Text => {
                        Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
                    }
                    _ => decoder_schema(mode == MalformedMode::Permissive),
                };
                tried += 1;
                let outcome = std::panic::catch_unwind(|| format.read_file(&path, &schema));
                match outcome {
                    Err(_) => panic!(
                        "case {case} panicked (seed {seed}) in {encoding:?} {mode:?}: {:?}",
                        String::from_utf8_lossy(&bytes)
                    ),
                    Ok(Err(error)) => {
                        rejected += 1;
                        let message = error.to_string();
                        assert_clear(&String::from_utf8_lossy(&bytes), &message);
                        assert!(
                            message.contains(&path.display().to_string()),
                            "a rejected file is named: {message}"
                        );
                    }
                    Ok(Ok(decoded)) => {
                        assert_eq!(decoded.batch.num_columns(), schema.fields().len());
                    }
                }
            }
        }
    }
    eprintln!(
        "mutated files: {total} files, {tried} decodes tried (seed {seed}), {rejected} rejected"
    );
}
