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
use crate::store::keys::Name;
use crate::store::StoreError;
use tracing::{debug, warn};

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
            let k = Name(client.clone());
            let older = match st.placements.get(&k)? {
                Some(old) => old
                    .placement()
                    .map_or(true, |o| o.issued_at_ms < p.issued_at_ms),
                None => true,
            };
            if older {
                st.placements.put(&k, &sp)?;
                debug!(%client, issued_at_ms = p.issued_at_ms, "placement kept");
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

/// `a` (already cut for agent `client`) with the agent's placement and HQ's
/// time as this relay knows it attached,
/// or `None` to hold it: an assignment no rerun order of this relay covers
/// needs a placement, and there is none yet.
pub(crate) fn attach(
    st: &RelayState,
    client: &NodeName,
    mut a: Assignment,
) -> Result<Option<Assignment>, StoreError> {
    a.placement = st.placements.get(&Name(client.clone()))?;
    a.hq_now_ms = st.clock.now();
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
    use crate::proto::{Action, Attempt, JobId, Scope, SignedOrder};
    use crate::store::Store;

    fn signed(client: &str, chain: &[&str], issued_at_ms: u64) -> SignedPlacement {
        let body = Placement {
            client: n(client),
            chain: chain.iter().map(|s| n(s)).collect(),
            issued_at_ms,
        }
        .encode()
        .unwrap();
        SignedPlacement { body, sig: vec![] }
    }

    fn assignment(rerun_of: Option<&str>) -> Assignment {
        Assignment {
            job: JobId(1),
            attempt: Attempt(1),
            action: Action::Ping,
            expires_at_ms: None,
            scope: Scope::Targets(vec![n("c1")]),
            orders: vec![SignedOrder {
                body: vec![],
                sig: vec![],
                relay: rerun_of.map(n),
            }],
            placement: None,
            hq_now_ms: None,
            policy: None,
        }
    }

    #[tokio::test]
    async fn held_until_placed_kept_if_newer_passed_on_below() {
        let dir = tempfile::tempdir().unwrap();
        let st = RelayState::open(
            n("r1"),
            Store::open(dir.path()).unwrap(),
            crate::relay::cache::for_tests(dir.path()),
        )
        .unwrap();
        let c1 = n("c1");
        // No placement yet: an original is held, a rerun naming r1 is not.
        assert!(attach(&st, &c1, assignment(None)).unwrap().is_none());
        assert!(attach(&st, &c1, assignment(Some("r1"))).unwrap().is_some());
        let p5 = signed("c1", &["r1", "r0"], 5);
        let got = receive(&st, p5.clone()).unwrap();
        assert_eq!((got.client, got.kept), (Some(c1.clone()), true));
        // An older one (a late re-send) does not replace it.
        assert!(!receive(&st, signed("c1", &["r1"], 3)).unwrap().kept);
        let a = attach(&st, &c1, assignment(None)).unwrap().unwrap();
        assert_eq!(a.placement, Some(p5));
        // A client below a child relay: queued for that child, not kept.
        let got = receive(&st, signed("c3", &["r3", "r2", "r1"], 5)).unwrap();
        assert!(!got.kept);
        assert_eq!(got.fwd.len(), 1);
        assert_eq!(got.fwd[0].0, n("r2"));
        assert_eq!(st.down.queued(&n("r2")).unwrap().len(), 1);
        assert!(st.placements.get(&Name(n("c3"))).unwrap().is_none());
    }

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
