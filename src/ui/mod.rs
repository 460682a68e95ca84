//! The embedded web server: a live web UI with charts, a JSON REST API and Prometheus
//! metrics for the streaming queries of one [`Session`](crate::Session).
//!
//! Off by default; started with `--ui [ADDR]`, `SET millrace.ui = 'ADDR'` in the shell
//! or [`StreamingContextBuilder::ui`](crate::dataframe::StreamingContextBuilder::ui).
//! It runs on the tokio runtime the queries already use (axum over hyper) and only
//! reads what the queries publish anyway — their progress reports (Spark's field
//! names), status and failure — so it adds nothing to the batch path but the metric
//! updates of [`metrics::MetricsListener`].
//!
//! - `api.rs`: the routes, the REST API's JSON documents and the static assets;
//! - `metrics.rs`: `/metrics` in Prometheus' text format;
//! - `assets/`: the pages, embedded in the binary, with uPlot (vendored, see
//!   `assets/uplot/VERSION`) drawing the charts: no network needed at run time.

mod api;
pub mod metrics;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::execution::StreamingQuery;

/// Where the UI listens when no address is given (Spark's UI port, loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:4040";

/// A query as the UI shows it: the handle plus what only the session knows.
#[derive(Clone)]
pub struct TrackedQuery {
    /// The running (or ended) query.
    pub query: StreamingQuery,
    /// The statement that started it (`None` for the DataFrame API).
    pub sql: Option<String>,
    /// The logical plan each batch runs, indented (DataFusion's `display_indent`).
    pub plan: String,
}

/// The queries of a session, in start order, shared between the session (which adds
/// them) and the web server (which reads them). Cheap to clone.
///
/// It also counts the starts still under way. A start runs on a blocking thread and
/// outlives the statement that asked for it when that statement is abandoned (a
/// SIGTERM while a script starts its query): [`stop_all`](Self::stop_all) must stop
/// such a query too, and [`wait_for_starts`](Self::wait_for_starts) lets a shutdown
/// wait for it, or the process would exit in the middle of its first batch.
#[derive(Clone, Default)]
pub struct QueryList {
    inner: Arc<Mutex<Queries>>,
    starts_done: Arc<Condvar>,
    metrics: Arc<metrics::Metrics>,
}

#[derive(Default)]
struct Queries {
    tracked: Vec<TrackedQuery>,
    /// Starts taken with [`QueryList::begin_start`] and not yet pushed or failed.
    starting: usize,
    /// How many times [`QueryList::stop_all`] was called: a start that began before
    /// the latest call is stopped as soon as it is pushed.
    stop_calls: u64,
}

/// A query start under way, from [`QueryList::begin_start`] until
/// [`QueryList::push`] takes it or it is dropped (the start failed).
pub struct StartTicket {
    list: QueryList,
    stop_calls: u64,
}

impl Drop for StartTicket {
    fn drop(&mut self) {
        self.list.lock().starting -= 1;
        self.list.starts_done.notify_all();
    }
}

impl QueryList {
    /// Notes that a query is being started; hand the ticket to [`push`](Self::push).
    pub fn begin_start(&self) -> StartTicket {
        let mut queries = self.lock();
        queries.starting += 1;
        StartTicket {
            list: self.clone(),
            stop_calls: queries.stop_calls,
        }
    }

    /// Records a query just started, with its plan's text; stops it at once if
    /// [`stop_all`](Self::stop_all) was called while it was starting.
    pub fn push(&self, ticket: StartTicket, query: StreamingQuery, plan: String) {
        let stopped_meanwhile = {
            let mut queries = self.lock();
            queries.tracked.push(TrackedQuery {
                query: query.clone(),
                sql: None,
                plan,
            });
            queries.stop_calls != ticket.stop_calls
        };
        drop(ticket);
        if stopped_meanwhile {
            query.stop();
        }
    }

    /// Asks every query, running or still starting, to stop after its current batch.
    pub fn stop_all(&self) {
        let queries = {
            let mut queries = self.lock();
            queries.stop_calls += 1;
            queries.tracked.clone()
        };
        for tracked in queries {
            tracked.query.stop();
        }
    }

    /// Blocks until no query start is under way, or `timeout` (if any) passed;
    /// `false` on timeout.
    pub fn wait_for_starts(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut queries = self.lock();
        while queries.starting > 0 {
            queries = match deadline {
                None => self
                    .starts_done
                    .wait(queries)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.starts_done
                        .wait_timeout(queries, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Records the statement that started `query`.
    pub fn set_sql(&self, query: &StreamingQuery, sql: &str) {
        if let Some(tracked) = self
            .lock()
            .tracked
            .iter_mut()
            .rev()
            .find(|t| t.query.run_id() == query.run_id())
        {
            tracked.sql = Some(sql.trim().to_string());
        }
    }

    /// The query handles, in start order.
    pub fn queries(&self) -> Vec<StreamingQuery> {
        self.lock()
            .tracked
            .iter()
            .map(|t| t.query.clone())
            .collect()
    }

    /// Every query with its SQL and plan, in start order.
    pub fn tracked(&self) -> Vec<TrackedQuery> {
        self.lock().tracked.clone()
    }

    /// The query a URL names: by run id, else by query id, else by name (the running
    /// one, else the latest started).
    pub fn find(&self, key: &str) -> Option<TrackedQuery> {
        let queries = self.lock();
        let all = &queries.tracked;
        all.iter()
            .find(|t| t.query.run_id() == key)
            .or_else(|| all.iter().rev().find(|t| t.query.id() == key))
            .or_else(|| {
                all.iter()
                    .rev()
                    .find(|t| t.query.name() == key && t.query.is_active())
            })
            .or_else(|| all.iter().rev().find(|t| t.query.name() == key))
            .cloned()
    }

    /// The Prometheus metrics the session's queries update (see [`metrics`]).
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queries> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running web server; stops when shut down or dropped.
pub struct UiServer {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl UiServer {
    /// Binds `addr` (`HOST:PORT`, or a bare port on 127.0.0.1) and serves the UI, the
    /// REST API and `/metrics` for `queries` on `runtime`. Errors (address in use, bad
    /// address) are returned here, before anything is served.
    pub fn start(addr: &str, queries: QueryList, runtime: &Handle) -> Result<UiServer> {
        let target = parse_addr(addr)?;
        let listener = std::net::TcpListener::bind(target)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::Network(format!(
                    "cannot serve the web UI on {target}: {e}; choose another address \
                     (HOST:PORT, port 0 picks a free one)"
                ))
            })?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::Network(format!("web UI: cannot read the bound address: {e}")))?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::Network(format!("web UI on {address}: {e}")))?
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = api::router(queries);
        runtime.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(%address, error = %e, "the web UI server stopped");
            }
        });
        tracing::info!(%address, "web UI serving");
        Ok(UiServer {
            address,
            shutdown: Some(shutdown),
        })
    }

    /// The address bound (with the port chosen when 0 was asked).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving (open connections finish their request).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `HOST:PORT`, `[V6]:PORT` or a bare `PORT` (on 127.0.0.1).
fn parse_addr(addr: &str) -> Result<SocketAddr> {
    let addr = addr.trim();
    let text = if addr.parse::<u16>().is_ok() {
        format!("127.0.0.1:{addr}")
    } else {
        addr.to_string()
    };
    text.to_socket_addrs()
        .ok()
        .and_then(|mut all| all.next())
        .ok_or_else(|| {
            Error::Option(format!(
                "'{addr}' is not an address for the web UI: give HOST:PORT (e.g. \
                 127.0.0.1:4040) or a port; port 0 picks a free one"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("4041").unwrap(),
            "127.0.0.1:4041".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:80").unwrap(),
            "0.0.0.0:80".parse().unwrap()
        );
        let e = parse_addr("nowhere").unwrap_err().to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }
}
