//! What every Kafka client of millrace shares: the settings of its helper clients,
//! Kafka's rule for topic names, the one topic creation, and the retry backoff.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::error::{Error, Result};

/// Client settings of millrace's own helper clients (this tool, `millrace bench`):
/// the brokers, and no topic created behind the user's back by a metadata request.
pub fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false");
    config
}

/// Why [`create_topic`] did not create the topic.
pub enum TopicNotCreated {
    /// The admin client could not be made (a setting is wrong).
    Config(KafkaError),
    /// The request did not get an answer (brokers unreachable, timeout).
    Client(KafkaError),
    /// The broker answered with an error (the topic exists, an invalid name, ...).
    Refused(RDKafkaErrorCode),
}

/// Creates `topic` with `partitions` partitions and `replication` replicas (-1: the
/// broker's default) with the client settings `config`, waiting up to `timeout` for the
/// broker's answer: the one topic creation of millrace, used by the sink
/// (`create_topic` `true`), `millrace kafka produce` and the Kafka benchmarks, which
/// word their errors differently.
pub fn create_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> std::result::Result<(), TopicNotCreated> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(TopicNotCreated::Config)?;
    let created = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication),
        )],
        &AdminOptions::new().operation_timeout(Some(timeout)),
    ))
    .map_err(TopicNotCreated::Client)?;
    for result in created {
        result.map_err(|(_, code)| TopicNotCreated::Refused(code))?;
    }
    Ok(())
}

/// Refuses a topic name Kafka would refuse (its rule: 1 to 249 ASCII letters, digits,
/// `.`, `_` or `-`, and not `.` or `..`), naming `what` (e.g. "KAFKA table 't'").
pub fn check_topic_name(topic: &str, what: &str) -> Result<()> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty()
        || topic.len() > 249
        || !topic.chars().all(legal)
        || topic == "."
        || topic == ".."
    {
        return Err(Error::Sql(format!(
            "LOCATION '{topic}' of {what} is not a Kafka topic name: use 1 to 249 letters, \
             digits, '.', '_' or '-' (not '.' or '..')"
        )));
    }
    Ok(())
}

/// Exponential backoff between attempts at a broker call: `first`, then doubled up to
/// `max`. The source retries until its `broker_retry_timeout`, the sink a fixed number
/// of attempts; both wait this way.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, never waits longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The wait before the next attempt (and doubles the one after).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for ok in ["clicks", "a.b_c-1", &"x".repeat(249), "..."] {
            assert!(check_topic_name(ok, "t").is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "my topic", "clicks/", "ü", &"x".repeat(250)] {
            let error = check_topic_name(bad, "KAFKA table 't'")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("is not a Kafka topic name"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
    }
}
