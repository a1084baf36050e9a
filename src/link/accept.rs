//! The listening side: TLS with client certificates, role admission, the
//! `Hello` check, then one task per session. A failing connection ends only
//! its own task.

use super::meter::{child_label, refusal_reason, Metered};
use super::session::{framed, read_first, start, Session, Timing};
use super::LinkError;
use crate::proto::{CertGrant, CertRequest, Hello, Msg, MsgCodec, Role, PROTOCOL_VERSION};
use crate::tls::{self, PeerIdentity};
use futures::SinkExt;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Who may connect to a listener and how this side introduces itself.
pub struct Admission {
    /// Roles admitted.
    pub admit: Vec<Role>,
    /// Our own `Hello`.
    pub me: Hello,
    /// The installation's trust domain.
    pub trust_domain: String,
    /// Timers.
    pub timing: Timing,
    /// Limits on connections.
    pub limits: Limits,
    /// Revoked nodes, refused after the TLS handshake.
    pub denied: super::DenyList,
    /// HQ's clock as this node knows it, stamped into every `Hello` sent.
    pub clock: super::HqClock,
}

/// Caps that keep a flood of connections from exhausting a server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most (sessions and handshakes together).
    pub max_connections: usize,
    /// Connections still in the TLS handshake or `Hello` at most, counting
    /// those that have not sent a byte yet.
    pub max_handshakes: usize,
    /// Handshakes worked on at once, at most. A connection takes one of these
    /// only once its first bytes have arrived, so idle connections cannot hold
    /// them, and a reconnect storm is served a batch at a time instead of
    /// every handshake crawling along until all of them time out.
    pub max_busy_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 200_000,
            max_handshakes: 8192,
            max_busy_handshakes: 128,
        }
    }
}

/// Answers one enrollment request (the role decides: HQ signs, a relay
/// passes it up).
pub type EnrollFn = Arc<
    dyn Fn(CertRequest) -> std::pin::Pin<Box<dyn Future<Output = Result<CertGrant, String>> + Send>>
        + Send
        + Sync,
>;

/// Accepts sessions until `shutdown`; each admitted session goes to `handler`
/// in its own task.
pub async fn serve<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    adm: Arc<Admission>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Session) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, acceptor, adm, None, shutdown, handler).await
}

/// As [`serve`], and a client without a certificate (the acceptor must come
/// from `Identity::server_config_enrolling`) may send one enrollment
/// request, which `enroll` answers; rate-limited per listener, small
/// frames, closed after the answer. Nothing else is allowed anonymously.
pub async fn serve_enrolling<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    adm: Arc<Admission>,
    enroll: EnrollFn,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Session) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, acceptor, adm, Some(enroll), shutdown, handler).await
}

async fn serve_with<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    adm: Arc<Admission>,
    enroll: Option<EnrollFn>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Session) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let bucket = Arc::new(std::sync::Mutex::new(super::certs::Bucket::new(
        super::certs::ENROLL_RATE,
        super::certs::ENROLL_BURST,
        std::time::Instant::now(),
    )));
    let handler = Arc::new(handler);
    let conns = Arc::new(Semaphore::new(adm.limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(adm.limits.max_handshakes));
    let busy = Arc::new(Semaphore::new(adm.limits.max_busy_handshakes.max(1)));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (Ok(conn_permit), Ok(hs_permit)) = (
            conns.clone().try_acquire_owned(),
            handshakes.clone().try_acquire_owned(),
        ) else {
            // Over a cap: refuse at once rather than let the flood queue up.
            debug!(%addr, "connection refused: too many connections or handshakes");
            crate::metrics::handshake_refused("capacity");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, adm, handler) = (acceptor.clone(), adm.clone(), handler.clone());
        let (enroll, bucket) = (enroll.clone(), bucket.clone());
        let busy = busy.clone();
        tokio::spawn(
            async move {
                let _conn_permit = conn_permit;
                let within = adm.timing.handshake_timeout;
                // Stage one: wait for the client to speak (an idle connection
                // holds only its `max_handshakes` slot).
                // (`peek`, not `readable`: readiness can be reported before
                // any byte has arrived.)
                let mut first = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(within, tcp.peek(&mut first)).await,
                    Ok(Ok(1..))
                ) {
                    debug!("connection closed or idle before its handshake");
                    crate::metrics::handshake_refused("silent");
                    return;
                }
                // Stage two: one of the few busy slots, then the handshake.
                let Ok(busy_permit) = busy.acquire_owned().await else {
                    return;
                };
                let admitted =
                    tokio::time::timeout(within, admit(acceptor, tcp, &adm, enroll.is_some()))
                        .await;
                let session = match admitted {
                    Err(_) => {
                        warn!("handshake timed out; closing");
                        crate::metrics::handshake_refused("timeout");
                        return;
                    }
                    Ok(Err((reason, e))) => {
                        warn!(error = %e, reason, "session refused");
                        crate::metrics::handshake_refused(reason);
                        return;
                    }
                    Ok(Ok(Admitted::Session(s))) => s,
                    Ok(Ok(Admitted::Anonymous(tls))) => {
                        drop(busy_permit);
                        drop(hs_permit);
                        if let Some(answer) = &enroll {
                            super::certs::serve_anonymous(tls, answer, &bucket, within).await;
                        }
                        return;
                    }
                };
                drop(busy_permit);
                drop(hs_permit);
                let span = tracing::info_span!(
                    "session",
                    peer = %session.peer.name,
                    role = %session.peer.role
                );
                // Transfer connections carry blobs, not a session: not counted.
                let _open = matches!(session.purpose, crate::proto::Purpose::Session)
                    .then(|| crate::metrics::session_opened(session.peer.role.as_str(), "child"));
                async move {
                    info!("session up");
                    // A revocation closes every session of the name, whatever
                    // it is for; the handler then ends as on any close.
                    let closer = session.closer();
                    let name = session.peer.name.clone();
                    let denied = adm.denied.clone();
                    let run = handler(session);
                    tokio::pin!(run);
                    tokio::select! {
                        _ = &mut run => {}
                        _ = denied.revoked(&name) => {
                            warn!("closing the session of a revoked node");
                            closer.close("revoked");
                            run.await;
                        }
                    }
                }
                .instrument(span)
                .await
            }
            .instrument(tracing::info_span!("conn", %addr)),
        );
    }
}

/// What a handshake let in.
enum Admitted {
    /// A verified peer's session.
    Session(Session),
    /// A client without a certificate, on a listener that enrolls.
    Anonymous(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// A handshake's outcome, or why it was refused (a metric label) and the error.
async fn admit(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    adm: &Admission,
    anonymous: bool,
) -> Result<Admitted, (&'static str, LinkError)> {
    let refused = |e: LinkError| (refusal_reason(&e), e);
    let (tls, peer) = tls::accept_any(&acceptor, tcp, &adm.admit, &adm.trust_domain)
        .await
        .map_err(|e| refused(e.into()))?;
    let Some(peer) = peer else {
        if anonymous {
            return Ok(Admitted::Anonymous(Box::new(tls)));
        }
        return Err(refused(tls::TlsError::NoPeerCertificate.into()));
    };
    if adm.denied.contains(&peer.name) {
        return Err((
            "revoked",
            LinkError::Protocol(format!("{} ({}) is revoked", peer.name, peer.role)),
        ));
    }
    greet(tls, peer, adm)
        .await
        .map(Admitted::Session)
        .map_err(refused)
}

/// The `Hello` exchange on an admitted TLS stream, counted as the child's traffic.
async fn greet(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: PeerIdentity,
    adm: &Admission,
) -> Result<Session, LinkError> {
    let bytes = crate::metrics::child_bytes(&child_label(peer.role, &peer.name));
    let mut framed = framed(
        Metered::new(tls, bytes),
        MsgCodec::for_session(adm.me.role, peer.role),
    );
    let first = read_first(&mut framed, adm.timing.handshake_timeout).await?;
    let hello = match first {
        Msg::Hello(h) => h,
        other => {
            return Err(LinkError::Protocol(format!(
                "{} ({}) sent {} before hello",
                peer.name,
                peer.role,
                other.kind()
            )))
        }
    };
    check_hello(&hello, &peer)?;
    let mut me = adm.me.clone();
    me.hq_now_ms = adm.clock.now();
    me.idle_timeout_ms = adm.timing.idle_ms();
    framed.send(&Msg::Hello(me)).await?;
    let timing = adm.timing.toward(hello.idle_timeout_ms);
    let mut s = start(framed, peer, timing, hello.purpose);
    s.about = hello.about;
    Ok(s)
}

/// A `Hello` must name the node its certificate names, at our protocol version.
pub(super) fn check_hello(hello: &Hello, peer: &PeerIdentity) -> Result<(), LinkError> {
    if hello.name != peer.name || hello.role != peer.role {
        return Err(LinkError::Protocol(format!(
            "hello claims {} {} but the certificate says {} {}",
            hello.role, hello.name, peer.role, peer.name
        )));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(LinkError::Protocol(format!(
            "{} speaks protocol {}, this node speaks {}",
            peer.name, hello.version, PROTOCOL_VERSION
        )));
    }
    Ok(())
}
