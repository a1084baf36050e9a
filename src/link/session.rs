//! One established session: a writer task that sends heartbeats when idle,
//! and a reader with an idle timeout that hides heartbeats.

use super::LinkError;
use crate::proto::{Msg, MsgCodec};
use crate::tls::PeerIdentity;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Session timers.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Send a heartbeat after this long without sending.
    pub heartbeat: Duration,
    /// Close a session that received nothing for this long.
    pub idle_timeout: Duration,
    /// TLS handshake plus `Hello` must finish within this.
    pub handshake_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Sends messages on a session; cheap to clone. The session's writer ends
/// when every sender is dropped.
pub type SessionTx = mpsc::Sender<Msg>;

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
    /// Cancelled once this side sent `Bye`: the session ends here whatever
    /// the peer does.
    closed: CancellationToken,
}

impl SessionRx {
    /// The next message other than a heartbeat; an error when the peer is
    /// silent past the idle timeout, closed, or sent something undecodable.
    pub async fn recv(&mut self) -> Result<Msg, LinkError> {
        loop {
            let next = tokio::select! {
                _ = self.closed.cancelled() => {
                    return Err(LinkError::Bye("closed by this side".into()))
                }
                n = tokio::time::timeout(self.idle, self.inner.next()) => n,
            };
            match next {
                Err(_) => return Err(LinkError::Idle(self.idle)),
                Ok(None) => return Err(LinkError::Closed),
                Ok(Some(Err(crate::proto::CodecError::Io(e)))) if is_disconnect(&e) => {
                    return Err(LinkError::Closed)
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(Msg::Heartbeat))) => continue,
                Ok(Some(Ok(Msg::Bye { reason }))) => return Err(LinkError::Bye(reason)),
                Ok(Some(Ok(m))) => return Ok(m),
            }
        }
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
    let (tx, mut out) = mpsc::channel::<Msg>(capacity);
    let closed = CancellationToken::new();
    let closed_w = closed.clone();
    let heartbeat = timing.heartbeat;
    tokio::spawn(async move {
        loop {
            let msg = match tokio::time::timeout(heartbeat, out.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => Msg::Heartbeat,
            };
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
            closed,
        },
        purpose,
        hq_offset_ms: None,
        about: None,
    }
}
