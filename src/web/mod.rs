//! The dashboard (`hq serve --http ADDR`): the only owner of axum and hyper.
//! Server-rendered pages (`/`, `/jobs/ID`), live updates by server-sent
//! events, actions (rerun failed, cancel) behind a session and a CSRF token,
//! and the accept loop with its limits (TLS off loopback, header and body
//! sizes, connection count, timeouts).
//!
//! Sits beside HQ, not inside it: reads and changes HQ's state only through
//! [`crate::hq::Console`] (the admin requests the CLI sends); never touches
//! HQ's store, never imports `relay` or `agent`. Assets are embedded.

// A refusal is an axum `Response`, returned by value as handlers do.
#![allow(clippy::result_large_err)]

mod auth;
mod pages;
mod syncs;

use crate::hq::Console;
use crate::proto::{AdminRequest, AdminResponse, JobId};
use auth::Sessions;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a dashboard session lasts unless told (12 h).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Largest request body accepted (actions carry a CSRF token, nothing more).
pub const MAX_BODY: usize = 16 * 1024;
/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// Whether the dashboard on `addr` uses TLS: off loopback it must, unless
/// `insecure`.
pub fn use_tls(addr: SocketAddr, insecure: bool) -> bool {
    !addr.ip().is_loopback() && !insecure
}

/// The base URL login links name, for a listener bound to `addr`.
pub fn base_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// `--http-url`: an http(s) URL without path, query or fragment; returned
/// without a trailing slash.
pub fn check_base_url(u: &str) -> Result<String, String> {
    let trimmed = u.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("--http-url {u:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(format!(
            "--http-url {u:?}: expected a scheme and host only (no path, query, user or spaces)"
        ));
    }
    Ok(trimmed.to_string())
}

/// How the dashboard is served.
pub struct Options {
    /// TLS for browsers (HQ's certificate), or plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Session lifetime (the cookie's Max-Age).
    pub session_ttl: Duration,
    /// What login links name instead of the bound address.
    pub base_url: Option<String>,
}

struct App {
    console: Console,
    sessions: Sessions,
    secure: bool,
    ttl: Duration,
}

/// Serves the dashboard on `listener` until `shutdown`. Tells `console` the
/// base URL its login links must name.
pub async fn serve(
    listener: TcpListener,
    console: Console,
    opts: Options,
    shutdown: CancellationToken,
) {
    match (&opts.base_url, listener.local_addr()) {
        (Some(u), _) => console.serve_at(u.clone()),
        (None, Ok(addr)) => console.serve_at(base_url(addr, opts.tls.is_some())),
        (None, Err(e)) => tracing::warn!(error = %e, "dashboard address unknown: no login links"),
    }
    let app = Arc::new(App {
        console,
        sessions: Sessions::default(),
        secure: opts.tls.is_some(),
        ttl: opts.session_ttl,
    });
    let router = router(app);
    let acceptor = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            connection(hyper_util::rt::TokioIo::new(tls), svc, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "dashboard tls handshake failed"),
                        Err(_) => tracing::debug!("dashboard tls handshake timed out"),
                    }
                }
                None => connection(hyper_util::rt::TokioIo::new(tcp), svc, stop).await,
            }
        });
    }
}

async fn connection<I, S>(io: I, svc: S, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, svc);
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::debug!(error = %e, "dashboard connection ended") },
        _ = stop.cancelled() => {}
    }
}

/// `GET /metrics`: the process's Prometheus exposition, without a session
/// (Prometheus scrapes without one); fleet-wide counts only, no names of
/// clients. Empty when HQ keeps no metrics.
async fn metrics_page() -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::scrape().await,
    )
        .into_response()
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/events", get(home_events))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/{action}", post(job_action))
        .route("/api/tree", get(api_tree))
        .route("/api/jobs", get(api_jobs))
        .route("/api/jobs/{id}", get(api_job))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(headers))
        .with_state(app)
}

/// Headers on every answer: no caching, no framing, no sniffing, no referrer
/// (login links carry a token), scripts and styles from this origin only.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn now_ms() -> u64 {
    crate::proto::now_ms()
}

impl App {
    fn session(&self, h: &HeaderMap) -> Option<auth::Session> {
        self.sessions.find(h, now_ms())
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, pages::signed_out()).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::problem("Not found", "No such page."),
    )
        .into_response()
}

/// An error HQ answered, as a status code and its text.
fn hq_error(e: crate::hq::HqError) -> (StatusCode, String) {
    let text = e.to_string();
    let code = if text.contains("unknown job") || text.contains("no such job") {
        StatusCode::NOT_FOUND
    } else if matches!(e, crate::hq::HqError::Refused(_)) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, text)
}

fn parse_job(id: &str) -> Result<JobId, Response> {
    id.parse::<JobId>().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            pages::problem("Bad job id", &e.to_string()),
        )
            .into_response()
    })
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login(
    State(app): State<Arc<App>>,
    q: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = q.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    if token.is_empty() || !app.console.redeem(&token) {
        tracing::info!("dashboard login refused: unknown, used or expired link");
        return (
            StatusCode::UNAUTHORIZED,
            pages::problem(
                "Login link refused",
                "This link is unknown, already used or expired. Run `hq web login` for a new one.",
            ),
        )
            .into_response();
    }
    let id = app.sessions.open(now_ms(), app.ttl.as_millis() as u64);
    tracing::info!("dashboard session opened");
    (
        [(
            header::SET_COOKIE,
            auth::set_cookie(&id, app.ttl.as_secs(), app.secure),
        )],
        pages::signed_in(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// The session and a valid CSRF token for an action, or the refusal.
fn check_action(
    app: &App,
    h: &HeaderMap,
    form: &Result<Form<CsrfForm>, FormRejection>,
) -> Result<auth::Session, Response> {
    let s = app.session(h).ok_or_else(unauthorized)?;
    if let Err(r) = form {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Err((r.status(), r.body_text()).into_response());
        }
    }
    let given = h
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| form.as_ref().ok().and_then(|f| f.csrf.as_deref()));
    if !auth::csrf_ok(&s, given) {
        tracing::warn!("dashboard action refused: missing or forged csrf token");
        return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response());
    }
    Ok(s)
}

async fn logout(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Err(r) = check_action(&app, &h, &form) {
        return r;
    }
    app.sessions.close(&h);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::clear_cookie(app.secure)),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

async fn home_data(app: &App) -> Result<pages::Home, (StatusCode, String)> {
    let tree = match app
        .console
        .request(AdminRequest::Tree)
        .await
        .map_err(hq_error)?
    {
        AdminResponse::Tree(t) => t,
        other => return Err(unexpected(other)),
    };
    let jobs = match app
        .console
        .request(AdminRequest::List)
        .await
        .map_err(hq_error)?
    {
        AdminResponse::List(l) => l,
        other => return Err(unexpected(other)),
    };
    let clients = app.console.clients().map_err(hq_error)?;
    Ok(pages::Home {
        tree,
        jobs,
        clients,
        now_ms: now_ms(),
    })
}

fn unexpected(r: AdminResponse) -> (StatusCode, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from hq: {r:?}"),
    )
}

/// How many failed leaves' outputs a job page fetches.
const OUTPUTS_SHOWN: usize = 20;

async fn job_data(
    app: &App,
    job: JobId,
) -> Result<(crate::proto::JobStatus, pages::Outputs), (StatusCode, String)> {
    let st = match app
        .console
        .request(AdminRequest::Status {
            job,
            states: vec![],
            relay: None,
            limit: None,
            page: None,
            after: None,
        })
        .await
        .map_err(hq_error)?
    {
        AdminResponse::Status(s) => s,
        other => return Err(unexpected(other)),
    };
    let mut outputs = pages::Outputs::new();
    for l in pages::leaf_order(&st.clients)
        .into_iter()
        .filter(|l| pages::leaf_rank(l.state) == 0)
        .take(OUTPUTS_SHOWN)
    {
        let req = AdminRequest::Output {
            // A batch's leaf: its output is its child job's.
            job: l.job.unwrap_or(job),
            client: l.client.clone(),
        };
        if let Ok(AdminResponse::Output(o)) = app.console.request(req).await {
            outputs.insert(l.client.as_str().to_string(), o);
        }
    }
    Ok((st, outputs))
}

fn error_page((code, text): (StatusCode, String)) -> Response {
    (code, pages::problem("Error", &text)).into_response()
}

async fn home(State(app): State<Arc<App>>, h: HeaderMap) -> Response {
    let Some(s) = app.session(&h) else {
        return unauthorized();
    };
    match home_data(&app).await {
        Ok(d) => pages::home(&d, &s.csrf).into_response(),
        Err(e) => error_page(e),
    }
}

/// The buttons of a job's page; an audit's also its differences.
async fn actions(app: &App, s: &crate::proto::JobStatus) -> pages::Actions {
    let audit = if s.action.starts_with("audit ") {
        match app
            .console
            .request(AdminRequest::AuditStatus { audit: s.job })
            .await
        {
            Ok(AdminResponse::AuditStatus(a)) => Some(a),
            _ => None,
        }
    } else {
        None
    };
    pages::Actions { pause: true, audit }
}

async fn job_page(State(app): State<Arc<App>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(s) = app.session(&h) else {
        return unauthorized();
    };
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match job_data(&app, job).await {
        Ok((d, o)) => {
            let a = actions(&app, &d).await;
            pages::job(&d, &o, &s.csrf, &a).into_response()
        }
        Err(e) => error_page(e),
    }
}

/// The admin request behind a button, by its path segment.
fn action_request(action: &str, job: JobId) -> Option<AdminRequest> {
    match action {
        "rerun" => Some(AdminRequest::Rerun {
            job,
            expired: false,
        }),
        "cancel" => Some(AdminRequest::Cancel { job }),
        "pause" => Some(AdminRequest::Pause { job }),
        "resume" => Some(AdminRequest::Resume { job }),
        "sync" => Some(AdminRequest::Sync(crate::proto::sync::SyncRequest {
            audit: job,
            ..Default::default()
        })),
        _ => None,
    }
}

/// What an action did, in a sentence.
fn action_message(r: &AdminResponse) -> String {
    match r {
        AdminResponse::Rerun(r) if r.targets == 0 => "nothing failed: no rerun".into(),
        AdminResponse::Rerun(r) => format!("attempt {}: {} leaves rerun", r.attempt.0, r.targets),
        AdminResponse::Canceled(c) => format!("{} leaves canceled", c.canceled),
        AdminResponse::Control(c) => format!("job {}: {}", c.job, c.state),
        AdminResponse::Sync(v) => match v.batch {
            Some(b) => format!("batch {b}: {} jobs launched", v.jobs.len()),
            None => "nothing to sync".into(),
        },
        other => format!("{other:?}"),
    }
}

async fn job_action(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Err(r) = check_action(&app, &h, &form) {
        return r;
    }
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let Some(req) = action_request(&action, job) else {
        return not_found().await;
    };
    tracing::info!(job = %job, action, "dashboard action");
    let from_script = h.contains_key("x-csrf-token");
    match app.console.request(req).await {
        Ok(r) if from_script => {
            axum::Json(serde_json::json!({ "message": action_message(&r) })).into_response()
        }
        Ok(r) => {
            // A sync goes on at its batch's page.
            let to = match &r {
                AdminResponse::Sync(v) => v.batch.unwrap_or(job),
                _ => job,
            };
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/jobs/{to}"))],
            )
                .into_response()
        }
        Err(e) => {
            let (code, text) = hq_error(e);
            (code, text).into_response()
        }
    }
}

/// Live updates: the page's fragments now, then after every change HQ
/// records (at most every 250 ms) and every few seconds (relay states age).
/// Ends when the session does.
fn live<F, Fut>(app: Arc<App>, h: HeaderMap, render: F) -> Response
where
    F: Fn(Arc<App>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, (StatusCode, String)>> + Send,
{
    let mut changes = app.console.changes();
    let stream = async_stream(move |tx| async move {
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            first = false;
            if app.session(&h).is_none() {
                return;
            }
            let ev = match render(app.clone()).await {
                Ok(data) => Event::default().event("update").data(data),
                Err((_, text)) => Event::default().event("problem").data(text),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream fed by a task through a small channel (the task ends when the
/// stream is dropped).
fn async_stream<F, Fut>(
    f: F,
) -> impl futures::Stream<Item = Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

async fn home_events(State(app): State<Arc<App>>, h: HeaderMap) -> Response {
    if app.session(&h).is_none() {
        return unauthorized();
    }
    live(app, h, |app| async move {
        let d = home_data(&app).await?;
        Ok(pages::fragments_json(&pages::home_fragments(&d)))
    })
}

async fn job_events(State(app): State<Arc<App>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if app.session(&h).is_none() {
        return unauthorized();
    }
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    live(app, h, move |app| async move {
        let (d, o) = job_data(&app, job).await?;
        Ok(pages::fragments_json(&pages::job_fragments(&d, &o)))
    })
}

fn json_or_error<T: serde::Serialize>(r: Result<T, (StatusCode, String)>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err((code, text)) => (code, text).into_response(),
    }
}

async fn api_tree(State(app): State<Arc<App>>, h: HeaderMap) -> Response {
    if app.session(&h).is_none() {
        return unauthorized();
    }
    json_or_error(home_data(&app).await.map(|d| d.tree))
}

async fn api_jobs(State(app): State<Arc<App>>, h: HeaderMap) -> Response {
    if app.session(&h).is_none() {
        return unauthorized();
    }
    json_or_error(home_data(&app).await.map(|d| d.jobs))
}

async fn api_job(State(app): State<Arc<App>>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if app.session(&h).is_none() {
        return unauthorized();
    }
    let job = match parse_job(&id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    json_or_error(job_data(&app, job).await.map(|(d, _)| d))
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_off_loopback() {
        let cases = [
            ("127.0.0.1:0", false, false),
            ("[::1]:0", false, false),
            ("0.0.0.0:8080", false, true),
            ("0.0.0.0:8080", true, false),
            ("192.0.2.1:443", false, true),
        ];
        for (addr, insecure, want) in cases {
            assert_eq!(use_tls(addr.parse().unwrap(), insecure), want, "{addr}");
        }
    }

    #[test]
    fn base_urls_are_scheme_and_host() {
        assert_eq!(
            check_base_url("https://hq.example:8443/").unwrap(),
            "https://hq.example:8443"
        );
        assert_eq!(
            check_base_url("http://10.0.0.1").unwrap(),
            "http://10.0.0.1"
        );
        for bad in [
            "hq.example",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://x?q",
            "https://u@x",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_known_buttons_make_requests() {
        let j = JobId(3);
        assert!(matches!(
            action_request("rerun", j),
            Some(AdminRequest::Rerun { expired: false, .. })
        ));
        assert!(matches!(
            action_request("cancel", j),
            Some(AdminRequest::Cancel { .. })
        ));
        assert!(matches!(
            action_request("pause", j),
            Some(AdminRequest::Pause { .. })
        ));
        assert!(matches!(
            action_request("resume", j),
            Some(AdminRequest::Resume { .. })
        ));
        assert!(action_request("purge", j).is_none());
        assert!(action_request("", j).is_none());
    }
}
