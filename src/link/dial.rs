//! The dialing side: connect, TLS, the `Hello` exchange, and reconnecting with
//! exponential backoff and jitter.

use super::accept::check_hello;
use super::session::{read_first, start, Session, Timing};
use super::LinkError;
use crate::proto::{Hello, Msg, MsgCodec};
use crate::tls;
use futures::SinkExt;
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How to reach a parent.
#[derive(Clone)]
pub struct Dialer {
    /// HOST:PORT.
    pub addr: String,
    /// TLS client configuration (verifies the parent's role).
    pub connector: TlsConnector,
    /// Our `Hello`.
    pub me: Hello,
    /// Timers.
    pub timing: Timing,
    /// Shared by many dialers in one process (a swarm): connection attempts
    /// in flight at once, at most, so thousands of agents starting together
    /// do not all handshake at the same moment.
    pub gate: Option<Arc<Semaphore>>,
}

/// Connects once; the session is up only after the parent's `Hello` arrived
/// (a refused client certificate shows as an error here, not at connect).
pub async fn dial_once(d: &Dialer) -> Result<Session, LinkError> {
    let _permit = match &d.gate {
        Some(g) => g.clone().acquire_owned().await.ok(),
        None => None,
    };
    let within = d.timing.handshake_timeout;
    tokio::time::timeout(within, async {
        let tcp = TcpStream::connect(&d.addr)
            .await
            .map_err(|source| LinkError::Connect {
                addr: d.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (tls, peer) = tls::connect(&d.connector, tcp).await?;
        let mut framed = Framed::new(tls, MsgCodec::for_session(d.me.role, peer.role));
        framed.send(&Msg::Hello(d.me.clone())).await?;
        let hq_offset_ms = match read_first(&mut framed, within).await? {
            Msg::Hello(h) => {
                check_hello(&h, &peer)?;
                h.hq_now_ms
                    .map(|t| super::clock::offset(t, crate::proto::now_ms()))
            }
            Msg::Bye { reason } => return Err(LinkError::Bye(reason)),
            other => return Err(super::unexpected(&other, "before hello")),
        };
        let mut s = start(framed, peer, d.timing, d.me.purpose);
        s.hq_offset_ms = hq_offset_ms;
        Ok(s)
    })
    .await
    .map_err(|_| LinkError::Timeout("connect"))?
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }
    /// The next delay: the current step with ±50% jitter; then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = base.as_millis() as u64;
        let jitter = rand::rng().random_range(ms / 2..=ms + ms / 2);
        Duration::from_millis(jitter.max(1))
    }
    /// Back to the shortest delay after a good session.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Keeps a session to the parent up until `shutdown`: each session goes to
/// `handler`, and when it ends (or a dial fails) the loop waits and redials.
pub async fn dial_loop<H, F>(d: Dialer, shutdown: CancellationToken, mut handler: H)
where
    H: FnMut(Session) -> F,
    F: Future<Output = Result<(), LinkError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = dial_once(&d) => r,
        };
        match attempt {
            Ok(session) => {
                info!(parent = %session.peer.name, addr = %d.addr, "connected to parent");
                backoff.reset();
                let _open = crate::metrics::session_opened(session.peer.role.as_str(), "parent");
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = handler(session) => r,
                };
                match r {
                    Ok(()) => info!("session to parent ended"),
                    Err(e) => warn!(error = %e, "session to parent ended"),
                }
            }
            Err(e) => warn!(addr = %d.addr, error = %e, "cannot reach parent"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert!((50..=150).contains(&d[0]), "{d:?}");
        assert!((100..=300).contains(&d[1]), "{d:?}");
        assert!(d[7] <= 3000, "{d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 150);
    }
}
