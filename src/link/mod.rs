//! A session between a child and its parent, used by hq, relay, agent and the
//! admin CLI alike: dial with backoff, accept with role admission, the `Hello`
//! exchange, heartbeats, the idle timeout, and the outbox pump.
//!
//! Knows nothing of what jobs or leaves mean: it moves [`Msg`]s, hands
//! sessions to the role that owns them, serves a parent's side of every child
//! session once ([`downstream`]), and checks what a child may say about its
//! subtree ([`confine`], a pure fold the roles feed with their directory).

mod accept;
pub mod certs;
pub mod clock;
pub mod confine;
mod deny;
mod dial;
pub mod downstream;
pub mod meter;
mod pump;
pub mod queue;
mod session;
pub mod transfer;

pub use accept::{serve, serve_enrolling, Admission, EnrollFn, Limits};
pub use certs::{keep_renewed, CertAsks};
pub use clock::HqClock;
pub use deny::DenyList;
pub use dial::{check_parents, dial_loop, dial_once, Addrs, Backoff, Dialer};
pub use pump::{pump_outbox, AckCursor, Upward, BATCH, OUT_OF_OUTBOX};
pub use session::{send, send_soon, Closer, Session, SessionRx, SessionTx, Timing};

use crate::proto::{CodecError, Msg};
use crate::tls::TlsError;

/// A session failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS or identity failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A frame could not be read or written.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Nothing arrived within the idle timeout.
    #[error("peer silent for {0:?}")]
    Idle(std::time::Duration),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer said why it closed.
    #[error("peer closed the session: {0}")]
    Bye(String),
    /// Local storage failed; nothing is acknowledged.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// HQ (or the parent) refused the request; the reason is inside.
    #[error("refused: {0}")]
    Refused(String),
    /// A step took too long.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A parent given to a child with several parents is of another
    /// installation: the parents disagree on the trust domain.
    #[error("parent {addr} is not of this installation (the parents disagree on the trust domain): {reason}")]
    ForeignParent {
        /// The parent's HOST:PORT.
        addr: String,
        /// What the handshake showed.
        reason: String,
    },
}

impl LinkError {
    /// The peer proved to be of another installation: its certificate does
    /// not chain to our CA, or names another trust domain.
    pub fn is_foreign(&self) -> bool {
        match self {
            LinkError::Tls(t) => t.is_foreign(),
            LinkError::ForeignParent { .. } => true,
            _ => false,
        }
    }
}

/// Describes an unexpected message for logs and errors.
pub fn unexpected(msg: &Msg, state: &str) -> LinkError {
    LinkError::Protocol(format!("message {} not allowed {state}", msg.kind()))
}
