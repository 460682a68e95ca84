//! `millrace bench --workload kafka-filter|kafka-window`, driven as a user drives it:
//! the workload names parse, a missing or unreachable broker is a clear error (no
//! broker needed for those), and a real run against a test broker reports its input.
//! Nothing here depends on how fast anything runs.

mod common;

use std::process::{Command, Output};

use common::kafka::shared;

fn millrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millrace"))
        .args(args)
        .output()
        .expect("run millrace")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback address where nothing listens (a port that was free a moment ago).
fn unreachable_bootstrap() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn an_unreachable_bootstrap_names_the_address_and_how_to_start_a_broker() {
    let bootstrap = unreachable_bootstrap();
    for workload in ["kafka-filter", "kafka-window"] {
        let out = millrace(&[
            "bench",
            "--workload",
            workload,
            "--rows",
            "10",
            "--bootstrap",
            &bootstrap,
        ]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{workload}: {stderr}");
        assert!(
            stderr.contains("no Kafka broker reachable") && stderr.contains(&bootstrap),
            "{workload}: {stderr}"
        );
        assert!(
            stderr.contains("scripts/kafka-broker.sh start"),
            "{workload}: {stderr}"
        );
    }
}

#[test]
fn kafka_workloads_need_a_bootstrap_and_a_known_delivery() {
    let out = millrace(&["bench", "--workload", "kafka-window", "--rows", "10"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--bootstrap") && stderr.contains("scripts/kafka-broker.sh start"),
        "{stderr}"
    );
    let out = millrace(&[
        "bench",
        "--workload",
        "kafka-filter",
        "--bootstrap",
        &unreachable_bootstrap(),
        "--delivery",
        "twice",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("at_least_once"), "{stderr}");
    let out = millrace(&["bench", "--workload", "kafka-join"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown workload 'kafka-join'") && stderr.contains("kafka-window"),
        "{stderr}"
    );
    let out = millrace(&["bench", "--bootstrap", "127.0.0.1:9092", "--rows", "10"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("apply to the kafka-filter"), "{stderr}");
}

#[test]
fn kafka_filter_runs_against_a_real_broker_and_reports_its_input() {
    let broker = shared();
    let out = millrace(&[
        "bench",
        "--workload",
        "kafka-filter",
        "--rows",
        "2000",
        "--bootstrap",
        &broker.bootstrap,
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let report = stdout
        .lines()
        .find(|l| l.starts_with("kafka-filter exactly_once"))
        .unwrap_or_else(|| panic!("no report line: {stdout}"));
    assert!(report.contains(" 2000 rows in "), "{report}");
    // The filter keeps readings with n % 100 < 50, and the run checks the sink wrote
    // exactly those before it reports.
    assert!(report.contains("(1000 rows out)"), "{report}");
    assert!(
        report.contains("rows/s") && report.contains("p95"),
        "{report}"
    );
}
