//! HQ's side of its relays' sessions, as the one downstream session in
//! `link` runs it: what HQ records as a top-level relay comes and goes, what
//! it sends on connect (the deny list, package syncs), and what a relay's
//! subtree is ([`SubtreeFacts`]) for the check in front of `ingest::apply`.
//!
//! Does not decide what an event does; `ingest` does.

use super::{ingest, syncs, ClientRecord, HqState, RelayRecord};
use crate::link::confine::Facts;
use crate::link::downstream::{Downstream, Outgoing};
use crate::link::queue::DownQueue;
use crate::link::SessionTx;
use crate::proto::{now_ms, Attempt, Event, JobId, Msg, NodeName};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::{Store, StoreError};
use crate::tls::PeerIdentity;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use tracing::warn;

impl Downstream for HqState {
    fn store(&self) -> &Store {
        &self.store
    }
    fn down(&self) -> &DownQueue {
        &self.down
    }
    fn children(&self) -> &Mutex<HashMap<NodeName, SessionTx>> {
        &self.children
    }
    fn joined(
        &self,
        child: &PeerIdentity,
        _about: Option<&crate::proto::About>,
    ) -> Result<(), StoreError> {
        set_relay(self, &child.name, true)
    }
    fn left(&self, child: &PeerIdentity) -> Result<(), StoreError> {
        set_relay(self, &child.name, false)?;
        self.bump();
        Ok(())
    }
    fn greeting(&self, _child: &PeerIdentity) -> Result<Vec<Msg>, StoreError> {
        if let Err(e) = syncs::resend_syncs(self) {
            warn!(error = %e, "cannot re-send package syncs");
        }
        Ok(vec![Msg::Deny {
            names: self.deny.names(),
        }])
    }
    fn apply(&self, child: &PeerIdentity, events: &[(u64, Event)]) -> Result<Outgoing, StoreError> {
        ingest::apply(self, &child.name, events)
    }
    fn request<'a>(
        &'a self,
        child: &'a PeerIdentity,
        tx: &'a SessionTx,
        msg: Msg,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Msg>> + Send + 'a>> {
        Box::pin(async move {
            match msg {
                Msg::CertRequest { id, mut req } => {
                    // A relay's own renewal: named by its certificate. Signing
                    // is quick (no round trip), so it is answered in line.
                    if req.token.is_none() && req.name == child.name {
                        req.role = crate::proto::Role::Relay;
                    }
                    let result = super::enroll::certify(self, Some(&child.name), req).await;
                    crate::link::send_soon(tx, Msg::CertReply { id, result });
                    Ok(())
                }
                other => Err(other),
            }
        })
    }
    fn applied(&self, _child: &PeerIdentity, events: &[(u64, Event)]) {
        self.bump();
        // A relay that joined anywhere below may have syncs waiting.
        if events
            .iter()
            .any(|(_, e)| matches!(e, Event::RelayJoined { .. }))
        {
            if let Err(e) = syncs::resend_syncs(self) {
                warn!(error = %e, "cannot re-send package syncs");
            }
        }
    }
}

fn set_relay(st: &HqState, relay: &NodeName, connected: bool) -> Result<(), StoreError> {
    st.relays.put(
        &Name(relay.clone()),
        &RelayRecord {
            parent: st.me.clone(),
            connected,
            last_seen_ms: now_ms(),
        },
    )
}

/// A top-level relay's subtree as HQ's records show it (read under HQ's
/// write lock). Each relay's branch is looked up once per batch; the
/// leaves, jobs and clients a batch names are read before the check in one
/// statement per tree ([`SubtreeFacts::prefetch`]), not one round trip per
/// event, and handed on to `ingest` ([`SubtreeFacts::into_stored`]).
pub(crate) struct SubtreeFacts<'a> {
    st: &'a HqState,
    child: &'a NodeName,
    tops: RefCell<HashMap<NodeName, Option<NodeName>>>,
    /// Leaves as stored before this batch.
    leaves: RefCell<HashMap<JobClient, Option<LeafRecord>>>,
    /// Each job's latest attempt.
    attempts: RefCell<HashMap<JobId, Option<Attempt>>>,
    /// Clients as stored before this batch.
    clients: RefCell<StoredClients>,
}

/// Stored leaves by key (`None`: never targeted), as a batch found them.
pub(crate) type StoredLeaves = HashMap<JobClient, Option<LeafRecord>>;

/// Stored clients by name (`None`: unknown), as a batch found them.
pub(crate) type StoredClients = HashMap<NodeName, Option<ClientRecord>>;

impl<'a> SubtreeFacts<'a> {
    pub(crate) fn new(st: &'a HqState, child: &'a NodeName) -> Self {
        SubtreeFacts {
            st,
            child,
            tops: Default::default(),
            leaves: Default::default(),
            attempts: Default::default(),
            clients: Default::default(),
        }
    }

    /// Reads every leaf, job and client `events` name, one `get_many` per
    /// tree; what is not read here is looked up one by one when asked.
    pub(crate) fn prefetch(&self, events: &[(u64, Event)]) -> Result<(), StoreError> {
        let (leaves, jobs, clients) = named(events);
        let got = self.st.leaves.get_many(&leaves)?;
        self.leaves.borrow_mut().extend(leaves.into_iter().zip(got));
        let keys: Vec<JobKey> = jobs.into_iter().map(JobKey).collect();
        let got = self.st.jobs.get_many(&keys)?;
        self.attempts.borrow_mut().extend(
            keys.into_iter()
                .zip(got)
                .map(|(k, j)| (k.0, j.map(|j| j.attempt))),
        );
        let keys: Vec<Name> = clients.into_iter().map(Name).collect();
        let got = self.st.clients.get_many(&keys)?;
        self.clients
            .borrow_mut()
            .extend(keys.into_iter().map(|k| k.0).zip(got));
        Ok(())
    }

    /// The leaves and clients read for this batch, as stored before it.
    pub(crate) fn into_stored(self) -> (StoredLeaves, StoredClients) {
        (self.leaves.into_inner(), self.clients.into_inner())
    }

    fn record(&self, r: &NodeName) -> Option<RelayRecord> {
        self.st.relays.get(&Name(r.clone())).ok().flatten()
    }

    /// The client's home and when it joined there.
    fn client(&self, client: &NodeName) -> Option<(NodeName, u64)> {
        if let Some(c) = self.clients.borrow().get(client) {
            return c.as_ref().map(|c| (c.relay.clone(), c.since_ms));
        }
        // A read that fails counts as unknown (refused) and is not kept.
        let c = self.st.clients.get(&Name(client.clone())).ok()?;
        let found = c.as_ref().map(|c| (c.relay.clone(), c.since_ms));
        self.clients.borrow_mut().insert(client.clone(), c);
        found
    }

    /// The relay directly under HQ through which `r` is reached, if any.
    fn top(&self, r: &NodeName) -> Option<NodeName> {
        if let Some(t) = self.tops.borrow().get(r) {
            return t.clone();
        }
        let mut cur = r.clone();
        let mut top = None;
        for _ in 0..64 {
            let Some(rec) = self.record(&cur) else { break };
            if rec.parent == self.st.me {
                top = Some(cur);
                break;
            }
            cur = rec.parent;
        }
        self.tops.borrow_mut().insert(r.clone(), top.clone());
        top
    }

    /// Every relay from `r` up to HQ is connected.
    fn live(&self, r: &NodeName) -> bool {
        let mut cur = r.clone();
        for _ in 0..64 {
            let Some(rec) = self.record(&cur) else {
                return false;
            };
            if !rec.connected {
                return false;
            }
            if rec.parent == self.st.me {
                return true;
            }
            cur = rec.parent;
        }
        false
    }
}

impl Facts for SubtreeFacts<'_> {
    fn relay_in(&self, relay: &NodeName) -> bool {
        self.top(relay).as_ref() == Some(self.child)
    }
    fn client_in(&self, client: &NodeName) -> bool {
        self.client_home(client).is_some_and(|h| self.relay_in(&h))
    }
    fn relay_live_elsewhere(&self, relay: &NodeName) -> bool {
        self.top(relay).is_some_and(|t| t != *self.child) && self.live(relay)
    }
    fn job_attempt(&self, job: JobId) -> Option<Attempt> {
        if let Some(a) = self.attempts.borrow().get(&job) {
            return *a;
        }
        let a = self.st.jobs.get(&JobKey(job)).ok()?.map(|j| j.attempt);
        self.attempts.borrow_mut().insert(job, a);
        a
    }
    fn leaf(&self, job: JobId, client: &NodeName) -> Option<(Attempt, NodeName)> {
        let k = JobClient(job, client.clone());
        if let Some(l) = self.leaves.borrow().get(&k) {
            return l.as_ref().map(|l| (l.attempt, l.relay.clone()));
        }
        let l = self.st.leaves.get(&k).ok()?;
        let found = l.as_ref().map(|l| (l.attempt, l.relay.clone()));
        self.leaves.borrow_mut().insert(k, l);
        found
    }
    fn client_home(&self, client: &NodeName) -> Option<NodeName> {
        self.client(client).map(|c| c.0)
    }
    fn client_since(&self, client: &NodeName) -> u64 {
        self.client(client).map_or(0, |c| c.1)
    }
    fn keeps_leaves(&self) -> bool {
        true
    }
}

/// The leaves, jobs and clients a batch names, each once: what
/// [`SubtreeFacts::prefetch`] reads.
fn named(events: &[(u64, Event)]) -> (Vec<JobClient>, Vec<JobId>, Vec<NodeName>) {
    let mut leaves = HashSet::new();
    let mut jobs = BTreeSet::new();
    let mut clients = HashSet::new();
    for (_, ev) in events {
        match ev {
            Event::Leaf(u) => {
                jobs.insert(u.job);
                leaves.insert(JobClient(u.job, u.client.clone()));
            }
            Event::Targets { job, leaves: l, .. } => {
                jobs.insert(*job);
                leaves.extend(l.iter().map(|(c, _)| JobClient(*job, c.clone())));
            }
            Event::ClientJoined { client, .. } => {
                clients.insert(client.clone());
            }
            Event::Presence { changes, .. } => {
                clients.extend(changes.iter().map(|p| p.client.clone()));
            }
            Event::Inventory(i) => {
                clients.insert(i.client.clone());
            }
            Event::RelayJoined { .. } | Event::RelayLeft { .. } | Event::Cache(_) => {}
        }
    }
    (
        leaves.into_iter().collect(),
        jobs.into_iter().collect(),
        clients.into_iter().collect(),
    )
}
