#!/usr/bin/env python3
"""Soak test: a windowed aggregation from CSV files to Parquet over many batches,
restarted every few hundred batches, recording at batch 100, 1,000 and 10,000 (or the
points given) the checkpoint's size and file count, the restart time (a run that
opens the checkpoint, recovers and finds no new input) and the peak RSS of the runs.
All of them should stay flat: the file-source log and the sink manifest are
compacted, offsets/commits/state keep the newest `retain_batches`.

Each input file is one batch (`max_files_per_trigger` 1) of 40 readings 6 seconds
apart in event time, so a one-minute window closes every 10 files. Input files are
deleted after their batch, as a job archiving its input would (Spark's
`cleanSource`), so the source log's compaction holds only files still present.

    scripts/soak.py --bin target/release/millrace --batches 10000 --restart-every 300
    scripts/soak.py --bin ... --batches 60 --restart-every 20 --report-at 20,60 --json

Prints a Markdown table (or JSON with --json). Exit status 1 if the output is not
exactly the expected windows (every input row counted once).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

SENSORS = 4
ROWS_PER_FILE = 40
SECONDS_PER_FILE = 60 // 10  # 10 files per one-minute window


def write_file(input_dir, index):
    """Input file `index`: ROWS_PER_FILE readings spread over SECONDS_PER_FILE s."""
    base = 1_767_225_600 + index * SECONDS_PER_FILE  # 2026-01-01T00:00:00Z
    lines = ["sensor,ts,v"]
    for r in range(ROWS_PER_FILE):
        t = base + (r * SECONDS_PER_FILE) // ROWS_PER_FILE
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        lines.append(f"s{r % SENSORS},{stamp},{index % 7}.5")
    name = f"f{index:07d}.csv"
    tmp = os.path.join(input_dir, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, os.path.join(input_dir, name))


def tree_size(path):
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return total, files


def run(binary, job, cwd):
    """Runs the job once (trigger available_now); wall time and peak RSS (KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    done = subprocess.run([binary, "-f", job], cwd=cwd, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"millrace failed ({done.returncode}):\n{done.stderr[-4000:]}")
    # ru_maxrss of children is the maximum over all children so far: a run that
    # peaks lower than an earlier one reports the earlier peak, so it can only grow.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, peak, before


def committed_batches(ckpt):
    commits = os.path.join(ckpt, "commits")
    ids = [int(n) for n in os.listdir(commits) if n.isdigit()] if os.path.isdir(commits) else []
    return max(ids) + 1 if ids else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="the millrace binary")
    p.add_argument("--batches", type=int, default=10_000, help="input files (= data batches)")
    p.add_argument("--restart-every", type=int, default=300)
    p.add_argument("--report-at", default="100,1000,10000")
    p.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="millrace-soak-")
    os.makedirs(work, exist_ok=True)
    input_dir, out, ckpt = (os.path.join(work, d) for d in ("in", "out", "ckpt"))
    os.makedirs(input_dir, exist_ok=True)
    job = os.path.join(work, "job.sql")
    with open(job, "w") as f:
        f.write(
            f"CREATE UNBOUNDED EXTERNAL TABLE ev (sensor VARCHAR, ts TIMESTAMP, v DOUBLE,\n"
            f"  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)\n"
            f"STORED AS CSV LOCATION '{input_dir}'\n"
            f"OPTIONS ('has_header' 'true', 'max_files_per_trigger' '1');\n"
            f"CREATE SINK per_minute STORED AS PARQUET LOCATION '{out}'\n"
            f"OPTIONS ('checkpoint' '{ckpt}', 'trigger' 'available_now') AS\n"
            f"SELECT window(ts, '1 minute') AS window, sensor, count(*) AS n, avg(v) AS avg_v\n"
            f"FROM ev GROUP BY window(ts, '1 minute'), sensor;\n"
        )
    points = sorted(int(x) for x in args.report_at.split(",") if x)
    reports, written, peak_rss = [], 0, 0
    started = time.monotonic()
    while written < args.batches:
        segment = min(args.restart_every, args.batches - written)
        for i in range(written, written + segment):
            write_file(input_dir, i)
        written += segment
        _, peak_rss, _ = run(args.bin, job, work)
        # Processed input is archived (deleted), as a long-running job's would be.
        for n in os.listdir(input_dir):
            if n.endswith(".csv"):
                os.remove(os.path.join(input_dir, n))
        # Restart time: open the checkpoint, recover, find nothing new.
        restart, _, _ = run(args.bin, job, work)
        while points and written >= points[0]:
            size, files = tree_size(ckpt)
            manifest_size, manifest_files = tree_size(os.path.join(out, "_millrace_sink"))
            reports.append({
                "batch": points.pop(0),
                "inputFiles": written,
                "committedBatches": committed_batches(ckpt),
                "checkpointBytes": size + manifest_size,
                "checkpointFiles": files + manifest_files,
                "sourceLogFiles": len(os.listdir(os.path.join(ckpt, "sources", "ev", "files"))),
                "sinkManifestFiles": manifest_files,
                "restartSeconds": round(restart, 3),
                "peakRssMiB": round(peak_rss / 1024, 1),
                "elapsedSeconds": round(time.monotonic() - started, 1),
            })
            # As it happens too, so a long run cut short still leaves its figures.
            print(json.dumps(reports[-1]), file=sys.stderr, flush=True)

    # Every input row counted once: the closed windows' counts add up to the rows of
    # the files whose windows the final watermark closed.
    # The last reading is at 6W - 1 s, the watermark 10 s behind: a window [m, m+60)
    # is emitted once its end is at or before the watermark.
    closed_windows = (written * SECONDS_PER_FILE - 11) // 60
    expected = closed_windows * 10 * ROWS_PER_FILE
    counted = subprocess.run(
        [args.bin, "-c",
         f"CREATE EXTERNAL TABLE o STORED AS PARQUET LOCATION '{out}/'; "
         f"SELECT CAST(sum(n) AS BIGINT) = {expected} AS counted_once FROM o"],
        cwd=work, capture_output=True, text=True)
    ok = "true" in counted.stdout
    result = {"reports": reports, "expectedRows": expected, "outputCheck": ok,
              "query": counted.stdout.strip()}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("| batch | committed batches | checkpoint (bytes / files) | source log files | "
              "sink manifest files | restart (s) | peak RSS (MiB) | elapsed (s) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in reports:
            print(f"| {r['batch']} | {r['committedBatches']} | {r['checkpointBytes']} / "
                  f"{r['checkpointFiles']} | {r['sourceLogFiles']} | {r['sinkManifestFiles']} | "
                  f"{r['restartSeconds']} | {r['peakRssMiB']} | {r['elapsedSeconds']} |")
        print(f"\noutput check ({expected} rows in closed windows): {'ok' if ok else 'FAILED'}")
        if not ok:
            print(counted.stdout, counted.stderr)
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
