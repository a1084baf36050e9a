//! A node's own identity: `ca.crt`, `node.crt` and `node.key` loaded from one
//! directory and checked against each other (chain to the CA, matching key,
//! same trust domain, key file not open to group or others).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::config::provider;
use super::files;
use super::verify::{ca_trust_domain, identity_from_cert};
use super::{PeerIdentity, TlsError};

/// A node's own identity loaded from a directory holding ca.crt, node.crt, node.key.
pub struct Identity {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) me: PeerIdentity,
    /// HQ's public job-signing key (`dir/sign.pub`), when the directory has one.
    pub(crate) job_key: Option<super::VerifyKey>,
    /// The directory it was loaded from (a renewal writes node.crt there).
    pub(crate) dir: std::path::PathBuf,
    /// What every TLS config built from this identity presents, now.
    pub(crate) slot: Arc<super::slot::CertSlot>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads and cross-checks `dir/ca.crt`, `dir/node.crt` and `dir/node.key`.
    /// Errors name the missing or bad file. Refuses a node.key readable by
    /// group or others, a node.crt not issued by ca.crt (or expired), and a
    /// key that does not match the certificate.
    pub fn load(dir: &Path) -> Result<Identity, TlsError> {
        let ca_path = dir.join("ca.crt");
        let crt_path = dir.join("node.crt");
        let key_path = dir.join("node.key");

        let ca_pem = files::read_file(&ca_path)?;
        let crt_pem = files::read_file(&crt_path)?;
        let key_pem = files::read_private(&key_path)?;

        let ca_der = files::pem_certs(&ca_path, &ca_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| files::bad(&ca_path, "no PEM certificate found"))?;
        let ca_domain =
            ca_trust_domain(&ca_der).map_err(|e| files::bad(&ca_path, e.to_string()))?;
        let chain = files::pem_certs(&crt_path, &crt_pem)?;
        let key = files::pem_key(&key_path, &key_pem)?;

        let leaf = chain
            .first()
            .ok_or_else(|| files::bad(&crt_path, "no PEM certificate found"))?;
        let me = identity_from_cert(leaf).map_err(|e| files::bad(&crt_path, e.to_string()))?;
        if me.trust_domain != ca_domain {
            return Err(files::bad(
                &crt_path,
                format!(
                    "trust domain mismatch: certificate is for {:?} but {} is for {:?}",
                    me.trust_domain,
                    ca_path.display(),
                    ca_domain
                ),
            ));
        }

        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| files::bad(&ca_path, format!("not a usable CA certificate: {e}")))?;
        let provider = provider();
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| files::bad(&crt_path, format!("cannot parse certificate: {e}")))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            files::bad(
                &crt_path,
                format!("not valid under {}: {e}", ca_path.display()),
            )
        })?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
            files::bad(
                &key_path,
                format!("does not match {}: {e}", crt_path.display()),
            )
        })?;

        let pub_path = dir.join(super::SIGN_PUB);
        let job_key = if pub_path.exists() {
            Some(super::VerifyKey::load(&pub_path)?)
        } else {
            None
        };

        let slot = Arc::new(super::slot::CertSlot::new(chain.clone(), &key, ca_der)?);
        Ok(Identity {
            dir: dir.to_path_buf(),
            slot,
            roots: Arc::new(roots),
            key,
            me,
            job_key,
        })
    }

    /// HQ's public job-signing key, if this identity carries one.
    pub fn job_key(&self) -> Option<&super::VerifyKey> {
        self.job_key.as_ref()
    }

    /// The certificate slot shared by every TLS config built from this
    /// identity (a renewal replaces what it holds).
    pub fn slot(&self) -> Arc<super::slot::CertSlot> {
        self.slot.clone()
    }

    /// Who this node is, as its certificate says.
    pub fn me(&self) -> &PeerIdentity {
        &self.me
    }
}
