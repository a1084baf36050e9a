//! Sessions of a relay's children: agents (deliver their pending leaves,
//! collect their results) and child relays (forward assignments, relay their
//! events upward). Results are acknowledged only after they are on disk.

use super::assign::for_agent;
use super::{moves, AttemptRecord, DirEntry, RelayState};
use crate::link::queue::{self, ForgetTo};
use crate::link::{unexpected, LinkError, Session, SessionRx, SessionTx};
use crate::proto::{now_ms, Assignment, Event, JobId, LeafState, LeafUpdate, Msg, NodeName, Role};
use crate::rules::{self, LeafRecord};
use crate::store::{keys, StoreError};
use std::sync::Arc;
use tracing::{info, warn};

/// Runs one admitted child session to its end.
pub(crate) async fn handle(st: Arc<RelayState>, s: Session) {
    let name = s.peer.name.clone();
    let tx = s.tx.clone();
    if s.purpose == crate::proto::Purpose::Transfer {
        let hook = Some(st.cache.ensure_hook());
        let r = crate::link::transfer::serve(
            s,
            st.cache.store.clone(),
            hook,
            Some(st.cache.up_hook()),
            st.cache.egress.clone(),
            crate::link::transfer::SEND_PATIENCE,
        )
        .await;
        match r {
            Ok(()) | Err(LinkError::Closed) => {}
            Err(e) => warn!(error = %e, "transfer ended"),
        }
        return;
    }
    let r = match s.peer.role {
        Role::Agent => agent_session(&st, s).await,
        Role::Relay => relay_session(&st, s).await,
        other => Err(LinkError::Protocol(format!("role {other} not served here"))),
    };
    {
        let mut children = st.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.get(&name).is_some_and(|t| t.same_channel(&tx)) {
            children.remove(&name);
        }
    }
    match r {
        Ok(()) | Err(LinkError::Closed) => info!("session closed"),
        Err(e) => {
            warn!(error = %e, "session ended");
            if matches!(e, LinkError::Protocol(_) | LinkError::Codec(_)) {
                let _ = tx.try_send(Msg::Bye {
                    reason: e.to_string(),
                });
            }
        }
    }
}

fn register(st: &RelayState, name: &NodeName, tx: &SessionTx) {
    st.children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), tx.clone());
}

/// The pending leaves of `client`, as assignments to send it.
fn pending_for(st: &RelayState, client: &NodeName) -> Result<Vec<Assignment>, StoreError> {
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

async fn agent_session(st: &RelayState, s: Session) -> Result<(), LinkError> {
    let Session {
        peer, tx, mut rx, ..
    } = s;
    let me = st.me.clone();
    let client = peer.name;
    let home = DirEntry {
        home: me.clone(),
        via: me.clone(),
    };
    let old = st.dir_clients.get::<DirEntry>(&keys::name(&client))?;
    if old.as_ref() != Some(&home) {
        let (mut events, forget) = moves::moved(st, &client, old.as_ref(), &me, &me)?;
        events.push(Event::ClientJoined {
            client: client.clone(),
            relay: me.clone(),
        });
        // The event before the entry: after a crash, writes survive as a
        // prefix, and an entry without its event would never be reported.
        st.outbox.push(&events)?;
        st.dir_clients.put(&keys::name(&client), &home)?;
        st.store.durable().await?;
        queue::send_forgets(&st.children, forget.into_iter().collect());
        info!(%client, "client registered");
    }
    register(st, &client, &tx);
    for a in pending_for(st, &client)? {
        crate::link::send(&tx, Msg::Assign(a)).await?;
    }
    agent_loop(st, &client, &tx, &mut rx).await
}

async fn agent_loop(
    st: &RelayState,
    client: &NodeName,
    tx: &SessionTx,
    rx: &mut SessionRx,
) -> Result<(), LinkError> {
    loop {
        match rx.recv().await? {
            Msg::AssignAck { job, attempt } => {
                let u = LeafUpdate {
                    job,
                    attempt,
                    client: client.clone(),
                    relay: st.me.clone(),
                    state: LeafState::Delivered,
                    exit_code: None,
                    reason: None,
                    output: None,
                    at_ms: now_ms(),
                    audit: None,
                };
                // Not acknowledged to anyone: if lost, the agent acks the re-sent assignment.
                apply_home(st, client, std::slice::from_ref(&u))?;
            }
            m @ Msg::PurgeAck { .. } => {
                st.down.ack(client, &m)?;
            }
            Msg::Events(events) => {
                let Some(last) = events.last().map(|(s, _)| *s) else {
                    continue;
                };
                let mut ups = Vec::with_capacity(events.len());
                let mut inventories = Vec::new();
                for (_, ev) in events {
                    match ev {
                        Event::Leaf(u) => ups.push(u),
                        Event::Inventory(mut i) if i.client == *client => {
                            i.relay = st.me.clone();
                            inventories.push(Event::Inventory(i));
                        }
                        other => {
                            warn!(%client, event = ?other, "agent sent a non-leaf event; ignored")
                        }
                    }
                }
                if !inventories.is_empty() {
                    st.outbox.push(&inventories)?;
                }
                apply_home(st, client, &ups)?;
                st.store.durable().await?;
                crate::link::send(tx, Msg::Ack { seq: last }).await?;
            }
            other => return Err(unexpected(&other, "from an agent")),
        }
    }
}

/// Merges an agent's own updates into its home leaves and queues the changes
/// upward (not yet durable). Updates for other clients or for attempts this
/// relay never gave it are dropped.
fn apply_home(st: &RelayState, client: &NodeName, ups: &[LeafUpdate]) -> Result<(), StoreError> {
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

async fn relay_session(st: &RelayState, s: Session) -> Result<(), LinkError> {
    let Session {
        peer, tx, mut rx, ..
    } = s;
    let child = peer.name;
    st.dir_relays.put(&keys::name(&child), &child)?;
    {
        // Registering and reporting under one lock (see the end of the session).
        let mut children = st.children.lock().unwrap_or_else(|p| p.into_inner());
        children.insert(child.clone(), tx.clone());
        st.outbox.push(&[Event::RelayJoined {
            relay: child.clone(),
            parent: st.me.clone(),
        }])?;
    }
    st.store.durable().await?;
    let queued: Vec<Assignment> = st
        .downq
        .scan::<Assignment>(&keys::name_prefix(&child))
        .filter_map(|r| r.ok().map(|(_, a)| a))
        .collect();
    for a in queued {
        crate::link::send(&tx, Msg::Assign(a)).await?;
    }
    for m in st.down.queued(&child)? {
        crate::link::send(&tx, m).await?;
    }
    let r = relay_loop(st, &child, &tx, &mut rx).await;
    {
        // Only the child's current session reports it gone: a stale one (a
        // half-open link it already left) ends quietly.
        let mut children = st.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.get(&child).is_some_and(|t| t.same_channel(&tx)) {
            children.remove(&child);
            st.outbox.push(&[Event::RelayLeft {
                relay: child.clone(),
                parent: st.me.clone(),
                at_ms: now_ms(),
            }])?;
        }
    }
    r
}

async fn relay_loop(
    st: &RelayState,
    child: &NodeName,
    tx: &SessionTx,
    rx: &mut SessionRx,
) -> Result<(), LinkError> {
    loop {
        match rx.recv().await? {
            Msg::AssignAck { job, attempt } => {
                st.downq
                    .remove(&keys::name_job_attempt(child, job, attempt))?;
            }
            Msg::ForgetAck { client } => {
                st.forgetq.remove(&keys::name_name(child, &client))?;
            }
            m @ Msg::PurgeAck { .. } => {
                st.down.ack(child, &m)?;
            }
            Msg::Events(events) => {
                let Some(last) = events.last().map(|(s, _)| *s) else {
                    continue;
                };
                let (fwd, forgets) = learn(st, child, events)?;
                st.outbox.push(&fwd)?;
                st.store.durable().await?;
                crate::link::send(tx, Msg::Ack { seq: last }).await?;
                queue::send_forgets(&st.children, forgets);
            }
            other => return Err(unexpected(&other, "from a child relay")),
        }
    }
}

/// Updates the directory from a child relay's events and returns those to
/// forward upward, and `Forget`s for clients that moved into that child from
/// elsewhere in this subtree. Leaf results for clients not under that child
/// are dropped.
fn learn(
    st: &RelayState,
    child: &NodeName,
    events: Vec<(u64, Event)>,
) -> Result<(Vec<Event>, Vec<ForgetTo>), StoreError> {
    let mut fwd = Vec::with_capacity(events.len());
    let mut forgets = Vec::new();
    for (_, ev) in events {
        match &ev {
            Event::ClientJoined { client, relay } => {
                let old = st.dir_clients.get::<DirEntry>(&keys::name(client))?;
                let (cancels, forget) = moves::moved(st, client, old.as_ref(), child, relay)?;
                fwd.extend(cancels);
                forgets.extend(forget);
                st.dir_clients.put(
                    &keys::name(client),
                    &DirEntry {
                        home: relay.clone(),
                        via: child.clone(),
                    },
                )?;
            }
            Event::RelayJoined { relay, .. } => {
                st.dir_relays.put(&keys::name(relay), child)?;
            }
            Event::Leaf(u) => {
                let via = st
                    .dir_clients
                    .get::<DirEntry>(&keys::name(&u.client))?
                    .map(|e| e.via);
                if via.as_ref() != Some(child) {
                    warn!(%child, client = %u.client, "leaf result for a client not under this child; dropped");
                    continue;
                }
            }
            Event::Inventory(i) => {
                let via = st
                    .dir_clients
                    .get::<DirEntry>(&keys::name(&i.client))?
                    .map(|e| e.via);
                if via.as_ref() != Some(child) {
                    warn!(%child, client = %i.client, "inventory of a client not under this child; dropped");
                    continue;
                }
            }
            Event::Targets { .. } | Event::RelayLeft { .. } | Event::Cache(_) => {}
        }
        fwd.push(ev);
    }
    Ok((fwd, forgets))
}
