CREATE UNBOUNDED EXTERNAL TABLE left_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}left_events/' OPTIONS ('max_files_per_trigger' '1');
CREATE UNBOUNDED EXTERNAL TABLE right_events (
  k VARCHAR, ts TIMESTAMP, v BIGINT, x DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) STORED AS JSON LOCATION '{input}right_events/' OPTIONS ('max_files_per_trigger' '1');
SELECT l.k AS k, l.w AS w, l.v AS lv, r.v AS rv FROM (SELECT k, window(ts, '10 seconds') AS w, v FROM left_events) l LEFT OUTER JOIN (SELECT k, window(ts, '10 seconds') AS w, v FROM right_events) r ON l.k = r.k AND l.w = r.w;
