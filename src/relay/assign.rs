//! An assignment from the parent: snapshot or route its targets, create home
//! leaves, queue the rest for child relays, then acknowledge (after a flush)
//! and deliver.

use super::{AttemptRecord, DirEntry, RelayState};
use crate::proto::{now_ms, Assignment, Event, LeafState, LeafUpdate, Msg, NodeName, Scope};
use crate::rules::{self, LeafRecord};
use crate::store::{keys, StoreError};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Target-set chunk size in `Targets` events.
const TARGETS_CHUNK: usize = 4096;

/// What to deliver once the assignment is durable.
pub(crate) struct Deliveries {
    /// Home agents to send the assignment to.
    pub agents: Vec<NodeName>,
    /// Child relays and what to send each.
    pub relays: Vec<(NodeName, Assignment)>,
}

/// Every client in the subtree, with its directory entry.
fn all_clients(st: &RelayState) -> Result<Vec<(NodeName, DirEntry)>, StoreError> {
    let mut out = Vec::new();
    for r in st.dir_clients.scan::<DirEntry>(b"") {
        let (k, e) = r?;
        if let Some(n) = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| NodeName::new(s).ok())
        {
            out.push((n, e));
        }
    }
    Ok(out)
}

/// Applies an assignment (not yet durable). Idempotent: a re-sent assignment
/// creates nothing new.
pub(crate) fn apply(st: &RelayState, a: &Assignment) -> Result<Deliveries, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let ak = keys::job_attempt(a.job, a.attempt);
    let mut out = Deliveries {
        agents: vec![],
        relays: vec![],
    };
    if st.attempts.contains(&ak)? {
        return Ok(out);
    }
    // Written last (after a crash, writes survive as a prefix): once the
    // attempt is recorded, everything it implies is too.
    let record = || {
        super::expire::index(st, a.job, a.attempt, a.expires_at_ms)?;
        st.attempts.put(
            &ak,
            &AttemptRecord {
                action: a.action.clone(),
                expires_at_ms: a.expires_at_ms,
                swept: false,
                orders: a.orders.clone(),
            },
        )
    };
    // Which clients this relay is responsible for, with their entries.
    let targets: Vec<(NodeName, Option<DirEntry>)> = match &a.scope {
        Scope::AllLowerOf(list) if list.contains(&st.me) => {
            let snap = all_clients(st)?;
            let mut events = Vec::new();
            let pairs: Vec<(NodeName, NodeName)> = snap
                .iter()
                .map(|(c, e)| (c.clone(), e.home.clone()))
                .collect();
            let chunks: Vec<_> = pairs.chunks(TARGETS_CHUNK).collect();
            let n = chunks.len().max(1);
            for i in 0..n {
                events.push(Event::Targets {
                    job: a.job,
                    attempt: a.attempt,
                    reporter: st.me.clone(),
                    leaves: chunks.get(i).map(|c| c.to_vec()).unwrap_or_default(),
                    last: i + 1 == n,
                });
            }
            st.outbox.push(&events)?;
            info!(job = %a.job, attempt = %a.attempt, targets = snap.len(), "snapshot of lower clients");
            snap.into_iter().map(|(c, e)| (c, Some(e))).collect()
        }
        Scope::AllLowerOf(list) => {
            // Route each named relay towards the child whose subtree holds it.
            let (by_hop, lost) = rules::split_by_hop(list.iter().cloned(), |r| {
                st.dir_relays.get::<NodeName>(&keys::name(r)).ok().flatten()
            });
            for r in lost {
                warn!(job = %a.job, relay = %r, "destination relay not in this subtree");
            }
            for (child, sub) in by_hop {
                let fwd = Assignment {
                    scope: Scope::AllLowerOf(sub),
                    ..a.clone()
                };
                st.downq
                    .put(&keys::name_job_attempt(&child, a.job, a.attempt), &fwd)?;
                out.relays.push((child, fwd));
            }
            record()?;
            return Ok(out);
        }
        Scope::Targets(list) => list
            .iter()
            .map(|c| {
                let e = st.dir_clients.get::<DirEntry>(&keys::name(c))?;
                Ok((c.clone(), e))
            })
            .collect::<Result<_, StoreError>>()?,
    };
    let now = now_ms();
    let mut to_child: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut fresh = Vec::new();
    for (client, entry) in targets {
        match entry {
            Some(e) if e.via == st.me => {
                let k = keys::job_client(a.job, &client);
                let cur = st.leaves.get::<LeafRecord>(&k)?;
                if let Some(rec) = rules::target(cur.as_ref(), &st.me, a.attempt, now) {
                    fresh.push((k, rec));
                    st.client_leaves
                        .put(&keys::name_job(&client, a.job), &a.attempt.0)?;
                    out.agents.push(client);
                } else if cur
                    .as_ref()
                    .is_some_and(|c| c.attempt == a.attempt && c.state == LeafState::Pending)
                {
                    // Left by an earlier apply cut short by a crash (the
                    // attempt record is written last): still to deliver.
                    out.agents.push(client);
                }
            }
            Some(e) => to_child.entry(e.via).or_default().push(client),
            None => lost.push(client),
        }
    }
    st.leaves
        .put_many(fresh.iter().map(|(k, v)| (k.clone(), v)))?;
    if !lost.is_empty() {
        // A client that left this subtree: account for it rather than drop it.
        let events: Vec<Event> = lost
            .into_iter()
            .map(|client| {
                Event::Leaf(LeafUpdate {
                    job: a.job,
                    attempt: a.attempt,
                    client: client.clone(),
                    relay: st.me.clone(),
                    state: LeafState::Canceled,
                    exit_code: None,
                    reason: Some(format!("client {client} is not under relay {}", st.me)),
                    output: None,
                    at_ms: now,
                    audit: None,
                })
            })
            .collect();
        st.outbox.push(&events)?;
    }
    for (child, list) in to_child {
        let fwd = Assignment {
            scope: Scope::Targets(list),
            ..a.clone()
        };
        st.downq
            .put(&keys::name_job_attempt(&child, a.job, a.attempt), &fwd)?;
        out.relays.push((child, fwd));
    }
    record()?;
    Ok(out)
}

/// The assignment an agent of relay `me` receives for one of its leaves,
/// with the orders that can cover it (an original attempt's, or the rerun
/// order for `me`'s leaves).
pub(crate) fn for_agent(a: &Assignment, me: &NodeName, client: &NodeName) -> Assignment {
    Assignment {
        scope: Scope::Targets(vec![client.clone()]),
        orders: a
            .orders
            .iter()
            .filter(|o| o.relay.as_ref().is_none_or(|r| r == me))
            .cloned()
            .collect(),
        ..a.clone()
    }
}

/// Sends what `apply` decided to whoever is connected now; the rest is sent
/// when they connect.
pub(crate) fn deliver(st: &RelayState, a: &Assignment, d: Deliveries) {
    let now = now_ms();
    if a.expires_at_ms.is_some_and(|e| e <= now) {
        // Past expiry: the sweeper expires home leaves; child relays still get
        // it so that they account for their own.
        for (child, fwd) in d.relays {
            if let Some(tx) = st.child(&child) {
                crate::link::send_soon(&tx, Msg::Assign(fwd));
            }
        }
        return;
    }
    for client in d.agents {
        if let Some(tx) = st.child(&client) {
            crate::link::send_soon(&tx, Msg::Assign(for_agent(a, &st.me, &client)));
        }
    }
    for (child, fwd) in d.relays {
        if let Some(tx) = st.child(&child) {
            crate::link::send_soon(&tx, Msg::Assign(fwd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Attempt, JobId};
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn relay(dir: &std::path::Path) -> RelayState {
        let st = RelayState::open(
            n("r1"),
            Store::open(dir).unwrap(),
            crate::relay::cache::for_tests(dir),
        )
        .unwrap();
        let home = DirEntry {
            home: n("r1"),
            via: n("r1"),
        };
        let below = DirEntry {
            home: n("r2"),
            via: n("r2"),
        };
        let deeper = DirEntry {
            home: n("r4"),
            via: n("r2"),
        };
        for (c, e) in [
            ("c1", &home),
            ("c2", &home),
            ("c3", &below),
            ("c4", &deeper),
        ] {
            st.dir_clients.put(&keys::name(&n(c)), e).unwrap();
        }
        st.dir_relays.put(&keys::name(&n("r2")), &n("r2")).unwrap();
        st.dir_relays.put(&keys::name(&n("r4")), &n("r2")).unwrap();
        st
    }

    fn assignment(attempt: u32, scope: Scope) -> Assignment {
        Assignment {
            job: JobId(7),
            attempt: Attempt(attempt),
            action: Action::Ping,
            expires_at_ms: None,
            scope,
            orders: vec![],
        }
    }

    fn targets_reported(st: &RelayState) -> Vec<(String, String)> {
        st.outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .flat_map(|(_, e)| match e {
                Event::Targets { leaves, .. } => leaves,
                _ => vec![],
            })
            .map(|(c, h)| (c.to_string(), h.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn snapshot_covers_every_lower_client_and_splits_by_hop() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r1")]))).unwrap();
        assert_eq!(d.agents, vec![n("c1"), n("c2")]);
        assert_eq!(d.relays.len(), 1);
        assert_eq!(d.relays[0].0, n("r2"));
        assert_eq!(d.relays[0].1.scope, Scope::Targets(vec![n("c3"), n("c4")]));
        let reported = targets_reported(&st);
        assert_eq!(reported.len(), 4);
        assert!(reported.contains(&("c4".into(), "r4".into())));
        // The same assignment again creates nothing and reports nothing new.
        let again = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r1")]))).unwrap();
        assert!(again.agents.is_empty() && again.relays.is_empty());
        assert_eq!(targets_reported(&st).len(), 4);
    }

    #[tokio::test]
    async fn a_named_lower_relay_is_routed_not_snapshotted_here() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r4")]))).unwrap();
        assert!(d.agents.is_empty());
        assert_eq!(d.relays[0].0, n("r2"));
        assert_eq!(d.relays[0].1.scope, Scope::AllLowerOf(vec![n("r4")]));
        assert!(targets_reported(&st).is_empty());
    }

    #[tokio::test]
    async fn explicit_targets_route_and_unknown_clients_are_accounted_for() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(
            &st,
            &assignment(2, Scope::Targets(vec![n("c2"), n("c4"), n("gone")])),
        )
        .unwrap();
        assert_eq!(d.agents, vec![n("c2")]);
        assert_eq!(d.relays[0].1.scope, Scope::Targets(vec![n("c4")]));
        let canceled: Vec<_> = st
            .outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) if u.state == LeafState::Canceled => Some(u.client.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(canceled, vec!["gone"]);
    }
}
