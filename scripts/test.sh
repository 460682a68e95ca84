#!/usr/bin/env bash
# The test command of the README: builds millrace and runs every test (unit,
# integration, sql/ scripts, crash tests), after checking that the criterion
# benchmarks still run (each benchmark once, in test mode). Ends with one line
# totalling the tests that ran. The Kafka tests start real brokers on loopback
# through scripts/kafka-broker.sh; they are installed first (once per machine, into
# ~/.cache/millrace/brokers: about 8 minutes the first time). The web UI test drives
# a real headless chromium, installed by scripts/browser.sh (apt-get, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/millrace/target}"
scripts/kafka-broker.sh install
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
