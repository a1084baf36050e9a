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
    st.attempts.put(
        &ak,
        &AttemptRecord {
            action: a.action.clone(),
            expires_at_ms: a.expires_at_ms,
            swept: false,
        },
    )?;
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
    Ok(out)
}

/// The assignment an agent receives for one of its leaves.
pub(crate) fn for_agent(a: &Assignment, client: &NodeName) -> Assignment {
    Assignment {
        scope: Scope::Targets(vec![client.clone()]),
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
            crate::link::send_soon(&tx, Msg::Assign(for_agent(a, &client)));
        }
    }
    for (child, fwd) in d.relays {
        if let Some(tx) = st.child(&child) {
            crate::link::send_soon(&tx, Msg::Assign(fwd));
        }
    }
}
