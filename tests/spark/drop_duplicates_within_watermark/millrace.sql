CREATE UNBOUNDED EXTERNAL TABLE events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}' OPTIONS ('max_files_per_trigger' '1');
SET millrace.distinct_on = 'within_watermark';
SELECT DISTINCT ON (k) k, ts, v FROM events;
