//! Sessions at HQ: a relay's (served by `link::downstream`, see `children`),
//! an admin's (requests and answers), and transfers. A session that breaks
//! the protocol is closed with a log line naming the peer; every other
//! session goes on. A revocation closes every session of the name, whatever
//! it is for (the accept loop in `link` watches the deny list).

use super::{jobs, packages, syncs, view, ClientRecord, HqError, HqState, RelayRecord};
use crate::link::{LinkError, Session};
use crate::proto::{now_ms, AdminRequest, AdminResponse, JobId, LeafState, Msg, NodeName, Role};
use crate::rules::LeafRecord;
use crate::store::{keys, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Runs one admitted session to its end.
pub(crate) async fn handle(st: Arc<HqState>, s: Session) {
    let peer = s.peer.clone();
    // Known from now on, so that it can be revoked by name.
    if let Err(e) = st.seen.put(&keys::name(&peer.name), &peer.role) {
        warn!(error = %e, "cannot record the node");
    }
    let r = match peer.role {
        Role::Relay if s.purpose == crate::proto::Purpose::Transfer => {
            crate::link::transfer::serve(
                s,
                st.depot.clone(),
                None,
                st.egress.clone(),
                crate::link::transfer::SEND_PATIENCE,
            )
            .await
        }
        Role::Relay => crate::link::downstream::serve(&*st, s).await,
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

/// Whether HQ knows `name`: a relay or client it recorded, a node that had a
/// session with it (admins included), or a name already revoked. Anything
/// else is most likely a typo, which would block that name for good.
fn known(st: &HqState, name: &NodeName) -> Result<bool, StoreError> {
    let k = keys::name(name);
    Ok(st.seen.contains(&k)?
        || st.relays.contains(&k)?
        || st.clients.contains(&k)?
        || st.denied.contains(&k)?)
}

/// `hq cert revoke NAME`: durable, refused at HQ's listener at once (which
/// closes every session of that name), pushed down the tree. A revoked
/// client leaves the directory and its open leaves become `canceled`.
async fn revoke(st: &HqState, name: NodeName) -> Result<Vec<NodeName>, HqError> {
    if name == st.me {
        return Err(HqError::Refused("hq cannot revoke itself".into()));
    }
    if !known(st, &name)? {
        return Err(HqError::Refused(format!(
            "unknown node {name}: no relay, client or session of that name was ever seen by hq"
        )));
    }
    {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        st.denied.put(&keys::name(&name), &now_ms())?;
        if st
            .clients
            .get::<ClientRecord>(&keys::name(&name))?
            .is_some()
        {
            st.clients.remove(&keys::name(&name))?;
            cancel_open_leaves(st, &name)?;
        }
    }
    st.store.durable().await?;
    load_deny_list(st)?;
    st.bump();
    let names = st.deny.names();
    warn!(%name, "node revoked");
    let children: Vec<NodeName> = st
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let deny = Msg::Deny {
        names: names.clone(),
    };
    crate::link::queue::send_now(
        &st.children,
        children.into_iter().map(|c| (c, deny.clone())).collect(),
    );
    Ok(names)
}

/// Every leaf of revoked `client` not yet final becomes `canceled` (under
/// HQ's write lock; not yet durable).
fn cancel_open_leaves(st: &HqState, client: &NodeName) -> Result<(), StoreError> {
    let now = now_ms();
    let jobs: Vec<JobId> = st
        .jobs
        .scan::<serde::de::IgnoredAny>(b"")
        .filter_map(|r| r.ok())
        .filter_map(|(k, _)| keys::read_u64(&k).map(JobId))
        .collect();
    for job in jobs {
        let k = keys::job_client(job, client);
        let Some(leaf) = st.leaves.get::<LeafRecord>(&k)? else {
            continue;
        };
        if leaf.state.is_final() {
            continue;
        }
        let rec = LeafRecord {
            state: LeafState::Canceled,
            reason: Some(format!("client {client} was revoked")),
            exit_code: None,
            at_ms: now,
            ..leaf.clone()
        };
        st.leaves.put(&k, &rec)?;
        st.counters.moved(job, Some(leaf.state), rec.state);
    }
    Ok(())
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
        AdminRequest::Purge { .. } => return Err(HqError::Refused("purge: not built yet".into())),
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
