//! The agent: dials its relay, keeps a run log so that each attempt runs at
//! most once (even across restarts), runs commands, and reports results
//! through its outbox.
//!
//! Never imports `hq` or `relay`.

pub mod exec;
mod run;
mod runlog;

use crate::link::{dial_loop, pump_outbox, unexpected, Dialer, LinkError, Session, Timing};
use crate::proto::{Hello, Msg, NodeName, Role, PROTOCOL_VERSION};
use crate::store::{Outbox, Store, StoreError, Table};
use crate::tls::{Identity, TlsError};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// An agent failed to start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Identity files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Configuration.
    #[error("{0}")]
    Config(String),
}

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Directory with ca.crt, node.crt, node.key.
    pub identity: PathBuf,
    /// Where the run log lives.
    pub data_dir: PathBuf,
    /// The relay's HOST:PORT.
    pub relay: String,
    /// Session timers.
    pub timing: Timing,
    /// Commands run at the same time, at most.
    pub max_parallel: usize,
    /// Bytes of output kept per run.
    pub tail_bytes: usize,
}

impl AgentConfig {
    /// Defaults for everything but the three paths.
    pub fn new(identity: PathBuf, data_dir: PathBuf, relay: String) -> AgentConfig {
        AgentConfig {
            identity,
            data_dir,
            relay,
            timing: Timing::default(),
            max_parallel: 4,
            tail_bytes: 4096,
        }
    }
}

/// The agent's shared state.
pub(crate) struct AgentState {
    pub me: NodeName,
    pub store: Store,
    /// job ++ attempt -> RunRecord.
    pub runs: Table,
    pub outbox: Outbox,
    pub slots: Semaphore,
    pub tail_bytes: usize,
}

/// Runs an agent until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let identity = Identity::load(&cfg.identity)?;
    let me = identity.me().clone();
    if me.role != Role::Agent {
        return Err(AgentError::Config(format!(
            "{} holds a {} certificate, not an agent one",
            cfg.identity.display(),
            me.role
        )));
    }
    let store = Store::open(&cfg.data_dir)?;
    let st = Arc::new(AgentState {
        me: me.name.clone(),
        runs: store.table("runs")?,
        outbox: store.outbox("outbox")?,
        store,
        slots: Semaphore::new(cfg.max_parallel.max(1)),
        tail_bytes: cfg.tail_bytes,
    });
    let span = tracing::info_span!("agent", client = %me.name);
    async {
        for a in runlog::recover(&st)? {
            tokio::spawn(run::execute(st.clone(), a).in_current_span());
        }
        st.store.durable().await?;
        let dialer = Dialer {
            addr: cfg.relay.clone(),
            connector: tokio_rustls::TlsConnector::from(identity.client_config(Role::Relay, None)?),
            me: Hello {
                version: PROTOCOL_VERSION,
                name: me.name.clone(),
                role: Role::Agent,
            },
            timing: cfg.timing,
        };
        dial_loop(dialer, shutdown, |s| session(st.clone(), s)).await;
        st.store.durable().await?;
        Ok(())
    }
    .instrument(span)
    .await
}

async fn session(st: Arc<AgentState>, s: Session) -> Result<(), LinkError> {
    let Session { peer, tx, mut rx } = s;
    let relay = peer.name;
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let pump = tokio::spawn(pump_outbox(st.outbox.clone(), tx.clone(), acked_rx));
    let r = async {
        loop {
            match rx.recv().await? {
                Msg::Assign(a) => {
                    if let Some(fresh) = runlog::accept(&st, &a, &relay)? {
                        st.store.durable().await?;
                        tokio::spawn(run::execute(st.clone(), fresh).in_current_span());
                    }
                    tx.send(Msg::AssignAck {
                        job: a.job,
                        attempt: a.attempt,
                    })
                    .await
                    .map_err(|_| LinkError::Closed)?;
                }
                Msg::Ack { seq } => {
                    st.outbox.ack(seq)?;
                    acked_tx.send_replace(seq);
                }
                other => return Err(unexpected(&other, "from a relay")),
            }
        }
    }
    .await;
    pump.abort();
    r
}
