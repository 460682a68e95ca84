-- The main job: oil-well pump sensor readings land as CSV files in data/sensors/.
-- Keep the low-pressure readings (PressureLbs < 5), enrich them with the pump's
-- vendor and its latest maintenance event, and write the alerts to the console and
-- to Parquet. Paths are relative to the working directory (`millrace demo` runs it
-- in the directory it generated the data in). Time is H:MM, or H:MM:SS in data
-- generated with more than one reading a minute: to_timestamp takes the first format
-- that parses.

-- The stream: one row per reading. The files have no header.
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

-- Static reference data, read by DataFusion's own CSV table (header names keep
-- their case, hence the quotes around "pumpType" and "eventDate").
CREATE EXTERNAL TABLE vendors STORED AS CSV LOCATION 'data/vendors.csv'
OPTIONS ('format.has_header' 'true');
CREATE EXTERNAL TABLE maintenance STORED AS CSV LOCATION 'data/maintenance.csv'
OPTIONS ('format.has_header' 'true');

-- The latest maintenance event per pump (a static query, fine inside a streaming join).
CREATE VIEW last_maintenance AS
SELECT resid, "eventDate" AS event_date, technician, description FROM (
  SELECT *, row_number() OVER (
    PARTITION BY resid ORDER BY to_date("eventDate", '%m/%d/%y') DESC) AS rn
  FROM maintenance)
WHERE rn = 1;

-- Alerts on the console, batch by batch.
CREATE SINK alerts_console STORED AS CONSOLE
OPTIONS ('trigger' 'available_now', 'num_rows' '10')
AS SELECT s.ResourceID AS pump,
          to_timestamp(s.Date || ' ' || s.Time, '%m/%d/%y %H:%M', '%m/%d/%y %H:%M:%S') AS ts,
          s.PressureLbs AS psi,
          v.vendor,
          m.technician AS last_technician
   FROM sensors s
   JOIN vendors v ON s.ResourceID = v.resid
   LEFT JOIN last_maintenance m ON s.ResourceID = m.resid
   WHERE s.PressureLbs < 5;

-- The same alerts, exactly once, as Parquet files.
CREATE SINK alerts STORED AS PARQUET LOCATION 'out/alerts/'
OPTIONS ('checkpoint' 'checkpoints/alerts', 'trigger' 'available_now')
AS SELECT s.ResourceID AS pump,
          to_timestamp(s.Date || ' ' || s.Time, '%m/%d/%y %H:%M', '%m/%d/%y %H:%M:%S') AS ts,
          s.PressureLbs AS psi,
          s.Flow AS flow,
          v."pumpType" AS pump_type,
          v.vendor,
          v.longitude,
          v.latitude,
          m.event_date AS last_maintenance,
          m.technician AS last_technician,
          m.description AS last_work
   FROM sensors s
   JOIN vendors v ON s.ResourceID = v.resid
   LEFT JOIN last_maintenance m ON s.ResourceID = m.resid
   WHERE s.PressureLbs < 5;
