//! Applying the events a relay rolls up: leaf results, target sets, and the
//! tree's membership. Idempotent: a re-sent batch changes nothing.
//!
//! Read, plan, write: the batch is first checked against the sender's
//! subtree (`link::confine`, fed with HQ's records); only what it keeps is
//! applied, and what it refuses is logged with the sender (`from`) and never
//! applied. Never sends anything itself: the `Forget`s a move needs are
//! queued and returned for the session to send once durable.

use super::children::SubtreeFacts;
use super::output::OutputRecord;
use super::{ClientRecord, HqState, RelayRecord};
use crate::link::confine;
use crate::link::downstream::Outgoing;
use crate::proto::{Event, LeafState, Msg, NodeName};
use crate::rules::{self, LeafRecord};
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::StoreError;
use std::collections::HashMap;
use tracing::{debug, warn};

/// Applies one batch from child `from` (not yet durable). Returns the
/// `Forget`s and `Placement`s to send once it is durable.
pub(crate) fn apply(
    st: &HqState,
    from: &NodeName,
    events: &[(u64, Event)],
) -> Result<Outgoing, StoreError> {
    let mut forgets = Vec::new();
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let kept = {
        let facts = SubtreeFacts::new(st, from);
        let c = confine::fold(&facts, &st.me, from, events.to_vec());
        for (seq, why) in &c.refused {
            warn!(%from, seq, reason = %why, "event refused: outside the sender's subtree");
        }
        c.kept
    };
    let now = crate::proto::now_ms();
    // Relays that joined under another parent: their clients' chains changed.
    let mut reparented: Vec<NodeName> = Vec::new();
    // Coalesce: the latest record per leaf within this batch, and the state
    // each leaf had before it (for the per-job counters).
    let mut pending: HashMap<JobClient, LeafRecord> = HashMap::new();
    let mut before: HashMap<JobClient, Option<(LeafState, NodeName)>> = HashMap::new();
    // Outputs arrive with final results; the latest per leaf in this batch.
    let mut outputs: HashMap<JobClient, OutputRecord> = HashMap::new();
    let lookup = |k: &JobClient,
                  pending: &HashMap<JobClient, LeafRecord>,
                  before: &mut HashMap<JobClient, Option<(LeafState, NodeName)>>| {
        match pending.get(k) {
            Some(r) => Ok(Some(r.clone())),
            None => {
                let r = st.leaves.get(k)?;
                before.insert(k.clone(), r.as_ref().map(|l| (l.state, l.relay.clone())));
                Ok::<_, StoreError>(r)
            }
        }
    };
    for (_, ev) in &kept {
        match ev {
            Event::Leaf(u) => {
                let k = JobClient(u.job, u.client.clone());
                let cur = lookup(&k, &pending, &mut before)?;
                if let Some(mut new) = rules::merge(cur.as_ref(), u) {
                    // Output lives in its own table: status never reads it.
                    if let Some(o) = super::output::split(&mut new) {
                        outputs.insert(k.clone(), o);
                    }
                    super::audit::ingest(st, u)?;
                    pending.insert(k, new);
                    // A sync that took: the audit's leaf loses what it synced.
                    if let Some((ak, al)) =
                        super::sync::ingest(st, u, |ak| lookup(ak, &pending, &mut before))?
                    {
                        pending.insert(ak, al);
                    }
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
                    if st.deny.contains(client) {
                        // Revoked: never a target again.
                        debug!(%client, job = %job, "revoked client left out of a target set");
                        continue;
                    }
                    let k = JobClient(*job, client.clone());
                    let cur = lookup(&k, &pending, &mut before)?;
                    if let Some(new) = rules::target(cur.as_ref(), home, *attempt, now) {
                        pending.insert(k, new);
                    }
                }
                if *last {
                    let jk = JobKey(*job);
                    if let Some(mut j) = st.jobs.get(&jk)? {
                        if j.awaiting.contains(reporter) {
                            j.awaiting.retain(|r| r != reporter);
                            st.jobs.put(&jk, &j)?;
                        }
                    }
                }
            }
            Event::ClientJoined {
                client,
                relay,
                at_ms,
            } => {
                if st.deny.contains(client) {
                    continue;
                }
                let k = Name(client.clone());
                let old = st.clients.get(&k)?;
                if old
                    .as_ref()
                    .is_some_and(|o| o.relay == *relay && *at_ms != 0 && o.since_ms == *at_ms)
                {
                    // The join HQ holds, again (a re-send, or a relay that
                    // failed over announcing its subtree): nothing new; a
                    // moved chain was placed anew with the relay's join.
                    continue;
                }
                if let Some(old) = old {
                    if old.relay != *relay {
                        warn!(%client, from = %old.relay, to = %relay, "client moved");
                        // The old branch forgets it, unless a relay below HQ
                        // (the branches' meeting point) already saw the move.
                        if let Ok(old_top) = super::jobs::top_child(st, &old.relay) {
                            if old_top != *from {
                                let m = Msg::Forget {
                                    client: client.clone(),
                                    moved_to: relay.clone(),
                                };
                                st.down.put(&old_top, &m)?;
                                forgets.push((old_top, m));
                            }
                        }
                    }
                }
                st.clients.put(
                    &k,
                    &ClientRecord {
                        relay: relay.clone(),
                        // The home's time of the join, which later joins are
                        // compared with (see `confine::join_is_stale`).
                        since_ms: if *at_ms == 0 { now } else { *at_ms },
                    },
                )?;
                // Signed where it lives now: what binds orders to it.
                forgets.extend(super::placement::place(st, client, relay)?);
            }
            Event::RelayJoined { relay, parent } => {
                let k = Name(relay.clone());
                if st.relays.get(&k)?.is_some_and(|old| old.parent != *parent) {
                    reparented.push(relay.clone());
                }
                st.relays.put(
                    &Name(relay.clone()),
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
                    &Name(relay.clone()),
                    &RelayRecord {
                        parent: parent.clone(),
                        connected: false,
                        last_seen_ms: *at_ms,
                    },
                )?;
            }
        }
    }
    if !reparented.is_empty() {
        forgets.extend(super::placement::replace_under(st, &reparented)?);
        forgets.extend(super::reroute::after_move(st, &reparented)?);
    }
    for (k, new) in &pending {
        let from = before.get(k).and_then(|b| b.as_ref());
        st.counters
            .moved(k.0, from.map(|(s, r)| (*s, r)), (new.state, &new.relay));
    }
    debug!(from = %from, events = events.len(), leaves = pending.len(), outputs = outputs.len(), "applied batch");
    // Outputs before the leaves whose results they belong to (a crash keeps
    // a prefix: a result never shows without its output).
    st.outputs
        .put_many(outputs.iter().map(|(k, v)| (k.clone(), v)))?;
    st.leaves
        .put_many(pending.iter().map(|(k, v)| (k.clone(), v)))?;
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
            out: None,
            audit: None,
        })
    }

    fn snapshot(st: &HqState) -> Vec<(JobClient, LeafRecord)> {
        st.leaves.scan().map(|r| r.unwrap()).collect()
    }

    #[tokio::test]
    async fn a_batch_applied_twice_or_out_of_order_leaves_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        // r1 is a top-level relay; job 1 is at attempt 1 (a record of the
        // same shape as `JobRecord`).
        st.relays
            .put(
                &Name(n("r1")),
                &RelayRecord {
                    parent: n("hq"),
                    connected: true,
                    last_seen_ms: 1,
                },
            )
            .unwrap();
        #[derive(serde::Serialize)]
        struct Job {
            job: JobId,
            action: crate::proto::Action,
            dest: Vec<NodeName>,
            created_at_ms: u64,
            expires_ms: Option<u64>,
            expires_at_ms: Option<u64>,
            attempt: Attempt,
            awaiting: Vec<NodeName>,
        }
        // A record of an older layout, written untyped.
        st.jobs
            .raw()
            .put(
                &crate::store::keys::job(JobId(1)),
                &Job {
                    job: JobId(1),
                    action: crate::proto::Action::Ping,
                    dest: vec![n("r1")],
                    created_at_ms: 1,
                    expires_ms: None,
                    expires_at_ms: None,
                    attempt: Attempt(1),
                    awaiting: vec![n("r1")],
                },
            )
            .unwrap();
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
