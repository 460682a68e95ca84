#!/usr/bin/env bash
# The test command of the README: builds millrace and runs every test (unit,
# integration, sql/ scripts, crash tests), after checking that the criterion
# benchmarks still run (each benchmark once, in test mode).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/millrace/target}"
cargo test --benches
cargo test "$@"
