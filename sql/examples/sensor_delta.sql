-- The main job into a Delta Lake: oil-well pump readings land as CSV files in
-- data/sensors/ (as in sensor_alerts.sql); the low-pressure readings are appended to
-- the Delta table lake/pump_alerts (partitioned by pump) and the per-pump daily
-- statistics are MERGEd into lake/pump_daily (update mode), exactly once for any
-- Delta reader: each batch is one Delta commit carrying the query id and batch id.
--
--   millrace generate-sensors demo/data && cd demo
--   millrace -f ../sql/examples/sensor_delta.sql
--   ../scripts/delta-python.sh read lake/pump_daily     # or Spark, DuckDB's delta extension

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
OPTIONS ('max_files_per_trigger' '2', 'mode' 'drop_malformed', 'path_glob_filter' '*.csv');

-- Low-pressure readings, appended (one commit per batch), partitioned by pump.
CREATE SINK pump_alerts STORED AS DELTA LOCATION 'lake/pump_alerts'
OPTIONS ('checkpoint' 'checkpoints/pump_alerts_delta', 'trigger' 'available_now',
         'partition_by' 'pump')
AS SELECT ResourceID AS pump,
          to_timestamp(Date || ' ' || Time, '%m/%d/%y %H:%M', '%m/%d/%y %H:%M:%S') AS ts,
          PressureLbs AS psi
   FROM sensors
   WHERE PressureLbs < 5;

-- Per-pump daily statistics, kept current: each batch MERGEs the (pump, day) groups
-- it changed into the table.
CREATE SINK pump_daily STORED AS DELTA LOCATION 'lake/pump_daily'
OPTIONS ('checkpoint' 'checkpoints/pump_daily_delta', 'output_mode' 'update',
         'trigger' 'available_now')
AS SELECT ResourceID AS pump,
          to_date(Date, '%m/%d/%y') AS day,
          count(*) AS readings,
          sum(CASE WHEN PressureLbs < 5 THEN 1 ELSE 0 END) AS low_readings
   FROM sensors
   GROUP BY ResourceID, to_date(Date, '%m/%d/%y');
