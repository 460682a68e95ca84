-- Per-pump pressure over a sliding window: the highest, lowest and average
-- PressureLbs of every pump over 60 seconds, every 30 seconds, from the oil-well
-- sensor CSV files in data/sensors/ (what `millrace generate-sensors data` and
-- `millrace demo` write). Paths are relative to the working directory:
--
--   millrace generate-sensors data --readings-per-minute 4
--   millrace -f path/to/millrace/sql/examples/pump_pressure_windows.sql
--
-- Why update mode to the console, not append mode to Parquet: the files carry the
-- time of a reading as two text fields (Date '3/10/14', Time '0:01' or '0:01:15'), so
-- the event time is computed in SQL below. A WATERMARK can only be declared on a
-- TIMESTAMP column of the table itself, and append mode needs one: a window is final
-- only once a watermark has passed it. Update mode needs no watermark: after each
-- batch it prints the windows that batch changed, with their values over every row
-- read so far, so the last row printed for a window is its result. No window ever
-- leaves the state (one row per pump and window): fine for these files, but an
-- endless feed should carry a TIMESTAMP column so that a watermark can close windows,
-- as sensor_counts.sql does.
--
-- Each reading counts in two windows (size 60 s / slide 30 s). With the classic data
-- (one reading a pump a minute, generate-sensors' default) a window holds a single
-- reading per pump, so max = min = avg; --readings-per-minute 4 puts four in each.

-- The stream: one row per reading, as in sensor_alerts.sql. One file per batch, so
-- each batch prints the windows one file (an hour by default) touched.
CREATE UNBOUNDED EXTERNAL TABLE sensors (
  ResourceID  VARCHAR NOT NULL,
  Date        VARCHAR,
  Time        VARCHAR,
  HZ          DOUBLE,
  Displace    DOUBLE,
  Flow        DOUBLE,
  SedimentPPM DOUBLE,
  PressureLbs DOUBLE,
  ChlorinePPM DOUBLE
) STORED AS CSV LOCATION 'data/sensors/'
OPTIONS ('max_files_per_trigger' '1', 'mode' 'drop_malformed', 'path_glob_filter' '*.csv');

-- Event time from Date and Time; the first format that parses wins (with or without
-- seconds).
CREATE VIEW readings AS
SELECT ResourceID AS pump,
       to_timestamp(Date || ' ' || Time, '%m/%d/%y %H:%M:%S', '%m/%d/%y %H:%M') AS ts,
       PressureLbs AS psi
FROM sensors;

-- window(ts, size, slide) puts each reading in every window that holds it; the window
-- is a struct {start, end} (end exclusive). 'trigger' 'available_now' reads the files
-- present at start and stops; leave it out to keep watching the directory.
-- 'num_rows' bounds the rows printed per batch (an hourly file changes 720 windows).
CREATE SINK pump_pressure STORED AS CONSOLE
OPTIONS ('output_mode' 'update', 'trigger' 'available_now', 'num_rows' '50')
AS SELECT pump, w.start AS window_start, w.end AS window_end,
          max_psi, min_psi, avg_psi, readings
   FROM (SELECT pump,
                window(ts, '60 seconds', '30 seconds') AS w,
                max(psi) AS max_psi,
                min(psi) AS min_psi,
                avg(psi) AS avg_psi,
                count(*) AS readings
         FROM readings
         GROUP BY pump, window(ts, '60 seconds', '30 seconds'));
