//! Enrollment and renewal, the certificate side: the CA's hash that a new
//! node pins, keys made where they are used (never sent), certificate
//! signing requests for `spiffe://<trust-domain>/<role>/<name>`, checking
//! what comes back, and writing it (a renewal replaces node.crt atomically
//! and swaps it into the running node's [`super::CertSlot`]).
//!
//! Knows nothing of tokens or of how requests travel (HQ and `link` do).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DnType, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;

use super::config::provider;
use super::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use super::verify::{ca_trust_domain, identity_from_cert, PinnedSeen};
use super::{Identity, PeerIdentity, TlsError};
use crate::proto::{NodeName, Role};

/// SHA-256 of a certificate's DER.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:HEX`.
pub fn hash_text(h: &[u8; 32]) -> String {
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The pin of a CA certificate: `sha256:HEX` of its DER.
pub fn ca_hash(der: &[u8]) -> String {
    hash_text(&sha256(der))
}

/// Parses `sha256:HEX` (64 hex digits, any case).
pub fn parse_ca_hash(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadCaHash(s.to_string());
    let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A certificate's validity as unix ms: (notBefore, notAfter).
pub fn validity_ms(der: &[u8]) -> Result<(u64, u64), TlsError> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64).saturating_mul(1000);
    Ok((ms(x.validity().not_before), ms(x.validity().not_after)))
}

/// When a certificate valid from `not_before` to `not_after` (unix ms) is
/// to be renewed: once two thirds of its validity have passed.
pub fn renew_at_ms(not_before: u64, not_after: u64) -> u64 {
    not_before + not_after.saturating_sub(not_before) / 3 * 2
}

/// A key made on this node; its private half never leaves it.
pub struct NodeKey(KeyPair);

impl NodeKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<NodeKey, TlsError> {
        Ok(NodeKey(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?))
    }

    /// A CSR (PEM) for `spiffe://<trust_domain>/<role>/<name>`, signed by this key.
    pub fn csr(&self, trust_domain: &str, role: Role, name: &NodeName) -> Result<String, TlsError> {
        csr_for(&self.0, trust_domain, role, name)
    }
}

fn csr_for(
    key: &KeyPair,
    trust_domain: &str,
    role: Role,
    name: &NodeName,
) -> Result<String, TlsError> {
    let id = PeerIdentity {
        role,
        name: name.clone(),
        trust_domain: trust_domain.to_string(),
    };
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{role} {name}"));
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.spiffe_id())?)];
    Ok(params.serialize_request(key)?.pem()?)
}

/// Checks a certificate handed out for `want`: it parses, chains to `roots`,
/// names exactly `want`, and matches `key_der` (PKCS#8). Returns its chain.
fn check_granted(
    cert_pem: &str,
    roots: &RootCertStore,
    key_der: &rustls::pki_types::PrivateKeyDer<'static>,
    want: &PeerIdentity,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = Path::new("(certificate from hq)");
    let chain = files::pem_certs(path, cert_pem.as_bytes())?;
    let leaf = &chain[0];
    let got = identity_from_cert(leaf)?;
    if &got != want {
        return Err(TlsError::Csr(format!(
            "hq returned a certificate for {}, not {}",
            got.spiffe_id(),
            want.spiffe_id()
        )));
    }
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
    .map_err(|e| TlsError::Csr(format!("certificate from hq does not verify: {e}")))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
        .map_err(|e| TlsError::Csr(format!("certificate from hq does not match our key: {e}")))?;
    Ok(chain)
}

/// The TLS client side of an enrollment: no certificate of ours, the
/// server's CA pinned by hash, the server's role one of `roles`.
pub struct EnrollTls {
    /// Connects with the pin.
    pub connector: tokio_rustls::TlsConnector,
    seen: Arc<Mutex<Option<PinnedSeen>>>,
}

impl EnrollTls {
    /// A connector pinning `pin` and expecting a server of one of `roles`.
    pub fn new(pin: [u8; 32], roles: &[Role]) -> Result<EnrollTls, TlsError> {
        let seen = Arc::new(Mutex::new(None));
        let cfg = super::config::enroll_client_config(pin, roles, seen.clone())?;
        Ok(EnrollTls {
            connector: tokio_rustls::TlsConnector::from(cfg),
            seen,
        })
    }

    /// After the handshake: the pinned CA's trust domain.
    pub fn trust_domain(&self) -> Option<String> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.trust_domain.clone())
    }
}

/// Writes an enrolled identity: `out/ca.crt`, `out/node.crt`, `out/node.key`
/// (0600) and `out/sign.pub`, once the CA matches `pin` and the certificate
/// verifies under it, names `want` and matches `key`.
pub fn write_enrolled(
    out: &Path,
    key: &NodeKey,
    want: &PeerIdentity,
    pin: &[u8; 32],
    cert_pem: &str,
    ca_pem: &str,
    sign_pub: &[u8],
) -> Result<(), TlsError> {
    let ca_path = Path::new("(ca from hq)");
    let ca = files::pem_certs(ca_path, ca_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| files::bad(ca_path, "no PEM certificate found"))?;
    if &sha256(&ca) != pin {
        return Err(TlsError::WrongCa {
            pinned: hash_text(pin),
            offered: ca_hash(&ca),
        });
    }
    if ca_trust_domain(&ca)? != want.trust_domain {
        return Err(TlsError::Csr(
            "the CA from hq is for another trust domain".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| TlsError::BadCertificate(format!("ca from hq: {e}")))?;
    let key_pem = key.0.serialize_pem();
    let key_der = files::pem_key(Path::new("(new key)"), key_pem.as_bytes())?;
    check_granted(cert_pem, &roots, &key_der, want)?;
    if sign_pub.len() != 32 {
        return Err(TlsError::Csr(format!(
            "hq's job-signing key is {} bytes, not 32",
            sign_pub.len()
        )));
    }
    files::create_dir(out)?;
    files::write_file(&out.join("node.key"), key_pem.as_bytes(), PRIVATE_MODE)?;
    files::write_file(&out.join("node.crt"), cert_pem.as_bytes(), PUBLIC_MODE)?;
    files::write_file(&out.join("ca.crt"), ca_pem.as_bytes(), PUBLIC_MODE)?;
    files::write_file(&out.join(super::SIGN_PUB), sign_pub, PUBLIC_MODE)
}

impl Identity {
    /// A CSR for this node's own name and role, with its current key (a
    /// renewal keeps the key: only node.crt changes, in one atomic step).
    pub fn renewal_csr(&self) -> Result<String, TlsError> {
        let key_path = self.dir.join("node.key");
        let pem = files::read_private(&key_path)?;
        let text = String::from_utf8(pem).map_err(|_| files::bad(&key_path, "not UTF-8"))?;
        let key = KeyPair::from_pem(&text)
            .map_err(|e| files::bad(&key_path, format!("no usable private key: {e}")))?;
        csr_for(&key, &self.me.trust_domain, self.me.role, &self.me.name)
    }

    /// Takes a renewed certificate: checks it (our CA, our name, our key),
    /// replaces `node.crt` atomically (a temporary file, fsynced, renamed)
    /// and presents it from the next handshake on. Returns its notAfter (ms).
    pub fn install_renewed(&self, cert_pem: &str) -> Result<u64, TlsError> {
        let chain = check_granted(cert_pem, &self.roots, &self.key, &self.me)?;
        let (_, not_after) = validity_ms(&chain[0])?;
        let path = self.dir.join("node.crt");
        let tmp = self.dir.join(".node.crt.tmp");
        files::write_file(&tmp, cert_pem.as_bytes(), PUBLIC_MODE)?;
        std::fs::rename(&tmp, &path).map_err(|source| TlsError::Write {
            path: path.clone(),
            source,
        })?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.slot.replace(chain, &self.key)?;
        Ok(not_after)
    }

    /// The validity (unix ms) of the certificate presented now.
    pub fn validity_ms(&self) -> Result<(u64, u64), TlsError> {
        validity_ms(&self.slot.leaf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_hashes_parse_and_print() {
        let h = [0xabu8; 32];
        let t = hash_text(&h);
        assert_eq!(t.len(), 7 + 64);
        assert_eq!(parse_ca_hash(&t).unwrap(), h);
        assert_eq!(
            parse_ca_hash(&t.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            h
        );
        for bad in [
            "",
            "sha256:",
            "sha1:abcd",
            &t[..t.len() - 1],
            &format!("{t}0"),
            &t.replace('a', "g"),
        ] {
            assert!(parse_ca_hash(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewal_falls_at_two_thirds() {
        for (nb, na, at) in [
            (0u64, 90u64, 60u64),
            (1000, 1000 + 30_000, 1000 + 20_000),
            (5, 5, 5),
            (10, 0, 10),
        ] {
            assert_eq!(renew_at_ms(nb, na), at, "{nb} {na}");
        }
    }
}
