#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the PostgreSQL sink's tests and for
# trying sql/examples/sensor_alerts_postgres.sql.
#
#   scripts/postgres.sh install             Debian's postgresql, if absent (apt-get)
#   scripts/postgres.sh start [OWNER_PID] [tls]
#                                           initdb into a new temporary directory, start
#                                           on a free loopback port (or $PGPORT); prints
#                                           "PORT DIR PID" (the password of user
#                                           postgres is in DIR/password). With `tls`,
#                                           the server has ssl = on and a certificate
#                                           for DNS name `localhost` only, signed by a
#                                           throwaway CA (DIR/ca.crt); DIR/other-ca.crt
#                                           is a second CA that signed nothing (both made
#                                           with the openssl CLI, installed if absent)
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

# A throwaway CA and a server certificate for `localhost` signed by it, in DIR/tls/
# (ca.crt, server.crt, server.key), and another CA that signed nothing (other-ca.crt).
make_certificates() {
    local dir=$1 tls=$1/tls
    if ! command -v openssl >/dev/null; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: the openssl command is missing; run as root, or: sudo apt-get install -y openssl" >&2
            exit 1
        fi
        echo "postgres.sh: installing Debian's openssl" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >&2
    fi
    mkdir -p "$tls"
    (
        cd "$tls"
        for ca in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=millrace test $ca" \
                -keyout "$ca.key" -out "$ca.crt" 2>/dev/null
        done
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt 2>/dev/null
        chmod 600 server.key
    )
    cp "$tls/ca.crt" "$tls/other-ca.crt" "$dir/"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local owner=${1:-} tls=${2:-}
    install
    local bin dir port pid ssl=""
    bin=$(bin_dir)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/millrace-pg.XXXXXX")
    chmod 700 "$dir"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password"
    if [ "$tls" = tls ]; then
        make_certificates "$dir"
        ssl="-c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key"
    fi
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
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off $ssl" \
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
    start) start "${2:-}" "${3:-}" ;;
    stop) stop "${2:?stop needs the directory printed by start}" ;;
    *)
        echo "usage: $0 install | start [OWNER_PID] [tls] | stop DIR" >&2
        exit 2
        ;;
esac
