//! What the link layer measures: bytes to and from each child (a stream
//! wrapper counting what passes, one atomic add per read or write), the
//! label a child is counted under, and why a connection was refused.
//!
//! Decides labels only; the metrics themselves live in `crate::metrics`.
//! Labels stay bounded: agents and admins are counted together, child
//! relays one by one.

use super::LinkError;
use crate::metrics::ChildBytes;
use crate::proto::{NodeName, Role};
use crate::tls::TlsError;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `child` label of a peer: a relay by name, everyone else by role
/// (one label for ten thousand agents, not ten thousand).
pub fn child_label(role: Role, name: &NodeName) -> String {
    match role {
        Role::Relay => name.as_str().to_string(),
        Role::Agent => "agents".into(),
        Role::Admin => "admins".into(),
        Role::Hq => "hq".into(),
    }
}

/// Why a handshake was refused, as a metric label.
pub fn refusal_reason(e: &LinkError) -> &'static str {
    fn tls(e: &TlsError) -> &'static str {
        match e {
            TlsError::Refused(inner) => tls(inner),
            TlsError::RoleNotAdmitted { .. } => "role",
            TlsError::TrustDomainMismatch { .. } => "trust_domain",
            TlsError::Handshake(_) => "tls",
            _ => "certificate",
        }
    }
    match e {
        LinkError::Tls(t) => tls(t),
        LinkError::Protocol(_) | LinkError::Codec(_) => "hello",
        LinkError::Timeout(_) | LinkError::Idle(_) => "timeout",
        LinkError::Closed | LinkError::Bye(_) => "closed",
        LinkError::ForeignParent { .. } => "trust_domain",
        LinkError::Refused(_) => "refused",
        LinkError::Connect { .. } | LinkError::Store(_) => "other",
    }
}

/// A stream that counts the bytes read from and written to it.
pub struct Metered<S> {
    inner: S,
    bytes: ChildBytes,
}

impl<S> Metered<S> {
    /// Counts `inner`'s traffic into `bytes`.
    pub fn new(inner: S, bytes: ChildBytes) -> Metered<S> {
        Metered { inner, bytes }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len().saturating_sub(before);
            self.bytes.received.increment(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.sent.increment(n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn agents_are_counted_together_relays_by_name() {
        let n = |s: &str| NodeName::new(s).unwrap();
        let table = [
            (Role::Relay, "r1", "r1"),
            (Role::Relay, "r2", "r2"),
            (Role::Agent, "c1", "agents"),
            (Role::Agent, "c9999", "agents"),
            (Role::Admin, "alice", "admins"),
        ];
        for (role, name, want) in table {
            assert_eq!(child_label(role, &n(name)), want, "{role} {name}");
        }
    }

    #[test]
    fn refusals_are_named() {
        let refused = |t: TlsError| LinkError::Tls(TlsError::Refused(Arc::new(t)));
        let table: Vec<(LinkError, &str)> = vec![
            (
                refused(TlsError::RoleNotAdmitted {
                    got: Role::Admin,
                    expected: "relay or agent".into(),
                }),
                "role",
            ),
            (
                LinkError::Tls(TlsError::TrustDomainMismatch {
                    got: "a".into(),
                    expected: "b".into(),
                }),
                "trust_domain",
            ),
            (
                LinkError::Tls(TlsError::Handshake(std::io::Error::other("bad chain"))),
                "tls",
            ),
            (LinkError::Tls(TlsError::NoSpiffeId), "certificate"),
            (LinkError::Protocol("hello claims".into()), "hello"),
            (LinkError::Timeout("hello"), "timeout"),
            (LinkError::Closed, "closed"),
        ];
        for (e, want) in table {
            assert_eq!(refusal_reason(&e), want, "{e}");
        }
    }
}
