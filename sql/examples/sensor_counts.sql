-- Events per sensor in 10-second tumbling windows, with a 5-second watermark: each
-- window's final count is written to Parquet exactly once, when the watermark has
-- passed the window's end. Input: sensor events with a timestamp column, as
-- `millrace generate-events data` writes them (data/events/*.csv: sensor,ts,value).
-- Paths are relative to the working directory:
--
--   millrace generate-events data
--   millrace -f path/to/millrace/sql/examples/sensor_counts.sql
--   millrace -c "CREATE EXTERNAL TABLE counts STORED AS PARQUET LOCATION 'out/sensor_counts/';
--                SELECT * FROM counts ORDER BY window_start, sensor LIMIT 10"
--
-- The watermark is the largest event time read in earlier batches minus 5 seconds.
-- Windows that ended at or before it are final: they are emitted (append mode) and
-- leave the state, so the state holds only the open windows. An event that arrives
-- for a window the watermark has already passed is dropped and counted in the
-- progress report (stateOperators[0].numRowsDroppedByWatermark; run with --progress).
-- The windows still open when the input ends are written by a later run, once newer
-- events move the watermark past them: the checkpoint keeps them, so run the script
-- again after adding files and it goes on from where it stopped.

CREATE UNBOUNDED EXTERNAL TABLE events (
  sensor VARCHAR   NOT NULL,
  ts     TIMESTAMP NOT NULL,
  value  DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) STORED AS CSV LOCATION 'data/events/'
OPTIONS ('max_files_per_trigger' '1', 'path_glob_filter' '*.csv');

-- Append mode is allowed because the aggregation groups by window() of the
-- watermarked column; file sinks take only append mode, and need a checkpoint.
CREATE SINK sensor_counts STORED AS PARQUET LOCATION 'out/sensor_counts/'
OPTIONS ('checkpoint' 'checkpoints/sensor_counts', 'output_mode' 'append',
         'trigger' 'available_now')
AS SELECT sensor, w.start AS window_start, w.end AS window_end, events
   FROM (SELECT sensor, window(ts, '10 seconds') AS w, count(*) AS events
         FROM events
         GROUP BY sensor, window(ts, '10 seconds'));
