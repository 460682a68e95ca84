//! Connectors: one directory per external system, holding its sources, sinks and the
//! client code they share.
//!
//! - [`kafka`]: Apache Kafka topics as a source and an exactly-once sink.

pub mod kafka;
