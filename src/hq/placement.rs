//! Placements: when HQ applies an agent's (subtree-checked) join, it signs
//! where the agent lives, its chain of relays from its home up to the relay
//! directly under HQ, and queues it down that chain. The agent's home relay
//! attaches it to the agent's assignments; the agent runs an original order
//! only when one of the order's destinations is on that chain.
//!
//! Decides the chain (a pure function of HQ's relay records) and signs;
//! never sends: what it queues is returned for the session to send once
//! durable.

use super::HqState;
use crate::proto::{now_ms, Msg, NodeName, Placement, SignedPlacement};
use crate::rules;
use crate::store::keys::Name;
use crate::store::StoreError;
use tracing::{debug, warn};

/// The chain of an agent whose home is `home`: `home`, then each parent up to
/// the relay whose parent is `hq`. `None` when the records reach no further
/// (no known path to HQ).
pub(crate) fn chain_of(
    home: &NodeName,
    hq: &NodeName,
    parent_of: impl Fn(&NodeName) -> Option<NodeName>,
) -> Option<Vec<NodeName>> {
    if home == hq {
        return None;
    }
    let mut chain = vec![home.clone()];
    for p in rules::ancestors(home, parent_of) {
        if p == *hq {
            return Some(chain);
        }
        chain.push(p);
    }
    None
}

/// Signs the placement of `client` under `home` and queues it for the top
/// relay of its chain (not yet durable). Returns what to send once durable.
pub(crate) fn place(
    st: &HqState,
    client: &NodeName,
    home: &NodeName,
) -> Result<Option<(NodeName, Msg)>, StoreError> {
    let parent_of = |r: &NodeName| super::jobs::parent_of(st, r);
    let Some(chain) = chain_of(home, &st.me, parent_of) else {
        warn!(%client, %home, "no known path from the client's home to hq; not placed");
        return Ok(None);
    };
    let Some(top) = chain.last().cloned() else {
        return Ok(None);
    };
    let p = Placement {
        client: client.clone(),
        chain,
        issued_at_ms: now_ms(),
    };
    let body = match p.encode() {
        Ok(b) => b,
        Err(e) => {
            warn!(%client, error = %e, "cannot encode a placement");
            return Ok(None);
        }
    };
    let m = Msg::Placement(SignedPlacement {
        sig: st.signer.sign(&body),
        body,
    });
    st.down.put(&top, &m)?;
    debug!(%client, chain = ?p.chain, "placement signed");
    Ok(Some((top, m)))
}

/// Signs anew the placement of every client whose home lies under one of
/// `relays` (they joined under another parent: the old chains are wrong).
pub(crate) fn replace_under(
    st: &HqState,
    relays: &[NodeName],
) -> Result<Vec<(NodeName, Msg)>, StoreError> {
    let parent_of = |r: &NodeName| super::jobs::parent_of(st, r);
    let mut out = Vec::new();
    for r in st.clients.scan() {
        let (Name(client), rec) = r?;
        let under = relays.contains(&rec.relay)
            || rules::ancestors(&rec.relay, parent_of)
                .iter()
                .any(|a| relays.contains(a));
        if under {
            out.extend(place(st, &client, &rec.relay)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn chains() {
        // r3 under r2 under r1 under hq; r8 under r9, which has no parent.
        let parent = |r: &NodeName| match r.as_str() {
            "r1" => Some(n("hq")),
            "r2" => Some(n("r1")),
            "r3" => Some(n("r2")),
            "r8" => Some(n("r9")),
            _ => None,
        };
        let names = |v: &[&str]| Some(v.iter().map(|s| n(s)).collect::<Vec<_>>());
        let cases = [
            ("r1", names(&["r1"])),
            ("r3", names(&["r3", "r2", "r1"])),
            ("r8", None),
            ("r7", None),
            ("hq", None),
        ];
        for (home, want) in cases {
            assert_eq!(chain_of(&n(home), &n("hq"), parent), want, "{home}");
        }
    }
}
