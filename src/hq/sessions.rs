//! Sessions at HQ: a relay's (assignments down, events up) and an admin's
//! (requests and answers). A session that breaks the protocol is closed with
//! a log line naming the peer; every other session goes on.

use super::{audit, ingest, jobs, packages, syncs, view, HqError, HqState, RelayRecord};
use crate::link::{queue, LinkError, Session};
use crate::proto::{now_ms, AdminRequest, AdminResponse, Assignment, Msg, NodeName, Role};
use crate::store::{keys, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Runs one admitted session to its end.
pub(crate) async fn handle(st: Arc<HqState>, s: Session) {
    let peer = s.peer.clone();
    let r = match peer.role {
        Role::Relay if s.purpose == crate::proto::Purpose::Transfer => {
            crate::link::transfer::serve(
                s,
                st.depot.clone(),
                None,
                None,
                st.egress.clone(),
                crate::link::transfer::SEND_PATIENCE,
            )
            .await
        }
        Role::Relay => relay_session(&st, s).await,
        Role::Admin => admin_session(&st, s).await,
        other => Err(LinkError::Protocol(format!("role {other} not served here"))),
    };
    match r {
        Ok(()) | Err(LinkError::Closed) => info!("session closed"),
        Err(e) => warn!(error = %e, "session ended"),
    }
}

/// Loads the deny list into the listener's view of it.
pub(crate) fn load_deny_list(st: &HqState) -> Result<(), StoreError> {
    let mut names = Vec::new();
    for r in st.denied.scan::<u64>(b"") {
        let (k, _) = r?;
        if let Some(n) = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| NodeName::new(s).ok())
        {
            names.push(n);
        }
    }
    st.deny.replace(names);
    Ok(())
}

/// `hq cert revoke NAME`: durable, refused at HQ's listener at once, pushed
/// down the tree, and any session of that node closed.
async fn revoke(st: &HqState, name: NodeName) -> Result<Vec<NodeName>, HqError> {
    if name == st.me {
        return Err(HqError::Refused("hq cannot revoke itself".into()));
    }
    st.denied.put(&keys::name(&name), &now_ms())?;
    st.store.durable().await?;
    load_deny_list(st)?;
    let names = st.deny.names();
    warn!(%name, "node revoked");
    let children = st.children.lock().unwrap_or_else(|p| p.into_inner());
    for (child, tx) in children.iter() {
        if *child == name {
            crate::link::send_soon(
                tx,
                Msg::Bye {
                    reason: "revoked".into(),
                },
            );
        } else {
            crate::link::send_soon(
                tx,
                Msg::Deny {
                    names: names.clone(),
                },
            );
        }
    }
    Ok(names)
}

/// At start-up no relay is connected, whatever the store said at the crash.
pub(crate) fn mark_all_disconnected(st: &HqState) -> Result<(), StoreError> {
    for r in st.relays.scan::<RelayRecord>(b"") {
        let (k, mut rec) = r?;
        if rec.connected && rec.parent == st.me {
            rec.connected = false;
            st.relays.put(&k, &rec)?;
        }
    }
    Ok(())
}

fn set_relay(st: &HqState, relay: &NodeName, connected: bool) -> Result<(), StoreError> {
    st.relays.put(
        &keys::name(relay),
        &RelayRecord {
            parent: st.me.clone(),
            connected,
            last_seen_ms: now_ms(),
        },
    )
}

async fn relay_session(st: &HqState, s: Session) -> Result<(), LinkError> {
    let Session {
        peer, tx, mut rx, ..
    } = s;
    let name = peer.name.clone();
    {
        // Registering and marking connected under one lock: an older session
        // of the same relay ending now cannot undo it.
        let mut children = st.children.lock().unwrap_or_else(|p| p.into_inner());
        children.insert(name.clone(), tx.clone());
        set_relay(st, &name, true)?;
    }
    st.store.durable().await?;
    // Everything this relay has not acknowledged, oldest first.
    let queued: Vec<Assignment> = st
        .downq
        .scan::<Assignment>(&keys::name_prefix(&name))
        .filter_map(|r| r.ok().map(|(_, a)| a))
        .collect();
    for a in queued {
        crate::link::send(&tx, Msg::Assign(a)).await?;
    }
    for m in st.down.queued(&name)? {
        crate::link::send(&tx, m).await?;
    }
    for m in queue::queued_forgets(&st.forgetq, &name)? {
        crate::link::send(&tx, m).await?;
    }
    crate::link::send(
        &tx,
        Msg::Deny {
            names: st.deny.names(),
        },
    )
    .await?;
    if let Err(e) = syncs::resend_syncs(st) {
        warn!(error = %e, "cannot re-send package syncs");
    }
    let result = relay_loop(st, &name, &tx, &mut rx).await;
    {
        // Only the relay's current session may mark it disconnected: a stale
        // one (a half-open link the relay already left) ends quietly.
        let mut children = st.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.get(&name).is_some_and(|t| t.same_channel(&tx)) {
            children.remove(&name);
            set_relay(st, &name, false)?;
        }
    }
    st.bump();
    result
}

async fn relay_loop(
    st: &HqState,
    name: &NodeName,
    tx: &crate::link::SessionTx,
    rx: &mut crate::link::SessionRx,
) -> Result<(), LinkError> {
    loop {
        match rx.recv().await? {
            Msg::AssignAck { job, attempt } => {
                st.downq
                    .remove(&keys::name_job_attempt(name, job, attempt))?;
            }
            Msg::ForgetAck { client } => {
                st.forgetq.remove(&keys::name_name(name, &client))?;
            }
            m @ Msg::PurgeAck { .. } => {
                st.down.ack(name, &m)?;
            }
            Msg::Events(events) => {
                let Some(last) = events.last().map(|(s, _)| *s) else {
                    continue;
                };
                let forgets = ingest::apply(st, name, &events)?;
                st.store.durable().await?;
                crate::link::send(tx, Msg::Ack { seq: last }).await?;
                st.bump();
                queue::send_forgets(&st.children, forgets);
                // A relay that joined anywhere below may have syncs waiting.
                if events
                    .iter()
                    .any(|(_, e)| matches!(e, crate::proto::Event::RelayJoined { .. }))
                {
                    if let Err(e) = syncs::resend_syncs(st) {
                        warn!(error = %e, "cannot re-send package syncs");
                    }
                }
            }
            other => {
                let _ = tx
                    .send(Msg::Bye {
                        reason: format!("{} not allowed from a relay", other.kind()),
                    })
                    .await;
                return Err(crate::link::unexpected(&other, "from a relay"));
            }
        }
    }
}

async fn admin_session(st: &HqState, s: Session) -> Result<(), LinkError> {
    static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = admin_loop(st, s, session).await;
    st.uploads.forget(session);
    r
}

async fn admin_loop(st: &HqState, s: Session, session: u64) -> Result<(), LinkError> {
    let Session { tx, mut rx, .. } = s;
    loop {
        match rx.recv().await? {
            Msg::AdminReq { id, req } => {
                let resp = answer(st, req, session).await.map_err(|e| e.to_string());
                crate::link::send(&tx, Msg::AdminResp { id, resp }).await?;
            }
            other => {
                let _ = tx
                    .send(Msg::Bye {
                        reason: format!("{} not allowed from an admin", other.kind()),
                    })
                    .await;
                return Err(crate::link::unexpected(&other, "from an admin"));
            }
        }
    }
}

async fn answer(st: &HqState, req: AdminRequest, session: u64) -> Result<AdminResponse, HqError> {
    Ok(match req {
        AdminRequest::CreateJob {
            dest,
            action,
            expires_ms,
        } => AdminResponse::Created {
            job: jobs::create(st, dest, action, expires_ms).await?,
        },
        AdminRequest::Status { job } => {
            // Report only what is on disk: what a restart would still show.
            st.store.durable().await?;
            AdminResponse::Status(view::status(st, job)?)
        }
        AdminRequest::List => AdminResponse::List(view::list(st)?),
        AdminRequest::Rerun { job, .. } => AdminResponse::Rerun(jobs::rerun(st, job).await?),
        AdminRequest::Cancel { job } => {
            return Err(HqError::Refused(format!(
                "cancel of job {job}: not built yet"
            )))
        }
        AdminRequest::Purge { older_than_ms } => {
            AdminResponse::Purged(super::retention::purge(st, older_than_ms).await?)
        }
        AdminRequest::Tree => AdminResponse::Tree(view::tree(st)?),
        AdminRequest::Revoke { name } => AdminResponse::Revoked {
            denied: revoke(st, name).await?,
        },
        AdminRequest::PackageMissing { hashes } => AdminResponse::Missing {
            hashes: packages::missing(st, &hashes),
        },
        AdminRequest::PackageUpload {
            hash,
            offset,
            total,
            data,
        } => AdminResponse::Uploaded {
            complete: packages::upload(st, session, hash, offset, total, data).await?,
        },
        AdminRequest::PackageAdd { manifest } => {
            AdminResponse::Package(packages::add(st, manifest).await?)
        }
        AdminRequest::PackageList => AdminResponse::Packages(packages::list(st)?),
        AdminRequest::PackageShow { name, version } => {
            AdminResponse::Package(packages::show(st, &name, version.as_deref()).await?)
        }
        AdminRequest::PackageSync {
            relays,
            name,
            version,
            complete,
        } => {
            let (id, pk) = syncs::sync(st, relays.clone(), name, version, complete).await?;
            AdminResponse::SyncOrdered {
                id,
                relays,
                packages: pk,
            }
        }
        AdminRequest::PackageStatus { relay } => {
            st.store.durable().await?;
            AdminResponse::PackageStatus(syncs::status(st, relay.as_ref())?)
        }
        AdminRequest::PackageSchedule {
            relay,
            spec,
            stagger_ms,
        } => AdminResponse::Scheduled(syncs::set_schedule(st, relay, spec, stagger_ms).await?),
        AdminRequest::ClientShow { name } => {
            st.store.durable().await?;
            AdminResponse::Client(syncs::client(st, &name)?)
        }
        AdminRequest::SnapshotCreate {
            client,
            name,
            select,
            expires_ms,
            wait_ms,
        } => AdminResponse::Snapshot(
            audit::create_snapshot(
                st,
                &client,
                &name,
                select,
                expires_ms,
                Duration::from_millis(wait_ms),
            )
            .await?,
        ),
        AdminRequest::AuditCreate {
            master,
            dest,
            files,
            no_packages,
            dpkg,
            expires_ms,
            wait_ms,
        } => {
            let (audit, snapshot) = audit::create_audit(
                st,
                master,
                dest,
                files,
                no_packages,
                dpkg,
                expires_ms,
                Duration::from_millis(wait_ms),
            )
            .await?;
            AdminResponse::AuditCreated { audit, snapshot }
        }
        AdminRequest::AuditStatus { audit: job } => {
            st.store.durable().await?;
            AdminResponse::AuditStatus(audit::status(st, job)?)
        }
        AdminRequest::Wait { job, timeout_ms } => {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            let mut changed = st.changed.subscribe();
            loop {
                changed.borrow_and_update();
                // Cheap check on every change; the full status once at the end.
                if view::is_job_done(st, job)? {
                    // "Done" only once it is on disk.
                    st.store.durable().await?;
                    break AdminResponse::Status(view::status(st, job)?);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break AdminResponse::Status(view::status(st, job)?),
                    r = changed.changed() => if r.is_err() { break AdminResponse::Status(view::status(st, job)?) },
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}
