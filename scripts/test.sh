#!/usr/bin/env bash
# The test command of the README: builds millrace and runs every test (unit,
# integration, sql/ scripts, crash tests), after checking that the criterion
# benchmarks still run (each benchmark once, in test mode). Ends with one line
# totalling the tests that ran. The Kafka tests run against Apache Kafka 4.4, started
# on free loopback ports by scripts/kafka-broker.sh (one broker per test binary); it
# is installed first (Maven Central, once per machine, into ~/.cache/millrace/: about
# 30 seconds the first time; needs Java 17 and Maven). The web UI test drives
# a real headless chromium, installed by scripts/browser.sh (apt-get, npm). The
# PostgreSQL tests start a real server the same way through scripts/postgres.sh. The
# Delta Lake tests read and write tables with the Python deltalake package.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo's default target directory (./target) unless CARGO_TARGET_DIR says otherwise,
# so `cargo run -- demo` and this script share one build; .ci/run points it outside
# the clone to stay incremental across fresh clones.
scripts/kafka-broker.sh install
# Debian's postgresql for the PostgreSQL sink's tests (tests/postgres_sink.rs starts
# its own throwaway server on a free loopback port through scripts/postgres.sh).
scripts/postgres.sh install
# The Delta tests' independent reader and writer: the Python `deltalake` package and
# pyarrow from PyPI, in a venv under ~/.cache/millrace/deltalake-py/ (once per machine).
scripts/delta-python.sh install
# The web UI test's headless browser (Debian's chromium, playwright-core from npm);
# without them that test prints SKIPPED and why.
scripts/browser.sh install
cargo test --benches
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test "$@" 2>&1 | tee "$log"
passed=$(grep -oE '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
