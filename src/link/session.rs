//! One established session: a writer task, and a reader that hides
//! heartbeats. Heartbeats and the idle timeout are the process's one sweep's
//! business ([`super::sweep`]): no timer here.

use super::sweep::Pulse;
use super::LinkError;
use crate::proto::{Msg, MsgCodec};
use crate::tls::PeerIdentity;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Session timers.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Send a heartbeat after this long without sending (sooner when the
    /// peer's idle timeout asks for it: [`Timing::toward`]).
    pub heartbeat: Duration,
    /// Close a session that received nothing for this long.
    pub idle_timeout: Duration,
    /// TLS handshake plus `Hello` must finish within this.
    pub handshake_timeout: Duration,
}

/// The default heartbeat: a silent session costs a frame each way per
/// interval, which is what an idle fleet of 100,000 costs (BENCHMARKS.md).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// The default idle timeout: a dead peer is detected within it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// A peer hears at least this many heartbeats per idle timeout of its own.
const BEATS_PER_IDLE: u32 = 3;
/// The idle timeout of a peer that does not state one (older builds).
const UNSTATED_IDLE: Duration = Duration::from_secs(20);

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: DEFAULT_HEARTBEAT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Timing {
    /// An admin command's session: it gives up on a silent HQ within 20 s,
    /// so HQ beats toward it at least every 20 s / 3.
    pub fn admin() -> Timing {
        Timing {
            heartbeat: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            ..Timing::default()
        }
    }

    /// The idle timeout this side states in its `Hello`, in milliseconds.
    pub(super) fn idle_ms(&self) -> Option<u64> {
        Some(self.idle_timeout.as_millis() as u64)
    }

    /// These timers on a session with a peer whose `Hello` stated
    /// `peer_idle_ms` (none: an older build, 20 s): the heartbeat shortened
    /// so that the peer hears at least three within its idle timeout,
    /// whatever the two sides were configured with.
    pub(super) fn toward(self, peer_idle_ms: Option<u64>) -> Timing {
        let peer_idle = peer_idle_ms.map_or(UNSTATED_IDLE, Duration::from_millis);
        let most = (peer_idle / BEATS_PER_IDLE).max(Duration::from_millis(1));
        Timing {
            heartbeat: self.heartbeat.min(most),
            ..self
        }
    }
}

/// Sends messages on a session; cheap to clone. The session's writer ends
/// when every sender is dropped.
///
/// The queue holds boxed messages: a queue's storage comes in blocks of 32
/// slots, and a slot of a full-size [`Msg`] is hundreds of bytes, which an
/// idle session would keep resident for nothing (a relay holds one queue
/// per agent).
#[derive(Clone, Debug)]
pub struct SessionTx(mpsc::Sender<Box<Msg>>);

/// A [`SessionTx`] that does not keep the session's writer alive.
#[derive(Clone, Debug)]
pub(super) struct WeakSessionTx(mpsc::WeakSender<Box<Msg>>);

impl WeakSessionTx {
    pub(super) fn upgrade(&self) -> Option<SessionTx> {
        self.0.upgrade().map(SessionTx)
    }
}

/// The receiving end of a [`SessionTx`] made by [`SessionTx::channel`].
#[derive(Debug)]
pub struct SessionQueue(mpsc::Receiver<Box<Msg>>);

impl SessionQueue {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Msg> {
        self.0.recv().await.map(|b| *b)
    }
    /// A message already queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Msg, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|b| *b)
    }
}

impl SessionTx {
    /// A queue of `capacity` messages not attached to a connection (the
    /// writer task's, and tests').
    pub fn channel(capacity: usize) -> (SessionTx, SessionQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        (SessionTx(tx), SessionQueue(rx))
    }
    /// Queues `msg`, waiting for room; an error (with the message) once the
    /// session is gone.
    pub async fn send(&self, msg: Msg) -> Result<(), mpsc::error::SendError<Msg>> {
        self.0
            .send(Box::new(msg))
            .await
            .map_err(|e| mpsc::error::SendError(*e.0))
    }
    /// Queues `msg` if there is room now; when not, the message comes back
    /// in the error, as with tokio's channel.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, msg: Msg) -> Result<(), mpsc::error::TrySendError<Msg>> {
        use mpsc::error::TrySendError::{Closed, Full};
        self.0.try_send(Box::new(msg)).map_err(|e| match e {
            Full(m) => Full(*m),
            Closed(m) => Closed(*m),
        })
    }
    /// The session's writer is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    /// Both send on the same session.
    pub fn same_channel(&self, other: &SessionTx) -> bool {
        self.0.same_channel(&other.0)
    }
    pub(super) fn downgrade(&self) -> WeakSessionTx {
        WeakSessionTx(self.0.downgrade())
    }
}

/// Sends, waiting for room in the session's queue; an error once the
/// session is gone.
pub async fn send(tx: &SessionTx, msg: Msg) -> Result<(), LinkError> {
    tx.send(msg).await.map_err(|_| LinkError::Closed)
}

/// Sends without waiting: when the session's queue is full the message is
/// sent from a task of its own; when the session is gone it is dropped (the
/// receiver gets it again from the sender's queue on its next session).
pub fn send_soon(tx: &SessionTx, msg: Msg) {
    if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(msg).await;
        });
    }
}

/// Receives messages from a session.
pub struct SessionRx {
    inner: Box<dyn futures::Stream<Item = Result<Msg, crate::proto::CodecError>> + Send + Unpin>,
    idle: Duration,
    /// This session's liveness, judged by the sweep.
    pulse: Arc<Pulse>,
    /// Cancelled once this side sent `Bye`: the session ends here whatever
    /// the peer does.
    closed: CancellationToken,
}

impl SessionRx {
    /// The next message other than a heartbeat; an error when the peer is
    /// silent past the idle timeout, closed, or sent something undecodable.
    pub async fn recv(&mut self) -> Result<Msg, LinkError> {
        // Silence counts from now, while we wait; not while the caller was
        // busy with the previous message (frames wait in the socket then).
        self.pulse.waiting();
        let r = self.next().await;
        self.pulse.busy();
        r
    }

    /// A message already here, without waiting (`None`: nothing buffered
    /// now). For draining a burst after [`SessionRx::recv`]: the caller
    /// handles what one wake brought in one go (one disk flush for many
    /// messages). Heartbeats are hidden as in `recv`.
    pub fn try_recv(&mut self) -> Result<Option<Msg>, LinkError> {
        use futures::FutureExt;
        loop {
            if self.closed.is_cancelled() {
                return Err(LinkError::Bye("closed by this side".into()));
            }
            let Some(next) = self.inner.next().now_or_never() else {
                return Ok(None);
            };
            // Heard, and the owner is still busy: silence is not counted.
            self.pulse.heard();
            self.pulse.busy();
            if let Some(r) = classify(next) {
                return r.map(Some);
            }
        }
    }

    async fn next(&mut self) -> Result<Msg, LinkError> {
        loop {
            let next = tokio::select! {
                biased;
                n = self.inner.next() => n,
                _ = self.closed.cancelled() => {
                    return Err(LinkError::Bye("closed by this side".into()))
                }
                _ = self.pulse.expired() => return Err(LinkError::Idle(self.idle)),
            };
            self.pulse.heard();
            if let Some(r) = classify(next) {
                return r;
            }
        }
    }
}

/// What one frame read from the peer means to the owner: a message, the
/// end of the session, or nothing (a heartbeat: `None`).
fn classify(next: Option<Result<Msg, crate::proto::CodecError>>) -> Option<Result<Msg, LinkError>> {
    Some(match next {
        None => Err(LinkError::Closed),
        Some(Err(crate::proto::CodecError::Io(e))) if is_disconnect(&e) => Err(LinkError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Msg::Heartbeat)) => return None,
        Some(Ok(Msg::Bye { reason })) => Err(LinkError::Bye(reason)),
        Some(Ok(m)) => Ok(m),
    })
}

impl Drop for SessionRx {
    fn drop(&mut self) {
        self.pulse.drop_reader();
    }
}

/// An EOF without close_notify or a reset: an ordinary disconnect, not a fault.
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Closes a session from outside it (a revocation): says `Bye`, and the
/// reader stops at once whatever the peer does.
#[derive(Clone)]
pub struct Closer {
    tx: SessionTx,
    closed: CancellationToken,
}

impl Closer {
    /// Closes the session with `reason`.
    pub fn close(&self, reason: &str) {
        send_soon(
            &self.tx,
            Msg::Bye {
                reason: reason.into(),
            },
        );
        self.closed.cancel();
    }
}

/// An established session with a verified peer.
pub struct Session {
    /// Who the peer's certificate says it is.
    pub peer: PeerIdentity,
    /// Send side.
    pub tx: SessionTx,
    /// Receive side.
    pub rx: SessionRx,
    /// What the connection is for, as its `Hello` said.
    pub purpose: crate::proto::Purpose,
    /// HQ's clock minus ours, as the parent's `Hello` showed it on arrival
    /// (dialing side only, when the parent knew HQ's time).
    pub hq_offset_ms: Option<i64>,
    /// What the peer said about itself in its `Hello` (an agent's labels
    /// and version; accepting side only).
    pub about: Option<crate::proto::About>,
}

impl Session {
    /// A handle that closes this session from outside.
    pub fn closer(&self) -> Closer {
        Closer {
            tx: self.tx.clone(),
            closed: self.rx.closed.clone(),
        }
    }
}

/// Read and write buffers a session starts with. Most frames are small
/// (heartbeats, acks, one assignment); a larger one makes room for itself
/// (the codec reserves a frame's length), so an idle session does not keep
/// two 8 KiB buffers for nothing.
const SESSION_BUF: usize = 1024;
/// Bytes the writer gathers before it must write them out (bursts still
/// share a write, as with tokio-util's default).
const WRITE_BOUNDARY: usize = 8 * 1024;

/// A session's framing over `io`, with small starting buffers.
pub(super) fn framed<S: AsyncRead + AsyncWrite>(io: S, codec: MsgCodec) -> Framed<S, MsgCodec> {
    let mut f = Framed::with_capacity(io, codec, SESSION_BUF);
    f.set_backpressure_boundary(WRITE_BOUNDARY);
    f
}

/// Reads one message during the handshake phase (heartbeats not expected).
pub(super) async fn read_first<S>(
    framed: &mut Framed<S, MsgCodec>,
    within: Duration,
) -> Result<Msg, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(within, framed.next()).await {
        Err(_) => Err(LinkError::Timeout("hello")),
        Ok(None) => Err(LinkError::Closed),
        Ok(Some(r)) => Ok(r?),
    }
}

/// Starts the writer task and wraps the reader.
pub(super) fn start<S>(
    framed: Framed<S, MsgCodec>,
    peer: PeerIdentity,
    timing: Timing,
    purpose: crate::proto::Purpose,
) -> Session
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // One Framed, split: bytes already buffered during the handshake (a
    // message pipelined behind Hello) stay readable.
    let (mut writer, reader) = futures::StreamExt::split(framed);
    // A transfer queues only a few blob pieces (up to 512 KiB each): a child
    // that stops reading cannot make its parent buffer much.
    let capacity = match purpose {
        crate::proto::Purpose::Session => 1024,
        crate::proto::Purpose::Transfer => 4,
    };
    let (tx, mut out) = SessionTx::channel(capacity);
    let closed = CancellationToken::new();
    let closed_w = closed.clone();
    let pulse = Pulse::start(timing.heartbeat, timing.idle_timeout, tx.downgrade());
    let pulse_w = Arc::downgrade(&pulse);
    tokio::spawn(async move {
        while let Some(msg) = out.recv().await {
            let mut closing = matches!(msg, Msg::Bye { .. });
            if writer.feed(msg).await.is_err() {
                return;
            }
            // Write out what is queued before flushing, so bursts share a flush.
            while !closing {
                let Ok(m) = out.try_recv() else { break };
                closing = matches!(m, Msg::Bye { .. });
                if writer.feed(m).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() || closing {
                break;
            }
            if let Some(p) = pulse_w.upgrade() {
                p.sent();
            }
        }
        // This side is done: the reader stops now, whatever the peer does;
        // then close_notify and the socket, bounded in case the peer stalls.
        closed_w.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.close()).await;
    });
    Session {
        peer,
        tx,
        rx: SessionRx {
            inner: Box::new(reader),
            idle: timing.idle_timeout,
            pulse,
            closed,
        },
        purpose,
        hq_offset_ms: None,
        about: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeName, Purpose, Role};
    use std::time::Instant;

    type Peer = Framed<tokio::io::DuplexStream, MsgCodec>;

    /// A session with heartbeat `hb` and idle timeout `idle`, and the raw
    /// other end of its connection.
    fn pair(hb: u64, idle: u64) -> (Session, Peer) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let timing = Timing {
            heartbeat: Duration::from_millis(hb),
            idle_timeout: Duration::from_millis(idle),
            handshake_timeout: Duration::from_secs(10),
        };
        let peer = PeerIdentity {
            role: Role::Agent,
            name: NodeName::new("c1").unwrap(),
            trust_domain: "test".into(),
        };
        let s = start(
            Framed::new(ours, MsgCodec::default()),
            peer,
            timing,
            Purpose::Session,
        );
        (s, Framed::new(theirs, MsgCodec::default()))
    }

    fn traffic() -> Msg {
        Msg::Ack { seq: 1 }
    }

    /// The peer hears nothing but job traffic, for many idle timeouts: the
    /// session stays up, and every message arrives.
    #[tokio::test]
    async fn job_frames_count_as_liveness() {
        let (mut s, mut peer) = pair(500, 2000);
        let sender = tokio::spawn(async move {
            for _ in 0..30 {
                peer.send(&traffic()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peer
        });
        for _ in 0..30 {
            assert_eq!(s.rx.recv().await.unwrap(), traffic());
        }
        let _peer = sender.await.unwrap();
    }

    /// Frames that wait in the socket while the owner is busy (longer than
    /// the idle timeout) are not silence.
    #[tokio::test]
    async fn a_busy_owner_is_not_a_silent_peer() {
        let (mut s, mut peer) = pair(100, 300);
        peer.send(&traffic()).await.unwrap();
        assert_eq!(s.rx.recv().await.unwrap(), traffic());
        // Busy with that message for 3 idle timeouts; the peer said more.
        peer.send(&traffic()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(s.rx.recv().await.unwrap(), traffic());
    }

    /// What one wake brought is drained without waiting, heartbeats
    /// hidden; nothing buffered is `None`, not a wait; the peer's `Bye`
    /// ends the session.
    #[tokio::test]
    async fn try_recv_drains_what_arrived_and_never_waits() {
        let (mut s, mut peer) = pair(60_000, 60_000);
        let m = |seq| Msg::Ack { seq };
        peer.feed(&m(1)).await.unwrap();
        peer.feed(&Msg::Heartbeat).await.unwrap();
        peer.feed(&m(2)).await.unwrap();
        peer.feed(&m(3)).await.unwrap();
        SinkExt::<&Msg>::flush(&mut peer).await.unwrap();
        assert_eq!(s.rx.recv().await.unwrap(), m(1));
        assert_eq!(s.rx.try_recv().unwrap(), Some(m(2)));
        assert_eq!(s.rx.try_recv().unwrap(), Some(m(3)));
        assert_eq!(s.rx.try_recv().unwrap(), None);
        peer.send(&Msg::Bye { reason: "x".into() }).await.unwrap();
        assert!(matches!(s.rx.recv().await, Err(LinkError::Bye(r)) if r == "x"));
    }

    #[test]
    fn the_heartbeat_is_shortened_to_fit_the_peer_idle_timeout() {
        let t = |hb: u64, idle: u64| Timing {
            heartbeat: Duration::from_secs(hb),
            idle_timeout: Duration::from_secs(idle),
            handshake_timeout: Duration::from_secs(10),
        };
        let secs = Duration::from_secs;
        let table = [
            // (own heartbeat, own idle, peer's idle) -> heartbeat used
            ((30, 90, Some(90_000)), secs(30)),
            ((30, 90, Some(300_000)), secs(30)),
            // An admin command (20 s): HQ beats every 6.67 s.
            ((30, 90, Some(20_000)), Duration::from_nanos(6_666_666_666)),
            // A peer of an older build states nothing: 20 s assumed.
            ((30, 90, None), Duration::from_nanos(6_666_666_666)),
            ((5, 20, None), secs(5)),
            // A peer with a tiny idle timeout (tests): never zero.
            ((30, 90, Some(1)), Duration::from_millis(1)),
        ];
        for ((hb, idle, peer), want) in table {
            let got = t(hb, idle).toward(peer);
            assert_eq!(got.heartbeat, want, "{hb}/{idle} toward {peer:?}");
            assert_eq!(got.idle_timeout, secs(idle));
        }
        let admin = Timing::admin();
        assert_eq!(admin.idle_ms(), Some(20_000));
        assert!(Timing::default().idle_timeout >= Timing::default().heartbeat * BEATS_PER_IDLE);
    }

    /// A silent peer is detected within the idle timeout and a sweep.
    #[tokio::test]
    async fn a_silent_peer_is_detected_within_the_idle_timeout() {
        let (mut s, _peer) = pair(100, 300);
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), s.rx.recv()).await;
        let took = t.elapsed();
        assert!(matches!(r, Ok(Err(LinkError::Idle(_)))), "{r:?}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// Heartbeats go out only while this side has nothing else to send,
    /// at least one per interval.
    #[tokio::test]
    async fn heartbeats_only_on_a_silent_session() {
        let (s, mut peer) = pair(1000, 3000);
        // Silent: heartbeats, about one per interval (not one per sweep).
        let t = Instant::now();
        let mut beats = 0;
        while t.elapsed() < Duration::from_millis(2500) {
            let m = tokio::time::timeout(Duration::from_secs(10), peer.next()).await;
            assert_eq!(m.unwrap().unwrap().unwrap(), Msg::Heartbeat);
            beats += 1;
        }
        assert!((1..=5).contains(&beats), "{beats} heartbeats in 2.5 s");
        // Busy: traffic every 20 ms and no heartbeat among it.
        let tx = s.tx.clone();
        let busy = tokio::spawn(async move {
            for _ in 0..20 {
                send(&tx, traffic()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Skip a heartbeat queued before the traffic began.
        let mut got = Vec::new();
        while got.len() < 20 {
            let m = tokio::time::timeout(Duration::from_secs(10), peer.next()).await;
            got.push(m.unwrap().unwrap().unwrap());
        }
        busy.await.unwrap();
        let beats = got.iter().skip(1).filter(|m| **m == Msg::Heartbeat).count();
        assert_eq!(beats, 0, "{got:?}");
    }
}
