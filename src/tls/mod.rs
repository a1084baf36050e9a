//! Certificates, rustls configurations and peer identity.
//!
//! Owns the installation's private CA ([`Ca`]), a node's own identity
//! ([`Identity`]), the TLS 1.3 mutual-auth configurations built from it, and the
//! rule that a peer is what its verified certificate's single
//! `spiffe://<trust-domain>/<role>/<name>` URI SAN says ([`PeerIdentity`]).
//! Knows nothing of the wire protocol above TLS.

mod ca;
mod config;
pub mod enroll;
mod files;
mod identity;
mod sign;
mod slot;
mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::proto::{NodeName, Role};

pub use ca::Ca;
pub use identity::Identity;
pub use sign::{SigningKey, VerifyKey, SIGN_KEY, SIGN_PUB};
pub use slot::CertSlot;
pub use verify::identity_from_cert;

/// The server name a dialer sends. The server verifier ignores it: a
/// certificate names a node, not a host.
pub const DUMMY_SERVER_NAME: &str = "relaytree.invalid";

/// Who a verified certificate says the peer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role the certificate grants.
    pub role: Role,
    /// The node's name.
    pub name: NodeName,
    /// The installation the certificate belongs to.
    pub trust_domain: String,
}

impl PeerIdentity {
    /// The SPIFFE id: `spiffe://<trust-domain>/<role>/<name>`.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}/{}/{}", self.trust_domain, self.role, self.name)
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Everything that can go wrong with certificates, keys and handshakes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A private key file is open to group or others.
    #[error(
        "{} is {} by group or others (mode {mode:04o}): run chmod 600 {}",
        path.display(),
        if mode & 0o044 != 0 { "readable" } else { "writable" },
        path.display()
    )]
    InsecureKey {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file was read but its content is wrong.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A trust domain is not a DNS-like name.
    #[error("invalid trust domain {0:?}: expected 1-253 of [a-z0-9.-], not starting or ending with '.' or '-'")]
    InvalidTrustDomain(String),
    /// rcgen could not generate a key or certificate.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate is not valid DER X.509.
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    /// A certificate carries no SPIFFE id.
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// A certificate carries more than one SPIFFE id.
    #[error("certificate has {0} spiffe:// URI SANs")]
    ManySpiffeIds(usize),
    /// A SPIFFE id is not `spiffe://<trust-domain>/<role>/<name>`.
    #[error("invalid spiffe id {uri:?}: {reason}")]
    BadSpiffeId {
        /// The URI as found.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client's role may not connect to this listener.
    #[error("peer role {got} is not admitted here (expected {expected})")]
    RoleNotAdmitted {
        /// The role the peer's certificate grants.
        got: Role,
        /// The admitted roles, as text ("relay or admin").
        expected: String,
    },
    /// A server's role is not the one the dialer expected.
    #[error("server role {got} is not the expected {expected}")]
    UnexpectedRole {
        /// The role the server's certificate grants.
        got: Role,
        /// The roles expected, as text.
        expected: String,
    },
    /// A server's name is not the one the dialer expected.
    #[error("server name {got} is not the expected {expected}")]
    UnexpectedName {
        /// The name in the server's certificate.
        got: NodeName,
        /// The name expected.
        expected: NodeName,
    },
    /// A peer belongs to another installation.
    #[error("trust domain mismatch: peer is in {got:?}, expected {expected:?}")]
    TrustDomainMismatch {
        /// The peer's trust domain.
        got: String,
        /// Ours.
        expected: String,
    },
    /// An enrolling node's pinned CA hash matches no certificate the server sent.
    #[error("wrong CA hash: the server's chain holds no CA with {pinned} (it offered {offered})")]
    WrongCa {
        /// The pin given with --ca-hash.
        pinned: String,
        /// Hashes of what the server sent beyond its own certificate.
        offered: String,
    },
    /// A `--ca-hash` that is not `sha256:` and 64 hex digits.
    #[error(
        "invalid CA hash {0:?}: expected sha256: followed by 64 hex digits (from hq token create)"
    )]
    BadCaHash(String),
    /// A certificate signing request, or the certificate given for one, is
    /// not what was asked.
    #[error("{0}")]
    Csr(String),
    /// The peer completed a handshake without a certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// rustls refused a configuration.
    #[error("tls configuration: {0}")]
    Config(String),
    /// We refused the peer's certificate during the handshake (role, name or
    /// trust domain); the reason is inside.
    #[error(transparent)]
    Refused(std::sync::Arc<TlsError>),
    /// The TLS handshake failed (bad chain, alert from the peer, I/O).
    #[error("tls handshake failed: {0}")]
    Handshake(std::io::Error),
}

impl TlsError {
    /// The peer is of another installation: its chain does not lead to our
    /// CA, or its certificate names another trust domain.
    pub fn is_foreign(&self) -> bool {
        match self {
            TlsError::TrustDomainMismatch { .. } => true,
            TlsError::Refused(inner) => inner.is_foreign(),
            TlsError::Handshake(e) => matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                ))
            ),
            _ => false,
        }
    }
}

/// Server side, after TCP accept: runs the handshake, then takes the peer's
/// identity from its verified leaf certificate and checks it against `admit`
/// and `trust_domain` (the verifier in [`Identity::server_config`] already
/// refused others during the handshake; this is the second line).
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    admit: &[Role],
    trust_domain: &str,
) -> Result<
    (
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        PeerIdentity,
    ),
    TlsError,
> {
    let (stream, peer) = accept_any(acceptor, tcp, admit, trust_domain).await?;
    Ok((stream, peer.ok_or(TlsError::NoPeerCertificate)?))
}

/// As [`accept`], but a client without a certificate is let through as
/// `None` (only a config from [`Identity::server_config_enrolling`] lets
/// one finish the handshake).
pub async fn accept_any(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    admit: &[Role],
    trust_domain: &str,
) -> Result<
    (
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        Option<PeerIdentity>,
    ),
    TlsError,
> {
    let stream = acceptor
        .accept(tcp)
        .await
        .map_err(verify::handshake_error)?;
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Ok((stream, None));
    };
    let peer = identity_from_cert(leaf)?;
    verify::check_admitted(&peer, admit, trust_domain)?;
    Ok((stream, Some(peer)))
}

/// Client side, after TCP connect: runs the handshake (the verifier in
/// [`Identity::client_config`] checks the server's chain, role and name) and
/// returns the server's identity.
///
/// With TLS 1.3 a client whose certificate the server refuses still sees this
/// succeed; the refusal arrives on the first read.
pub async fn connect(
    connector: &tokio_rustls::TlsConnector,
    tcp: tokio::net::TcpStream,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        PeerIdentity,
    ),
    TlsError,
> {
    let name = rustls::pki_types::ServerName::try_from(DUMMY_SERVER_NAME)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(verify::handshake_error)?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    let peer = identity_from_cert(leaf)?;
    Ok((stream, peer))
}
