//! A relay that moved to another parent (failover between `--parent`s)
//! tells it first what lies below: every relay of its subtree (with its
//! parent, in an order where each parent comes before its children) and
//! every client (home, and when it joined there). The new parent learns
//! them as it learns any child's joins (checked against this relay's
//! subtree, forwarded up), so its routing, snapshots and confinement see
//! the moved branch before this relay's outbox backlog arrives (a result
//! from a relay below that the parent did not know would be refused).
//!
//! The announcement is sent outside the outbox, before the pump starts,
//! as batches numbered [`crate::link::OUT_OF_OUTBOX`]; once the
//! parent acknowledged every one, its name is kept as the parent that
//! heard this subtree. A relay's first parent ever is recorded without an
//! announcement (it learned the subtree as it grew). A cut announcement is
//! made again on the next session.
//!
//! Plans from the directory (`plan` is pure); never sends.

use super::RelayState;
use crate::proto::{Event, NodeName};
use crate::store::keys::Name;
use crate::store::StoreError;
use std::collections::{BTreeMap, BTreeSet};

/// Table keeping the parent that last heard this subtree (key [`HEARD`]).
const TABLE: &str = "announced";
const HEARD: &[u8] = b"parent";

/// The batches to announce to `parent`: none when it is the parent that
/// last heard this subtree, or the first parent ever (then recorded).
pub(crate) fn needed(st: &RelayState, parent: &NodeName) -> Result<Vec<Vec<Event>>, StoreError> {
    let t = st.store.table(TABLE)?;
    match t.get::<NodeName>(HEARD)? {
        Some(p) if p == *parent => return Ok(Vec::new()),
        Some(_) => {}
        None => {
            t.put(HEARD, parent)?;
            return Ok(Vec::new());
        }
    }
    let mut relays = BTreeMap::new();
    for r in st.dir_relays.scan() {
        let (Name(relay), via) = r?;
        let parent = if relay == via {
            Some(st.me.clone())
        } else {
            st.dir_parents.get(&Name(relay.clone()))?
        };
        relays.insert(relay, parent);
    }
    let mut left = BTreeMap::new();
    for r in st.relays_left.scan() {
        let (Name(relay), at) = r?;
        left.insert(relay, at);
    }
    let mut clients = Vec::new();
    for r in st.dir_clients.scan() {
        let (Name(client), e) = r?;
        let since = st.dir_since.get(&Name(client.clone()))?.unwrap_or(0);
        clients.push((client, e.home, since));
    }
    let events = plan(&st.me, &relays, &left, clients);
    tracing::info!(%parent, relays = relays.len(), events = events.len(), "announcing the subtree to a new parent");
    Ok(events
        .chunks(crate::link::BATCH)
        .map(|c| c.to_vec())
        .collect())
}

/// `parent` acknowledged the whole announcement (durable with the next flush).
pub(crate) fn heard(st: &RelayState, parent: &NodeName) -> Result<(), StoreError> {
    st.store.table(TABLE)?.put(HEARD, parent)
}

/// The events that describe this relay's subtree: relays (each after its
/// parent; one whose parent is unknown or unreachable from `me` is left
/// out), the departures of relays that left, then clients.
pub(crate) fn plan(
    me: &NodeName,
    relays: &BTreeMap<NodeName, Option<NodeName>>,
    left: &BTreeMap<NodeName, u64>,
    clients: Vec<(NodeName, NodeName, u64)>,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut placed: BTreeSet<NodeName> = BTreeSet::new();
    placed.insert(me.clone());
    let mut order = Vec::new();
    loop {
        let before = placed.len();
        for (relay, parent) in relays {
            let Some(parent) = parent else { continue };
            if !placed.contains(relay) && placed.contains(parent) {
                placed.insert(relay.clone());
                order.push((relay.clone(), parent.clone()));
            }
        }
        if placed.len() == before {
            break;
        }
    }
    for (relay, parent) in &order {
        out.push(Event::RelayJoined {
            relay: relay.clone(),
            parent: parent.clone(),
        });
    }
    for (relay, parent) in &order {
        if let Some(at) = left.get(relay) {
            out.push(Event::RelayLeft {
                relay: relay.clone(),
                parent: parent.clone(),
                at_ms: *at,
            });
        }
    }
    for (client, home, since) in clients {
        if placed.contains(&home) {
            out.push(Event::ClientJoined {
                client,
                relay: home,
                at_ms: since,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn parents_come_before_their_children_and_unknown_branches_are_left_out() {
        // r3 (me) <- r4 <- r5; r6 with no known parent; r7 under r6.
        let relays: BTreeMap<NodeName, Option<NodeName>> = [
            ("r5", Some("r4")),
            ("r4", Some("r3")),
            ("r6", None),
            ("r7", Some("r6")),
        ]
        .into_iter()
        .map(|(r, p)| (n(r), p.map(n)))
        .collect();
        let left = [(n("r5"), 9u64)].into_iter().collect();
        let clients = vec![
            (n("c1"), n("r3"), 5),
            (n("c5"), n("r5"), 6),
            (n("c7"), n("r7"), 7),
        ];
        let got = plan(&n("r3"), &relays, &left, clients);
        let want = vec![
            Event::RelayJoined {
                relay: n("r4"),
                parent: n("r3"),
            },
            Event::RelayJoined {
                relay: n("r5"),
                parent: n("r4"),
            },
            Event::RelayLeft {
                relay: n("r5"),
                parent: n("r4"),
                at_ms: 9,
            },
            Event::ClientJoined {
                client: n("c1"),
                relay: n("r3"),
                at_ms: 5,
            },
            Event::ClientJoined {
                client: n("c5"),
                relay: n("r5"),
                at_ms: 6,
            },
        ];
        assert_eq!(got, want);
    }
}
