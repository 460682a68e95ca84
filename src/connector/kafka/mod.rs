//! Apache Kafka: the source ([`source`], `STORED AS KAFKA` tables), the sink ([`sink`],
//! `CREATE SINK ... STORED AS KAFKA`), and the client code they share with
//! `millrace kafka` (`kafka_tool`) and the Kafka benchmarks ([`client`]: client
//! settings, topic-name validation, topic creation, the retry backoff).
//!
//! librdkafka's calls block; they run on the query's own thread (the micro-batch loop)
//! or, when a query starts, on tokio's blocking pool, never on its worker threads.

pub mod client;
pub mod sink;
pub mod source;
