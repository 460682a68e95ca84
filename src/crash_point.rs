//! Test-only crash injection, a leaf module so that the batch loop (`execution`) and
//! the sinks that have crash points of their own (`sink`) need not import each other.

/// If the environment variable `MILLRACE_CRASH_AT` names this point (e.g.
/// `after-sink-manifest`), the process aborts here, as a `kill -9` at exactly that
/// instant would. Lets crash tests hit the narrow windows between a sink's commit point
/// and the commit log on purpose, not only by chance.
pub fn crash_point(name: &str) {
    if let Some(target) = std::env::var_os("MILLRACE_CRASH_AT")
        && target == name
    {
        eprintln!("millrace: crash point '{name}' reached (MILLRACE_CRASH_AT), aborting");
        std::process::abort();
    }
}
