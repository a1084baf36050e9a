//! Applying the events a relay rolls up: leaf results, target sets, and the
//! tree's membership. Idempotent: a re-sent batch changes nothing.
//!
//! Read, plan, write: the leaves, jobs and clients the batch names are read
//! in one go (one statement per tree on PostgreSQL, see
//! `children::SubtreeFacts::prefetch`), the batch is checked against the
//! sender's subtree (`link::confine`, fed with those records); only what it
//! keeps is applied, and what it refuses is logged with the sender (`from`)
//! and never applied. Never sends anything itself: the `Forget`s a move
//! needs are queued and returned for the session to send once durable.

use super::children::{StoredLeaves, SubtreeFacts};
use super::output::OutputRecord;
use super::{ClientRecord, HqState, RelayRecord};
use crate::link::confine;
use crate::link::downstream::Outgoing;
use crate::proto::{Event, Msg, NodeName};
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
    // What the batch names is read once, before the check (one statement
    // per tree on PostgreSQL), and the check's reads are the ingest's.
    let facts = SubtreeFacts::new(st, from);
    facts.prefetch(events)?;
    let kept = {
        let c = confine::fold(&facts, &st.me, from, events.to_vec());
        for (seq, why) in &c.refused {
            warn!(%from, seq, reason = %why, "event refused: outside the sender's subtree");
        }
        c.kept
    };
    // Leaves and clients as stored before the batch (the counters move
    // from there); `pending` and `clients` hold what the batch made of them.
    let (mut stored, mut clients) = facts.into_stored();
    let now = crate::proto::now_ms();
    // Relays that joined under another parent: their clients' chains changed.
    let mut reparented: Vec<NodeName> = Vec::new();
    // Coalesce: the latest record per leaf within this batch.
    let mut pending: HashMap<JobClient, LeafRecord> = HashMap::new();
    // Outputs arrive with final results; the latest per leaf in this batch.
    let mut outputs: HashMap<JobClient, OutputRecord> = HashMap::new();
    for (_, ev) in &kept {
        match ev {
            Event::Leaf(u) => {
                let k = JobClient(u.job, u.client.clone());
                load(st, &mut stored, &k)?;
                if let Some(mut new) = rules::merge(current(&pending, &stored, &k), u) {
                    // Output lives in its own table: status never reads it.
                    if let Some(o) = super::output::split(&mut new) {
                        outputs.insert(k.clone(), o);
                    }
                    super::audit::ingest(st, u)?;
                    pending.insert(k, new);
                    // A sync that took: the audit's leaf loses what it synced.
                    if let Some((ak, al)) = super::sync::ingest(st, u, |ak| {
                        load(st, &mut stored, ak)?;
                        Ok(current(&pending, &stored, ak).cloned())
                    })? {
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
                    load(st, &mut stored, &k)?;
                    if let Some(new) =
                        rules::target(current(&pending, &stored, &k), home, *attempt, now)
                    {
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
                let old = match clients.get(client) {
                    Some(c) => c.clone(),
                    None => st.clients.get(&k)?,
                };
                if old
                    .as_ref()
                    .is_some_and(|o| o.relay == *relay && *at_ms != 0 && o.since_ms == *at_ms)
                {
                    // The join HQ holds, again (a re-send, or a relay that
                    // failed over announcing its subtree): nothing new; a
                    // moved chain was placed anew with the relay's join.
                    continue;
                }
                if let Some(old) = &old {
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
                // Presence and labels stay until its new home reports them.
                let (online, seen_ms, about) = old
                    .map(|o| (o.online, o.seen_ms, o.about))
                    .unwrap_or_default();
                let rec = ClientRecord {
                    relay: relay.clone(),
                    // The home's time of the join, which later joins are
                    // compared with (see `confine::join_is_stale`).
                    since_ms: if *at_ms == 0 { now } else { *at_ms },
                    online,
                    seen_ms,
                    about,
                };
                st.clients.put(&k, &rec)?;
                clients.insert(client.clone(), Some(rec));
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
            Event::Presence { relay, changes } => {
                // It reads and writes the clients itself: what this batch
                // knew of them is stale from here on.
                for p in changes {
                    clients.remove(&p.client);
                }
                super::clients::ingest_presence(st, relay, changes)?
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
    st.counters.moved_many(pending.iter().map(|(k, new)| {
        let was = stored.get(k).and_then(Option::as_ref);
        (
            k.0,
            was.map(|l| (l.state, &l.relay)),
            (new.state, &new.relay),
        )
    }));
    debug!(from = %from, events = events.len(), leaves = pending.len(), outputs = outputs.len(), "applied batch");
    // Outputs before the leaves whose results they belong to (a crash keeps
    // a prefix: a result never shows without its output).
    st.outputs
        .put_many(outputs.iter().map(|(k, v)| (k.clone(), v)))?;
    st.leaves
        .put_many(pending.iter().map(|(k, v)| (k.clone(), v)))?;
    // The circuit breaker and the canaries of the jobs where a leaf ended.
    let mut ended: Vec<crate::proto::JobId> = pending
        .iter()
        .filter(|(_, l)| l.state.is_final())
        .map(|(k, _)| k.0)
        .collect();
    ended.sort();
    ended.dedup();
    forgets.extend(super::rollout::check(st, &ended)?);
    Ok(forgets)
}

/// Reads leaf `k` into `stored` unless the batch already read it.
fn load(st: &HqState, stored: &mut StoredLeaves, k: &JobClient) -> Result<(), StoreError> {
    if !stored.contains_key(k) {
        let l = st.leaves.get(k)?;
        stored.insert(k.clone(), l);
    }
    Ok(())
}

/// Leaf `k` as this batch left it so far: its latest change, else as stored.
fn current<'m>(
    pending: &'m HashMap<JobClient, LeafRecord>,
    stored: &'m StoredLeaves,
    k: &JobClient,
) -> Option<&'m LeafRecord> {
    pending
        .get(k)
        .or_else(|| stored.get(k).and_then(Option::as_ref))
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

    /// r1 is a top-level relay; job 1 is at attempt 1 (a record of the
    /// same shape as `JobRecord`, of an older layout, written untyped).
    fn job_under_r1(st: &HqState) {
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
    }

    fn hq_on(store: Store, dir: &std::path::Path) -> HqState {
        let key = crate::tls::SigningKey::create(dir).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.join("depot")).unwrap();
        HqState::open(n("hq"), store, key, depot).unwrap()
    }

    #[tokio::test]
    async fn a_batch_applied_twice_or_out_of_order_leaves_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let st = hq_on(Store::open(dir.path()).unwrap(), dir.path());
        job_under_r1(&st);
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

    /// On PostgreSQL a batch costs a few round trips, not some per event:
    /// the check and the ingest read what the batch names in one go.
    #[tokio::test]
    async fn a_batch_is_read_in_a_few_round_trips_on_postgres() {
        use crate::store::pg::testdb::{server_bin, TestPostgres};
        if server_bin().is_none() {
            eprintln!("SKIPPED: no PostgreSQL server installed (/usr/lib/postgresql/*/bin)");
            return;
        }
        let pg = TestPostgres::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&pg.url("postgres"), "sha256:test").unwrap();
        let st = hq_on(store.clone(), dir.path());
        job_under_r1(&st);
        let clients: Vec<String> = (0..400).map(|i| format!("c{i:03}")).collect();
        let targets = Event::Targets {
            job: JobId(1),
            attempt: Attempt(1),
            reporter: n("r1"),
            leaves: clients.iter().map(|c| (n(c), n("r1"))).collect(),
            last: true,
        };
        let reads = store.reads();
        apply(&st, &n("r1"), &[(1, targets)]).unwrap();
        let on_targets = store.reads() - reads;
        let results: Vec<(u64, Event)> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 2, leaf(c, 1, LeafState::Succeeded)))
            .collect();
        let reads = store.reads();
        apply(&st, &n("r1"), &results).unwrap();
        let on_results = store.reads() - reads;
        store.durable().await.unwrap();
        assert!(
            on_targets <= 8 && on_results <= 8,
            "round trips: {on_targets} for 400 targets, {on_results} for 400 results"
        );
        let states: Vec<LeafState> = snapshot(&st).iter().map(|(_, l)| l.state).collect();
        assert_eq!(states, vec![LeafState::Succeeded; 400]);
    }
}
