//! A real PostgreSQL server for the PostgreSQL sink's tests: one per test binary,
//! started by `scripts/postgres.sh` (Debian's postgresql, a throwaway data directory,
//! a free loopback port, password authentication) and stopped by the script's watcher
//! when the test process exits. Results are read back with `psql`, an independent
//! client.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The environment variable the test jobs name in `password_env`.
pub const PASSWORD_ENV: &str = "MILLRACE_TEST_PGPASSWORD";

/// The running server.
pub struct PgServer {
    /// Loopback port.
    pub port: u16,
    /// Its throwaway directory (data, log, password).
    pub dir: PathBuf,
    /// Password of user `postgres`.
    pub password: String,
}

impl PgServer {
    /// The test binary's server, started on first use.
    pub fn shared() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(|| Self::start(false))
    }

    /// The test binary's server with TLS (`ssl = on`, a certificate for `localhost`
    /// signed by the CA in `dir/ca.crt`; `dir/other-ca.crt` signed nothing), started on
    /// first use.
    pub fn shared_tls() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(|| Self::start(true))
    }

    fn start(tls: bool) -> PgServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
        let output = Command::new(script)
            .arg("start")
            .arg(std::process::id().to_string())
            .args(if tls { &["tls"][..] } else { &[] })
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            output.status.success(),
            "scripts/postgres.sh start failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mut words = line.split_whitespace();
        let port = words.next().and_then(|p| p.parse().ok()).expect("port");
        let dir = PathBuf::from(words.next().expect("directory"));
        let password = std::fs::read_to_string(dir.join("password"))
            .expect("read the password")
            .trim()
            .to_string();
        PgServer {
            port,
            dir,
            password,
        }
    }

    /// Creates database `name` (each test uses its own) and returns `name`.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name.to_string()
    }

    /// Runs `sql` in `database` with psql; rows as `a|b|c` lines (unaligned, no header).
    pub fn psql(&self, database: &str, sql: &str) -> Vec<String> {
        let output = self.try_psql(database, sql);
        match output {
            Ok(rows) => rows,
            Err(e) => panic!("psql {sql}: {e}"),
        }
    }

    /// Like [`psql`](Self::psql), returning psql's error text instead of panicking.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<Vec<String>, String> {
        let output = Command::new("psql")
            .args(["-X", "-q", "-tA", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("run psql");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).to_string());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The `OPTIONS` entries connecting a sink to `database` (password from the
    /// server's password file).
    pub fn sink_options(&self, database: &str) -> String {
        format!(
            "'port' '{}', 'database' '{database}', 'password_file' '{}'",
            self.port,
            self.dir.join("password").display()
        )
    }

    /// The environment a `millrace` process needs for [`sink_options`](Self::sink_options).
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [(PASSWORD_ENV, self.password.as_str())]
    }
}
