//! The Kafka → Kafka workloads of `millrace bench` (`--workload kafka-filter|kafka-window
//! --bootstrap HOST:PORT`): the whole pipeline with a Kafka topic at both ends, on the
//! same broker, so what is measured is what a Kafka deployment pays — record decoding,
//! the engine, JSON encoding and the sink's delivery (one transaction per batch when
//! exactly once).
//!
//! The input is the sensor readings of [`SensorReading`] as JSON record values, keyed by
//! sensor, produced once (untimed) round-robin over the partitions of a fresh topic.
//! ([`produce_readings`] sends each partition's last record in a request of its own, a
//! workaround for a test broker used before Apache Kafka whose high watermark was wrong;
//! harmless on Apache Kafka.)
//!
//! - [`KafkaWorkload::Filter`]: `WHERE pressure < 50` (half the records) with a
//!   projection, to a topic keyed by sensor;
//! - [`KafkaWorkload::Window`]: per sensor and 1-minute tumbling event-time window,
//!   `count(*)` and `avg(temp)`, watermark 10 seconds, append mode (each window is
//!   written once, when the watermark passes its end): about 16 output records per 100
//!   input records.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio::runtime::Runtime;

use super::filter::SensorReading;
use super::{BenchReport, Workload, run_to_end};
use crate::connector::kafka::client::{TopicNotCreated, config, create_topic};
use crate::error::{Error, Result};
use crate::sink::kafka::{KafkaDelivery, send_when_room};

/// How long connecting to the broker and each broker call may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the reachability check waits for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A Kafka → Kafka workload (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaWorkload {
    /// `WHERE pressure < 50` with a projection: stateless.
    Filter,
    /// Count and average per sensor and 1-minute tumbling window, append mode.
    Window,
}

impl KafkaWorkload {
    /// The Kafka workload a [`Workload`] names, if it is one.
    pub fn of(workload: Workload) -> Option<Self> {
        match workload {
            Workload::KafkaFilter => Some(KafkaWorkload::Filter),
            Workload::KafkaWindow => Some(KafkaWorkload::Window),
            Workload::Filter
            | Workload::Tumbling
            | Workload::Groupby
            | Workload::KafkaLatency
            | Workload::Join
            | Workload::JoinOuter => None,
        }
    }

    /// The workload's name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KafkaWorkload::Filter => Workload::KafkaFilter.name(),
            KafkaWorkload::Window => Workload::KafkaWindow.name(),
        }
    }

    /// The output records the workload must write for `rows` input readings, when that
    /// is known exactly: the filter keeps readings with `n % 100 < 50`. A window's
    /// output depends on where the final watermark ends, so it has no exact figure.
    pub fn expected_output(self, rows: u64) -> Option<u64> {
        match self {
            KafkaWorkload::Filter => Some((0..rows).filter(|n| n % 100 < 50).count() as u64),
            KafkaWorkload::Window => None,
        }
    }
}

/// The `delivery` option value of the sink for `delivery`.
pub fn delivery_option(delivery: KafkaDelivery) -> &'static str {
    match delivery {
        KafkaDelivery::ExactlyOnce => "exactly_once",
        KafkaDelivery::AtLeastOnce => "at_least_once",
    }
}

/// Parses `exactly_once` or `at_least_once` (`-` for `_` allowed), as the sink's
/// `delivery` option does; for the command line.
pub fn parse_delivery(value: &str) -> Result<KafkaDelivery> {
    match value.to_ascii_lowercase().replace('-', "_").as_str() {
        "exactly_once" => Ok(KafkaDelivery::ExactlyOnce),
        "at_least_once" => Ok(KafkaDelivery::AtLeastOnce),
        _ => Err(Error::Option(format!(
            "unknown delivery '{value}': use exactly_once (needs a broker with transactions, \
             e.g. Apache Kafka) or at_least_once"
        ))),
    }
}

/// Fails with an error naming `bootstrap` and how to start a broker unless at least
/// one of its `host:port` addresses accepts a TCP connection within a few seconds.
///
/// Checked before anything else because librdkafka itself only retries quietly until
/// its own timeout, which would leave the user waiting for half a minute and then
/// reading a generic client error.
pub fn check_reachable(bootstrap: &str) -> Result<()> {
    let mut failures = Vec::new();
    for address in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let resolved = match address.to_socket_addrs() {
            Ok(resolved) => resolved.collect::<Vec<_>>(),
            Err(e) => {
                failures.push(format!("{address}: {e}"));
                continue;
            }
        };
        for socket in &resolved {
            match TcpStream::connect_timeout(socket, CONNECT_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(e) => failures.push(format!("{socket}: {e}")),
            }
        }
        if resolved.is_empty() {
            failures.push(format!("{address}: no address"));
        }
    }
    Err(Error::Network(format!(
        "no Kafka broker reachable at '{bootstrap}' ({}); start one with \
         `scripts/kafka-broker.sh start 9092` (Apache Kafka) and pass --bootstrap \
         127.0.0.1:9092",
        if failures.is_empty() {
            "no address given".to_string()
        } else {
            failures.join("; ")
        }
    )))
}

fn client_error(doing: &str, bootstrap: &str, e: KafkaError) -> Error {
    Error::Network(format!("{doing} on the broker at '{bootstrap}': {e}"))
}

/// Creates `topic` with `partitions` partitions and produces readings `0..rows`
/// ([`SensorReading`] as JSON, keyed by sensor) round-robin over them, each partition's
/// last record in a batch of its own (see the module doc); returns once every record
/// is acknowledged.
pub fn produce_readings(bootstrap: &str, topic: &str, partitions: i32, rows: u64) -> Result<()> {
    if partitions < 1 {
        return Err(Error::Option(
            "the input topic needs at least 1 partition".into(),
        ));
    }
    create_topic(&config(bootstrap), topic, partitions, 1, TIMEOUT).map_err(|e| match e {
        TopicNotCreated::Config(e) => client_error("creating an admin client", bootstrap, e),
        TopicNotCreated::Client(e) => {
            client_error(&format!("creating topic '{topic}'"), bootstrap, e)
        }
        TopicNotCreated::Refused(code) => Error::Network(format!(
            "cannot create topic '{topic}' at '{bootstrap}': {code}"
        )),
    })?;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = config(bootstrap)
        .set("batch.num.messages", "10000")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
        .create()
        .map_err(|e| client_error("creating a producer", bootstrap, e))?;
    // Each partition's last record goes alone, after a flush (see the module doc).
    let tail = rows.saturating_sub(partitions as u64);
    for n in 0..rows {
        if n >= tail {
            flush_all(&producer, bootstrap, topic, rows)?;
        }
        let reading = SensorReading::new(n as usize);
        let value = reading.json();
        let record = BaseRecord::<str, str>::to(topic)
            .partition((n % partitions as u64) as i32)
            .key(reading.sensor.as_str())
            .payload(value.as_str());
        send_when_room(&producer, record, TIMEOUT)
            .map_err(|e| client_error(&format!("producing to '{topic}'"), bootstrap, e))?;
    }
    flush_all(&producer, bootstrap, topic, rows)
}

/// Waits until the broker acknowledged every record sent so far.
fn flush_all(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    bootstrap: &str,
    topic: &str,
    rows: u64,
) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(rows / 1_000 + 5);
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            return Err(Error::Network(format!(
                "producing to '{topic}' at '{bootstrap}': {} records not acknowledged",
                producer.in_flight_count()
            )));
        }
        let _ = producer.flush(Duration::from_secs(1));
    }
    Ok(())
}

/// One Kafka → Kafka run: where it reads, where it writes, how.
#[derive(Debug, Clone)]
pub struct KafkaRun<'a> {
    /// `bootstrap.servers` of the broker, source and sink alike.
    pub bootstrap: &'a str,
    /// The workload.
    pub workload: KafkaWorkload,
    /// The input topic, filled by [`produce_readings`].
    pub input_topic: &'a str,
    /// The output topic; created by the sink (`create_topic`) with `partitions`.
    pub output_topic: &'a str,
    /// Partitions of a created output topic.
    pub partitions: i32,
    /// The sink's delivery guarantee.
    pub delivery: KafkaDelivery,
    /// The source's `max_offsets_per_trigger`: records per batch.
    pub max_offsets_per_trigger: u64,
    /// The query's checkpoint directory (must not exist or be empty: a fresh query).
    pub checkpoint: &'a std::path::Path,
}

impl KafkaRun<'_> {
    /// The script: the Kafka table (with a watermark for the window) and the sink.
    pub fn script(&self) -> String {
        let watermark = match self.workload {
            KafkaWorkload::Filter => "",
            KafkaWorkload::Window => ", WATERMARK FOR ts AS ts - INTERVAL '10' SECOND",
        };
        let query = match self.workload {
            KafkaWorkload::Filter => {
                "SELECT sensor, ts, temp * 1.8 + 32 AS temp_f, upper(sensor) AS id \
                 FROM readings WHERE pressure < 50"
            }
            KafkaWorkload::Window => {
                "SELECT sensor, w.start AS window_start, w.end AS window_end, n, avg_temp \
                 FROM (SELECT sensor, window(ts, '1 minute') AS w, count(*) AS n, \
                       avg(temp) AS avg_temp \
                       FROM readings GROUP BY sensor, window(ts, '1 minute'))"
            }
        };
        let mode = match self.workload {
            KafkaWorkload::Filter => "",
            KafkaWorkload::Window => ", 'output_mode' 'append'",
        };
        format!(
            "CREATE UNBOUNDED EXTERNAL TABLE readings (sensor VARCHAR, ts TIMESTAMP, \
             temp DOUBLE, pressure DOUBLE{watermark}) STORED AS KAFKA LOCATION '{}' \
             OPTIONS ('bootstrap.servers' '{}', 'format' 'json', \
             'starting_offsets' 'earliest', 'max_offsets_per_trigger' '{}');\n\
             CREATE SINK bench STORED AS KAFKA LOCATION '{}' \
             OPTIONS ('bootstrap.servers' '{}', 'checkpoint' '{}', 'trigger' 'available_now', \
             'delivery' '{}', 'key' 'sensor', 'create_topic' 'true', \
             'create_topic_partitions' '{}'{mode}) AS {query}",
            self.input_topic,
            self.bootstrap,
            self.max_offsets_per_trigger.max(1),
            self.output_topic,
            self.bootstrap,
            self.checkpoint.display(),
            delivery_option(self.delivery),
            self.partitions,
        )
    }

    /// Runs the query to its end (`trigger` `available_now`) over `rows` input records
    /// and reports it. The clock starts before the script: declaring the table, opening
    /// the sink (its transactional producer) and planning count, as they do for a user.
    ///
    /// Fails if the sink wrote nothing, or, for the filter, not exactly the records
    /// the filter keeps: a run that measured a broken pipeline must not report a
    /// figure.
    pub fn run(&self, runtime: &Runtime, rows: u64) -> Result<BenchReport> {
        let label = format!(
            "{} {}",
            self.workload.name(),
            delivery_option(self.delivery)
        );
        let report = run_to_end(runtime, &self.script(), label, rows)?;
        let wrong = match self.workload.expected_output(rows) {
            Some(expected) => report.output_rows != expected,
            None => report.output_rows == 0 && rows > 0,
        };
        if wrong {
            return Err(Error::Sql(format!(
                "{}: the sink wrote {} records for {rows} input records{}",
                self.workload.name(),
                report.output_rows,
                self.workload
                    .expected_output(rows)
                    .map(|e| format!(", {e} expected"))
                    .unwrap_or_default()
            )));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_keeps_half_of_every_hundred_readings() {
        assert_eq!(KafkaWorkload::Filter.expected_output(2_000), Some(1_000));
        assert_eq!(KafkaWorkload::Filter.expected_output(130), Some(80));
        assert_eq!(KafkaWorkload::Window.expected_output(2_000), None);
    }

    #[test]
    fn deliveries_parse_like_the_sink_option() {
        assert_eq!(
            parse_delivery("exactly_once").unwrap(),
            KafkaDelivery::ExactlyOnce
        );
        assert_eq!(
            parse_delivery("At-Least-Once").unwrap(),
            KafkaDelivery::AtLeastOnce
        );
        let error = parse_delivery("maybe").unwrap_err().to_string();
        assert!(
            error.contains("exactly_once") && error.contains("at_least_once"),
            "{error}"
        );
    }

    #[test]
    fn an_unreachable_broker_is_named_with_how_to_start_one() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let bootstrap = format!("127.0.0.1:{port}");
        let error = check_reachable(&bootstrap).unwrap_err().to_string();
        assert!(error.contains(&bootstrap), "{error}");
        assert!(error.contains("scripts/kafka-broker.sh start"), "{error}");
    }
}
