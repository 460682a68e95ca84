CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS s, avg(x) AS a, min(v) AS lo, max(x) AS hi FROM events GROUP BY k;
