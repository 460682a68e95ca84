//! `millrace bench --workload kafka-latency --bootstrap HOST:PORT [--rate N] [--seconds S]`:
//! end-to-end latency of a Kafka → Kafka query, from the moment a record is handed to
//! the producer to the moment a `read_committed` consumer of the output sees it.
//!
//! A producer sends `{"id", "sent_us"}` records at a steady rate (round-robin over the
//! input topic's partitions) while the query `SELECT id, sent_us FROM ticks` runs with
//! the shortest trigger (a batch as soon as the last one ends) into the output topic.
//! A consumer of the output with `isolation.level` `read_committed` takes each record's
//! latency as its arrival time less `sent_us` (one process, one clock). With the
//! exactly-once sink a record becomes visible only when the transaction of its batch
//! commits, so the figure includes the whole batch: waiting for the batch to start,
//! reading, the engine, producing, the transaction commit and the checkpoint.
//!
//! The run fails unless every record sent is seen (exactly once when the sink is
//! exactly-once): a latency measured over a broken pipeline is not a figure.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Runtime;

use super::kafka::delivery_option;
use crate::connector::kafka::client::{TopicNotCreated, config, create_topic};
use crate::error::{Error, Result};
use crate::session::{Session, SessionSettings, StatementResult};
use crate::sink::kafka::{KafkaDelivery, send_when_room};

/// How long broker calls may take, and how long the consumer waits for the last records
/// after the producer stopped.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One latency run: where, how fast, how long.
#[derive(Debug, Clone)]
pub struct LatencyRun<'a> {
    /// `bootstrap.servers` of the broker (source and sink).
    pub bootstrap: &'a str,
    /// Records per second the producer sends.
    pub rate: u64,
    /// How long the producer sends.
    pub seconds: u64,
    /// Partitions of the input and the output topic.
    pub partitions: i32,
    /// The sink's delivery guarantee.
    pub delivery: KafkaDelivery,
    /// Names the run's topics (`<id>-in`, `<id>-out`).
    pub id: &'a str,
    /// The query's checkpoint directory (fresh).
    pub checkpoint: &'a std::path::Path,
}

/// What a latency run measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// Records sent (and seen).
    pub records: u64,
    /// The rate the producer achieved, records/s.
    pub sent_per_second: f64,
    /// Latency percentiles in ms: p50, p90, p99, max.
    pub latency_ms: [f64; 4],
    /// Micro-batches the query ran, and its median `triggerExecution` in ms.
    pub batches: usize,
    /// Median per-batch `triggerExecution`, ms.
    pub batch_p50_ms: u64,
    /// Median input rows per batch.
    pub batch_rows_p50: u64,
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [p50, p90, p99, max] = self.latency_ms;
        write!(
            f,
            "kafka-latency: {} records at {:.0}/s; produce → visible to read_committed: \
             p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; \
             {} batches, per batch p50 {} ms and {} rows",
            self.records,
            self.sent_per_second,
            self.batches,
            self.batch_p50_ms,
            self.batch_rows_p50
        )
    }
}

fn network(doing: &str, bootstrap: &str, e: impl std::fmt::Display) -> Error {
    Error::Network(format!("{doing} on the broker at '{bootstrap}': {e}"))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn make_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    create_topic(&config(bootstrap), topic, partitions, 1, TIMEOUT).map_err(|e| match e {
        TopicNotCreated::Config(e) | TopicNotCreated::Client(e) => {
            network(&format!("creating topic '{topic}'"), bootstrap, e)
        }
        TopicNotCreated::Refused(code) => {
            network(&format!("creating topic '{topic}'"), bootstrap, code)
        }
    })
}

/// The `p` quantile (0..=1) of sorted `values`.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

impl LatencyRun<'_> {
    fn input(&self) -> String {
        format!("{}-in", self.id)
    }

    fn output(&self) -> String {
        format!("{}-out", self.id)
    }

    /// The script: the input table and the sink with the default (shortest) trigger.
    pub fn script(&self) -> String {
        format!(
            "CREATE UNBOUNDED EXTERNAL TABLE ticks (id BIGINT NOT NULL, sent_us BIGINT NOT NULL) \
             STORED AS KAFKA LOCATION '{}' OPTIONS ('bootstrap.servers' '{}', 'format' 'json', \
             'starting_offsets' 'earliest');\n\
             CREATE SINK latency STORED AS KAFKA LOCATION '{}' OPTIONS ('bootstrap.servers' '{}', \
             'checkpoint' '{}', 'delivery' '{}') AS SELECT id, sent_us FROM ticks",
            self.input(),
            self.bootstrap,
            self.output(),
            self.bootstrap,
            self.checkpoint.display(),
            delivery_option(self.delivery),
        )
    }

    /// Runs the query, the producer and the consumer; see the module doc.
    pub fn run(&self, runtime: &Runtime) -> Result<LatencyReport> {
        if self.rate == 0 || self.seconds == 0 || self.partitions < 1 {
            return Err(Error::Option(
                "kafka-latency needs --rate, --seconds and --partitions of at least 1".into(),
            ));
        }
        make_topic(self.bootstrap, &self.input(), self.partitions)?;
        make_topic(self.bootstrap, &self.output(), self.partitions)?;
        let session = Session::new(runtime.handle().clone(), SessionSettings::default());
        let results = runtime.block_on(session.execute_script(&self.script()))?;
        let Some(StatementResult::QueryStarted(query)) = results.last() else {
            return Err(Error::Sql(
                "the latency script did not start a query".into(),
            ));
        };
        let query = query.clone();

        let consumer = self.consumer()?;
        let done = Arc::new(AtomicBool::new(false));
        let expected = self.rate * self.seconds;
        let watcher = {
            let done = done.clone();
            let bootstrap = self.bootstrap.to_string();
            let exactly_once = self.delivery == KafkaDelivery::ExactlyOnce;
            std::thread::spawn(move || collect(consumer, expected, exactly_once, &done, &bootstrap))
        };
        let sent = self.produce();
        let seen = match sent {
            Ok(_) => watcher
                .join()
                .map_err(|_| Error::Sql("the latency consumer panicked".into()))?,
            Err(e) => {
                done.store(true, Ordering::SeqCst);
                let _ = watcher.join();
                query.stop();
                return Err(e);
            }
        };
        query.stop();
        query.await_termination_blocking()?;
        let (sent, send_seconds) = sent?;
        let mut latencies = seen?;
        latencies.sort_by(f64::total_cmp);
        let progress = query.recent_progress();
        let mut batch_ms: Vec<u64> = progress
            .iter()
            .map(|p| p.duration_ms.trigger_execution)
            .collect();
        batch_ms.sort_unstable();
        let mut batch_rows: Vec<u64> = progress.iter().map(|p| p.num_input_rows).collect();
        batch_rows.sort_unstable();
        Ok(LatencyReport {
            records: sent,
            sent_per_second: sent as f64 / send_seconds.max(1e-9),
            latency_ms: [0.5, 0.9, 0.99, 1.0].map(|p| quantile(&latencies, p)),
            batches: progress.len(),
            batch_p50_ms: batch_ms.get(batch_ms.len() / 2).copied().unwrap_or(0),
            batch_rows_p50: batch_rows.get(batch_rows.len() / 2).copied().unwrap_or(0),
        })
    }

    /// A `read_committed` consumer of every partition of the output, from the start.
    fn consumer(&self) -> Result<BaseConsumer> {
        let consumer: BaseConsumer = config(self.bootstrap)
            .set("group.id", format!("{}-reader", self.id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(|e| network("creating a consumer", self.bootstrap, e))?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..self.partitions {
            assignment
                .add_partition_offset(&self.output(), partition, Offset::Beginning)
                .map_err(|e| network("assigning the output", self.bootstrap, e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| network("assigning the output", self.bootstrap, e))?;
        Ok(consumer)
    }

    /// Sends `rate * seconds` records at a steady pace; returns how many and how long
    /// sending took.
    fn produce(&self) -> Result<(u64, f64)> {
        let producer: ThreadedProducer<DefaultProducerContext> = config(self.bootstrap)
            .set("linger.ms", "1")
            .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
            .create()
            .map_err(|e| network("creating a producer", self.bootstrap, e))?;
        let total = self.rate * self.seconds;
        let input = self.input();
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due = ((started.elapsed().as_secs_f64() * self.rate as f64) as u64).min(total);
            while sent < due {
                let value = format!("{{\"id\": {sent}, \"sent_us\": {}}}", now_us());
                let record = BaseRecord::<(), str>::to(&input)
                    .partition((sent % self.partitions as u64) as i32)
                    .payload(value.as_str());
                send_when_room(&producer, record, TIMEOUT)
                    .map_err(|e| network("producing the input", self.bootstrap, e))?;
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let seconds = started.elapsed().as_secs_f64();
        producer
            .flush(TIMEOUT)
            .map_err(|e| network("flushing the input", self.bootstrap, e))?;
        Ok((sent, seconds))
    }
}

/// Reads the output until `expected` distinct ids were seen (or `done` is set, or no new
/// record came for [`TIMEOUT`]); returns each record's latency in ms (first copy only).
/// A record seen twice fails the run when the sink is `exactly_once`.
fn collect(
    consumer: BaseConsumer,
    expected: u64,
    exactly_once: bool,
    done: &AtomicBool,
    bootstrap: &str,
) -> Result<Vec<f64>> {
    let mut seen = HashSet::with_capacity(expected as usize);
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut last_record = Instant::now();
    while (seen.len() as u64) < expected && !done.load(Ordering::SeqCst) {
        if last_record.elapsed() > TIMEOUT {
            return Err(Error::Network(format!(
                "kafka-latency: saw {} of {expected} records; nothing new for {} s",
                seen.len(),
                TIMEOUT.as_secs()
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message.map_err(|e| network("reading the output", bootstrap, e))?;
        let arrived = now_us();
        last_record = Instant::now();
        let value: serde_json::Value = message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .ok_or_else(|| Error::Sql("kafka-latency: an output record is not JSON".into()))?;
        let (Some(id), Some(sent)) = (value["id"].as_i64(), value["sent_us"].as_i64()) else {
            return Err(Error::Sql(format!(
                "kafka-latency: unexpected output record {value}"
            )));
        };
        if !seen.insert(id) {
            if exactly_once {
                return Err(Error::Sql(format!(
                    "kafka-latency: record {id} seen twice by a read_committed consumer of an \
                     exactly-once sink"
                )));
            }
            continue;
        }
        latencies.push((arrived - sent) as f64 / 1000.0);
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&sorted, 0.5), 51.0);
        assert_eq!(quantile(&sorted, 0.99), 99.0);
        assert_eq!(quantile(&sorted, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
