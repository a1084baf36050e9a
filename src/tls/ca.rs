//! The installation's private CA: creation, saving and reloading
//! (`ca.crt` 0644, `ca.key` 0600), and issuing node certificates that carry
//! a single `spiffe://<trust-domain>/<role>/<name>` URI SAN.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;

use super::files::{self, PRIVATE_MODE, PUBLIC_MODE};
use super::verify::{ca_trust_domain, valid_trust_domain};
use super::{PeerIdentity, TlsError};
use crate::proto::{NodeName, Role};

/// Certificates are valid from a day before issue (clock skew between nodes)...
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// ...to about ten years after.
const VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The installation's private CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    trust_domain: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA (ECDSA P-256, ~10 years) for `trust_domain`, which must
    /// be DNS-like (`[a-z0-9.-]+`). The CA certificate carries the URI SAN
    /// `spiffe://<trust-domain>`.
    pub fn create(trust_domain: &str) -> Result<Ca, TlsError> {
        if !valid_trust_domain(trust_domain) {
            return Err(TlsError::InvalidTrustDomain(trust_domain.to_string()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("relaytree CA {trust_domain}"));
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Writes `dir/ca.crt` (0644) and `dir/ca.key` (0600), creating `dir` (0700).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        files::create_dir(dir)?;
        files::write_file(
            &dir.join("ca.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            PRIVATE_MODE,
        )?;
        files::write_file(&dir.join("ca.crt"), self.cert_pem.as_bytes(), PUBLIC_MODE)
    }

    /// Reloads a CA saved by [`Ca::save`]. Refuses a `ca.key` open to group or
    /// others, and a key that does not match the certificate.
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let crt_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let crt_pem = files::read_file(&crt_path)?;
        let key_pem = files::read_private(&key_path)?;
        let cert_der = files::pem_certs(&crt_path, &crt_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| files::bad(&crt_path, "no PEM certificate found"))?;
        let trust_domain =
            ca_trust_domain(&cert_der).map_err(|e| files::bad(&crt_path, e.to_string()))?;
        let key_text = String::from_utf8(key_pem)
            .map_err(|_| files::bad(&key_path, "not a PEM file (not UTF-8)"))?;
        let key = KeyPair::from_pem(&key_text)
            .map_err(|e| files::bad(&key_path, format!("no usable private key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| files::bad(&crt_path, format!("cannot parse certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(files::bad(
                &key_path,
                format!("key does not match {}", crt_path.display()),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| files::bad(&crt_path, format!("not a usable CA certificate: {e}")))?;
        let cert_pem = String::from_utf8(crt_pem)
            .map_err(|_| files::bad(&crt_path, "not a PEM file (not UTF-8)"))?;
        Ok(Ca {
            issuer,
            cert_der,
            cert_pem,
            trust_domain,
        })
    }

    /// The installation's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a certificate signing request for exactly `role`/`name`: the
    /// CSR must be validly self-signed and carry exactly the URI SAN
    /// `spiffe://<trust-domain>/<role>/<name>` (anything else it asks for
    /// is ignored: HQ sets every field itself). Valid for `validity` from
    /// now (backdated a little for clock skew). Returns the certificate, PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: Role,
        name: &NodeName,
        validity: Duration,
    ) -> Result<String, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Csr(format!("unusable certificate signing request: {e}")))?;
        let id = PeerIdentity {
            role,
            name: name.clone(),
            trust_domain: self.trust_domain.clone(),
        };
        let want = id.spiffe_id();
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if uris != [want.clone()] {
            return Err(TlsError::Csr(format!(
                "the certificate signing request names {}, not {want}",
                if uris.is_empty() {
                    "nothing".to_string()
                } else {
                    uris.join(", ")
                }
            )));
        }
        let now = SystemTime::now();
        let back = BACKDATE.min(validity / 10);
        let params = node_params(
            &id,
            now.checked_sub(back).unwrap_or(now),
            now.checked_add(validity).unwrap_or(now),
        )?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// Whether `dir` already holds an identity (a node key or certificate):
    /// `hq cert issue` refuses to replace one unless told to.
    pub fn holds_identity(dir: &Path) -> bool {
        ["node.key", "node.crt"]
            .iter()
            .any(|f| dir.join(f).symlink_metadata().is_ok())
    }

    /// Issues a certificate for `role`/`name` (ECDSA P-256, ~10 years, usable
    /// as TLS client and server) and writes `out/ca.crt`, `out/node.crt`
    /// (0644) and `out/node.key` (0600), creating `out` (0700). Existing files
    /// are replaced.
    pub fn issue(&self, role: Role, name: &NodeName, out: &Path) -> Result<(), TlsError> {
        let now = SystemTime::now();
        let from = now.checked_sub(BACKDATE).unwrap_or(now);
        let until = now.checked_add(VALIDITY).unwrap_or(now);
        self.issue_valid(role, name, out, from, until)
    }

    /// As [`Ca::issue`], valid from `not_before` to `not_after` (tests make
    /// expired and not-yet-valid certificates with it).
    pub fn issue_valid(
        &self,
        role: Role,
        name: &NodeName,
        out: &Path,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(), TlsError> {
        self.write_identity(role, name, out, (not_before, not_after), &[], true)
    }

    /// Issues an identity for each (name, directory) of `items`, as
    /// [`Ca::issue`] but valid for `validity` from now (backdated a day),
    /// with `extra` files (name, content; 0644) beside each. Keys are made and
    /// certificates signed on every core at once; files are written without
    /// an fsync each, and made durable together by one `syncfs` at the end,
    /// so an error (or a crash) before then may leave some written, none
    /// reported as issued.
    pub fn issue_many(
        &self,
        role: Role,
        items: &[(NodeName, PathBuf)],
        validity: Duration,
        extra: &[(&str, &[u8])],
    ) -> Result<(), TlsError> {
        let now = SystemTime::now();
        let span = (
            now.checked_sub(BACKDATE.min(validity / 10)).unwrap_or(now),
            now.checked_add(validity).unwrap_or(now),
        );
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, items.len().max(1));
        let per_thread = items.len().div_ceil(threads).max(1);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(per_thread)
                .map(|chunk| {
                    let stop = &stop;
                    scope.spawn(move || {
                        for (name, dir) in chunk {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            if let Err(e) = self.write_identity(role, name, dir, span, extra, false)
                            {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })?;
        // Every directory written, and the ones holding them (where their
        // own entries are): usually a single filesystem, so a single sync.
        let mut synced = BTreeSet::new();
        for (_, dir) in items {
            for d in [dir.parent(), dir.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
                .filter(|d| !d.as_os_str().is_empty())
            {
                if let Ok(meta) = d.metadata() {
                    if synced.insert(meta.dev()) {
                        files::sync_filesystem(d)?;
                    }
                }
            }
        }
        if synced.is_empty() {
            // Relative directories with no parent named: the current one.
            files::sync_filesystem(Path::new("."))?;
        }
        Ok(())
    }

    /// Makes a key, signs its certificate and writes the identity's files
    /// into `out` (fsyncing each only if `sync`).
    fn write_identity(
        &self,
        role: Role,
        name: &NodeName,
        out: &Path,
        (not_before, not_after): (SystemTime, SystemTime),
        extra: &[(&str, &[u8])],
        sync: bool,
    ) -> Result<(), TlsError> {
        let id = PeerIdentity {
            role,
            name: name.clone(),
            trust_domain: self.trust_domain.clone(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = node_params(&id, not_before, not_after)?;
        let cert = params.signed_by(&key, &self.issuer)?;

        files::create_dir(out)?;
        let mut all: Vec<(&str, &[u8], u32)> = Vec::with_capacity(3 + extra.len());
        let (key_pem, cert_pem) = (key.serialize_pem(), cert.pem());
        all.push(("node.key", key_pem.as_bytes(), PRIVATE_MODE));
        all.push(("node.crt", cert_pem.as_bytes(), PUBLIC_MODE));
        all.push(("ca.crt", self.cert_pem.as_bytes(), PUBLIC_MODE));
        all.extend(extra.iter().map(|(n, d)| (*n, *d, PUBLIC_MODE)));
        for (file, data, mode) in all {
            files::write_file_with(&out.join(file), data, mode, sync)?;
        }
        Ok(())
    }
}

/// A node certificate's fields: its SPIFFE id, usable as TLS client and server.
fn node_params(
    id: &PeerIdentity,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{} {}", id.role, id.name));
    params.subject_alt_names = vec![uri_san(&id.spiffe_id())?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, TlsError> {
    Ok(SanType::URI(Ia5String::try_from(uri)?))
}

fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(VALIDITY).unwrap_or(now).into();
}
