"""Reads and writes Delta tables with the `deltalake` Python package, for the Delta
tests (run through scripts/delta-python.sh, which installs it)."""

import json
import os
import sys

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake


def main():
    command, table = sys.argv[1], sys.argv[2]
    if command == "read":
        dt = DeltaTable(table)
        rows = dt.to_pyarrow_table().to_pylist()
        history = [
            {"version": h.get("version"), "operation": h.get("operation")}
            for h in dt.history()
        ]
        print(json.dumps({"version": dt.version(), "rows": rows, "history": history}, default=str))
    elif command == "write":
        rows = json.load(sys.stdin)
        write_deltalake(table, pa.Table.from_pylist(rows), mode=sys.argv[3])
    elif command == "delete":
        DeltaTable(table).delete(sys.argv[3])


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # Skip the interpreter's finalisation: under load, the native threads of the
    # deltalake/pyarrow extensions occasionally abort it ("terminate called without an
    # active exception") after the work is done.
    os._exit(0)
