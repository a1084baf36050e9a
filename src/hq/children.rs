//! HQ's side of its relays' sessions, as the one downstream session in
//! `link` runs it: what HQ records as a top-level relay comes and goes, what
//! it sends on connect (the deny list, package syncs), and what a relay's
//! subtree is ([`SubtreeFacts`]) for the check in front of `ingest::apply`.
//!
//! Does not decide what an event does; `ingest` does.

use super::{ingest, syncs, HqState, RelayRecord};
use crate::link::confine::Facts;
use crate::link::downstream::{Downstream, Outgoing};
use crate::link::queue::DownQueue;
use crate::link::SessionTx;
use crate::proto::{now_ms, Attempt, Event, JobId, Msg, NodeName};
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::{Store, StoreError};
use crate::tls::PeerIdentity;
use std::cell::RefCell;
use std::collections::HashMap;
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
/// write lock). Each relay's branch is looked up once per batch.
pub(crate) struct SubtreeFacts<'a> {
    st: &'a HqState,
    child: &'a NodeName,
    tops: RefCell<HashMap<NodeName, Option<NodeName>>>,
}

impl<'a> SubtreeFacts<'a> {
    pub(crate) fn new(st: &'a HqState, child: &'a NodeName) -> Self {
        SubtreeFacts {
            st,
            child,
            tops: Default::default(),
        }
    }

    fn record(&self, r: &NodeName) -> Option<RelayRecord> {
        self.st.relays.get(&Name(r.clone())).ok().flatten()
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
        self.st
            .jobs
            .get(&JobKey(job))
            .ok()
            .flatten()
            .map(|j| j.attempt)
    }
    fn leaf(&self, job: JobId, client: &NodeName) -> Option<(Attempt, NodeName)> {
        self.st
            .leaves
            .get(&JobClient(job, client.clone()))
            .ok()
            .flatten()
            .map(|l| (l.attempt, l.relay))
    }
    fn client_home(&self, client: &NodeName) -> Option<NodeName> {
        self.st
            .clients
            .get(&Name(client.clone()))
            .ok()
            .flatten()
            .map(|c| c.relay)
    }
    fn client_since(&self, client: &NodeName) -> u64 {
        self.st
            .clients
            .get(&Name(client.clone()))
            .ok()
            .flatten()
            .map_or(0, |c| c.since_ms)
    }
    fn keeps_leaves(&self) -> bool {
        true
    }
}
