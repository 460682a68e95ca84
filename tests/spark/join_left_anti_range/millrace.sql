CREATE UNBOUNDED EXTERNAL TABLE left_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}left_events/' OPTIONS ('max_files_per_trigger' '1');
CREATE UNBOUNDED EXTERNAL TABLE right_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}right_events/' OPTIONS ('max_files_per_trigger' '1');
SELECT l.k, l.ts, l.v FROM left_events l LEFT ANTI JOIN right_events r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND;
