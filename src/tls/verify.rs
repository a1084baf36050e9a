//! Peer identity from certificates and the two handshake verifiers.
//!
//! Owns the parsing of the single `spiffe://<trust-domain>/<role>/<name>` URI
//! SAN, the admission rules (which roles a listener admits, which role and
//! name a dialer expects, same trust domain), and the rustls verifiers that
//! apply them during the handshake: [`AdmitRoles`] wraps rustls'
//! `WebPkiClientVerifier`; [`ExpectRole`] checks the chain to our CA and the
//! SPIFFE id, never a hostname.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::{PeerIdentity, TlsError};
use crate::proto::{NodeName, Role};

const SCHEME: &str = "spiffe://";

/// Parse the single `spiffe://<trust-domain>/<role>/<name>` URI SAN of a DER cert.
///
/// This does not verify the certificate: call it only on a certificate that
/// a verifier has accepted (or on our own).
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let uris = spiffe_uris(der)?;
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffeId),
        [uri] => parse_spiffe_id(uri),
        many => Err(TlsError::ManySpiffeIds(many.len())),
    }
}

/// The trust domain of a CA certificate: its single `spiffe://<trust-domain>` URI SAN.
pub(crate) fn ca_trust_domain(der: &[u8]) -> Result<String, TlsError> {
    let uris = spiffe_uris(der)?;
    let uri = match uris.as_slice() {
        [] => return Err(TlsError::NoSpiffeId),
        [uri] => uri,
        many => return Err(TlsError::ManySpiffeIds(many.len())),
    };
    let td = uri.strip_prefix(SCHEME).unwrap_or(uri);
    if valid_trust_domain(td) {
        Ok(td.to_string())
    } else {
        Err(TlsError::BadSpiffeId {
            uri: uri.clone(),
            reason: "expected spiffe://<trust-domain> on a CA certificate".into(),
        })
    }
}

/// Every URI SAN whose scheme is `spiffe` (in any case, so that a second one
/// spelled differently still counts).
fn spiffe_uris(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(format!("subject alternative names: {e}")))?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u)
                if u.len() >= SCHEME.len()
                    && u.as_bytes()[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes()) =>
            {
                Some((*u).to_string())
            }
            _ => None,
        })
        .collect())
}

/// Parses `spiffe://<trust-domain>/<role>/<name>`.
pub(crate) fn parse_spiffe_id(uri: &str) -> Result<PeerIdentity, TlsError> {
    let bad = |reason: String| TlsError::BadSpiffeId {
        uri: uri.to_string(),
        reason,
    };
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("expected spiffe://<trust-domain>/<role>/<name>".into()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [td, role, name] = parts.as_slice() else {
        return Err(bad("expected spiffe://<trust-domain>/<role>/<name>".into()));
    };
    if !valid_trust_domain(td) {
        return Err(bad(format!("invalid trust domain {td:?}")));
    }
    let role: Role = role.parse().map_err(bad)?;
    let name = NodeName::new(*name).map_err(|e| bad(e.to_string()))?;
    Ok(PeerIdentity {
        role,
        name,
        trust_domain: (*td).to_string(),
    })
}

/// A trust domain is DNS-like: 1-253 of `[a-z0-9.-]`, not starting or ending
/// with `.` or `-`, no empty label.
pub(crate) fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
        && !s.contains("..")
}

/// A listener's rule: same trust domain, role among `admit`.
pub(crate) fn check_admitted(
    peer: &PeerIdentity,
    admit: &[Role],
    trust_domain: &str,
) -> Result<(), TlsError> {
    if peer.trust_domain != trust_domain {
        return Err(TlsError::TrustDomainMismatch {
            got: peer.trust_domain.clone(),
            expected: trust_domain.to_string(),
        });
    }
    if !admit.contains(&peer.role) {
        return Err(TlsError::RoleNotAdmitted {
            got: peer.role,
            expected: roles_text(admit),
        });
    }
    Ok(())
}

/// A dialer's rule: same trust domain, the expected role, and the expected name when known.
pub(crate) fn check_expected(
    peer: &PeerIdentity,
    roles: &[Role],
    name: Option<&NodeName>,
    trust_domain: &str,
) -> Result<(), TlsError> {
    if peer.trust_domain != trust_domain {
        return Err(TlsError::TrustDomainMismatch {
            got: peer.trust_domain.clone(),
            expected: trust_domain.to_string(),
        });
    }
    if !roles.contains(&peer.role) {
        return Err(TlsError::UnexpectedRole {
            got: peer.role,
            expected: roles_text(roles),
        });
    }
    if let Some(name) = name {
        if &peer.name != name {
            return Err(TlsError::UnexpectedName {
                got: peer.name.clone(),
                expected: name.clone(),
            });
        }
    }
    Ok(())
}

/// "relay", "relay or admin", "hq, relay or admin"; "no role" when empty.
fn roles_text(roles: &[Role]) -> String {
    match roles {
        [] => "no role".into(),
        [one] => one.as_str().into(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|r| r.as_str()).collect();
            format!("{} or {}", init.join(", "), last.as_str())
        }
    }
}

/// A verifier's refusal, carried through rustls (as `CertificateError::Other`)
/// so that [`handshake_error`] can give the reason back as a [`TlsError`].
#[derive(Clone)]
struct Refusal(Arc<TlsError>);

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl std::error::Error for Refusal {}

/// A refusal as rustls wants it; the peer gets a certificate_unknown alert.
fn refuse(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(
        Arc::new(e),
    )))))
}

/// Maps a failed handshake: our own verifier's refusal becomes
/// [`TlsError::Refused`] with its reason; anything else [`TlsError::Handshake`].
pub(crate) fn handshake_error(e: std::io::Error) -> TlsError {
    let refusal = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
                other.downcast_ref::<Refusal>().cloned()
            }
            _ => None,
        });
    match refusal {
        Some(Refusal(reason)) => TlsError::Refused(reason),
        None => TlsError::Handshake(e),
    }
}

/// Server side: rustls' chain verification to our CA, then the admitted roles.
pub(crate) struct AdmitRoles {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    /// The provider's algorithms, as `inner` was built with.
    pub(crate) algs: WebPkiSupportedAlgorithms,
    pub(crate) admit: Vec<Role>,
    pub(crate) trust_domain: String,
    /// A client may come without a certificate (an enrollment).
    pub(crate) anonymous: bool,
}

impl fmt::Debug for AdmitRoles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmitRoles")
            .field("admit", &self.admit)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// The handshake-signature checks every verifier here shares: rustls's own,
/// over the verifier's `algs`. One definition, expanded into each impl.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ClientCertVerifier for AdmitRoles {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.anonymous
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = identity_from_cert(end_entity).map_err(refuse)?;
        check_admitted(&peer, &self.admit, &self.trust_domain).map_err(refuse)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Client side: the server's chain to our CA, then its SPIFFE role (and name);
/// the server name sent in the handshake is ignored.
pub(crate) struct ExpectRole {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) algs: WebPkiSupportedAlgorithms,
    pub(crate) roles: Vec<Role>,
    pub(crate) name: Option<NodeName>,
    pub(crate) trust_domain: String,
}

impl fmt::Debug for ExpectRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectRole")
            .field("roles", &self.roles)
            .field("name", &self.name)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ExpectRole {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let peer = identity_from_cert(end_entity).map_err(refuse)?;
        check_expected(&peer, &self.roles, self.name.as_ref(), &self.trust_domain)
            .map_err(refuse)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// What [`PinnedCa`] found in the server's chain.
#[derive(Clone, Debug)]
pub(crate) struct PinnedSeen {
    /// Its trust domain.
    pub trust_domain: String,
}

/// Client side of an enrollment: the node has no CA yet, only its hash. The
/// server sends its chain followed by the CA certificate; one certificate
/// of the chain must hash to the pin and be a CA of ours, and the leaf must
/// verify under it and carry one of the expected roles.
pub(crate) struct PinnedCa {
    pub(crate) pin: [u8; 32],
    pub(crate) algs: WebPkiSupportedAlgorithms,
    pub(crate) roles: Vec<Role>,
    pub(crate) seen: Arc<std::sync::Mutex<Option<PinnedSeen>>>,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCa")
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered: Vec<String> = intermediates
            .iter()
            .map(|c| super::enroll::ca_hash(c))
            .collect();
        let Some(ca) = intermediates
            .iter()
            .find(|c| super::enroll::sha256(c) == self.pin)
        else {
            return Err(refuse(TlsError::WrongCa {
                pinned: super::enroll::hash_text(&self.pin),
                offered: offered.join(", "),
            }));
        };
        let trust_domain = ca_trust_domain(ca).map_err(refuse)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| refuse(TlsError::BadCertificate(format!("pinned ca: {e}"))))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], now, self.algs.all)?;
        let peer = identity_from_cert(end_entity).map_err(refuse)?;
        check_expected(&peer, &self.roles, None, &trust_domain).map_err(refuse)?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(PinnedSeen { trust_domain });
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
