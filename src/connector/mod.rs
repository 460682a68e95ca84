//! Connectors: the sources and sinks millrace reads from and writes to, and the one
//! [`registry`] that names them.
//!
//! Every front end (SQL's `STORED AS`, the DataFrame API's `format(...)`, the shell's
//! completion and `\d`, the error messages listing formats and options) reads the
//! registry, so adding a connector is its module plus one entry there: the entry
//! carries the module's parse function, which returns the trait object
//! ([`SinkDefinition`](crate::sink::SinkDefinition) /
//! [`SourceDefinition`](crate::source::SourceDefinition)) the engine opens. The older
//! connectors still live in `source/` and `sink/`; new ones get a directory here,
//! holding their sources, sinks and the client code they share:
//!
//! - [`delta`]: Delta Lake tables as a source and an exactly-once sink.
//! - [`kafka`]: Apache Kafka topics as a source and an exactly-once sink.
//! - [`postgres`]: PostgreSQL tables as an exactly-once sink.

pub mod delta;
pub mod kafka;
pub mod postgres;
pub mod registry;
