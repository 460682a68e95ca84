//! The Apache Kafka broker of the tests: Apache Kafka 4.4 started on free loopback ports
//! through `scripts/kafka-broker.sh` (see `/docs/kafka.md`).
//!
//! [`shared`] starts one broker per test binary, the first time a test asks for it; each
//! test then makes its own topics ([`unique`] names). The broker is started with a
//! watchdog on this process (`--watch <pid>`): it stops, and its files are deleted, when
//! the test binary exits, however it exits, so no JVM outlives `cargo test`.
//! [`Broker::start`] gives a test a broker of its own, stopped when dropped, for tests
//! that kill the broker or need other broker settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A running Apache Kafka broker on 127.0.0.1.
#[derive(Debug)]
pub struct Broker {
    /// The broker's port on 127.0.0.1.
    pub port: u16,
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub bootstrap: String,
    /// Whether dropping this value stops the broker (false for [`shared`]).
    owned: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker.sh")
}

/// The broker of this test binary, started by the first caller.
#[allow(dead_code)]
pub fn shared() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let mut broker = Broker::start_with(&[]);
        broker.owned = false;
        broker
    })
}

/// `base` made unique within this test binary (`<base>-<n>`), for topics, groups and
/// transactional ids of one test on the [`shared`] broker.
#[allow(dead_code)]
pub fn unique(base: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{base}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

#[allow(dead_code)]
impl Broker {
    /// Installs Apache Kafka if needed (about 30 s the first time on a machine) and
    /// starts a broker of this test's own on free loopback ports; stopped on drop.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// [`Broker::start`] with extra broker settings (`key=value`).
    pub fn start_with(settings: &[&str]) -> Broker {
        let pid = std::process::id().to_string();
        let mut args = vec!["start", "--watch", pid.as_str()];
        for setting in settings {
            args.extend(["--set", setting]);
        }
        let out = Command::new(script())
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kafka-broker.sh start");
        assert!(out.status.success(), "scripts/kafka-broker.sh start failed");
        let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("scripts/kafka-broker.sh printed {bootstrap:?}"));
        Broker {
            port,
            bootstrap,
            owned: true,
        }
    }

    fn run(&self, verb: &str) {
        let ok = Command::new(script())
            .args([verb, &self.port.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run scripts/kafka-broker.sh {verb}: {e}"));
        assert!(ok.success(), "scripts/kafka-broker.sh {verb} failed");
    }

    /// Kills the broker with `kill -9` (a crash) and waits until it is gone; its data
    /// stays for [`Broker::resume`].
    pub fn kill(&self) {
        assert!(self.owned, "only a test's own broker may be killed");
        self.run("kill");
    }

    /// Starts a killed broker again on the same port and data.
    pub fn resume(&self) {
        self.run("resume");
    }

    /// Stops the broker now and deletes its data.
    pub fn stop(&self) {
        assert!(self.owned, "only a test's own broker may be stopped");
        self.run("stop");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new(script())
                .args(["stop", &self.port.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
