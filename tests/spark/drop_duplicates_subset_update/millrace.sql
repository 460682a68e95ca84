CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SELECT DISTINCT ON (k, v) k, v, x FROM events;
