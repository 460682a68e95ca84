#!/usr/bin/env bash
# The independent Delta Lake reader and writer of the Delta tests: the `deltalake`
# Python package (delta-rs's Python binding) with pyarrow, from PyPI, in a venv under
# ~/.cache/millrace/deltalake-py/ (installed once; needs Python 3.10+).
#
#   scripts/delta-python.sh install                 install if absent
#   scripts/delta-python.sh read TABLE              JSON: {"version", "rows", "history"}
#   scripts/delta-python.sh write TABLE MODE        append/overwrite the JSON rows read
#                                                   from standard input (a list of objects)
#   scripts/delta-python.sh delete TABLE PREDICATE  a DELETE commit (removes data)
set -euo pipefail
cd "$(dirname "$0")/.."
DELTALAKE_VERSION=1.6.6
PYARROW_VERSION=26.0.1
venv="${MILLRACE_DELTA_PY:-$HOME/.cache/millrace/deltalake-py}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import deltalake, pyarrow, sys; sys.exit(deltalake.__version__ != '$DELTALAKE_VERSION' or pyarrow.__version__ != '$PYARROW_VERSION')" 2>/dev/null; then
  echo "delta-python.sh: installing deltalake $DELTALAKE_VERSION and pyarrow $PYARROW_VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "deltalake==$DELTALAKE_VERSION" "pyarrow==$PYARROW_VERSION" >&2
fi
case "${1:-}" in
  install) ;;
  read|write|delete) exec "$venv/bin/python" scripts/delta_python.py "$@" ;;
  *) echo "usage: $0 install | read TABLE | write TABLE MODE | delete TABLE PREDICATE" >&2; exit 2 ;;
esac
