CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT window(ts, '10 seconds') AS window, count(*) AS n FROM events GROUP BY window(ts, '10 seconds');
