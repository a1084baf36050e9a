//! Sessions at HQ: a relay's (served by `link::downstream`, see `children`),
//! an admin's (requests and answers), and transfers. A session that breaks
//! the protocol is closed with a log line naming the peer; every other
//! session goes on. A revocation closes every session of the name, whatever
//! it is for (the accept loop in `link` watches the deny list).

use super::{audit, jobs, packages, revoke, syncs, view, HqError, HqState};
use crate::link::{LinkError, Session};
use crate::proto::{AdminRequest, AdminResponse, Msg, Role};
use crate::store::keys::Name;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Runs one admitted session to its end.
pub(crate) async fn handle(st: Arc<HqState>, s: Session) {
    let peer = s.peer.clone();
    // Known from now on, so that it can be revoked by name.
    if let Err(e) = st.seen.put(&Name(peer.name.clone()), &peer.role) {
        warn!(error = %e, "cannot record the node");
    }
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
    for r in st.denied.scan() {
        let (k, _) = r?;
        let Name(n) = k;
        names.push(n);
    }
    st.deny.replace(names);
    Ok(())
}

/// At start-up no relay is connected, whatever the store said at the crash.
pub(crate) fn mark_all_disconnected(st: &HqState) -> Result<(), StoreError> {
    for r in st.relays.scan() {
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

pub(crate) async fn answer(
    st: &HqState,
    req: AdminRequest,
    session: u64,
) -> Result<AdminResponse, HqError> {
    Ok(match req {
        AdminRequest::CreateJob {
            dest,
            action,
            expires_ms,
            policy,
            clients,
            filter,
        } if policy.repeat.is_some() => AdminResponse::Repeating(
            super::repeat::create(st, dest, clients, filter, action, expires_ms, policy).await?,
        ),
        AdminRequest::CreateJob {
            dest,
            action,
            expires_ms,
            policy,
            clients,
            filter,
        } => AdminResponse::Created {
            job: if clients.is_empty() {
                jobs::create_with(st, dest, filter, action, expires_ms, &policy).await?
            } else {
                super::targets::create_named(st, clients, filter, action, expires_ms, &policy, None)
                    .await?
            },
        },
        AdminRequest::Repeats => AdminResponse::Repeats(super::repeat::list(st)?),
        AdminRequest::Unschedule { schedule } => {
            AdminResponse::Unscheduled(super::repeat::remove(st, schedule).await?)
        }
        AdminRequest::Pause { job } => {
            AdminResponse::Control(super::rollout::set_paused(st, job, true).await?)
        }
        AdminRequest::Resume { job } => {
            AdminResponse::Control(super::rollout::set_paused(st, job, false).await?)
        }
        AdminRequest::Status {
            job,
            states,
            relay,
            limit,
            page,
            after,
        } => {
            // Report only what is on disk: what a restart would still show.
            st.store.durable().await?;
            let f = view::Filter {
                states,
                relay,
                limit,
            };
            AdminResponse::Status(match (after, page) {
                (Some(after), page) => {
                    view::status_after(st, job, &f, &after, page.unwrap_or(u64::MAX))?
                }
                (None, page) => view::status_of(st, job, &f, page)?,
            })
        }
        AdminRequest::Progress { job, wait_ms } => {
            // Long poll: answers at the next change (or after wait_ms), from
            // the in-memory counters; at most one answer per change.
            let mut changed = st.changed.subscribe();
            changed.borrow_and_update();
            if wait_ms > 0 && !view::is_job_done(st, job)? {
                let _ = tokio::time::timeout(
                    Duration::from_millis(wait_ms.min(60_000)),
                    changed.changed(),
                )
                .await;
            }
            AdminResponse::Progress(view::progress(st, job)?)
        }
        AdminRequest::Output { job, client } => {
            st.store.durable().await?;
            AdminResponse::Output(super::output::view(st, job, &client)?)
        }
        AdminRequest::List => AdminResponse::List(view::list(st)?),
        AdminRequest::Rerun { job, expired } => {
            AdminResponse::Rerun(jobs::rerun(st, job, expired).await?)
        }
        AdminRequest::Cancel { job } => AdminResponse::Canceled(jobs::cancel(st, job).await?),
        AdminRequest::Purge { older_than_ms } => {
            AdminResponse::Purged(super::retention::purge(st, older_than_ms).await?)
        }
        AdminRequest::Tree => AdminResponse::Tree(view::tree(st)?),
        AdminRequest::TokenCreate { role, ttl_ms, uses } => {
            AdminResponse::Token(super::enroll::create_token(st, role, ttl_ms, uses).await?)
        }
        AdminRequest::WebLogin => AdminResponse::WebLogin {
            url: st.door.issue(crate::proto::now_ms())?,
        },
        AdminRequest::Revoke { name, force } => AdminResponse::Revoked {
            denied: revoke::revoke(st, name, force).await?,
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
        AdminRequest::PackageAdd { manifest, bundle } => {
            AdminResponse::Package(packages::add(st, manifest, bundle).await?)
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
        AdminRequest::ClientList {
            relay,
            labels,
            state,
        } => {
            st.store.durable().await?;
            let q = super::clients::ClientQuery {
                relay,
                labels,
                state,
            };
            AdminResponse::Clients(super::clients::list(st, &q)?)
        }
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
        AdminRequest::Sync(req) => AdminResponse::Sync(super::sync::sync(st, req).await?),
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
