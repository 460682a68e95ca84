"""The differential suite against Apache Spark: scenario definitions and the Spark runner.

`scripts/spark-reference.sh` runs this file with pyspark 4.3.0 (from its venv under
~/.cache/millrace/pyspark/). It

1. writes every scenario's directory `tests/spark/<scenario>/`:
   - `input/NNN.json`: the input files, JSON lines, one file per micro-batch;
   - `scenario.json`: the input schema, the watermark, the output mode, a description;
   - `millrace.sql`: the table declaration (`'{input}'` stands for the input directory),
     optional `SET` statements, and the query, last;
   - `spark.py`: Spark's equivalent, a function `query(spark, events)` over the
     streaming DataFrame `events` (also registered as the view `events`);
2. runs each scenario's Spark query over its input files, one file per micro-batch
   (`maxFilesPerTrigger` 1, `trigger(availableNow=True)`), and writes what each
   micro-batch emitted to `tests/spark/<scenario>/spark/batch-NNNNN.json` (JSON lines,
   sorted; timestamps as UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ`, structs as objects). A query
   Spark refuses writes `spark/error.txt` instead.

`tests/spark_differential.rs` reads these files (never Spark) and compares millrace's
output with them. The inputs are data written by this file, deterministically (no
randomness, no clock).

Usage: python spark_reference.py [--only NAME ...] [--write-only]
"""

import datetime
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = datetime.datetime(2026, 1, 1, 10, 0, 0)

# ---------------------------------------------------------------------------
# Input data sets: lists of files, each a list of rows. A row is a tuple
# (k, second offset from 2026-01-01T10:00:00 or None, v, x); None is JSON null.
# ---------------------------------------------------------------------------

SCHEMA = [("k", "string"), ("ts", "timestamp"), ("v", "bigint"), ("x", "double")]

# Keyed and global aggregation: NULL keys, NULL values, negative numbers.
AGG = [
    [("a", 1, 1, 1.5), ("b", 2, 2, 2.5), ("a", 3, 3, None), (None, 4, 4, 4.0)],
    [("a", 5, None, 0.25), ("c", 6, 6, 6.0), ("b", 7, -7, -1.0), (None, 8, None, None)],
    [("a", 9, 10, 1.0), ("c", 10, 6, 6.0)],
]

# Windows, watermark 10 s, tumbling 10 s: every late row is behind BOTH the previous
# batch's watermark and the current one (the two engines agree on those).
#   batch 0: no watermark yet           max ts 12 -> watermark 2 for batch 1
#   batch 1: late <= none, evict <= 2   max ts 25 -> 15
#   batch 2: late <= 2,    evict <= 15  (-5: window [-10, 0) ended at 0 <= 2: late)
#   batch 3: late <= 15,   evict <= 21  (9: window [0, 10) ended at 10 <= 15: late)
#   batch 4: no data,      evict <= 30
WIN = [
    [("a", 1, 1, 1.0), ("a", 4, 2, 2.0), ("b", 12, 3, 3.0)],
    [("a", 13, 4, 4.0), ("b", 25, 5, 5.0), ("a", 3, 6, 6.0)],
    [("b", 31, 7, 7.0), ("a", 14, 8, 8.0), ("a", -5, 9, 9.0)],
    [("a", 9, 10, 10.0), ("b", 40, 11, 11.0)],
]

# As WIN, with rows BETWEEN the two watermarks: behind the current batch's watermark
# (millrace today drops them) but not behind the previous batch's (Spark keeps them).
#   batch 2: (a, 8): window [0, 10) ends at 10: 2 < 10 <= 15
#   batch 3: (a, 19): window [10, 20) ends at 20: 15 < 20 <= 21
WIN_BETWEEN = [
    [("a", 1, 1, 1.0), ("a", 4, 2, 2.0), ("b", 12, 3, 3.0)],
    [("a", 13, 4, 4.0), ("b", 25, 5, 5.0)],
    [("b", 31, 7, 7.0), ("a", 8, 8, 8.0)],
    [("a", 19, 10, 10.0), ("b", 40, 11, 11.0)],
]

# Sliding windows (10 s every 5 s), watermark 10 s; late rows behind both watermarks
# for every window they fall in.
#   batch 1: late <= none, evict <= 2;  batch 2: late <= 2, evict <= 15
#   batch 3: late <= 15, evict <= 21 (4: windows [-5,5) and [0,10) end <= 10: late)
SLIDE = [
    [("a", 1, 1, 1.0), ("a", 7, 2, 2.0), ("b", 12, 3, 3.0)],
    [("a", 13, 4, 4.0), ("b", 25, 5, 5.0), ("a", 2, 6, 6.0)],
    [("b", 31, 7, 7.0), ("a", 16, 8, 8.0), ("a", -9, 9, 9.0)],
    [("a", 4, 10, 10.0), ("b", 40, 11, 11.0)],
]

# Session windows, gap 5 s, watermark 10 s.
#   batch 0: a@1 a@3 -> [1, 8); b@2 -> [2, 7)            max 3  -> watermark -7
#   batch 1: a@6 a@10 merge -> [1, 15); b@20 -> [20, 25)   max 20 -> 10
#   batch 2: late <= -7, evict <= 10: b [2, 7) final      max 30 -> 20
#   batch 3: late <= 10, evict <= 20: (a, 3): its session [3, 8) ended at 8 <= 10: late
#   batch 4: no data, evict <= 35
SESSION = [
    [("a", 1, 1, 1.0), ("a", 3, 2, 2.0), ("b", 2, 3, 3.0)],
    [("a", 10, 4, 4.0), ("a", 6, 5, 5.0), ("b", 20, 6, 6.0)],
    [("a", 30, 7, 7.0), ("b", 22, 8, 8.0), ("c", 25, 9, 9.0)],
    [("a", 3, 10, 10.0), ("d", 45, 11, 11.0)],
]

# As SESSION, with a row between the two watermarks in batch 3: (a, 12) opens
# [12, 17): 10 < 17 <= 20.
SESSION_BETWEEN = [
    [("a", 1, 1, 1.0), ("a", 3, 2, 2.0), ("b", 2, 3, 3.0)],
    [("a", 10, 4, 4.0), ("a", 6, 5, 5.0), ("b", 20, 6, 6.0)],
    [("a", 30, 7, 7.0), ("b", 22, 8, 8.0), ("c", 25, 9, 9.0)],
    [("a", 12, 10, 10.0), ("d", 45, 11, 11.0)],
]

# Sliding windows (10 s every 5 s) with rows between the two watermarks in batch 2
# (late <= 2, evict <= 15): (a, 3) falls in [-5, 5) and [0, 10), both ending between
# the two; (a, -4) falls in [-10, 0), ended at 0 <= 2 (late in both engines), and in
# [-5, 5), between.
SLIDE_BETWEEN = [
    [("a", 1, 1, 1.0), ("a", 7, 2, 2.0), ("b", 12, 3, 3.0)],
    [("a", 13, 4, 4.0), ("b", 25, 5, 5.0)],
    [("b", 31, 7, 7.0), ("a", 3, 8, 8.0), ("a", -4, 9, 9.0)],
    [("b", 40, 11, 11.0)],
]

# Rows exactly at the watermark, watermark 10 s. Batch 1 does not move the maximum, so
# batch 2 runs with the previous and the current watermark both at 10:00:20 and the
# two engines must agree on every row of it:
#   batch 0: max 30 -> watermark 20
#   batch 1: late <= none, evict <= 20; (a, 22), (c, 25): max stays 30 -> 20
#   batch 2: late <= 20, evict <= 20: (a, 15) window [10, 20) / session [15, 20) / ts
#            ended exactly at 20: late; (a, 16): window [10, 20) late, session [16, 21)
#            not; (a, 20), (d, 20): ts 20 <= 20 late for deduplication, window
#            [20, 30) not; (a, 21) in time everywhere
#   batch 3: (e, 45) -> 35;  batch 4: no data, evict <= 35
BOUNDARY = [
    [("a", 5, 1, 1.0), ("b", 30, 2, 2.0)],
    [("c", 25, 3, 3.0), ("a", 22, 4, 4.0)],
    [("a", 15, 5, 5.0), ("a", 16, 6, 6.0), ("a", 20, 7, 7.0), ("d", 20, 8, 8.0),
     ("a", 21, 9, 9.0)],
    [("e", 45, 10, 10.0)],
]

# Deduplication: duplicates within a batch and across batches, NULL keys.
DEDUP = [
    [("a", 1, 1, 1.0), ("b", 2, 2, 2.0), ("a", 1, 1, 1.0), (None, 3, 3, 3.0)],
    [("a", 4, 1, 1.0), ("b", 2, 2, 2.0), ("c", 5, 5, 5.0), (None, 3, 3, 3.0)],
    [("c", 6, 5, 5.0), ("d", 7, None, None), ("d", 8, None, None)],
]

# Deduplication with a watermark (10 s): (k, ts) duplicates; late duplicates behind
# both watermarks.
#   batch 0: max 12 -> watermark 2;  batch 1: late <= none, evict <= 2, max 25 -> 15
#   batch 2: late <= 2, evict <= 15: (a, 1) again: 1 <= 2, late
#   batch 3: late <= 15, evict <= 21: (b, 12) again: 12 <= 15, late
DEDUP_WM = [
    [("a", 1, 1, 1.0), ("a", 4, 2, 2.0), ("b", 12, 3, 3.0), ("a", 1, 4, 4.0)],
    [("a", 4, 5, 5.0), ("b", 25, 6, 6.0), ("c", 13, 7, 7.0)],
    [("a", 1, 8, 8.0), ("b", 31, 9, 9.0), ("c", 13, 10, 10.0)],
    [("b", 12, 11, 11.0), ("d", 30, 12, 12.0)],
]

# As DEDUP_WM with a row between the watermarks: batch 2, (a, 10): 2 < 10 <= 15.
DEDUP_WM_BETWEEN = [
    [("a", 1, 1, 1.0), ("a", 4, 2, 2.0), ("b", 12, 3, 3.0)],
    [("a", 4, 5, 5.0), ("b", 25, 6, 6.0)],
    [("a", 10, 8, 8.0), ("b", 31, 9, 9.0)],
    [("d", 30, 12, 12.0)],
]

# dropDuplicatesWithinWatermark on k, watermark 10 s: a key is remembered until the
# watermark passes its first row's ts + 10 s.
#   batch 0: a@1, a@5 (dup)            max 5  -> watermark -5
#   batch 1: a@8 (dup of a@1), b@20    max 20 -> 10
#   batch 2: late <= -5, evict <= 10: a@12 is a dup (a expires at 11 > 10); c@22
#                                      max 22 -> 12
#   batch 3: late <= 10, evict <= 12: a expired (11 <= 12)? a@25 is new after the batch's
#            dedup; b@21 dup
#   batch 4: late <= 12, evict <= 15: a@40
DEDUP_WITHIN = [
    [("a", 1, 1, 1.0), ("a", 5, 2, 2.0)],
    [("a", 8, 3, 3.0), ("b", 20, 4, 4.0)],
    [("a", 12, 5, 5.0), ("c", 22, 6, 6.0)],
    [("a", 25, 7, 7.0), ("b", 21, 8, 8.0)],
    [("a", 40, 9, 9.0), ("c", 23, 10, 10.0)],
]

# NULL event times in a windowed aggregation (and a NULL key).
NULL_TS = [
    [("a", 1, 1, 1.0), ("a", None, 2, 2.0), (None, 3, 3, 3.0)],
    [("a", 12, 4, 4.0), ("b", None, 5, 5.0), ("a", 25, 6, 6.0)],
    [("b", 31, 7, 7.0)],
]

# NULL event times without window(): deduplication and sessions.
NULL_TS_PLAIN = [
    [("a", 1, 1, 1.0), ("a", None, 2, 2.0), ("b", 3, 3, 3.0)],
    [("a", None, 2, 2.0), ("b", 14, 5, 5.0), ("c", None, 6, 6.0)],
    [("b", 31, 7, 7.0), ("c", 32, 8, 8.0)],
]

# Stream-stream joins: two tables, `left_events` and `right_events`, one file of each
# per micro-batch (an empty list is an empty file: that side adds nothing in the
# batch). Both watermarks 10 s unless a scenario says otherwise; the query's watermark
# is the smaller of the two (Spark's default `multipleWatermarkPolicy` min), so a
# quiet side holds it back.
#
# The range condition `l.ts BETWEEN r.ts - 5 s AND r.ts + 5 s`: a left row can still
# find a right row while the right side's rows may be 5 s before it, so it leaves the
# state once the watermark passes its ts + 5 s (and the mirror for right rows).
#   batch 0: a@5 matches a@10 within the batch; c@5 and the NULL keys wait; b@5 waits
#   batch 1: right a@11 is 6 s after left a@5: no match
#   batch 2: left a@7 matches right a@10 and a@11 from the state; left a@30 waits;
#            right c@4 matches left c@5 from the state (c never gets a NULL row)
#   batch 3: right d@30
#   batch 4: left a@14 and right a@16 match each other if neither is late; e@41/e@40
#   then the no-data batch that runs when the watermark moves evicts what is left
JOIN_RANGE_LEFT = [
    [("a", 5, 1, 1.0), ("c", 5, 2, 2.0), (None, 6, 3, 3.0)],
    [],
    [("a", 7, 4, 4.0), ("a", 30, 5, 5.0)],
    [],
    [("a", 14, 6, 6.0), ("e", 41, 7, 7.0)],
]
JOIN_RANGE_RIGHT = [
    [("a", 10, 10, 10.0), ("b", 5, 20, 20.0), (None, 6, 30, 30.0)],
    [("a", 11, 11, 11.0)],
    [("c", 4, 31, 31.0)],
    [("d", 30, 40, 40.0)],
    [("a", 16, 41, 41.0), ("e", 40, 42, 42.0)],
]

# Equal 10 s windows (Spark's StreamingJoinSuite "windowed left outer join"): keys 1-5
# on the left, 3-7 on the right at ts = key; then left 21 and right 22 move the
# watermark to 11 and close window [0, 10): its unmatched rows get their NULL rows;
# then left 22 matches right 22 in window [20, 30).
JOIN_WINDOW_LEFT = [
    [(str(i), i, 2 * i, float(i)) for i in range(1, 6)],
    [("21", 21, 42, 21.0)],
    [("22", 22, 44, 22.0)],
]
JOIN_WINDOW_RIGHT = [
    [(str(i), i, 3 * i, float(i)) for i in range(3, 8)],
    [("22", 22, 66, 22.0)],
    [],
]

# A one-sided range `l.ts < r.ts - 5 s` (inner): left rows wait for later right rows;
# right rows leave once the left watermark passes their ts - 5 s.
JOIN_ONE_SIDED_LEFT = [
    [("1", 5, 1, 1.0)],
    [],
    [("1", 3, 2, 2.0), ("1", 30, 3, 3.0)],
    [],
    [("1", 21, 4, 4.0), ("1", 12, 5, 5.0)],
]
JOIN_ONE_SIDED_RIGHT = [
    [("1", 11, 10, 10.0)],
    [("1", 10, 11, 11.0)],
    [],
    [("0", 30, 12, 12.0)],
    [("1", 28, 13, 13.0), ("1", 19, 14, 14.0)],
]

# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

TABLE = """CREATE UNBOUNDED EXTERNAL TABLE {table} (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE{watermark}
) STORED AS JSON LOCATION '{location}' OPTIONS ('max_files_per_trigger' '1');"""

AGGS_SQL = "count(*) AS n, count(v) AS nv, sum(v) AS s, avg(x) AS a, min(v) AS lo, max(x) AS hi"
WIN_SQL = "count(*) AS n, sum(v) AS s, avg(x) AS a"

SCENARIOS = []


def scenario(name, description, data, mode, millrace, spark, watermark=None, settings=(),
             tables=None):
    """One scenario: `millrace` is the SELECT over `events`, `spark` the body of
    `query(spark, events)` (Python, returning a streaming DataFrame).

    With `tables` (a dict: table name -> (files, watermark delay or None)) the
    scenario reads several tables instead of `events`; `query` then gets a dict of
    streaming DataFrames by table name (each also registered as a view)."""
    tables = tables or {"events": (data, watermark)}
    SCENARIOS.append(dict(name=name, description=description, tables=tables, mode=mode,
                          millrace=millrace, spark=spark, settings=list(settings)))


def sql(text):
    return f'return spark.sql("""{text}""")'


for mode in ("complete", "update"):
    q = f"SELECT {AGGS_SQL} FROM events"
    scenario(f"global_agg_{mode}", f"global count/sum/avg/min/max with NULL values, {mode} mode",
             AGG, mode, q, sql(q))
    q = f"SELECT k, {AGGS_SQL} FROM events GROUP BY k"
    scenario(f"keyed_agg_{mode}", f"per-key count/sum/avg/min/max, a NULL key, {mode} mode",
             AGG, mode, q, sql(q))
    # Spark refuses count(DISTINCT) over a stream ("Distinct aggregations are not
    # supported on streaming DataFrames/Datasets"); its equivalent is a deduplication
    # followed by a count (two stateful operators), which millrace writes as
    # count(DISTINCT) in one aggregation.
    q = "SELECT k, count(DISTINCT v) AS dv FROM events GROUP BY k"
    scenario(f"keyed_count_distinct_{mode}",
             f"count(DISTINCT v) per key (Spark: dropDuplicates then count), {mode} mode",
             AGG, mode, q,
             'from pyspark.sql import functions as F\n'
             'return (events.dropDuplicates(["k", "v"]).groupBy("k")\n'
             '        .agg(F.count("v").alias("dv")))')

q = "SELECT k, count(*) AS n, sum(v) AS s FROM events GROUP BY k HAVING count(*) >= 2"
scenario("keyed_having_update", "HAVING over a keyed aggregation, update mode", AGG, "update", q, sql(q))
q = ("SELECT upper(k) AS uk, v % 2 AS parity, count(*) AS n, max(ts) AS last_ts "
     "FROM events GROUP BY upper(k), v % 2")
scenario("group_by_expressions_complete", "GROUP BY expressions, NULLs in both, max(ts), complete mode",
         AGG, "complete", q, sql(q))

WM10 = "10 seconds"
for mode in ("append", "update", "complete"):
    q = (f"SELECT k, window(ts, '10 seconds') AS window, {WIN_SQL} FROM events "
         f"GROUP BY k, window(ts, '10 seconds')")
    scenario(f"tumbling_{mode}",
             f"10 s tumbling windows per key, watermark 10 s, late rows behind both watermarks, {mode} mode",
             WIN, mode, q, sql(q), watermark=WM10)
for mode in ("append", "update"):
    q = (f"SELECT k, window(ts, '10 seconds') AS window, {WIN_SQL} FROM events "
         f"GROUP BY k, window(ts, '10 seconds')")
    scenario(f"tumbling_between_watermarks_{mode}",
             f"10 s tumbling windows, rows between the previous and the current batch's watermark, {mode} mode",
             WIN_BETWEEN, mode, q, sql(q), watermark=WM10)
    q = (f"SELECT k, window(ts, '10 seconds', '5 seconds') AS window, {WIN_SQL} FROM events "
         f"GROUP BY k, window(ts, '10 seconds', '5 seconds')")
    scenario(f"sliding_{mode}",
             f"10 s windows every 5 s per key, watermark 10 s, late rows, {mode} mode",
             SLIDE, mode, q, sql(q), watermark=WM10)
q = (f"SELECT k, window(ts, '10 seconds', '5 seconds') AS window, {WIN_SQL} FROM events "
     f"GROUP BY k, window(ts, '10 seconds', '5 seconds')")
scenario("sliding_between_watermarks_append",
         "10 s windows every 5 s, rows whose windows end between the two watermarks, append mode",
         SLIDE_BETWEEN, "append", q, sql(q), watermark=WM10)
q = (f"SELECT k, window(ts, '10 seconds') AS window, {WIN_SQL} FROM events "
     f"GROUP BY k, window(ts, '10 seconds')")
scenario("tumbling_watermark_boundary_append",
         "10 s tumbling windows, windows ending exactly at the watermark, append mode",
         BOUNDARY, "append", q, sql(q), watermark=WM10)
q = (f"SELECT k, session_window(ts, '5 seconds') AS session_window, {WIN_SQL} FROM events "
     f"GROUP BY k, session_window(ts, '5 seconds')")
scenario("session_watermark_boundary_append",
         "5 s-gap sessions, a row's session ending exactly at the watermark, append mode",
         BOUNDARY, "append", q, sql(q), watermark=WM10)
scenario("drop_duplicates_watermark_boundary",
         "dropDuplicates(['k', 'ts']), event times exactly at the watermark",
         BOUNDARY, "append", "SELECT DISTINCT ON (k, ts) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicates(["k", "ts"])', watermark=WM10)
q = ("SELECT window(ts, '10 seconds') AS window, count(*) AS n FROM events "
     "GROUP BY window(ts, '10 seconds')")
scenario("tumbling_global_no_watermark_complete",
         "10 s tumbling windows, no key, no watermark (late rows are not late), complete mode",
         WIN, "complete", q, sql(q))

for mode in ("append", "update", "complete"):
    q = (f"SELECT k, session_window(ts, '5 seconds') AS session_window, {WIN_SQL} FROM events "
         f"GROUP BY k, session_window(ts, '5 seconds')")
    scenario(f"session_{mode}",
             f"5 s-gap sessions per key, merging across batches, watermark 10 s, a late row, {mode} mode",
             SESSION, mode, q, sql(q), watermark=WM10)
q = (f"SELECT k, session_window(ts, '5 seconds') AS session_window, {WIN_SQL} FROM events "
     f"GROUP BY k, session_window(ts, '5 seconds')")
scenario("session_between_watermarks_append",
         "5 s-gap sessions, a row whose session ends between the two watermarks, append mode",
         SESSION_BETWEEN, "append", q, sql(q), watermark=WM10)

scenario("distinct_all_columns",
         "SELECT DISTINCT k, v (dropDuplicates on every column), NULL keys, no watermark, append",
         DEDUP, "append", "SELECT DISTINCT k, v FROM events",
         'return events.select("k", "v").dropDuplicates()')
scenario("drop_duplicates_subset",
         "first row per k (dropDuplicates(['k'])), no watermark, NULL key, append",
         DEDUP, "append", "SELECT DISTINCT ON (k) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicates(["k"])')
scenario("drop_duplicates_subset_update",
         "first row per (k, v), no watermark, update mode (same as append)",
         DEDUP, "update", "SELECT DISTINCT ON (k, v) k, v, x FROM events",
         'return events.select("k", "v", "x").dropDuplicates(["k", "v"])')
scenario("drop_duplicates_with_watermark",
         "dropDuplicates(['k', 'ts']) with a 10 s watermark, late duplicates behind both watermarks",
         DEDUP_WM, "append", "SELECT DISTINCT ON (k, ts) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicates(["k", "ts"])', watermark=WM10)
scenario("drop_duplicates_between_watermarks",
         "dropDuplicates(['k', 'ts']), a row between the previous and the current batch's watermark",
         DEDUP_WM_BETWEEN, "append", "SELECT DISTINCT ON (k, ts) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicates(["k", "ts"])', watermark=WM10)
scenario("drop_duplicates_within_watermark",
         "dropDuplicatesWithinWatermark(['k']), watermark 10 s, keys expiring",
         DEDUP_WITHIN, "append", "SELECT DISTINCT ON (k) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicatesWithinWatermark(["k"])',
         watermark=WM10, settings=["SET millrace.distinct_on = 'within_watermark'"])

q = (f"SELECT k, window(ts, '10 seconds') AS window, {WIN_SQL} FROM events "
     f"GROUP BY k, window(ts, '10 seconds')")
scenario("window_null_ts_update", "window() over NULL event times, watermark 10 s, update mode",
         NULL_TS, "update", q, sql(q), watermark=WM10)
scenario("window_null_ts_complete_no_watermark",
         "window() over NULL event times, no watermark, complete mode",
         NULL_TS, "complete", q, sql(q))
q = f"SELECT k, {AGGS_SQL} FROM events GROUP BY k"
scenario("null_ts_keyed_agg_update",
         "keyed aggregation over a watermarked table with NULL event times (not grouped by time)",
         NULL_TS_PLAIN, "update", q, sql(q), watermark=WM10)
scenario("null_ts_drop_duplicates_with_watermark",
         "dropDuplicates(['k', 'ts']) with a watermark, NULL event times",
         NULL_TS_PLAIN, "append", "SELECT DISTINCT ON (k, ts) k, ts, v FROM events",
         'return events.select("k", "ts", "v").dropDuplicates(["k", "ts"])', watermark=WM10)
q = ("SELECT k, session_window(ts, '5 seconds') AS session_window, count(*) AS n FROM events "
     "GROUP BY k, session_window(ts, '5 seconds')")
scenario("null_ts_session_append", "session_window() over NULL event times, watermark 10 s, append mode",
         NULL_TS_PLAIN, "append", q, sql(q), watermark=WM10)

JOIN_COLUMNS = "l.k AS lk, l.ts AS lts, l.v AS lv, r.k AS rk, r.ts AS rts, r.v AS rv"
RANGE_ON = ("l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND "
            "AND r.ts + INTERVAL '5' SECOND")
RANGE_TABLES = {"left_events": (JOIN_RANGE_LEFT, WM10), "right_events": (JOIN_RANGE_RIGHT, WM10)}
for kind in ("inner", "left outer", "right outer", "full outer"):
    q = (f"SELECT {JOIN_COLUMNS} FROM left_events l {kind.upper()} JOIN right_events r "
         f"ON {RANGE_ON}")
    scenario(f"join_{kind.replace(' ', '_')}_range",
             f"{kind} stream-stream join on k with ts within 5 s, watermarks 10 s, NULL keys, "
             f"matches within and across batches, rows evicted unmatched, append mode",
             None, "append", q, sql(q), tables=RANGE_TABLES)
q = f"SELECT l.k, l.ts, l.v FROM left_events l LEFT SEMI JOIN right_events r ON {RANGE_ON}"
scenario("join_left_semi_range",
         "left semi stream-stream join with a 5 s range: each left row once, when it first matches",
         None, "append", q, sql(q), tables=RANGE_TABLES)
q = f"SELECT l.k, l.ts, l.v FROM left_events l LEFT ANTI JOIN right_events r ON {RANGE_ON}"
scenario("join_left_anti_range",
         "left anti stream-stream join with a 5 s range: a left row once it can no longer match",
         None, "append", q, sql(q), tables=RANGE_TABLES)
q = ("SELECT l.k AS k, l.w AS w, l.v AS lv, r.v AS rv FROM "
     "(SELECT k, window(ts, '10 seconds') AS w, v FROM left_events) l LEFT OUTER JOIN "
     "(SELECT k, window(ts, '10 seconds') AS w, v FROM right_events) r "
     "ON l.k = r.k AND l.w = r.w")
scenario("join_left_outer_window",
         "left outer stream-stream join on k and equal 10 s windows, watermarks 10 s, append mode",
         None, "append", q, sql(q),
         tables={"left_events": (JOIN_WINDOW_LEFT, WM10), "right_events": (JOIN_WINDOW_RIGHT, WM10)})
q = (f"SELECT {JOIN_COLUMNS} FROM left_events l JOIN right_events r "
     f"ON l.k = r.k AND l.ts < r.ts - INTERVAL '5' SECOND")
# A left row can match any later right row: the left side's state has no bound, which
# millrace refuses unless the session allows it (Spark runs it, and warns).
scenario("join_inner_one_sided_range",
         "inner stream-stream join with a one-sided range l.ts < r.ts - 5 s, late rows, append mode",
         None, "append", q, sql(q), settings=["SET millrace.join.allow_unbounded_state = true"],
         tables={"left_events": (JOIN_ONE_SIDED_LEFT, WM10),
                 "right_events": (JOIN_ONE_SIDED_RIGHT, WM10)})
q = (f"SELECT window(l.ts, '10 seconds') AS window, count(*) AS n, sum(r.v) AS s "
     f"FROM left_events l JOIN right_events r ON {RANGE_ON} "
     f"GROUP BY window(l.ts, '10 seconds')")
scenario("join_then_window_aggregation",
         "inner stream-stream join followed by 10 s windows over the left event time, append mode",
         None, "append", q, sql(q), tables=RANGE_TABLES)


# ---------------------------------------------------------------------------
# Writing scenario directories
# ---------------------------------------------------------------------------

def ts_text(offset):
    return (BASE + datetime.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S")


def row_json(row):
    k, ts, v, x = row
    return json.dumps({"k": k, "ts": None if ts is None else ts_text(ts), "v": v, "x": x})


def single_table(sc):
    """Whether the scenario reads the one table `events` (its files directly under
    `input/`) rather than several (`input/<table>/`)."""
    return list(sc["tables"]) == ["events"]


def input_dirs(root, sc):
    """(table name, directory of its input files) for each table of the scenario."""
    base = os.path.join(root, "input")
    if single_table(sc):
        return [("events", base)]
    return [(name, os.path.join(base, name)) for name in sc["tables"]]


def write_scenario(sc):
    root = os.path.join(HERE, sc["name"])
    if os.path.isdir(os.path.join(root, "input")):
        shutil.rmtree(os.path.join(root, "input"))
    statements = []
    tables = {}
    for name, directory in input_dirs(root, sc):
        files, watermark = sc["tables"][name]
        os.makedirs(directory)
        for i, rows in enumerate(files):
            with open(os.path.join(directory, f"{i:03}.json"), "w") as f:
                f.writelines(row_json(r) + "\n" for r in rows)
        tables[name] = {"schema": [list(c) for c in SCHEMA],
                        "watermark": watermark and {"column": "ts", "delay": watermark}}
        wm = ""
        if watermark:
            secs = int(watermark.split()[0])
            wm = f",\n  WATERMARK FOR ts AS ts - INTERVAL '{secs}' SECOND"
        location = "{input}" if single_table(sc) else "{input}" + name + "/"
        statements.append(TABLE.format(table=name, watermark=wm, location=location))
    with open(os.path.join(root, "scenario.json"), "w") as f:
        described = {"description": sc["description"], "output_mode": sc["mode"]}
        if single_table(sc):
            described.update(tables["events"])
        else:
            described["tables"] = tables
        json.dump(described, f, indent=2)
        f.write("\n")
    statements += [s + ";" for s in sc["settings"]]
    statements.append(sc["millrace"] + ";")
    with open(os.path.join(root, "millrace.sql"), "w") as f:
        f.write("\n".join(statements) + "\n")
    argument = "events" if single_table(sc) else "tables"
    with open(os.path.join(root, "spark.py"), "w") as f:
        f.write(f"def query(spark, {argument}):\n" + textwrap.indent(sc["spark"], "    ") + "\n")


# ---------------------------------------------------------------------------
# Running Spark
# ---------------------------------------------------------------------------

def normalize(value):
    """A collected Spark value as JSON: timestamps as UTC text, structs as objects."""
    from pyspark.sql import Row
    if isinstance(value, Row):
        return {k: normalize(v) for k, v in value.asDict(recursive=False).items()}
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if hasattr(value, "is_finite"):  # Decimal
        return float(value)
    return value


def run_spark(spark, sc):
    root = os.path.join(HERE, sc["name"])
    out = os.path.join(root, "spark")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    work = tempfile.mkdtemp(prefix="millrace-spark-")
    try:
        # Each table's files in a directory of its own, modification times one second
        # apart in name order: Spark's file source reads the oldest first.
        ddl = ", ".join(f"{n} {t.upper()}" for n, t in SCHEMA)
        frames = {}
        for name, directory in input_dirs(root, sc):
            src = os.path.join(work, "input", name)
            os.makedirs(src)
            start = time.time() - 3600
            for i, file in enumerate(sorted(os.listdir(directory))):
                shutil.copy(os.path.join(directory, file), os.path.join(src, file))
                os.utime(os.path.join(src, file), (start + i, start + i))
            frame = spark.readStream.schema(ddl).option("maxFilesPerTrigger", 1).json(src)
            watermark = sc["tables"][name][1]
            if watermark:
                frame = frame.withWatermark("ts", watermark)
            frame.createOrReplaceTempView(name)
            frames[name] = frame
        namespace = {}
        with open(os.path.join(root, "spark.py")) as f:
            exec(f.read(), namespace)

        def write_batch(df, batch_id):
            rows = [json.dumps({k: normalize(v) for k, v in r.asDict(recursive=False).items()},
                               sort_keys=True) for r in df.collect()]
            with open(os.path.join(out, f"batch-{batch_id:05}.json"), "w") as f:
                f.writelines(r + "\n" for r in sorted(rows))

        try:
            argument = frames["events"] if single_table(sc) else frames
            result = namespace["query"](spark, argument)
            query = (result.writeStream.outputMode(sc["mode"]).foreachBatch(write_batch)
                     .option("checkpointLocation", os.path.join(work, "checkpoint"))
                     .trigger(availableNow=True).start())
            query.awaitTermination()
        except Exception as e:  # Spark refuses the query: record why
            message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            with open(os.path.join(out, "error.txt"), "w") as f:
                f.write(message + "\n")
            print(f"  Spark refused {sc['name']}: {message}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv):
    only = [a for a in argv if not a.startswith("--")]
    chosen = [s for s in SCENARIOS if not only or s["name"] in only]
    names = [s["name"] for s in SCENARIOS]
    assert len(names) == len(set(names)), "duplicate scenario names"
    for sc in chosen:
        write_scenario(sc)
    if "--write-only" in argv:
        return
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").appName("millrace-spark-reference")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.streaming.stateStore.stateSchemaCheck", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for sc in chosen:
            t = time.time()
            run_spark(spark, sc)
            print(f"{sc['name']}: {time.time() - t:.1f} s", flush=True)
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
