CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT k, count(*) AS n, sum(v) AS s FROM events GROUP BY k HAVING count(*) >= 2;
