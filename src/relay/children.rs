//! A relay's side of its children's sessions, as the one downstream session
//! in `link` runs it: agents (their pending leaves on connect, their own
//! results) and child relays (the deny list on connect, their events checked
//! against their subtree, then relayed upward). Results are acknowledged only
//! after they are on disk.
//!
//! An agent speaks only for itself; a child relay only for its subtree
//! (`link::confine`, fed with this relay's directory): what either says of
//! anyone else is refused, logged with the sender, never forwarded.

use super::home::{apply_home, from_agent, pending_for};
use super::{deny, moves, presence, DirEntry, RelayState};
use crate::link::confine::{self, Facts};
use crate::link::downstream::{Downstream, Outgoing};
use crate::link::queue::DownQueue;
use crate::link::{LinkError, Session, SessionTx};
use crate::proto::{now_ms, Attempt, Event, JobId, LeafState, LeafUpdate, Msg, NodeName, Role};
use crate::store::keys::Name;
use crate::store::{Store, StoreError};
use crate::tls::PeerIdentity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Runs one admitted child session to its end.
pub(crate) async fn handle(st: Arc<RelayState>, s: Session) {
    let r = match (s.purpose, s.peer.role) {
        (crate::proto::Purpose::Transfer, _) => {
            let hook = Some(st.cache.ensure_hook());
            crate::link::transfer::serve(
                s,
                st.cache.store.clone(),
                hook,
                Some(st.cache.up_hook()),
                st.cache.egress.clone(),
                crate::link::transfer::SEND_PATIENCE,
            )
            .await
        }
        (_, Role::Agent | Role::Relay) => crate::link::downstream::serve(&*st, s).await,
        (_, other) => Err(LinkError::Protocol(format!("role {other} not served here"))),
    };
    match r {
        Ok(()) | Err(LinkError::Closed) => info!("session closed"),
        Err(e) => warn!(error = %e, "session ended"),
    }
}

impl Downstream for RelayState {
    fn store(&self) -> &Store {
        &self.store
    }
    fn down(&self) -> &DownQueue {
        &self.down
    }
    fn children(&self) -> &Mutex<HashMap<NodeName, SessionTx>> {
        &self.children
    }
    fn arriving(&self, child: &PeerIdentity) -> Result<Outgoing, StoreError> {
        if child.role != Role::Agent {
            return Ok(Vec::new());
        }
        let client = &child.name;
        let home = DirEntry {
            home: self.me.clone(),
            via: self.me.clone(),
        };
        let old = self.dir_clients.get(&Name(client.clone()))?;
        if old.as_ref() == Some(&home) {
            return Ok(Vec::new());
        }
        let (mut events, forget) = moves::moved(self, client, old.as_ref(), &self.me, &self.me)?;
        let now = now_ms();
        events.push(Event::ClientJoined {
            client: client.clone(),
            relay: self.me.clone(),
            at_ms: now,
        });
        // The event before the entry: after a crash, writes survive as a
        // prefix, and an entry without its event would never be reported.
        self.outbox.push(&events)?;
        self.dir_since.put(&Name(client.clone()), &now)?;
        self.dir_clients.put(&Name(client.clone()), &home)?;
        info!(%client, "client registered");
        Ok(forget.into_iter().collect())
    }
    fn joined(
        &self,
        child: &PeerIdentity,
        about: Option<&crate::proto::About>,
    ) -> Result<(), StoreError> {
        if child.role == Role::Agent {
            // Under the registry lock: an older session ending cannot report
            // it offline after this.
            return presence::online(self, &child.name, about.cloned().unwrap_or_default());
        }
        if child.role != Role::Relay {
            return Ok(());
        }
        self.dir_relays
            .put(&Name(child.name.clone()), &child.name)?;
        self.dir_parents.put(&Name(child.name.clone()), &self.me)?;
        self.relays_left.remove(&Name(child.name.clone()))?;
        self.outbox.push(&[Event::RelayJoined {
            relay: child.name.clone(),
            parent: self.me.clone(),
        }])?;
        Ok(())
    }
    fn left(&self, child: &PeerIdentity) -> Result<(), StoreError> {
        if child.role == Role::Agent {
            return presence::offline(self, &child.name);
        }
        if child.role != Role::Relay {
            return Ok(());
        }
        self.relays_left.put(&Name(child.name.clone()), &now_ms())?;
        self.outbox.push(&[Event::RelayLeft {
            relay: child.name.clone(),
            parent: self.me.clone(),
            at_ms: now_ms(),
        }])?;
        Ok(())
    }
    fn greeting(&self, child: &PeerIdentity) -> Result<Vec<Msg>, StoreError> {
        match child.role {
            Role::Agent => Ok(pending_for(self, &child.name)?
                .into_iter()
                .map(Msg::Assign)
                .collect()),
            _ => Ok(vec![Msg::Deny {
                names: deny::stored(self)?,
            }]),
        }
    }
    fn acked(&self, child: &PeerIdentity, ack: &Msg) -> Result<(), StoreError> {
        if let (Role::Agent, Msg::AssignAck { job, attempt }) = (child.role, ack) {
            let u = LeafUpdate {
                job: *job,
                attempt: *attempt,
                client: child.name.clone(),
                relay: self.me.clone(),
                state: LeafState::Delivered,
                exit_code: None,
                reason: None,
                output: None,
                at_ms: now_ms(),
                out: None,
                audit: None,
            };
            // Not acknowledged to anyone: if lost, the agent acks the re-sent
            // assignment. Gathered: a flush round writes it (asked for here,
            // shared with whoever else waits), and the event goes up.
            let _ = apply_home(self, &child.name, std::slice::from_ref(&u))?;
            let store = self.store.clone();
            tokio::spawn(async move {
                let _ = store.durable().await;
            });
        }
        Ok(())
    }
    fn request<'a>(
        &'a self,
        child: &'a PeerIdentity,
        tx: &'a SessionTx,
        msg: Msg,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Msg>> + Send + 'a>> {
        Box::pin(async move {
            match msg {
                Msg::CertRequest { id, req } => {
                    pass_up(self, child, tx, id, req);
                    Ok(())
                }
                Msg::Recalled {
                    job,
                    attempt,
                    given_back: true,
                } if child.role == Role::Agent => {
                    back(self, job, attempt, &child.name).await;
                    Ok(())
                }
                Msg::Recalled { .. } if child.role == Role::Agent => Ok(()),
                other => Err(other),
            }
        })
    }
    fn apply(&self, child: &PeerIdentity, events: &[(u64, Event)]) -> Result<Outgoing, StoreError> {
        match child.role {
            Role::Agent => {
                // Leaves that ended make room: the next ones go out once
                // this batch is durable.
                let ended = from_agent(self, &child.name, events)?;
                super::rollout::release_jobs(self, &ended)
            }
            _ => {
                let (fwd, forgets) = learn(self, &child.name, events.to_vec())?;
                self.outbox.push(&fwd)?;
                Ok(forgets)
            }
        }
    }
}

/// An agent gave back a recalled leaf: pending again, durably; it goes out
/// again at once if the job was resumed meanwhile.
async fn back(st: &RelayState, job: JobId, attempt: Attempt, client: &NodeName) {
    let r = async {
        if !super::rollout::given_back(st, job, attempt, client)? {
            return Ok(vec![]);
        }
        st.store.durable().await?;
        super::rollout::release_jobs(st, &[job])
    }
    .await;
    match r {
        Ok(out) => crate::link::queue::send_now(&st.children, out),
        Err(e) => warn!(%job, %client, error = %e, "cannot take back a recalled leaf"),
    }
}

/// A child relay's subtree as this relay's directory shows it.
struct SubtreeFacts<'a> {
    st: &'a RelayState,
    child: &'a NodeName,
}

impl Facts for SubtreeFacts<'_> {
    fn relay_in(&self, relay: &NodeName) -> bool {
        relay == self.child
            || matches!(self.st.dir_relays.get(&Name(relay.clone())), Ok(Some(via)) if via == *self.child)
    }
    fn client_in(&self, client: &NodeName) -> bool {
        matches!(self.st.dir_clients.get(&Name(client.clone())), Ok(Some(e)) if e.via == *self.child)
    }
    fn relay_live_elsewhere(&self, relay: &NodeName) -> bool {
        let Ok(Some(via)) = self.st.dir_relays.get(&Name(relay.clone())) else {
            return false;
        };
        via != *self.child
            && self.st.child(&via).is_some()
            && !matches!(self.st.relays_left.contains(&Name(relay.clone())), Ok(true))
    }
    fn job_attempt(&self, _job: JobId) -> Option<Attempt> {
        Some(Attempt(u32::MAX))
    }
    fn leaf(&self, _job: JobId, _client: &NodeName) -> Option<(Attempt, NodeName)> {
        None
    }
    fn client_home(&self, client: &NodeName) -> Option<NodeName> {
        self.st
            .dir_clients
            .get(&Name(client.clone()))
            .ok()
            .flatten()
            .map(|e| e.home)
    }
    fn client_since(&self, client: &NodeName) -> u64 {
        self.st
            .dir_since
            .get(&Name(client.clone()))
            .ok()
            .flatten()
            .unwrap_or(0)
    }
    fn keeps_leaves(&self) -> bool {
        false
    }
}

/// Checks a child relay's batch against its subtree, updates the directory
/// from what is kept, and returns the events to forward upward and the
/// `Forget`s (queued already) for clients that moved into that child from
/// elsewhere in this subtree. Results are forwarded whenever their home lies
/// in that child's subtree, even for a client that moved away meanwhile: HQ
/// merges them once.
fn learn(
    st: &RelayState,
    child: &NodeName,
    events: Vec<(u64, Event)>,
) -> Result<(Vec<Event>, Outgoing), StoreError> {
    let kept = {
        let c = confine::fold(&SubtreeFacts { st, child }, &st.me, child, events);
        for (seq, why) in &c.refused {
            warn!(from = %child, seq, reason = %why, "event refused: outside the sender's subtree");
        }
        c.kept
    };
    let mut fwd = Vec::with_capacity(kept.len());
    let mut forgets = Vec::new();
    for (_, ev) in kept {
        match &ev {
            Event::ClientJoined {
                client,
                relay,
                at_ms,
            } => {
                let old = st.dir_clients.get(&Name(client.clone()))?;
                let (cancels, forget) = moves::moved(st, client, old.as_ref(), child, relay)?;
                fwd.extend(cancels);
                forgets.extend(forget);
                let since = if *at_ms == 0 { now_ms() } else { *at_ms };
                st.dir_since.put(&Name(client.clone()), &since)?;
                st.dir_clients.put(
                    &Name(client.clone()),
                    &DirEntry {
                        home: relay.clone(),
                        via: child.clone(),
                    },
                )?;
            }
            Event::RelayJoined { relay, parent } => {
                st.dir_relays.put(&Name(relay.clone()), child)?;
                st.dir_parents.put(&Name(relay.clone()), parent)?;
                st.relays_left.remove(&Name(relay.clone()))?;
            }
            Event::RelayLeft { relay, .. } => {
                st.relays_left.put(&Name(relay.clone()), &now_ms())?;
            }
            Event::Presence { changes, .. } => presence::learn(st, changes)?,
            Event::Leaf(_) | Event::Inventory(_) | Event::Targets { .. } | Event::Cache(_) => {}
        }
        fwd.push(ev);
    }
    Ok((fwd, forgets))
}

/// Passes a child's certificate request up and HQ's answer back down, from
/// a task of its own. An agent renews only itself (named by its
/// certificate); a renewal a child relay passes on must name a node of that
/// child's subtree; an enrollment on a session is refused (it comes
/// without a certificate).
fn pass_up(
    st: &RelayState,
    child: &PeerIdentity,
    tx: &SessionTx,
    id: u64,
    mut req: crate::proto::CertRequest,
) {
    let refused = match child.role {
        Role::Agent if req.token.is_some() => {
            Some("an enrolled agent does not enroll again".into())
        }
        Role::Agent => {
            req.name = child.name.clone();
            req.role = Role::Agent;
            None
        }
        _ if req.token.is_none() && req.name == child.name => {
            req.role = Role::Relay;
            None
        }
        _ if req.token.is_none() => match under_child(st, &child.name, &req.name, req.role) {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "{} {} is not under relay {}",
                req.role, req.name, child.name
            )),
            Err(e) => Some(e.to_string()),
        },
        _ => None,
    };
    if let Some(why) = refused {
        warn!(name = %req.name, role = %req.role, from = %child.name, reason = %why, "certificate request refused");
        crate::link::send_soon(
            tx,
            Msg::CertReply {
                id,
                result: Err(why),
            },
        );
        return;
    }
    let (up, asks, me, tx) = (st.up.clone(), st.asks.clone(), st.me.clone(), tx.clone());
    tokio::spawn(async move {
        let result = super::upward::ask_via(&up, &asks, &me, req).await;
        crate::link::send_soon(&tx, Msg::CertReply { id, result });
    });
}

/// Whether `name` lives under direct child relay `child`.
fn under_child(
    st: &RelayState,
    child: &NodeName,
    name: &NodeName,
    role: Role,
) -> Result<bool, StoreError> {
    Ok(match role {
        Role::Agent => st
            .dir_clients
            .get(&Name(name.clone()))?
            .is_some_and(|e| e.via == *child),
        Role::Relay => st.dir_relays.get(&Name(name.clone()))?.as_ref() == Some(child),
        _ => false,
    })
}
