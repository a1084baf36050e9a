//! The certificate a running node presents, swappable while it runs: every
//! rustls configuration built from an [`super::Identity`] asks this slot at
//! each handshake, so a renewed certificate is used for the next
//! connections without rebuilding anything or restarting. Owns no files.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::config::provider;
use super::TlsError;

/// What is presented now.
struct Current {
    /// As a client: the node's certificate chain.
    client: Arc<CertifiedKey>,
    /// As a server: the chain followed by the CA certificate, so that a node
    /// enrolling (which has no CA yet) can pin the CA by its hash.
    server: Arc<CertifiedKey>,
}

/// The node's current certificate and key, shared by all its TLS configs.
pub struct CertSlot {
    current: RwLock<Current>,
    ca: CertificateDer<'static>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot").finish_non_exhaustive()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    CertifiedKey::from_der(chain, key.clone_key(), &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))
}

impl CertSlot {
    /// A slot presenting `chain` with `key`; `ca` is appended on the server side.
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
        ca: CertificateDer<'static>,
    ) -> Result<CertSlot, TlsError> {
        Ok(CertSlot {
            current: RwLock::new(Self::build(chain, key, &ca)?),
            ca,
        })
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
        ca: &CertificateDer<'static>,
    ) -> Result<Current, TlsError> {
        let mut server_chain = chain.clone();
        server_chain.push(ca.clone());
        Ok(Current {
            client: certified(chain, key)?,
            server: certified(server_chain, key)?,
        })
    }

    /// Presents `chain` (with `key`) from the next handshake on.
    pub(crate) fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let next = Self::build(chain, key, &self.ca)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The leaf certificate presented now (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.client.cert[0].clone()
    }

    fn client(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    fn server(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .server
            .clone()
    }
}

/// Hands the current slot to rustls (a newtype: rustls wants `Debug`).
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<CertSlot>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.client())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.server())
    }
}
