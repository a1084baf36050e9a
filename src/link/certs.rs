//! Certificates over the tree: a new node's one anonymous enrollment
//! request ([`enroll`]), questions waiting for HQ's answer on a session
//! ([`CertAsks`], used by renewals and by relays passing requests up), the
//! per-listener rate limit on anonymous requests ([`Bucket`]), and the task
//! that keeps a running node's certificate renewed ([`keep_renewed`]).
//!
//! Knows nothing of tokens or of how HQ decides: it carries
//! [`CertRequest`]s up and [`CertGrant`]s down.

use super::session::{read_first, SessionTx};
use super::LinkError;
use crate::proto::{now_ms, CertGrant, CertRequest, Msg, MsgCodec};
use crate::tls::{self, enroll::EnrollTls, Identity, TlsError};
use futures::SinkExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tracing::{info, warn};

/// Largest frame on an anonymous enrollment connection, both ways (a CSR
/// is under 1 KiB; an answer, two certificates and a key, under 4 KiB).
pub const ENROLL_MAX_FRAME: usize = 16 * 1024;

/// How long a request waits for HQ's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Anonymous enrollment requests a listener takes per second, and in a burst.
pub const ENROLL_RATE: f64 = 2.0;
/// See [`ENROLL_RATE`].
pub const ENROLL_BURST: f64 = 20.0;

/// A token bucket: `take` succeeds while tokens are left; they come back at
/// `rate` per second up to `burst`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Enrolls: connects to `addr` without a certificate (the server's CA
/// pinned by `tls`), sends the one request `make` builds once the CA's
/// trust domain is known, and returns HQ's answer. A refusal comes back as
/// [`LinkError::Refused`] with HQ's reason.
pub async fn enroll(
    addr: &str,
    tls: &EnrollTls,
    make: impl FnOnce(&str) -> Result<CertRequest, TlsError>,
    within: Duration,
) -> Result<CertGrant, LinkError> {
    tokio::time::timeout(within, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| LinkError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (stream, _server) = tls::connect(&tls.connector, tcp).await?;
        let td = tls
            .trust_domain()
            .ok_or_else(|| LinkError::Protocol("the pinned CA was not seen".into()))?;
        let req = make(&td)?;
        let mut framed = Framed::new(stream, MsgCodec::with_max_frame(ENROLL_MAX_FRAME));
        framed.send(&Msg::CertRequest { id: 1, req }).await?;
        let answer = read_first(&mut framed, within).await?;
        let _ = SinkExt::<&Msg>::close(&mut framed).await;
        match answer {
            Msg::CertReply { result, .. } => result.map_err(LinkError::Refused),
            Msg::Bye { reason } => Err(LinkError::Bye(reason)),
            other => Err(super::unexpected(&other, "as an enrollment answer")),
        }
    })
    .await
    .map_err(|_| LinkError::Timeout("enrollment"))?
}

/// Serves one anonymous connection: at most one enrollment request, passed
/// to `answer`; the reply, then the connection is closed. Anything else
/// (another message, a renewal, a frame over [`ENROLL_MAX_FRAME`]) closes it.
pub(super) async fn serve_anonymous<S>(
    stream: S,
    answer: &super::accept::EnrollFn,
    bucket: &Mutex<Bucket>,
    within: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, MsgCodec::with_max_frame(ENROLL_MAX_FRAME));
    let first = match read_first(&mut framed, within).await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "anonymous connection closed: no enrollment request");
            return;
        }
    };
    let (id, req) = match first {
        Msg::CertRequest { id, req } if req.token.is_some() => (id, req),
        other => {
            warn!(
                kind = other.kind(),
                "anonymous connection refused: without a certificate only an enrollment request is allowed"
            );
            let _ = framed
                .send(&Msg::Bye {
                    reason: "without a certificate only an enrollment request is allowed".into(),
                })
                .await;
            let _ = SinkExt::<&Msg>::close(&mut framed).await;
            return;
        }
    };
    let admitted = bucket
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(Instant::now());
    let result = if !admitted {
        warn!(name = %req.name, role = %req.role, "enrollment refused: rate limit");
        Err("too many enrollment requests at this listener: try again in a few seconds".into())
    } else {
        info!(name = %req.name, role = %req.role, "enrollment request");
        match tokio::time::timeout(ANSWER_WITHIN, answer(req)).await {
            Ok(r) => r,
            Err(_) => Err("no answer from hq in time".into()),
        }
    };
    let _ = framed.send(&Msg::CertReply { id, result }).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), SinkExt::<&Msg>::close(&mut framed)).await;
}

/// Certificate requests sent on a session and not answered yet.
#[derive(Default)]
pub struct CertAsks {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<CertGrant, String>>>>,
}

impl CertAsks {
    /// Sends `req` on `tx` and waits (at most `within`) for its answer,
    /// which the session's reader hands to [`CertAsks::answer`].
    pub async fn ask(
        &self,
        tx: &SessionTx,
        req: CertRequest,
        within: Duration,
    ) -> Result<CertGrant, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (done, wait) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, done);
        let r = async {
            super::send(tx, Msg::CertRequest { id, req })
                .await
                .map_err(|_| "the session to the parent closed".to_string())?;
            match tokio::time::timeout(within, wait).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the session to the parent closed".into()),
                Err(_) => Err("no answer from hq in time".into()),
            }
        }
        .await;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        r
    }

    /// Hands HQ's answer to whoever asked `id` (an answer nobody waits for
    /// any more is dropped).
    pub fn answer(&self, id: u64, result: Result<CertGrant, String>) {
        let w = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(w) = w {
            let _ = w.send(result);
        }
    }
}

/// While the session `tx` lives: renews this node's certificate once two
/// thirds of its validity have passed (a CSR with the same key, answered by
/// HQ through the parent), writes it and presents it from the next
/// handshake on. Spawned per session and aborted when it ends.
pub async fn keep_renewed(identity: Arc<Identity>, asks: Arc<CertAsks>, tx: SessionTx) {
    let me = identity.me().clone();
    loop {
        if tx.is_closed() {
            return;
        }
        let due = match identity.validity_ms() {
            Ok((nb, na)) => tls::enroll::renew_at_ms(nb, na),
            Err(e) => {
                warn!(error = %e, "cannot read our certificate's validity; not renewing");
                return;
            }
        };
        let now = now_ms();
        if now < due {
            tokio::time::sleep(Duration::from_millis((due - now).min(60_000))).await;
            continue;
        }
        let csr = match identity.renewal_csr() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot make a renewal request");
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
        };
        let req = CertRequest {
            name: me.name.clone(),
            role: me.role,
            csr_pem: csr,
            token: None,
        };
        match asks.ask(&tx, req, ANSWER_WITHIN).await {
            Ok(grant) => match identity.install_renewed(&grant.cert_pem) {
                Ok(not_after) => {
                    info!(name = %me.name, role = %me.role, not_after_ms = not_after, "certificate renewed")
                }
                Err(e) => {
                    warn!(error = %e, "renewed certificate refused");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            },
            Err(e) => {
                warn!(error = %e, "certificate renewal failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3.0, t0);
        let took: Vec<bool> = (0..5).map(|_| b.take(t0)).collect();
        assert_eq!(took, [true, true, true, false, false]);
        assert!(
            b.take(t0 + Duration::from_millis(500)),
            "one back after 0.5 s at 2/s"
        );
        assert!(!b.take(t0 + Duration::from_millis(500)));
        // Never above the burst, however long it rested.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..5).filter(|_| b.take(later)).count(), 3);
    }
}
