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
use std::collections::HashMap;
use tracing::warn;

/// An agent's own results and inventory (not yet durable); anything else it
/// says is dropped. Returns the gated jobs where a leaf ended.
pub(crate) fn from_agent(
    st: &RelayState,
    client: &NodeName,
    events: &[(u64, Event)],
) -> Result<Vec<crate::proto::JobId>, StoreError> {
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
/// placement; those that need one are held while there is none). A gated
/// job's leaf is sent only if its rollout lets it start now.
pub(crate) fn pending_for(
    st: &RelayState,
    client: &NodeName,
) -> Result<Vec<Assignment>, StoreError> {
    let mut out = Vec::new();
    for r in st.client_leaves.scan_prefix(&NamePrefix(client.clone())) {
        let (NameJob(_, job), attempt) = r?;
        let Some(leaf) = st.results.leaf(&JobClient(job, client.clone()))? else {
            continue;
        };
        if leaf.state != LeafState::Pending || leaf.attempt.0 != attempt {
            continue;
        }
        if !super::rollout::admit_one(st, job, client)? {
            continue;
        }
        out.extend(assignment_for(st, job, client)?);
    }
    Ok(out)
}

/// The assignment to send `client` for its pending home leaf of `job`, with
/// its placement (`None`: no such leaf, past its expiry, or held until HQ's
/// placement of the agent arrives).
pub(crate) fn assignment_for(
    st: &RelayState,
    job: crate::proto::JobId,
    client: &NodeName,
) -> Result<Option<Assignment>, StoreError> {
    let Some(leaf) = st.results.leaf(&JobClient(job, client.clone()))? else {
        return Ok(None);
    };
    if leaf.state != LeafState::Pending {
        return Ok(None);
    }
    let Some(ar) = st.attempts.get(&JobAttempt(job, leaf.attempt))? else {
        return Ok(None);
    };
    if ar.expires_at_ms.is_some_and(|e| e <= now_ms()) {
        return Ok(None);
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
            policy: None,
        },
        &st.me,
        client,
    );
    super::placement::attach(st, client, a)
}

/// Merges an agent's own updates into its home leaves and gathers the
/// changes and their events for the next flush (`results.rs`: written with
/// the round that makes them durable). Updates for other clients or for
/// attempts this relay never gave it are dropped. Returns the gated jobs
/// where a leaf ended (room for the next ones to start).
pub(crate) fn apply_home(
    st: &RelayState,
    client: &NodeName,
    ups: &[LeafUpdate],
) -> Result<Vec<crate::proto::JobId>, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let mut events = Vec::new();
    // One record per leaf, however many updates of it the batch holds (a
    // command's `running` and its result): each merges into the state the
    // ones before it left (gathered ones included).
    let mut writes: Vec<(JobClient, crate::rules::LeafRecord)> = Vec::new();
    let mut at: HashMap<JobClient, usize> = HashMap::new();
    let mut ended = Vec::new();
    for u in ups {
        if u.client != *client {
            warn!(%client, claimed = %u.client, "agent reported another client's leaf; dropped");
            continue;
        }
        let k = JobClient(u.job, client.clone());
        let cur = match at.get(&k) {
            Some(&i) => Some(writes[i].1.clone()),
            None => st.results.leaf(&k)?,
        };
        let Some(cur) = cur else {
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
            if super::rollout::moved(st, u.job, client, new.state) && !ended.contains(&u.job) {
                ended.push(u.job);
            }
            match at.get(&k) {
                Some(&i) => writes[i].1 = new,
                None => {
                    at.insert(k.clone(), writes.len());
                    writes.push((k, new));
                }
            }
            events.push(Event::Leaf(u));
        }
    }
    st.results.add(events, writes);
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Attempt, JobId, Scope};
    use crate::relay::DirEntry;
    use crate::rules::LeafRecord;
    use crate::store::keys::Name;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn update(state: LeafState) -> LeafUpdate {
        LeafUpdate {
            job: JobId(1),
            attempt: Attempt(1),
            client: n("c1"),
            relay: n("c1"),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms: 1,
            out: None,
            audit: None,
        }
    }

    #[tokio::test]
    async fn updates_of_one_leaf_in_a_batch_merge_in_turn_and_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let me = n("r1");
        let st = RelayState::open(
            me.clone(),
            Store::open(dir.path()).unwrap(),
            crate::relay::cache::for_tests(dir.path()),
        )
        .unwrap();
        let home = DirEntry {
            home: me.clone(),
            via: me.clone(),
        };
        st.dir_clients.put(&Name(n("c1")), &home).unwrap();
        let a = Assignment {
            job: JobId(1),
            attempt: Attempt(1),
            action: Action::Ping,
            expires_at_ms: None,
            scope: Scope::AllLowerOf(vec![me.clone()]),
            orders: vec![],
            placement: None,
            hq_now_ms: None,
            policy: None,
        };
        crate::relay::assign::apply(&st, &a).unwrap();
        let k = JobClient(JobId(1), n("c1"));
        // A result, then a late `running` of the same leaf: the result stays
        // (each update merges into what the one before it left).
        let ups = [update(LeafState::Succeeded), update(LeafState::Running)];
        apply_home(&st, &n("c1"), &ups).unwrap();
        // Gathered until the flush round writes it.
        assert_eq!(
            st.results.leaf(&k).unwrap().unwrap().state,
            LeafState::Succeeded
        );
        let leaf_events = || {
            st.outbox
                .read_after(0, 100)
                .unwrap()
                .into_iter()
                .filter(|(_, e)| matches!(e, Event::Leaf(_)))
                .count()
        };
        assert_eq!(leaf_events(), 0);
        st.store.durable().await.unwrap();
        let l: LeafRecord = st.leaves.get(&k).unwrap().unwrap();
        assert_eq!(l.state, LeafState::Succeeded);
        // Only the result went up; the final leaf left the per-client index.
        let sent: Vec<LeafState> = st
            .outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) => Some(u.state),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![LeafState::Succeeded]);
        assert!(pending_for(&st, &n("c1")).unwrap().is_empty());
    }
}
