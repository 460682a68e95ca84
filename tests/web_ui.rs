//! The embedded web server over real HTTP: the REST API and `/metrics` against a
//! query running in a real `millrace --ui` process (values move as batches run), the
//! shell setting and the DataFrame builder that start it, and the query page in a
//! real headless Chromium (Debian's `chromium`, installed by scripts/browser.sh).
//!
//! No assertion depends on timing: waits poll until a generous deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{DEADLINE, MILLRACE, temp_dir, wait_until};
use serde_json::Value;

/// A windowed count over a rate table with a watermark (so the query has a stateful
/// operator and a watermark), written to a NOOP sink every 200 ms.
fn rate_job(root: &Path) -> PathBuf {
    let sql = format!(
        "CREATE UNBOUNDED EXTERNAL TABLE ticks (WATERMARK FOR timestamp AS timestamp - INTERVAL '1' SECOND)\n  \
         STORED AS RATE OPTIONS ('rows_per_second' '200');\n\
         CREATE SINK per_second STORED AS NOOP\n  \
         OPTIONS ('checkpoint' '{}', 'output_mode' 'append', 'trigger' '200 milliseconds')\n  \
         AS SELECT window(timestamp, '1 second') AS w, count(*) AS n FROM ticks\n  \
         GROUP BY window(timestamp, '1 second');\n",
        root.join("ckpt").display()
    );
    common::write_job(root, "job.sql", &sql)
}

/// `millrace --ui 127.0.0.1:0 -f job`, killed when dropped.
struct UiProcess {
    child: Child,
    stderr: PathBuf,
    address: SocketAddr,
}

impl UiProcess {
    fn start(root: &Path, job: &Path) -> UiProcess {
        let stderr = root.join("stderr.txt");
        let child = Command::new(MILLRACE)
            .args(["--ui", "127.0.0.1:0", "-f"])
            .arg(job)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("start millrace");
        let mut process = UiProcess {
            child,
            stderr,
            address: "0.0.0.0:0".parse().unwrap(),
        };
        let mut address = None;
        wait_until("millrace to print the web UI's address", DEADLINE, || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("millrace ended ({status}): {}", process.stderr_text());
            }
            address = process.stderr_text().lines().find_map(|line| {
                line.strip_prefix("millrace: web UI at http://")
                    .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            });
            address.is_some()
        });
        process.address = address.unwrap();
        process
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for UiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, content type, body).
fn http(address: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in: {text}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "expected a sized body: {head}"
    );
    Ok((status, content_type, body.to_string()))
}

fn get_json(address: SocketAddr, path: &str) -> Value {
    let (status, content_type, body) = http(address, "GET", path).expect("GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The value of the sample of `name` whose labels include `query="<query>"` (and
/// `extra`, if given), from Prometheus' text format.
fn sample(metrics: &str, name: &str, query: &str, extra: Option<&str>) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("query=\"{query}\"")) && extra.is_none_or(|e| labels.contains(e)))
            .then(|| value.trim().parse().ok())?
    })
}

/// The query's last batch id; `None` before its first batch (or before the script
/// has started it: 404).
fn last_batch(address: SocketAddr) -> Option<u64> {
    let (status, _, body) = http(address, "GET", "/api/queries/per_second").ok()?;
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).ok()?["lastProgress"]["batchId"].as_u64()
}

#[test]
fn rest_api_and_metrics_follow_a_running_query() {
    let root = temp_dir();
    let job = rate_job(root.path());
    let mut ui = UiProcess::start(root.path(), &job);
    let address = ui.address;
    assert!(address.ip().is_loopback(), "binds loopback: {address}");

    // The list, once the first batch has committed.
    wait_until("a first progress report", DEADLINE, || {
        last_batch(address).is_some_and(|b| b >= 1)
    });
    let list = get_json(address, "/api/queries");
    let queries = list.as_array().expect("an array of queries");
    assert_eq!(queries.len(), 1, "{list}");
    let query = &queries[0];
    assert_eq!(query["name"], "per_second");
    assert_eq!(query["state"], "active");
    assert!(query["exception"].is_null());
    assert_eq!(query["sources"], serde_json::json!(["ticks"]));
    let progress = &query["lastProgress"];
    for field in [
        "id",
        "runId",
        "batchId",
        "numInputRows",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
        "durationMs",
        "eventTime",
        "stateOperators",
        "sources",
        "sink",
    ] {
        assert!(
            progress.get(field).is_some(),
            "lastProgress lacks {field}: {progress}"
        );
    }
    assert_eq!(progress["id"], query["id"]);
    assert_eq!(
        progress["stateOperators"][0]["operatorName"],
        "stateStoreSave"
    );
    let id = query["id"].as_str().unwrap().to_string();

    // One query, by name, id or run id, with its SQL and plan.
    let by_name = get_json(address, "/api/queries/per_second");
    assert!(
        by_name["sql"]
            .as_str()
            .unwrap()
            .contains("GROUP BY window(timestamp, '1 second')"),
        "{by_name}"
    );
    assert!(
        by_name["plan"].as_str().unwrap().contains("Aggregate"),
        "{by_name}"
    );
    let by_id = get_json(address, &format!("/api/queries/{id}"));
    assert_eq!(by_id["runId"], by_name["runId"]);
    let plan = get_json(
        address,
        &format!("/api/queries/{}/plan", by_name["runId"].as_str().unwrap()),
    );
    assert_eq!(plan["plan"], by_name["plan"]);
    assert_eq!(plan["sql"], by_name["sql"]);

    // Values move as batches run: batch ids, recent progress, metrics.
    let (status, content_type, metrics_before) = http(address, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        metrics_before.contains("# TYPE millrace_query_batches_total counter"),
        "{metrics_before}"
    );
    assert!(metrics_before.contains("# TYPE millrace_query_batch_duration_seconds histogram"));
    let batches_before = sample(
        &metrics_before,
        "millrace_query_batches_total",
        "per_second",
        None,
    )
    .expect("batches counter");
    let rows_before = sample(
        &metrics_before,
        "millrace_query_input_rows_total",
        "per_second",
        None,
    )
    .expect("input rows counter");
    assert!(
        metrics_before.contains(&format!("id=\"{id}\"")),
        "labelled by query id: {metrics_before}"
    );
    let batch_before = last_batch(address).unwrap();
    wait_until("three more batches", DEADLINE, || {
        last_batch(address).is_some_and(|b| b >= batch_before + 3)
    });
    let (_, _, metrics_after) = http(address, "GET", "/metrics").unwrap();
    let batches_after = sample(
        &metrics_after,
        "millrace_query_batches_total",
        "per_second",
        None,
    )
    .unwrap();
    let rows_after = sample(
        &metrics_after,
        "millrace_query_input_rows_total",
        "per_second",
        None,
    )
    .unwrap();
    assert!(
        batches_after >= batches_before + 3.0,
        "{batches_before} → {batches_after}"
    );
    assert!(rows_after > rows_before, "{rows_before} → {rows_after}");
    let operator = Some("operator=\"stateStoreSave\"");
    assert!(
        sample(
            &metrics_after,
            "millrace_state_operator_rows",
            "per_second",
            operator
        )
        .is_some_and(|rows| rows >= 1.0),
        "{metrics_after}"
    );
    assert!(
        sample(
            &metrics_after,
            "millrace_state_operator_memory_bytes",
            "per_second",
            operator
        )
        .is_some_and(|bytes| bytes > 0.0)
    );
    assert!(
        sample(
            &metrics_after,
            "millrace_query_last_batch_phase_seconds",
            "per_second",
            Some("phase=\"addBatch\"")
        )
        .is_some()
    );
    assert!(
        sample(
            &metrics_after,
            "millrace_query_watermark_timestamp_seconds",
            "per_second",
            None
        )
        .is_some_and(|w| w > 1.7e9),
        "a watermark as Unix seconds: {metrics_after}"
    );
    assert_eq!(
        sample(&metrics_after, "millrace_query_active", "per_second", None),
        Some(1.0)
    );

    let recent = get_json(address, "/api/queries/per_second/progress?limit=3");
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 3);
    let ids: Vec<u64> = recent
        .iter()
        .map(|p| p["batchId"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert!(ids[2] >= batch_before + 3);
    let all = get_json(address, "/api/queries/per_second/progress");
    assert!(all.as_array().unwrap().len() >= 4);

    // Errors: unknown query, bad limit.
    let (status, _, body) = http(address, "GET", "/api/queries/nope").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no streaming query 'nope'"), "{body}");
    let (status, _, body) =
        http(address, "GET", "/api/queries/per_second/progress?limit=x").unwrap();
    assert_eq!(status, 400, "{body}");

    // The pages and the vendored chart library are served from the binary.
    let (status, content_type, page) = http(address, "GET", "/queries/per_second").unwrap();
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(page.contains("/assets/uPlot.iife.min.js") && !page.contains("https://"));
    let (status, _, uplot) = http(address, "GET", "/assets/uPlot.iife.min.js").unwrap();
    assert_eq!(status, 200);
    assert!(uplot.contains("uPlot"));

    // Stop over the API: answered once the query has ended.
    let (status, _, body) = http(address, "POST", "/api/queries/per_second/stop").unwrap();
    assert_eq!(status, 200, "{body}");
    let stopped: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let (status, _, body) = http(address, "POST", "/api/queries/per_second/stop").unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is not running"), "{body}");
    let (_, _, metrics_end) = http(address, "GET", "/metrics").unwrap();
    assert_eq!(
        sample(&metrics_end, "millrace_query_active", "per_second", None),
        Some(0.0)
    );
    let (status, _, _) = http(address, "GET", "/api/queries").unwrap();
    assert_eq!(
        status, 200,
        "the UI stays up after the script's queries end"
    );
    wait_until("the note that the UI stays up", DEADLINE, || {
        ui.stderr_text().contains("the web UI stays up")
    });

    // SIGTERM ends the process; the CLI printed nothing but its own lines.
    let _ = Command::new("kill")
        .args(["-TERM", &ui.child.id().to_string()])
        .status();
    let mut status = None;
    wait_until("millrace to exit on SIGTERM", DEADLINE, || {
        status = ui.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{}", ui.stderr_text());
    let stderr = ui.stderr_text();
    assert!(
        !stderr.contains("batch committed") && !stderr.contains("INFO"),
        "no log lines by default: {stderr}"
    );
}

/// `RUST_LOG` turns on the structured logs: events inside the query and batch spans;
/// without it the command prints what it always printed.
#[test]
fn rust_log_shows_query_and_batch_spans() {
    let root = temp_dir();
    let input = common::make_dir(root.path(), "in");
    common::write_atomic(&input, "a.json", common::json_rows(0..10).as_bytes());
    let job = common::write_job(
        root.path(),
        "job.sql",
        &format!(
            "CREATE UNBOUNDED EXTERNAL TABLE events (id BIGINT, payload VARCHAR) STORED AS JSON LOCATION '{}';\n\
             CREATE SINK copied STORED AS NOOP OPTIONS ('trigger' 'available_now') AS SELECT id FROM events;\n",
            input.display()
        ),
    );
    let run = |rust_log: Option<&str>| {
        let mut command = Command::new(MILLRACE);
        command.arg("-f").arg(&job).env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let output = command.output().expect("run millrace");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let quiet = run(None);
    assert!(!quiet.contains("batch committed"), "{quiet}");
    assert!(
        quiet.contains("streaming query 'copied' started"),
        "{quiet}"
    );
    let logged = run(Some("info"));
    let line = logged
        .lines()
        .find(|l| l.contains("batch committed"))
        .unwrap_or_else(|| panic!("no batch log line: {logged}"));
    assert!(
        line.contains("INFO")
            && line.contains("query{name=copied")
            && line.contains("batch{batch_id=0}")
            && line.contains("num_input_rows=10"),
        "{line}"
    );
    assert!(
        logged.contains("query started") && logged.contains("query stopped"),
        "{logged}"
    );
    let bad = run(Some("millrace=nonsense"));
    assert!(
        bad.contains("RUST_LOG='millrace=nonsense' is not a valid filter"),
        "{bad}"
    );
}

#[test]
fn the_shell_setting_and_the_dataframe_builder_start_the_ui() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let session = millrace::Session::new(
        runtime.handle().clone(),
        millrace::SessionSettings::default(),
    );
    let rows = match runtime
        .block_on(session.execute("SET millrace.ui = '127.0.0.1:0'"))
        .unwrap()
    {
        millrace::StatementResult::Rows(rows) => rows,
        _ => panic!("SET millrace.ui answers with the address"),
    };
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    let address = session.ui_address().expect("the UI runs");
    assert!(text.contains(&format!("http://{address}/")), "{text}");
    let (status, _, page) = http(address, "GET", "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("streaming queries"), "{page}");
    assert_eq!(get_json(address, "/api/queries"), serde_json::json!([]));

    let error = runtime
        .block_on(session.execute("SET millrace.ui = 'not an address'"))
        .err()
        .expect("a bad address is refused")
        .to_string();
    assert!(error.contains("HOST:PORT"), "{error}");

    runtime
        .block_on(session.execute("SET millrace.ui = 'off'"))
        .unwrap();
    assert!(session.ui_address().is_none());
    wait_until("the UI to stop listening", DEADLINE, || {
        http(address, "GET", "/api/queries").is_err()
    });

    let ctx = runtime.block_on(async {
        millrace::prelude::StreamingContext::builder()
            .ui("127.0.0.1:0")
            .build()
            .unwrap()
    });
    let address = ctx.ui_address().expect("the builder started the UI");
    assert!(address.ip().is_loopback());
    assert_eq!(get_json(address, "/api/queries"), serde_json::json!([]));
}

/// Where playwright-core is installed by scripts/browser.sh.
fn playwright_core() -> PathBuf {
    let cache = std::env::var_os("MILLRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/millrace")
        });
    cache.join("playwright/node_modules/playwright-core")
}

#[test]
fn the_query_page_draws_live_charts_in_headless_chromium() {
    let playwright = playwright_core();
    let missing: Vec<&str> = [
        (!Path::new("/usr/bin/chromium").exists()).then_some("/usr/bin/chromium"),
        (!playwright.join("package.json").exists()).then_some("playwright-core"),
        (!Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()))
        .then_some("node"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        println!(
            "SKIPPED the_query_page_draws_live_charts_in_headless_chromium: {} not installed \
             (scripts/browser.sh install installs chromium with apt-get and playwright-core \
             with npm)",
            missing.join(", ")
        );
        return;
    }
    let root = temp_dir();
    let job = rate_job(root.path());
    let ui = UiProcess::start(root.path(), &job);
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_ui");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("query_page.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = root.path().join("chromium-profile");
    let url = format!("http://{}/queries/per_second", ui.address);
    let output = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/query_page.cjs"))
        .arg(&playwright)
        .arg(&url)
        .arg(&screenshot)
        .arg(&profile)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the browser script; stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(output.status.success(), "browser script failed: {report}");
    assert_eq!(report["errors"], serde_json::json!([]), "page errors");
    assert_eq!(
        report["offsite"],
        serde_json::json!([]),
        "requests off loopback"
    );
    let (first, later) = (&report["first"], &report["later"]);
    for snapshot in [first, later] {
        let charts = snapshot["charts"].as_array().unwrap();
        assert_eq!(charts.len(), 7);
        for chart in charts {
            assert_eq!(chart["canvas"], true, "chart not drawn: {chart}");
            assert!(chart["series"].as_u64().unwrap() >= 1, "{chart}");
        }
    }
    let batch = |s: &Value| s["batch"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(
        batch(later) >= batch(first) + 2,
        "the last-batch figure moved without a reload: {report}"
    );
    // Every chart plots up to the latest batch, and moved with it.
    for (before, after) in first["charts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(later["charts"].as_array().unwrap())
    {
        let last = |c: &Value| c["lastBatch"].as_u64().expect("a plotted batch");
        assert!(last(after) > last(before), "chart did not move: {report}");
        assert!(after["points"].as_u64().unwrap() >= 2, "{after}");
    }
    assert_eq!(later["state"], "active");
    assert!(
        later["sql"]
            .as_str()
            .unwrap()
            .contains("CREATE SINK per_second")
    );
    assert!(later["plan"].as_str().unwrap().contains("Aggregate"));
    assert!(later["progressRows"].as_u64().unwrap() >= 2);
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    println!("screenshot of the query page: {}", screenshot.display());
}
