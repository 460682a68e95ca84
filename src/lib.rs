//! # millrace
//!
//! A streaming SQL engine on Apache Arrow and DataFusion, in the style of Spark
//! Structured Streaming: unbounded tables, incremental micro-batch queries, sinks with
//! exactly-once delivery, and a checkpoint that survives `kill -9` at any instant.
//!
//! The modules follow the data's path (see `docs/ARCHITECTURE.md`):
//!
//! - [`source`]: unbounded tables (files, rate, socket) read by offsets;
//! - [`planning`]: SQL over unbounded tables → a DataFusion plan run per batch;
//! - [`execution`]: the micro-batch loop, triggers, progress;
//! - [`sink`]: console, memory, file and Kafka sinks;
//! - [`checkpoint`]: offset log, commit log, source state — beside them all;
//! - front ends on top: [`sql`] (scripts), [`dataframe`] (the Rust API, Spark's
//!   `readStream`/`writeStream`), [`session`], [`repl`]; [`kafka_tool`]
//!   (`millrace kafka produce|consume`) for the Kafka examples;
//! - watching it all: [`ui`] (the embedded web UI, REST API and Prometheus
//!   `/metrics`) and [`logging`] (`tracing` with `RUST_LOG`-style filtering).
//!
//! `use millrace::prelude::*;` brings the DataFrame API and what it needs.

#![warn(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod connector;
pub mod crash_point;
pub mod dataframe;
pub mod demo;
pub mod duration;
pub mod error;
pub mod execution;
pub mod functions;
pub mod kafka_tool;
pub mod logging;
pub mod planning;
pub mod repl;
pub mod sensor_events;
pub mod session;
pub mod sink;
pub mod source;
pub mod sql;
pub mod state;
pub mod ui;

pub use dataframe::prelude;
pub use error::{Error, Result};
pub use execution::{QueryProgress, StreamingQuery, Trigger};
pub use session::{Session, SessionSettings, StatementResult};
