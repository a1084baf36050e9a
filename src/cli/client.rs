//! The admin side of the wire: find HQ and the admin identity, open a
//! session, send one request, read its answer.

use crate::link::{dial_once, Dialer, LinkError, Session, Timing};
use crate::proto::{AdminRequest, AdminResponse, Hello, Msg, Role, PROTOCOL_VERSION};
use crate::tls::{Identity, TlsError};
use std::path::{Path, PathBuf};

/// An admin command failed before HQ could answer, or HQ refused it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No way to find HQ or the identity.
    #[error("{0}")]
    Usage(String),
    /// Identity files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// HQ unreachable or the session broke.
    #[error("cannot talk to hq at {addr}: {source}")]
    Link {
        /// Where.
        addr: String,
        /// Why.
        source: LinkError,
    },
    /// HQ answered with an error.
    #[error("{0}")]
    Refused(String),
    /// Anything else, already phrased.
    #[error("{0}")]
    Other(String),
    /// HQ answered something unexpected.
    #[error("unexpected answer from hq: {0}")]
    Unexpected(String),
}

/// Where to find HQ and who to be.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--hq` / `$RELAYTREE_HQ`.
    pub hq: Option<String>,
    /// `--identity` / `$RELAYTREE_IDENTITY`.
    pub identity: Option<PathBuf>,
    /// `--data-dir` of `hq init`: defaults both of the above.
    pub data_dir: Option<PathBuf>,
}

impl Target {
    fn resolve(&self) -> Result<(String, PathBuf), CliError> {
        let identity = match (&self.identity, &self.data_dir) {
            (Some(i), _) => i.clone(),
            (None, Some(d)) => crate::hq::layout::admin(d),
            (None, None) => {
                return Err(CliError::Usage(
                    "no admin identity: pass --identity DIR, set RELAYTREE_IDENTITY, or pass --data-dir of `hq init`".into(),
                ))
            }
        };
        let hq = match (&self.hq, &self.data_dir) {
            (Some(h), _) => h.clone(),
            (None, Some(d)) => read_addr(d)?,
            (None, None) => {
                return Err(CliError::Usage(
                    "no hq address: pass --hq HOST:PORT, set RELAYTREE_HQ, or pass --data-dir of a running hq".into(),
                ))
            }
        };
        Ok((hq, identity))
    }
}

fn read_addr(data_dir: &Path) -> Result<String, CliError> {
    let p = data_dir.join("listen.addr");
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            CliError::Usage(format!(
                "no hq address: cannot read {} ({e}); pass --hq HOST:PORT",
                p.display()
            ))
        })
}

/// An open admin session to HQ.
pub struct AdminClient {
    addr: String,
    session: Session,
    next_id: u64,
}

impl AdminClient {
    /// Loads the identity and connects.
    pub async fn connect(t: &Target) -> Result<AdminClient, CliError> {
        let (addr, identity) = t.resolve()?;
        let id = Identity::load(&identity)?;
        if id.me().role != Role::Admin {
            return Err(CliError::Usage(format!(
                "{} holds {} certificate; admin commands need an admin identity",
                identity.display(),
                id.me().role.with_article()
            )));
        }
        let dialer = Dialer {
            addr: addr.clone().into(),
            connector: tokio_rustls::TlsConnector::from(id.client_config(Role::Hq, None)?),
            me: Hello {
                version: PROTOCOL_VERSION,
                name: id.me().name.clone(),
                role: Role::Admin,
                purpose: Default::default(),
                hq_now_ms: None,
                about: None,
                idle_timeout_ms: None,
            },
            // Gives up on a silent HQ within 20 s.
            timing: Timing::admin(),
            gate: None,
        };
        let session = dial_once(&dialer).await.map_err(|source| CliError::Link {
            addr: addr.clone(),
            source,
        })?;
        Ok(AdminClient {
            addr,
            session,
            next_id: 1,
        })
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, req: AdminRequest) -> Result<AdminResponse, CliError> {
        let id = self.send(req).await?;
        self.recv(id).await
    }

    /// Sends one request without waiting; returns its id for [`Self::recv`].
    /// HQ answers an admin's requests one at a time, in order, so several
    /// may be in flight (pipelined uploads); read the answers in that order.
    pub async fn send(&mut self, req: AdminRequest) -> Result<u64, CliError> {
        let id = self.next_id;
        self.next_id += 1;
        self.session
            .tx
            .send(Msg::AdminReq { id, req })
            .await
            .map_err(|_| CliError::Link {
                addr: self.addr.clone(),
                source: LinkError::Closed,
            })?;
        Ok(id)
    }

    /// The answer to request `id`, the oldest one not yet read.
    pub async fn recv(&mut self, id: u64) -> Result<AdminResponse, CliError> {
        let link = |source| CliError::Link {
            addr: self.addr.clone(),
            source,
        };
        match self.session.rx.recv().await.map_err(link)? {
            Msg::AdminResp { id: got, resp } if got == id => resp.map_err(CliError::Refused),
            other => Err(CliError::Unexpected(other.kind().to_string())),
        }
    }
}
