#!/usr/bin/env bash
# Regenerates the differential suite's Spark outputs (tests/spark/<scenario>/spark/)
# with Apache Spark 4.3.0: installs pyspark 4.3.0 from PyPI into a venv under
# ~/.cache/millrace/pyspark/ (skipped when present; needs Python 3.10+ and Java 17),
# rewrites every scenario directory from tests/spark/spark_reference.py, then runs
# each scenario's Spark query over its input files, one file per micro-batch.
# Spark runs only here, on loopback (driver on 127.0.0.1, no UI); the Rust test
# tests/spark_differential.rs reads the committed outputs. Arguments: scenario
# names to regenerate only those (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${MILLRACE_PYSPARK_CACHE:-$HOME/.cache/millrace/pyspark}"
venv="$cache/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pyspark, sys; sys.exit(pyspark.__version__ != "4.3.0")' 2>/dev/null; then
  echo "installing pyspark 4.3.0 into $venv" >&2
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'pyspark==4.3.0'
fi
command -v java >/dev/null || { echo "Spark needs Java 17 on PATH (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
export TZ=UTC SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$venv/bin/python"
start=$(date +%s)
"$venv/bin/python" tests/spark/spark_reference.py "$@"
echo "Spark outputs regenerated in $(( $(date +%s) - start )) s" >&2
