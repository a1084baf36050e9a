//! The session to the parent: receive assignments (acknowledged after they
//! are on disk), pump the outbox upward, drop what the parent acknowledged.

use super::{
    announce, assign, cache, cancel, deny, home, moves, placement, purge, rollout, RelayState,
};
use crate::link::{dial_loop, unexpected, Dialer, LinkError, Session, Upward};
use crate::proto::Msg;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Placements applied under one flush, at most.
const PLACEMENT_BURST: usize = 4096;

/// Keeps the parent session up until `shutdown`.
pub(crate) async fn run(
    st: Arc<RelayState>,
    dialer: Dialer,
    identity: Arc<crate::tls::Identity>,
    shutdown: CancellationToken,
) {
    dial_loop(dialer, shutdown, |s| {
        session(st.clone(), identity.clone(), s)
    })
    .await
}

/// Passes a certificate request (an enrollment from below, or a renewal)
/// to the parent and waits for HQ's answer.
pub(crate) async fn ask_parent(
    st: &RelayState,
    req: crate::proto::CertRequest,
) -> Result<crate::proto::CertGrant, String> {
    ask_via(&st.up, &st.asks, &st.me, req).await
}

/// [`ask_parent`] with the pieces of the state it needs (for a task of its own).
pub(crate) async fn ask_via(
    up: &std::sync::Mutex<Option<crate::link::SessionTx>>,
    asks: &crate::link::CertAsks,
    me: &crate::proto::NodeName,
    req: crate::proto::CertRequest,
) -> Result<crate::proto::CertGrant, String> {
    // A relay just started (or reconnecting) gets a moment to reach its parent.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let tx = loop {
        let cur = up.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match cur {
            Some(tx) if !tx.is_closed() => break tx,
            _ if tokio::time::Instant::now() >= until => {
                return Err(format!("relay {me} is not connected to its parent"))
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    asks.ask(&tx, req, crate::link::certs::ANSWER_WITHIN).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    st: Arc<RelayState>,
    identity: Arc<crate::tls::Identity>,
    s: Session,
) -> Result<(), LinkError> {
    let Session {
        peer,
        tx,
        mut rx,
        hq_offset_ms,
        ..
    } = s;
    if let Some(o) = hq_offset_ms {
        // Passed on in every Hello to this relay's children, and kept for
        // after a restart (durable with the next flush).
        st.clock.set_offset(o);
        st.store.table(super::HQ_CLOCK)?.put(b"offset", &o)?;
    }
    *st.up.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
    // Cleared however the session ends, also when its future is dropped (a
    // shutdown, a failed disk): a sender kept here would keep the link to
    // the parent alive with heartbeats after this relay stopped serving.
    let _up_guard = UpGuard {
        up: &st.up,
        tx: tx.clone(),
    };
    let _renew = AbortOnDrop(tokio::spawn(crate::link::keep_renewed(
        identity,
        st.asks.clone(),
        tx.clone(),
    )));
    // A parent other than the one that last heard this subtree (a
    // failover) learns it before the outbox backlog, which may speak of it.
    let announcement = announce::needed(&st, &peer.name)?;
    let mut announcing = announcement.len();
    for batch in announcement {
        let batch = batch
            .into_iter()
            .map(|e| (crate::link::OUT_OF_OUTBOX, e))
            .collect();
        crate::link::send(&tx, Msg::Events(batch)).await?;
    }
    let up = Upward::start(st.outbox.clone(), tx.clone());
    let r = async {
        // A message drained with a burst of placements that is not one of
        // them: handled next.
        let mut held: Option<Msg> = None;
        loop {
            let msg = match held.take() {
                Some(m) => m,
                None => rx.recv().await?,
            };
            match msg {
                Msg::Assign(a) if cancel::is_canceled(&st, a.job)? => {
                    // Canceled here before it arrived: acknowledged, never applied.
                    crate::link::send(
                        &tx,
                        Msg::AssignAck {
                            job: a.job,
                            attempt: a.attempt,
                        },
                    )
                    .await?;
                }
                Msg::Assign(a) => {
                    let d = assign::apply(&st, &a)?;
                    st.store.durable().await?;
                    crate::link::send(
                        &tx,
                        Msg::AssignAck {
                            job: a.job,
                            attempt: a.attempt,
                        },
                    )
                    .await?;
                    let packages: Vec<&crate::proto::InstallSpec> = match &a.action {
                        crate::proto::Action::Install(i) => vec![i],
                        // A sync: its packages and its collection's files.
                        crate::proto::Action::Sync(s) => {
                            s.installs.iter().chain([&s.package]).collect()
                        }
                        _ => vec![],
                    };
                    for i in packages {
                        let p = crate::proto::PackageRef {
                            name: i.name.clone(),
                            version: i.version.clone(),
                            manifest: i.manifest,
                        };
                        tokio::spawn(cache::prefetch(st.clone(), p));
                    }
                    if let crate::proto::Action::Audit(spec) = &a.action {
                        if let Some(r) = spec.objects_ref {
                            tokio::spawn(cache::prefetch_objects(st.clone(), r));
                        }
                    }
                    assign::deliver(&st, &a, d);
                }
                Msg::Sync(order) => cache::route_sync(&st, order),
                Msg::Forget { client, moved_to } if moves::moved_here(&st, &moved_to)? => {
                    // Queued on a branch this relay has left (it failed
                    // over with its subtree): the client lives here.
                    tracing::info!(%client, %moved_to, "forget for a client that moved within this subtree; kept");
                    crate::link::send(&tx, Msg::ForgetAck { client }).await?;
                }
                Msg::Forget { client, moved_to } => {
                    let (events, forget) = moves::forget(&st, &client, &moved_to)?;
                    st.outbox.push(&events)?;
                    st.store.durable().await?;
                    crate::link::send(&tx, Msg::ForgetAck { client }).await?;
                    crate::link::queue::send_now(&st.children, forget.into_iter().collect());
                }
                Msg::Deny { names } => {
                    deny::store(&st, &names)?;
                    st.store.durable().await?;
                    deny::apply(&st, names);
                }
                Msg::Purge { id, jobs } => {
                    let done = purge::apply(&st, id, &jobs)?;
                    st.store.durable().await?;
                    tracing::info!(
                        purge = id,
                        jobs = jobs.len(),
                        leaves = done.leaves,
                        attempts = done.attempts,
                        "purged jobs"
                    );
                    crate::link::send(&tx, Msg::PurgeAck { id }).await?;
                    crate::link::queue::send_now(&st.children, done.fwd);
                }
                Msg::Placement(sp) => {
                    // Every placement already here in one go: one flush for
                    // the burst that follows a wave of registrations, not
                    // one each (the parent's acks wait behind them).
                    let mut burst = vec![sp];
                    while burst.len() < PLACEMENT_BURST {
                        match rx.try_recv()? {
                            Some(Msg::Placement(sp)) => burst.push(sp),
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let mut got = Vec::with_capacity(burst.len());
                    for sp in burst {
                        got.push(placement::receive(&st, sp)?);
                    }
                    st.store.durable().await?;
                    for got in got {
                        let Some(client) = got.client else { continue };
                        crate::link::send(
                            &tx,
                            Msg::PlacementAck {
                                client: client.clone(),
                            },
                        )
                        .await?;
                        crate::link::queue::send_now(&st.children, got.fwd);
                        if got.kept {
                            // Assignments held for want of it go out now.
                            if let Some(agent) = st.child(&client) {
                                for a in home::pending_for(&st, &client)? {
                                    crate::link::send_soon(&agent, Msg::Assign(a));
                                }
                            }
                        }
                    }
                }
                Msg::Cancel { job } => {
                    let sends = cancel::apply(&st, job)?;
                    st.store.durable().await?;
                    crate::link::send(&tx, Msg::CancelAck { job }).await?;
                    cancel::send(&st, job, sends);
                }
                Msg::Pause { job, seq, reason } => {
                    let (recalls, fwd): (Vec<_>, Vec<_>) =
                        rollout::control(&st, job, seq, Some(reason))?
                            .into_iter()
                            .partition(|(_, m)| matches!(m, Msg::Recall { .. }));
                    // Recalls need nothing durable here: out at once.
                    crate::link::queue::send_now(&st.children, recalls);
                    st.store.durable().await?;
                    crate::link::send(&tx, Msg::PauseAck { job, seq }).await?;
                    crate::link::queue::send_now(&st.children, fwd);
                }
                Msg::Resume { job, seq } => {
                    let fwd = rollout::control(&st, job, seq, None)?;
                    st.store.durable().await?;
                    crate::link::send(&tx, Msg::ResumeAck { job, seq }).await?;
                    crate::link::queue::send_now(&st.children, fwd);
                    let start = rollout::release_jobs(&st, &[job])?;
                    crate::link::queue::send_now(&st.children, start);
                }
                Msg::Ack { seq } if seq == crate::link::OUT_OF_OUTBOX => {
                    announcing = announcing.saturating_sub(1);
                    if announcing == 0 {
                        announce::heard(&st, &peer.name)?;
                        tracing::info!(parent = %peer.name, "the parent has heard this subtree");
                    }
                }
                Msg::Ack { seq } => up.ack(seq)?,
                Msg::CertReply { id, result } => st.asks.answer(id, result),
                other => return Err(unexpected(&other, "from a parent")),
            }
        }
    }
    .await;
    drop(up);
    r
}

/// Forgets the parent's session in `RelayState::up` when dropped, if it is
/// still the one recorded.
struct UpGuard<'a> {
    up: &'a std::sync::Mutex<Option<crate::link::SessionTx>>,
    tx: crate::link::SessionTx,
}

impl Drop for UpGuard<'_> {
    fn drop(&mut self) {
        let mut cur = self.up.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|t| t.same_channel(&self.tx)) {
            *cur = None;
        }
    }
}
