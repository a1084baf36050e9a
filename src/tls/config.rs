//! rustls configurations built from an [`Identity`]: TLS 1.3 only, the ring
//! provider named explicitly (never a process default), client certificates
//! required, no session resumption (every connection is fully verified).

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig};

use super::verify::{AdmitRoles, ExpectRole};
use super::{Identity, TlsError};
use crate::proto::{NodeName, Role};

/// The ring provider, explicitly.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl Identity {
    /// Server side: TLS 1.3 only, client certificate required and verified
    /// to the CA; a client whose SPIFFE role is not in `admit` (or whose
    /// trust domain differs) is refused during the handshake.
    pub fn server_config(&self, admit: &[Role]) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with(admit, false)
    }

    /// As [`Identity::server_config`], but a client may also come without a
    /// certificate (TLS still verifies any certificate it does present): the
    /// listener then lets that anonymous session carry one enrollment request
    /// and nothing else (`link::serve_enrolling`).
    pub fn server_config_enrolling(&self, admit: &[Role]) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with(admit, true)
    }

    fn server_config_with(
        &self,
        admit: &[Role],
        anonymous: bool,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(config_err)?;
        let verifier = Arc::new(AdmitRoles {
            inner,
            algs: provider.signature_verification_algorithms,
            admit: admit.to_vec(),
            trust_domain: self.me.trust_domain.clone(),
            anonymous,
        });
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(super::slot::Resolver(self.slot.clone())));
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Server side for browsers (the dashboard): the same certificate, no
    /// client certificate asked (a browser session is authenticated by its
    /// login cookie instead), HTTP/1.1 only.
    pub fn browser_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(config_err)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(super::slot::Resolver(self.slot.clone())));
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Client side: TLS 1.3 only, presents our certificate; verifies the
    /// server's chain to the CA and that its SPIFFE role is `expect_role`
    /// (and its name `expect_name` when given), never a hostname.
    pub fn client_config(
        &self,
        expect_role: Role,
        expect_name: Option<&NodeName>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_any(&[expect_role], expect_name)
    }

    /// As [`Identity::client_config`], accepting a server with any of `roles`
    /// (a relay's parent may be HQ or another relay).
    pub fn client_config_any(
        &self,
        roles: &[Role],
        expect_name: Option<&NodeName>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(ExpectRole {
            roots: self.roots.clone(),
            algs: provider.signature_verification_algorithms,
            roles: roles.to_vec(),
            name: expect_name.cloned(),
            trust_domain: self.me.trust_domain.clone(),
        });
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(super::slot::Resolver(self.slot.clone())));
        cfg.resumption = Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// The client side of an enrollment: no client certificate; the server's
/// chain must lead to the CA whose certificate hashes to `pin`, and its role
/// be one of `roles`. What the verifier saw (the CA) lands in `seen`.
pub(crate) fn enroll_client_config(
    pin: [u8; 32],
    roles: &[Role],
    seen: Arc<std::sync::Mutex<Option<super::verify::PinnedSeen>>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(super::verify::PinnedCa {
        pin,
        algs: provider.signature_verification_algorithms,
        roles: roles.to_vec(),
        seen,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}
