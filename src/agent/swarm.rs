//! `agent swarm`: many real agents in one process, one per identity under a
//! directory, sharing one runtime and one store (their run logs and outboxes
//! keyed by name). Each has its own certificate and TLS session.

use super::{load_identity, run_on, AgentError, AgentOptions};
use crate::node::NodeFailure;
use crate::store::Store;
use std::path::PathBuf;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How to run a swarm.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// A directory of identity directories (`hq cert issue --count`).
    pub identities: PathBuf,
    /// The relay's HOST:PORT.
    pub relay: String,
    /// Where the shared store lives.
    pub data_dir: PathBuf,
    /// Behaviour of every agent.
    pub options: AgentOptions,
}

/// Runs every agent until `shutdown`; returns how many ran.
pub async fn swarm(cfg: SwarmConfig, shutdown: CancellationToken) -> Result<usize, AgentError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cfg.identities)
        .map_err(|e| AgentError::Config(format!("cannot read {}: {e}", cfg.identities.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("node.crt").exists())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(AgentError::Config(format!(
            "no identities under {} (expected DIR/NAME/node.crt, as `hq cert issue --count` writes)",
            cfg.identities.display()
        )));
    }
    let identities = dirs
        .iter()
        .map(|d| load_identity(d))
        .collect::<Result<Vec<_>, _>>()?;
    let store = Store::open(&cfg.data_dir)?;
    let n = identities.len();
    info!(agents = n, relay = %cfg.relay, "starting swarm");
    let mut set = JoinSet::new();
    // One id and one look at what earlier runs left, for every agent.
    let leftovers = super::leftover::Leftovers::new(super::runlog::store_id(
        &store.table(super::runlog::TREE)?,
    )?);
    for id in identities {
        let (store, relay, opts, stop) = (
            store.clone(),
            cfg.relay.clone(),
            cfg.options.clone(),
            shutdown.clone(),
        );
        set.spawn(run_on(
            id,
            store,
            cfg.data_dir.clone(),
            // Each agent its own list (and current choice).
            relay.into(),
            opts,
            leftovers.clone(),
            stop,
        ));
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            // One store for all: when the disk fails, they all stop.
            Ok(Err(e)) if e.storage_failed() => {
                set.abort_all();
                return Err(e);
            }
            Ok(Err(e)) => warn!(error = %e, "an agent of the swarm stopped"),
            Err(e) => warn!(error = %e, "an agent of the swarm panicked"),
        }
    }
    store.durable().await?;
    Ok(n)
}
