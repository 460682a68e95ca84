CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT upper(k) AS uk, v % 2 AS parity, count(*) AS n, max(ts) AS last_ts FROM events GROUP BY upper(k), v % 2;
