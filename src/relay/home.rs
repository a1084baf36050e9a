//! A relay's home clients, the agents that dial it: the leaves still to
//! deliver to one when it connects, and what it reports of itself (its own
//! results and inventory; anything it says of another client is refused).
//! Never speaks for a child relay's clients.

use super::assign::for_agent;
use super::{AttemptRecord, RelayState};
use crate::proto::{now_ms, Assignment, Event, JobId, LeafState, LeafUpdate, NodeName};
use crate::rules::{self, LeafRecord};
use crate::store::{keys, StoreError};
use tracing::warn;

/// An agent's own results and inventory (not yet durable); anything else it
/// says is dropped.
pub(crate) fn from_agent(
    st: &RelayState,
    client: &NodeName,
    events: &[(u64, Event)],
) -> Result<(), StoreError> {
    let mut ups = Vec::with_capacity(events.len());
    let mut inventories = Vec::new();
    for (_, ev) in events {
        match ev {
            Event::Leaf(u) => ups.push(u.clone()),
            Event::Inventory(i) if i.client == *client => {
                let mut i = i.clone();
                i.relay = st.me.clone();
                inventories.push(Event::Inventory(i));
            }
            other => {
                warn!(from = %client, event = ?other, "agent sent an event about someone else; refused")
            }
        }
    }
    if !inventories.is_empty() {
        st.outbox.push(&inventories)?;
    }
    apply_home(st, client, &ups)
}

/// The pending leaves of `client`, as assignments to send it.
pub(crate) fn pending_for(
    st: &RelayState,
    client: &NodeName,
) -> Result<Vec<Assignment>, StoreError> {
    let now = now_ms();
    let mut out = Vec::new();
    for r in st.client_leaves.scan::<u32>(&keys::name_prefix(client)) {
        let (k, attempt) = r?;
        let Some(job) = k
            .get(client.as_str().len() + 1..)
            .and_then(keys::read_u64)
            .map(JobId)
        else {
            continue;
        };
        let Some(leaf) = st
            .leaves
            .get::<LeafRecord>(&keys::job_client(job, client))?
        else {
            continue;
        };
        if leaf.state != LeafState::Pending || leaf.attempt.0 != attempt {
            continue;
        }
        let Some(ar) = st
            .attempts
            .get::<AttemptRecord>(&keys::job_attempt(job, leaf.attempt))?
        else {
            continue;
        };
        if ar.expires_at_ms.is_some_and(|e| e <= now) {
            continue;
        }
        out.push(for_agent(
            &Assignment {
                job,
                attempt: leaf.attempt,
                action: ar.action,
                expires_at_ms: ar.expires_at_ms,
                scope: crate::proto::Scope::Targets(vec![]),
                orders: ar.orders,
            },
            &st.me,
            client,
        ));
    }
    Ok(out)
}

/// Merges an agent's own updates into its home leaves and queues the changes
/// upward (not yet durable). Updates for other clients or for attempts this
/// relay never gave it are dropped.
pub(crate) fn apply_home(
    st: &RelayState,
    client: &NodeName,
    ups: &[LeafUpdate],
) -> Result<(), StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let mut events = Vec::new();
    let mut writes = Vec::new();
    for u in ups {
        if u.client != *client {
            warn!(%client, claimed = %u.client, "agent reported another client's leaf; dropped");
            continue;
        }
        let k = keys::job_client(u.job, client);
        let Some(cur) = st.leaves.get::<LeafRecord>(&k)? else {
            // Delivered by the relay this client lived under before it moved:
            // pass the result on (HQ merges it), keep nothing here.
            let mut u = u.clone();
            u.relay = st.me.clone();
            events.push(Event::Leaf(u));
            continue;
        };
        if cur.attempt != u.attempt {
            continue;
        }
        let mut u = u.clone();
        u.relay = st.me.clone();
        if let Some(new) = rules::merge(Some(&cur), &u) {
            writes.push((k, new, u.job));
            events.push(Event::Leaf(u));
        }
    }
    // Events before the states they report: after a crash writes survive as
    // a prefix, and a state without its event would never be reported (the
    // agent's re-sent update would merge as nothing new).
    st.outbox.push(&events)?;
    for (k, new, job) in writes {
        st.leaves.put(&k, &new)?;
        if new.state.is_final() {
            // Nothing left to deliver: keep the per-client index small.
            st.client_leaves.remove(&keys::name_job(client, job))?;
        }
    }
    Ok(())
}
