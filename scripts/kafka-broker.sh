#!/usr/bin/env bash
# Installs, starts and stops the Apache Kafka broker millrace's tests and examples run
# against: Apache Kafka 4.4.0 from Maven Central, one node in KRaft combined mode
# (broker and controller in one JVM) on 127.0.0.1.
#
#   scripts/kafka-broker.sh install          fetch the broker's jars (skipped when present)
#   scripts/kafka-broker.sh start [PORT] [--watch PID] [--set key=value]...
#                                            format fresh storage and start a broker on
#                                            127.0.0.1:PORT (a free port when PORT is absent
#                                            or 0); prints `127.0.0.1:PORT` when it is ready
#   scripts/kafka-broker.sh stop PORT        stop it (SIGTERM, then SIGKILL) and delete its data
#   scripts/kafka-broker.sh kill PORT        kill -9 it (a crash); its data stays
#   scripts/kafka-broker.sh resume PORT      start a killed broker again on its old data
#
# --watch PID stops the broker when process PID ends (the test harness passes its own
# PID so that no JVM outlives `cargo test`). --set appends a broker setting (for example
# offsets.retention.minutes=1).
#
# Install: scripts/kafka/pom.xml names the broker (org.apache.kafka:kafka_2.13) and a log
# backend; Maven copies their runtime jars into $MILLRACE_KAFKA_HOME (default
# ~/.cache/millrace/kafka-4.4.0/lib), outside the clone. About 30 s cold, 43 MB.
# Start: storage formatted per broker (kafka.tools.StorageTool, ~2 s) then kafka.Kafka in
# a JVM sized for tests (384 MB heap, SerialGC); ready when the log says "Kafka Server
# started" (~5 s on an idle 2-core machine). Each broker's files (server.properties, data,
# log, pid) are in $MILLRACE_KAFKA_RUN/<PORT> (default ~/.cache/millrace/kafka-run).
set -euo pipefail

version=4.4.0
here="$(cd "$(dirname "$0")" && pwd)"
home="${MILLRACE_KAFKA_HOME:-$HOME/.cache/millrace/kafka-$version}"
runs="${MILLRACE_KAFKA_RUN:-$HOME/.cache/millrace/kafka-run}"

usage() { sed -n '2,17p' "$0" >&2; exit 2; }

install() {
  [ -f "$home/.installed" ] && return
  mkdir -p "$(dirname "$home")"
  # One install at a time: test binaries started together all call install.
  exec 9>"$home.lock"
  flock 9
  [ -f "$home/.installed" ] && return
  echo "installing Apache Kafka $version into $home (Maven Central, ~30 s)" >&2
  local tmp="$home.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -B -q -f "$here/kafka/pom.xml" -Dmaven.repo.local="$tmp/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >&2
  rm -rf "$tmp/m2"
  cp "$here/kafka/log4j2.properties" "$here/kafka/tools-log4j2.properties" "$tmp/"
  touch "$tmp/.installed"
  rm -rf "$home"
  mv "$tmp" "$home"
}

java_cmd() { # heap, log config
  echo java "-Xms$1" "-Xmx$2" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$home/$3"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts the JVM of the broker in $dir and waits for its readiness line.
launch() {
  local dir="$1" port="$2" watch="$3"
  : >"$dir/broker.log"
  # setsid: the broker does not get the terminal's signals and outlives this script.
  # shellcheck disable=SC2046
  setsid $(java_cmd 128m 384m log4j2.properties) -cp "$home/lib/*" kafka.Kafka \
    "$dir/server.properties" >"$dir/broker.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/pid"
  if [ -n "$watch" ]; then
    # The watchdog: stops the broker (and deletes its files) once PID is gone.
    setsid bash -c '
      while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
      kill "$2" 2>/dev/null
      for _ in $(seq 1 50); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$2" 2>/dev/null
      rm -rf "$3"' watchdog "$watch" "$pid" "$dir" \
      >/dev/null 2>&1 </dev/null &
    echo $! >"$dir/watchdog"
    echo "$watch" >"$dir/watch"
  fi
  local start=$SECONDS
  while ! grep -q "Kafka Server started" "$dir/broker.log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the Kafka broker exited at start; its log ($dir/broker.log):" >&2
      tail -40 "$dir/broker.log" >&2
      exit 1
    fi
    if [ $((SECONDS - start)) -ge 120 ]; then
      echo "the Kafka broker was not ready within 120 s; log: $dir/broker.log" >&2
      kill -9 "$pid" 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
  port_open "$port" || { echo "broker ready but port $port closed" >&2; exit 1; }
  echo "127.0.0.1:$port"
}

start() {
  local port=0 watch="" sets=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --watch) watch="$2"; shift 2 ;;
      --set) sets+=("$2"); shift 2 ;;
      [0-9]*) port="$1"; shift ;;
      *) usage ;;
    esac
  done
  install
  [ "$port" = 0 ] && port=$(free_port)
  local controller
  controller=$(free_port)
  [ "$controller" = "$port" ] && controller=$(free_port)
  if port_open "$port"; then
    echo "port $port is already taken (a broker already running? scripts/kafka-broker.sh stop $port)" >&2
    exit 1
  fi
  local dir="$runs/$port"
  rm -rf "$dir"
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
num.network.threads=2
num.io.threads=2
EOF
  local s
  for s in "${sets[@]}"; do echo "$s" >>"$dir/server.properties"; done
  local cluster
  # A Kafka cluster id is 16 random bytes in URL-safe base64. It may begin with '-',
  # so it is passed as --cluster-id=ID: as a separate argument the option parser
  # would take it for an option (one start in 64 failed that way).
  cluster=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
  # shellcheck disable=SC2046
  $(java_cmd 64m 256m tools-log4j2.properties) -cp "$home/lib/*" kafka.tools.StorageTool \
    format --cluster-id="$cluster" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
    echo "formatting the broker's storage failed:" >&2
    cat "$dir/format.log" >&2
    exit 1
  }
  launch "$dir" "$port" "$watch"
}

stop_watchdog() {
  [ -f "$1/watchdog" ] || return 0
  kill "$(cat "$1/watchdog")" 2>/dev/null || true
  rm -f "$1/watchdog"
}

stop() {
  local port="${1:?port}" dir="$runs/${1:-}" pid
  [ -f "$dir/pid" ] || { echo "no broker started on port $port" >&2; return; }
  pid=$(cat "$dir/pid")
  stop_watchdog "$dir"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -rf "$dir"
}

kill_now() {
  local port="${1:?port}" dir="$runs/${1:-}" pid
  [ -f "$dir/pid" ] || { echo "no broker started on port $port" >&2; return; }
  pid=$(cat "$dir/pid")
  # The watchdog would delete the data on the broker's death: `resume` needs it.
  stop_watchdog "$dir"
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || port_open "$port" || return 0
    sleep 0.05
  done
  echo "port $port is still open 10 s after kill -9 $pid" >&2
  exit 1
}

resume() {
  local port="${1:?port}" dir="$runs/${1:-}" watch=""
  [ -f "$dir/server.properties" ] || { echo "no broker data for port $port" >&2; exit 1; }
  [ -f "$dir/watch" ] && watch=$(cat "$dir/watch")
  launch "$dir" "$port" "$watch"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill) shift; kill_now "$@" ;;
  resume) shift; resume "$@" ;;
  *) usage ;;
esac
