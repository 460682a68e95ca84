-- The main job with a database: oil-well pump readings land as CSV files in
-- data/sensors/ (as in sensor_alerts.sql); the enriched low-pressure alerts and the
-- per-pump daily statistics go to PostgreSQL, exactly once (one transaction per batch
-- that also records the batch id in millrace_sink_batches).
--
-- A local server for trying it (Debian's postgresql; installed if absent, initdb into
-- a temporary directory, port 5433 on 127.0.0.1, password in DIR/password):
--
--   read port dir pid < <(PGPORT=5433 scripts/postgres.sh start)
--   export PGPASSWORD=$(cat "$dir/password")
--   millrace generate-sensors demo/data && cd demo
--   millrace -f ../sql/examples/sensor_alerts_postgres.sql
--   psql -h 127.0.0.1 -p 5433 -U postgres -c 'SELECT * FROM pump_daily ORDER BY 1, 2'
--   scripts/postgres.sh stop "$dir"
--
-- The password is read from the environment variable PGPASSWORD ('password_env'),
-- never written in the script.

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

CREATE EXTERNAL TABLE vendors STORED AS CSV LOCATION 'data/vendors.csv'
OPTIONS ('format.has_header' 'true');
CREATE EXTERNAL TABLE maintenance STORED AS CSV LOCATION 'data/maintenance.csv'
OPTIONS ('format.has_header' 'true');

CREATE VIEW last_maintenance AS
SELECT resid, "eventDate" AS event_date, technician, description FROM (
  SELECT *, row_number() OVER (
    PARTITION BY resid ORDER BY to_date("eventDate", '%m/%d/%y') DESC) AS rn
  FROM maintenance)
WHERE rn = 1;

-- Enriched low-pressure alerts: rows appended to table pump_alerts (binary COPY).
CREATE SINK pump_alerts STORED AS POSTGRES LOCATION 'pump_alerts'
OPTIONS ('port' '5433', 'password_env' 'PGPASSWORD',
         'checkpoint' 'checkpoints/pump_alerts', 'trigger' 'available_now')
AS SELECT s.ResourceID AS pump,
          to_timestamp(s.Date || ' ' || s.Time, '%m/%d/%y %H:%M', '%m/%d/%y %H:%M:%S') AS ts,
          s.PressureLbs AS psi,
          s.Flow AS flow,
          v."pumpType" AS pump_type,
          v.vendor,
          m.event_date AS last_maintenance,
          m.technician AS last_technician
   FROM sensors s
   JOIN vendors v ON s.ResourceID = v.resid
   LEFT JOIN last_maintenance m ON s.ResourceID = m.resid
   WHERE s.PressureLbs < 5;

-- Per-pump daily statistics, kept current: update mode upserts the rows of the
-- (pump, day) groups each batch changed (INSERT ... ON CONFLICT on the keys).
CREATE SINK pump_daily STORED AS POSTGRES LOCATION 'pump_daily'
OPTIONS ('port' '5433', 'password_env' 'PGPASSWORD', 'output_mode' 'update',
         'checkpoint' 'checkpoints/pump_daily', 'trigger' 'available_now')
AS SELECT ResourceID AS pump,
          to_date(Date, '%m/%d/%y') AS day,
          count(*) AS readings,
          min(PressureLbs) AS min_psi,
          avg(PressureLbs) AS avg_psi,
          max(PressureLbs) AS max_psi,
          sum(CASE WHEN PressureLbs < 5 THEN 1 ELSE 0 END) AS low_readings
   FROM sensors
   GROUP BY ResourceID, to_date(Date, '%m/%d/%y');
