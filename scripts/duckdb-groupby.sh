#!/usr/bin/env bash
# DuckDB's time for the groupby benchmark's GROUP BY as one batch query over the same
# CSV files, for docs/benchmarks.md:
#
#   target/release/millrace bench --workload groupby --keys 2000000 --rows 5000000 --dir /tmp/groupby
#   scripts/duckdb-groupby.sh /tmp/groupby [THREADS]      # THREADS defaults to 2
#
# Installs DuckDB (pinned) from PyPI into a virtualenv under ~/.cache/millrace/duckdb
# the first time (skipped when present). Prints wall and CPU seconds (user + system,
# all threads) of `CREATE TABLE r AS SELECT key, count(*), sum(x) ... GROUP BY key`,
# which materialises the result the way millrace computes it, and the result's totals
# as a check (groups, sum of counts = input rows).
set -euo pipefail
DUCKDB_VERSION=2.0.1
dir=${1:?usage: scripts/duckdb-groupby.sh DIR [THREADS] (DIR as given to millrace bench --dir)}
threads=${2:-2}
venv="$HOME/.cache/millrace/duckdb"
if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION"
fi
"$venv/bin/python" - "$dir" "$threads" <<'PY'
import resource, sys, time
import duckdb

directory, threads = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
wall0, cpu0 = time.perf_counter(), cpu()
con.execute(
    "CREATE TABLE r AS SELECT key, count(*) AS n, sum(x) AS total FROM read_csv(?, header = false, "
    "columns = {'key': 'BIGINT', 'ts': 'TIMESTAMP', 'x': 'BIGINT'}) GROUP BY key",
    [f"{directory}/in/*.csv"],
)
wall, cpu_s = time.perf_counter() - wall0, cpu() - cpu0
groups, rows = con.execute("SELECT count(*), sum(n) FROM r").fetchone()
print(f"duckdb {duckdb.__version__} ({threads} threads): {wall:.3f} s wall, CPU {cpu_s:.3f} s "
      f"({cpu_s / wall:.2f} cores); {groups} groups over {rows} rows")
PY
