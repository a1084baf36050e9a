//! A relay's home clients, the agents that dial it: the leaves still to
//! deliver to one when it connects, and what it reports of itself (its own
//! results and inventory; anything it says of another client is refused).
//! Never speaks for a child relay's clients.

use super::assign::for_agent;
use super::RelayState;
use crate::proto::{now_ms, Assignment, Event, LeafState, LeafUpdate, NodeName};
use crate::rules;
use crate::store::keys::{JobAttempt, JobClient, NameJob, NamePrefix};
use crate::store::StoreError;
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

/// The pending leaves of `client`, as assignments to send it (with its
/// placement; those that need one are held while there is none).
pub(crate) fn pending_for(
    st: &RelayState,
    client: &NodeName,
) -> Result<Vec<Assignment>, StoreError> {
    let now = now_ms();
    let mut out = Vec::new();
    for r in st.client_leaves.scan_prefix(&NamePrefix(client.clone())) {
        let (NameJob(_, job), attempt) = r?;
        let Some(leaf) = st.leaves.get(&JobClient(job, client.clone()))? else {
            continue;
        };
        if leaf.state != LeafState::Pending || leaf.attempt.0 != attempt {
            continue;
        }
        let Some(ar) = st.attempts.get(&JobAttempt(job, leaf.attempt))? else {
            continue;
        };
        if ar.expires_at_ms.is_some_and(|e| e <= now) {
            continue;
        }
        let a = for_agent(
            &Assignment {
                job,
                attempt: leaf.attempt,
                action: ar.action,
                expires_at_ms: ar.expires_at_ms,
                scope: crate::proto::Scope::Targets(vec![]),
                orders: ar.orders,
                placement: None,
                hq_now_ms: None,
            },
            &st.me,
            client,
        );
        out.extend(super::placement::attach(st, client, a)?);
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
        let k = JobClient(u.job, client.clone());
        let Some(cur) = st.leaves.get(&k)? else {
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
        if let Some(mut new) = rules::merge(Some(&cur), &u) {
            // The output goes up in the event (kept in the outbox until the
            // parent has it durably); the relay's own record stays small.
            new.out = None;
            new.output = None;
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
            st.client_leaves.remove(&NameJob(client.clone(), job))?;
        }
    }
    Ok(())
}
