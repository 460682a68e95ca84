//! Structured logs through `tracing`: the library emits events inside a span per
//! query (`query{name, id, run_id}`) and per batch (`batch{batch_id}`); front ends
//! choose where they go. The `millrace` command installs [`init`]: events to standard
//! error, filtered like `RUST_LOG` (e.g. `RUST_LOG=info`,
//! `RUST_LOG=millrace::execution=debug`), `warn` when unset, so the command's output
//! is unchanged unless asked for.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset: only warnings and errors.
pub const DEFAULT_FILTER: &str = "warn";

/// Installs the process's subscriber (a no-op if one is installed already). Returns a
/// note for the user when `RUST_LOG` is set but cannot be read (the default applies).
pub fn init() -> Option<String> {
    let (filter, note) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!(
                    "RUST_LOG='{spec}' is not a valid filter ({e}); logging at '{DEFAULT_FILTER}' \
                     (examples: RUST_LOG=info, RUST_LOG=millrace=debug)"
                )),
            ),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    note
}
