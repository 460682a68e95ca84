#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the PostgreSQL sink's tests and for
# trying sql/examples/sensor_alerts_postgres.sql.
#
#   scripts/postgres.sh install             Debian's postgresql, if absent (apt-get)
#   scripts/postgres.sh start [OWNER_PID]   initdb into a new temporary directory, start
#                                           on a free loopback port (or $PGPORT); prints
#                                           "PORT DIR PID" (the password of user
#                                           postgres is in DIR/password)
#   scripts/postgres.sh stop DIR            stop that server (by its PID) and delete DIR
#
# With OWNER_PID, a watcher stops the server and deletes its directory once that
# process has exited (the tests pass their own PID, so a server never outlives its
# test binary, even when it panics). The server refuses to run as root, so as root it
# runs as the `postgres` user. Connections from 127.0.0.1 need the password
# (scram-sha-256); nothing listens beyond loopback.
set -euo pipefail

bin_dir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        return 1
    fi
    echo "$dir"
}

install() {
    if bin_dir >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed; run as root, or: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    echo "postgres.sh: installing Debian's postgresql" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    # Debian's package starts a cluster of its own on 5432; the tests do not use it.
    bin_dir >/dev/null
}

# Runs a command as the server's user (postgres when we are root).
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local owner=${1:-}
    install
    local bin dir port pid
    bin=$(bin_dir)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/millrace-pg.XXXXXX")
    chmod 700 "$dir"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/password" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # A port picked free can be taken before the server binds it: try a few.
    for _ in 1 2 3 4 5; do
        port=${PGPORT:-$(free_port)}
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" \
            start >/dev/null 2>&1; then
            pid=$(head -1 "$dir/data/postmaster.pid")
            if [ -n "$owner" ]; then
                # Detached watcher: stops the server once the owner has exited.
                nohup bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; '$0' stop '$dir'" \
                    >/dev/null 2>&1 &
            fi
            echo "$port $dir $pid"
            return 0
        fi
    done
    cat "$dir/server.log" >&2
    exit 1
}

stop() {
    local dir=$1 pid
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid=$(head -1 "$dir/data/postmaster.pid")
        # SIGINT: PostgreSQL's fast shutdown (ends sessions, checkpoints, exits).
        kill -INT "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    case "$dir" in
        */millrace-pg.*) rm -rf "$dir" ;;
    esac
}

case "${1:-}" in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:?stop needs the directory printed by start}" ;;
    *)
        echo "usage: $0 install | start [OWNER_PID] | stop DIR" >&2
        exit 2
        ;;
esac
