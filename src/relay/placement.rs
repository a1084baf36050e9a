//! HQ's placements of agents on their way down: a relay keeps the latest one
//! of each home client and attaches it to every assignment it sends that
//! agent, and passes the others on towards the child the agent lives under
//! (queued there until acknowledged). An original order is held back from a
//! home agent that has no placement yet (the agent would refuse it); it goes
//! out when the placement arrives.
//!
//! Never signs or verifies anything: HQ signs, the agent verifies.

use super::RelayState;
use crate::proto::{Assignment, Msg, NodeName, Placement, SignedPlacement};
use crate::store::{keys, StoreError};
use tracing::{debug, info, warn};

/// What a relay does with a placement from its parent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The agent's home is this relay: keep it (if newer than the one kept).
    Keep,
    /// Pass it on to this child.
    Forward(NodeName),
    /// This relay is not on the agent's chain: drop it (acknowledged).
    NotHere,
}

/// Where a placement goes from relay `me`.
pub(crate) fn route(me: &NodeName, p: &Placement) -> Route {
    if p.chain.first() == Some(me) {
        return Route::Keep;
    }
    match p.hop_below(me) {
        Some(child) => Route::Forward(child.clone()),
        None => Route::NotHere,
    }
}

/// A placement received and applied (not yet durable).
pub(crate) struct Received {
    /// The agent it places, to acknowledge (none when undecodable).
    pub client: Option<NodeName>,
    /// Kept here: the agent's held assignments can go out now.
    pub kept: bool,
    /// Queued for a child, to send once durable.
    pub fwd: Vec<(NodeName, Msg)>,
}

/// Applies a placement from the parent (not yet durable).
pub(crate) fn receive(st: &RelayState, sp: SignedPlacement) -> Result<Received, StoreError> {
    let p = match sp.placement() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "undecodable placement from the parent; dropped");
            return Ok(Received {
                client: None,
                kept: false,
                fwd: vec![],
            });
        }
    };
    let client = p.client.clone();
    let mut out = Received {
        client: Some(client.clone()),
        kept: false,
        fwd: vec![],
    };
    match route(&st.me, &p) {
        Route::Keep => {
            let k = keys::name(&client);
            let older = match st.placements.get::<SignedPlacement>(&k)? {
                Some(old) => old
                    .placement()
                    .map_or(true, |o| o.issued_at_ms < p.issued_at_ms),
                None => true,
            };
            if older {
                st.placements.put(&k, &sp)?;
                info!(%client, issued_at_ms = p.issued_at_ms, "placement kept");
                out.kept = true;
            }
        }
        Route::Forward(child) => {
            let m = Msg::Placement(sp);
            st.down.put(&child, &m)?;
            debug!(%client, %child, "placement passed on");
            out.fwd.push((child, m));
        }
        Route::NotHere => {
            warn!(%client, chain = ?p.chain, "placement for a chain this relay is not on; dropped");
        }
    }
    Ok(out)
}

/// `a` (already cut for agent `client`) with the agent's placement attached,
/// or `None` to hold it: an assignment no rerun order of this relay covers
/// needs a placement, and there is none yet.
pub(crate) fn attach(
    st: &RelayState,
    client: &NodeName,
    mut a: Assignment,
) -> Result<Option<Assignment>, StoreError> {
    a.placement = st.placements.get::<SignedPlacement>(&keys::name(client))?;
    let by_name = a.orders.iter().any(|o| o.relay.as_ref() == Some(&st.me));
    if a.placement.is_none() && !by_name {
        debug!(%client, job = %a.job, "held until hq's placement of the agent arrives");
        return Ok(None);
    }
    Ok(Some(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn routes() {
        let p = Placement {
            client: n("c1"),
            chain: vec![n("r3"), n("r2"), n("r1")],
            issued_at_ms: 1,
        };
        let cases = [
            ("r3", Route::Keep),
            ("r2", Route::Forward(n("r3"))),
            ("r1", Route::Forward(n("r2"))),
            ("r9", Route::NotHere),
        ];
        for (me, want) in cases {
            assert_eq!(route(&n(me), &p), want, "{me}");
        }
        let empty = Placement { chain: vec![], ..p };
        assert_eq!(route(&n("r1"), &empty), Route::NotHere);
    }
}
