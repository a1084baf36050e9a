//! Applying the events a relay rolls up: leaf results, target sets, and the
//! tree's membership. Idempotent: a re-sent batch changes nothing.

use super::{ClientRecord, HqState, RelayRecord};
use crate::proto::{Event, JobId, LeafState, NodeName};
use crate::rules::{self, LeafRecord};
use crate::store::{keys, StoreError};
use std::collections::HashMap;
use tracing::{debug, warn};

/// Applies one batch from child `from` (not yet durable). Returns the
/// `Forget`s to send once it is durable: (child, client, new home).
pub(crate) fn apply(
    st: &HqState,
    from: &NodeName,
    events: &[(u64, Event)],
) -> Result<Vec<(NodeName, NodeName, NodeName)>, StoreError> {
    let mut forgets = Vec::new();
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let now = crate::proto::now_ms();
    let mut dirty: Vec<(Vec<u8>, LeafRecord)> = Vec::new();
    // Coalesce: the latest record per leaf within this batch, and the state
    // each leaf had before it (for the per-job counters).
    let mut pending: HashMap<Vec<u8>, LeafRecord> = HashMap::new();
    let mut before: HashMap<Vec<u8>, Option<LeafState>> = HashMap::new();
    let lookup = |k: &Vec<u8>,
                  pending: &HashMap<Vec<u8>, LeafRecord>,
                  before: &mut HashMap<Vec<u8>, Option<LeafState>>| {
        match pending.get(k) {
            Some(r) => Ok(Some(r.clone())),
            None => {
                let r = st.leaves.get::<LeafRecord>(k)?;
                before.insert(k.clone(), r.as_ref().map(|l| l.state));
                Ok::<_, StoreError>(r)
            }
        }
    };
    for (_, ev) in events {
        match ev {
            Event::Leaf(u) => {
                let k = keys::job_client(u.job, &u.client);
                let cur = lookup(&k, &pending, &mut before)?;
                if cur.is_none() {
                    // Targets always arrive before results (same path, in
                    // order): a result for an unknown leaf was never ordered.
                    warn!(from = %from, job = %u.job, client = %u.client, "result for a leaf that was not targeted; dropped");
                    continue;
                }
                if let Some(new) = rules::merge(cur.as_ref(), u) {
                    super::audit::ingest(st, u)?;
                    pending.insert(k, new);
                }
            }
            Event::Targets {
                job,
                attempt,
                reporter,
                leaves,
                last,
            } => {
                for (client, home) in leaves {
                    let k = keys::job_client(*job, client);
                    let cur = lookup(&k, &pending, &mut before)?;
                    if let Some(new) = rules::target(cur.as_ref(), home, *attempt, now) {
                        pending.insert(k, new);
                    }
                }
                if *last {
                    let jk = keys::job(*job);
                    if let Some(mut j) = st.jobs.get::<super::jobs::JobRecord>(&jk)? {
                        if j.awaiting.contains(reporter) {
                            j.awaiting.retain(|r| r != reporter);
                            st.jobs.put(&jk, &j)?;
                        }
                    }
                }
            }
            Event::ClientJoined { client, relay } => {
                let k = keys::name(client);
                if let Some(old) = st.clients.get::<ClientRecord>(&k)? {
                    if old.relay != *relay {
                        warn!(%client, from = %old.relay, to = %relay, "client moved");
                        // The old branch forgets it, unless a relay below HQ
                        // (the branches' meeting point) already saw the move.
                        if let Ok(old_top) = super::jobs::top_child(st, &old.relay) {
                            if old_top != *from {
                                st.forgetq.put(&keys::name_name(&old_top, client), relay)?;
                                forgets.push((old_top, client.clone(), relay.clone()));
                            }
                        }
                    }
                }
                st.clients.put(
                    &k,
                    &ClientRecord {
                        relay: relay.clone(),
                        since_ms: now,
                    },
                )?;
            }
            Event::RelayJoined { relay, parent } => {
                st.relays.put(
                    &keys::name(relay),
                    &RelayRecord {
                        parent: parent.clone(),
                        connected: true,
                        last_seen_ms: now,
                    },
                )?;
            }
            Event::Cache(c) => super::syncs::ingest_cache(st, c)?,
            Event::Inventory(i) => super::syncs::ingest_inventory(st, i)?,
            Event::RelayLeft {
                relay,
                parent,
                at_ms,
            } => {
                st.relays.put(
                    &keys::name(relay),
                    &RelayRecord {
                        parent: parent.clone(),
                        connected: false,
                        last_seen_ms: *at_ms,
                    },
                )?;
            }
        }
    }
    dirty.extend(pending);
    for (k, new) in &dirty {
        if let Some(job) = keys::read_u64(k).map(JobId) {
            st.counters
                .moved(job, before.get(k).copied().flatten(), new.state);
        }
    }
    debug!(from = %from, events = events.len(), leaves = dirty.len(), "applied batch");
    st.leaves
        .put_many(dirty.iter().map(|(k, v)| (k.clone(), v)))?;
    Ok(forgets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, JobId, LeafState, LeafUpdate};
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn leaf(client: &str, attempt: u32, state: LeafState) -> Event {
        Event::Leaf(LeafUpdate {
            job: JobId(1),
            attempt: Attempt(attempt),
            client: n(client),
            relay: n("r1"),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms: 5,
            audit: None,
        })
    }

    fn snapshot(st: &HqState) -> Vec<(Vec<u8>, LeafRecord)> {
        st.leaves
            .scan::<LeafRecord>(b"")
            .map(|r| r.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_applied_twice_or_out_of_order_leaves_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        let targets = Event::Targets {
            job: JobId(1),
            attempt: Attempt(1),
            reporter: n("r1"),
            leaves: vec![(n("c1"), n("r1")), (n("c2"), n("r1"))],
            last: true,
        };
        let batch: Vec<(u64, Event)> = vec![
            (1, targets),
            (2, leaf("c1", 1, LeafState::Running)),
            (3, leaf("c1", 1, LeafState::Succeeded)),
            (4, leaf("c2", 1, LeafState::Failed)),
            // Never targeted: dropped.
            (5, leaf("c9", 1, LeafState::Succeeded)),
        ];
        apply(&st, &n("r1"), &batch).unwrap();
        let once = snapshot(&st);
        assert_eq!(once.len(), 2);
        // The parent's ack was lost: the child sends the same batch again.
        apply(&st, &n("r1"), &batch).unwrap();
        assert_eq!(snapshot(&st), once);
        // A stale straggler (running, after succeeded) changes nothing either.
        apply(&st, &n("r1"), &[(6, leaf("c1", 1, LeafState::Running))]).unwrap();
        assert_eq!(snapshot(&st), once);
        let states: Vec<LeafState> = once.iter().map(|(_, l)| l.state).collect();
        assert_eq!(states, vec![LeafState::Succeeded, LeafState::Failed]);
    }
}
