CREATE UNBOUNDED EXTERNAL TABLE left_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}left_events/' OPTIONS ('max_files_per_trigger' '1');
CREATE UNBOUNDED EXTERNAL TABLE right_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}right_events/' OPTIONS ('max_files_per_trigger' '1');
SELECT l.k AS lk, l.ts AS lts, l.v AS lv, r.k AS rk, r.ts AS rts, r.v AS rv FROM left_events l RIGHT OUTER JOIN right_events r ON l.k = r.k AND l.ts BETWEEN r.ts - INTERVAL '5' SECOND AND r.ts + INTERVAL '5' SECOND;
