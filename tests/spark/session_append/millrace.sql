CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT k, session_window(ts, '5 seconds') AS session_window, count(*) AS n, sum(v) AS s, avg(x) AS a FROM events GROUP BY k, session_window(ts, '5 seconds');
