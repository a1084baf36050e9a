//! The dialing side: connect, TLS, the `Hello` exchange, and reconnecting with
//! exponential backoff and jitter, failing over between a child's parents.
//!
//! Failover: a child may name several parents (`relay serve --parent A
//! --parent B`, `agent serve --relay A --relay B`), the first preferred.
//! It starts with the first; when a session ends or a dial fails it moves on
//! to the next (in order, wrapping), and backs off only after a whole round
//! failed. It stays where it got a session (no return to the preferred
//! parent while the current one serves it: each return would be one more
//! move); a restarted child starts with the first again. Which parent it
//! reached is shared by every clone of the [`Dialer`], so blob transfers go
//! where the session went. Knows nothing of what a parent is (HQ or relay).

use super::accept::check_hello;
use super::session::{framed, read_first, start, Session, Timing};
use super::LinkError;
use crate::proto::{Hello, Msg, MsgCodec};
use crate::tls;
use futures::SinkExt;
use rand::Rng;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The parents' HOST:PORT, in order of preference, and the one dialed now
/// (shared by clones).
#[derive(Clone, Debug)]
pub struct Addrs {
    list: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl Addrs {
    /// `list` in order of preference; at least one address.
    pub fn new(list: Vec<String>) -> Addrs {
        let list: Arc<[String]> = if list.is_empty() {
            Arc::from(vec![String::new()])
        } else {
            Arc::from(list)
        };
        Addrs {
            list,
            current: Arc::new(AtomicUsize::new(0)),
        }
    }
    /// The address dialed now.
    pub fn current(&self) -> &str {
        &self.list[self.current.load(Ordering::Relaxed) % self.list.len()]
    }
    /// Every address, in order of preference.
    pub fn all(&self) -> &[String] {
        &self.list
    }
    /// Moves on to the next address (wrapping); returns it.
    pub fn advance(&self) -> &str {
        let n = self.list.len();
        let next = (self.current.load(Ordering::Relaxed) + 1) % n;
        self.current.store(next, Ordering::Relaxed);
        &self.list[next]
    }
}

impl From<String> for Addrs {
    fn from(a: String) -> Addrs {
        Addrs::new(vec![a])
    }
}

impl From<&str> for Addrs {
    fn from(a: &str) -> Addrs {
        Addrs::new(vec![a.to_string()])
    }
}

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.current())
    }
}

/// How to reach a parent.
#[derive(Clone)]
pub struct Dialer {
    /// HOST:PORT of the parent, or of each parent in order of preference.
    pub addr: Addrs,
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
    let addr = d.addr.current();
    tokio::time::timeout(within, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| LinkError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (tls, peer) = tls::connect(&d.connector, tcp).await?;
        let mut framed = framed(tls, MsgCodec::for_session(d.me.role, peer.role));
        let mut me = d.me.clone();
        me.idle_timeout_ms = d.timing.idle_ms();
        framed.send(&Msg::Hello(me)).await?;
        let (hq_offset_ms, peer_idle_ms) = match read_first(&mut framed, within).await? {
            Msg::Hello(h) => {
                check_hello(&h, &peer)?;
                let offset = h
                    .hq_now_ms
                    .map(|t| super::clock::offset(t, crate::proto::now_ms()));
                (offset, h.idle_timeout_ms)
            }
            Msg::Bye { reason } => return Err(LinkError::Bye(reason)),
            other => return Err(super::unexpected(&other, "before hello")),
        };
        let timing = d.timing.toward(peer_idle_ms);
        let mut s = start(framed, peer, timing, d.me.purpose);
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

/// Keeps a session to a parent up until `shutdown`: each session goes to
/// `handler`. When it ends, or a dial fails, the loop moves on to the next
/// parent (see the module's header) and waits (backoff with jitter) only
/// after every parent failed once in a row.
pub async fn dial_loop<H, F>(d: Dialer, shutdown: CancellationToken, mut handler: H)
where
    H: FnMut(Session) -> F,
    F: Future<Output = Result<(), LinkError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let parents = d.addr.all().len();
    // Dials that failed since the last session.
    let mut failed = 0usize;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = dial_once(&d) => r,
        };
        let pause = match attempt {
            Ok(session) => {
                info!(parent = %session.peer.name, addr = %d.addr, "connected to parent");
                backoff.reset();
                failed = 0;
                let _open = crate::metrics::session_opened(session.peer.role.as_str(), "parent");
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = handler(session) => r,
                };
                match r {
                    Ok(()) => info!(addr = %d.addr, "session to parent ended"),
                    Err(e) => warn!(addr = %d.addr, error = %e, "session to parent ended"),
                }
                true
            }
            Err(e) => {
                if e.is_foreign() {
                    error!(addr = %d.addr, error = %e, "parent belongs to another installation (another CA or trust domain); not connecting to it");
                } else {
                    warn!(addr = %d.addr, error = %e, "cannot reach parent");
                }
                failed += 1;
                failed.is_multiple_of(parents)
            }
        };
        if parents > 1 {
            let next = d.addr.advance();
            info!(addr = %next, "trying the next parent");
        }
        if pause {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Before a child with several parents starts: every parent that answers
/// must prove to be of our installation (its certificate chains to our CA,
/// in our trust domain). One that does not is a configuration error, named
/// with its address; parents that do not answer now are not judged (the
/// dial loop never connects to a foreign one either).
pub async fn check_parents(d: &Dialer) -> Result<(), LinkError> {
    if d.addr.all().len() < 2 {
        return Ok(());
    }
    for addr in d.addr.all() {
        let probe = async {
            let tcp = TcpStream::connect(addr.as_str()).await.ok()?;
            Some(tls::connect(&d.connector, tcp).await)
        };
        let got = tokio::time::timeout(d.timing.handshake_timeout, probe).await;
        if let Ok(Some(Err(e))) = got {
            let e = LinkError::from(e);
            if e.is_foreign() {
                return Err(LinkError::ForeignParent {
                    addr: addr.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
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

    #[test]
    fn parents_are_tried_in_order_and_shared_by_clones() {
        let a = Addrs::new(vec!["a:1".into(), "b:2".into(), "c:3".into()]);
        let clone = a.clone();
        assert_eq!(a.current(), "a:1");
        assert_eq!(a.advance(), "b:2");
        assert_eq!(
            clone.current(),
            "b:2",
            "a transfer goes where the session went"
        );
        assert_eq!(a.advance(), "c:3");
        assert_eq!(a.advance(), "a:1", "wraps to the preferred one");
        let one = Addrs::from("x:9");
        assert_eq!(one.advance(), "x:9");
        assert_eq!(one.to_string(), "x:9");
    }
}
