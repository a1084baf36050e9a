//! An assignment from the parent: snapshot or route its targets, create home
//! leaves, queue the rest for child relays, then acknowledge (after a flush)
//! and deliver. `apply` only reads and writes the store; what it writes is
//! decided by `rules::plan_assignment`.

use super::{AttemptRecord, DirEntry, RelayState};
use crate::proto::{now_ms, Assignment, Msg, NodeName, Scope};
#[cfg(test)]
use crate::proto::{Event, LeafState};
use crate::rules::{self, AssignView, LeafRecord, Placement};
use crate::store::{keys, StoreError};
use std::collections::BTreeMap;
use tracing::{info, warn};

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

/// Applies an assignment (not yet durable): reads what the scope needs,
/// plans with [`rules::plan_assignment`], writes the plan. Idempotent: a
/// re-sent assignment creates nothing new.
pub(crate) fn apply(st: &RelayState, a: &Assignment) -> Result<Deliveries, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let ak = keys::job_attempt(a.job, a.attempt);
    if st.attempts.contains(&ak)? {
        return Ok(Deliveries {
            agents: vec![],
            relays: vec![],
        });
    }
    // Read.
    let place = |e: DirEntry| Placement {
        home: e.home,
        via: e.via,
    };
    let view = match &a.scope {
        Scope::AllLowerOf(list) if list.contains(&st.me) => AssignView::Snapshot(
            all_clients(st)?
                .into_iter()
                .map(|(c, e)| (c, place(e)))
                .collect(),
        ),
        Scope::AllLowerOf(list) => AssignView::Relays(
            list.iter()
                .map(|r| {
                    let hop = st.dir_relays.get::<NodeName>(&keys::name(r)).ok().flatten();
                    (r.clone(), hop)
                })
                .collect(),
        ),
        Scope::Targets(list) => AssignView::Clients(
            list.iter()
                .map(|c| {
                    let e = st.dir_clients.get::<DirEntry>(&keys::name(c))?;
                    Ok((c.clone(), e.map(place)))
                })
                .collect::<Result<_, StoreError>>()?,
        ),
    };
    let mut leaves = BTreeMap::new();
    for c in view.home_clients(&st.me) {
        if let Some(rec) = st.leaves.get::<LeafRecord>(&keys::job_client(a.job, c))? {
            leaves.insert(c.clone(), rec);
        }
    }
    // Plan.
    let plan = rules::plan_assignment(&st.me, a, view, &leaves, now_ms());
    // Write, the attempt record last: once it is there, so is all it implies.
    if !plan.report.is_empty() {
        st.outbox.push(&plan.report)?;
        info!(job = %a.job, attempt = %a.attempt, targets = plan.reported(), "snapshot of lower clients");
    }
    for r in &plan.unknown_relays {
        warn!(job = %a.job, relay = %r, "destination relay not in this subtree");
    }
    for (client, _) in &plan.create {
        st.client_leaves
            .put(&keys::name_job(client, a.job), &a.attempt.0)?;
    }
    st.leaves.put_many(
        plan.create
            .iter()
            .map(|(c, rec)| (keys::job_client(a.job, c), rec)),
    )?;
    if !plan.lost.is_empty() {
        st.outbox.push(&plan.lost)?;
    }
    for (child, fwd) in &plan.relays {
        st.down.put(child, &Msg::Assign(fwd.clone()))?;
    }
    super::expire::index(st, a.job, a.attempt, a.expires_at_ms)?;
    st.attempts.put(
        &ak,
        &AttemptRecord {
            action: a.action.clone(),
            expires_at_ms: a.expires_at_ms,
            swept: false,
            orders: a.orders.clone(),
        },
    )?;
    Ok(Deliveries {
        agents: plan.agents,
        relays: plan.relays,
    })
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
