//! Prometheus metrics: the only importer of the `metrics` crates and of the
//! HTTP server that exposes them. Roles call the typed functions below (one
//! per measurement, so every metric name lives in this file) and register
//! collectors that set gauges at scrape time; [`render`] produces the
//! exposition text and [`serve`] answers `GET /metrics` (and nothing else).
//!
//! Imports nothing of ours. Until [`install`] is called every function here
//! is a no-op, so library tests and nodes started without `--metrics` pay
//! nothing. Hot paths hold handles (an atomic add per event); label values
//! are bounded by the callers (roles, states, reasons, child relays: never
//! one per agent).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sessions open now, by the peer's role and which side of us it is
/// (`child`: it dialed us; `parent`: we dialed it).
pub const SESSIONS: &str = "relaytree_sessions";
/// Leaves by state: HQ counts every leaf of every job, a relay its home leaves.
pub const LEAVES: &str = "relaytree_leaves";
/// Jobs by state (HQ).
pub const JOBS: &str = "relaytree_jobs";
/// Events waiting in this node's outbox(es) for the parent's ack.
pub const OUTBOX_DEPTH: &str = "relaytree_outbox_depth";
/// Age of the oldest unacknowledged outbox entry (0 when empty).
pub const OUTBOX_OLDEST: &str = "relaytree_outbox_oldest_age_seconds";
/// One group-commit round: sled flush plus the fsyncs after it.
pub const FLUSH_SECONDS: &str = "relaytree_store_flush_seconds";
/// Bytes sent to a child (sessions and transfers), TLS payload.
pub const CHILD_SENT: &str = "relaytree_child_sent_bytes_total";
/// Bytes received from a child (sessions and transfers), TLS payload.
pub const CHILD_RECEIVED: &str = "relaytree_child_received_bytes_total";
/// Blobs a child asked the relay's package cache for, by hit or miss.
pub const CACHE_BLOBS: &str = "relaytree_cache_blobs_total";
/// Connections refused before a session started, by reason.
pub const HANDSHAKES_REFUSED: &str = "relaytree_handshakes_refused_total";

/// Flush latency buckets, in seconds (a group commit takes from well under a
/// millisecond on tmpfs to a second on a struggling disk).
const FLUSH_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Largest request head the listener reads (hyper answers 431 past it).
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The recorder could not be built or installed.
    #[error("cannot set up metrics: {0}")]
    Recorder(String),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A collector run before each scrape; returns false once it has nothing
/// left to measure (its node stopped), and is then dropped.
type Collector = Box<dyn Fn() -> bool + Send + Sync>;
static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Installs the process-wide recorder (once; later calls do nothing).
pub fn install() -> Result<(), MetricsError> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FLUSH_SECONDS.into()), &FLUSH_BUCKETS)
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError::Recorder(e.to_string()))?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(SESSIONS, "sessions open now, by the peer's role and side");
    describe_gauge!(LEAVES, "leaves by state (hq: all jobs; relay: home leaves)");
    describe_gauge!(JOBS, "jobs by state");
    describe_gauge!(OUTBOX_DEPTH, "events waiting for the parent's ack");
    describe_gauge!(
        OUTBOX_OLDEST,
        Unit::Seconds,
        "age of the oldest unacknowledged outbox entry"
    );
    describe_histogram!(
        FLUSH_SECONDS,
        Unit::Seconds,
        "group-commit round: flush and fsync"
    );
    describe_counter!(
        CHILD_SENT,
        Unit::Bytes,
        "bytes sent to a child (agents aggregated)"
    );
    describe_counter!(
        CHILD_RECEIVED,
        Unit::Bytes,
        "bytes received from a child (agents aggregated)"
    );
    describe_counter!(CACHE_BLOBS, "blobs asked of the package cache, by result");
    describe_counter!(HANDSHAKES_REFUSED, "connections refused, by reason");
}

/// The `Content-Type` of [`scrape`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// [`render`] on a blocking thread (collectors read stores): what a
/// `GET /metrics` handler answers, here or on HQ's dashboard listener
/// (there: call [`install`] before HQ opens its store, and route
/// `GET /metrics` to this with [`CONTENT_TYPE`]).
pub async fn scrape() -> String {
    tokio::task::spawn_blocking(render)
        .await
        .unwrap_or_default()
}

/// Whether a recorder is installed (metrics are being kept).
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// Registers a collector run before every scrape (see [`Collector`]).
/// Does nothing when metrics are off.
pub fn on_scrape(f: impl Fn() -> bool + Send + Sync + 'static) {
    if !enabled() {
        return;
    }
    COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(f));
}

/// Runs the collectors, then renders every metric in the Prometheus text
/// format. Empty when metrics are off. May block (collectors read stores).
pub fn render() -> String {
    let Some(h) = HANDLE.get() else {
        return String::new();
    };
    COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| c());
    h.render()
}

/// A handle cached after the recorder is installed (before it, a no-op
/// handle that is not kept, so a later install still takes effect).
fn cached<T: Clone>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T) -> Option<T> {
    if !enabled() {
        return None;
    }
    Some(cell.get_or_init(make).clone())
}

/// Open sessions of one role on one side; the count drops with the guard.
pub struct SessionGuard(Option<metrics::Gauge>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.decrement(1.0);
        }
    }
}

/// A session with a peer of `role` opened on `side` (`child` or `parent`).
pub fn session_opened(role: &'static str, side: &'static str) -> SessionGuard {
    if !enabled() {
        return SessionGuard(None);
    }
    let g = metrics::gauge!(SESSIONS, "role" => role, "side" => side);
    g.increment(1.0);
    SessionGuard(Some(g))
}

/// Byte counters of one child (by its label): cheap to clone and add to.
#[derive(Clone)]
pub struct ChildBytes {
    /// Bytes sent to the child.
    pub sent: metrics::Counter,
    /// Bytes received from it.
    pub received: metrics::Counter,
}

/// The byte counters of the child labelled `child` (looked up once per
/// connection; adding is an atomic add).
pub fn child_bytes(child: &str) -> ChildBytes {
    if !enabled() {
        return ChildBytes {
            sent: metrics::Counter::noop(),
            received: metrics::Counter::noop(),
        };
    }
    let label = child.to_string();
    ChildBytes {
        sent: metrics::counter!(CHILD_SENT, "child" => label.clone()),
        received: metrics::counter!(CHILD_RECEIVED, "child" => label),
    }
}

/// A connection was refused before its session started.
pub fn handshake_refused(reason: &'static str) {
    if enabled() {
        metrics::counter!(HANDSHAKES_REFUSED, "reason" => reason).increment(1);
    }
}

/// The package cache was asked for `hits + misses` blobs and lacked `misses`.
pub fn cache_lookups(hits: u64, misses: u64) {
    static H: OnceLock<(metrics::Counter, metrics::Counter)> = OnceLock::new();
    if let Some((h, m)) = cached(&H, || {
        (
            metrics::counter!(CACHE_BLOBS, "result" => "hit"),
            metrics::counter!(CACHE_BLOBS, "result" => "miss"),
        )
    }) {
        h.increment(hits);
        m.increment(misses);
    }
}

/// One group-commit round took `d`.
pub fn flush_took(d: Duration) {
    static H: OnceLock<metrics::Histogram> = OnceLock::new();
    if let Some(h) = cached(&H, || metrics::histogram!(FLUSH_SECONDS)) {
        h.record(d.as_secs_f64());
    }
}

/// Sets the outbox gauges: entries waiting and the oldest one's age.
pub fn set_outbox(depth: u64, oldest: Duration) {
    if enabled() {
        metrics::gauge!(OUTBOX_DEPTH).set(depth as f64);
        metrics::gauge!(OUTBOX_OLDEST).set(oldest.as_secs_f64());
    }
}

/// Sets the leaves gauge of each state.
pub fn set_leaves(by_state: &[(&'static str, u64)]) {
    if enabled() {
        for (state, n) in by_state {
            metrics::gauge!(LEAVES, "state" => *state).set(*n as f64);
        }
    }
}

/// Sets the jobs gauge of each state.
pub fn set_jobs(by_state: &[(&'static str, u64)]) {
    if enabled() {
        for (state, n) in by_state {
            metrics::gauge!(JOBS, "state" => *state).set(*n as f64);
        }
    }
}

/// What the listener answers a request: status and whether to send metrics.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Answer {
    /// 200 with the metrics.
    Metrics,
    /// 405: `/metrics` with a method other than GET.
    MethodNotAllowed,
    /// 404: any other path.
    NotFound,
}

/// The listener's routing, as a plain decision: only `GET /metrics`.
pub fn route(method: &str, path: &str) -> Answer {
    match (method, path) {
        ("GET", "/metrics") => Answer::Metrics,
        (_, "/metrics") => Answer::MethodNotAllowed,
        _ => Answer::NotFound,
    }
}

/// Binds `addr` (port 0 allowed), installs the recorder, prints
/// "metrics on HOST:PORT" and serves `GET /metrics` until `shutdown`.
/// Returns the bound address once listening.
pub async fn serve(addr: &str, shutdown: CancellationToken) -> Result<SocketAddr, MetricsError> {
    install()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "metrics on {local}");
        let _ = out.flush();
    }
    tracing::info!(addr = %local, "metrics on");
    tokio::spawn(accept_loop(listener, shutdown));
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = upkeep.tick() => {
                // Drains histogram samples even when nobody scrapes.
                if let Some(h) = HANDLE.get() {
                    h.run_upkeep();
                }
                continue;
            }
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tcp),
                    hyper::service::service_fn(answer),
                );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics connection ended");
                    }
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    use hyper::{header, Response, StatusCode};
    let r = match route(req.method().as_str(), req.uri().path()) {
        Answer::Metrics => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Body::new(scrape().await.into())),
        Answer::MethodNotAllowed => Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET")
            .body(Body::new("only GET /metrics is served\n".into())),
        Answer::NotFound => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::new("only GET /metrics is served\n".into())),
    };
    Ok(r.unwrap_or_else(|_| Response::new(Body::default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let table = [
            ("GET", "/metrics", Answer::Metrics),
            ("POST", "/metrics", Answer::MethodNotAllowed),
            ("HEAD", "/metrics", Answer::MethodNotAllowed),
            ("PUT", "/metrics", Answer::MethodNotAllowed),
            ("GET", "/", Answer::NotFound),
            ("GET", "/metrics/", Answer::NotFound),
            ("GET", "/metricsx", Answer::NotFound),
            ("POST", "/other", Answer::NotFound),
        ];
        for (m, p, want) in table {
            assert_eq!(route(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn nothing_is_kept_before_install() {
        // No recorder in unit tests: every call is a cheap no-op.
        if enabled() {
            return;
        }
        let _g = session_opened("agent", "child");
        child_bytes("agents").sent.increment(5);
        flush_took(Duration::from_millis(1));
        assert_eq!(render(), "");
    }
}
