//! The session to the parent: receive assignments (acknowledged after they
//! are on disk), pump the outbox upward, drop what the parent acknowledged.

use super::{assign, cache, cancel, deny, moves, purge, RelayState};
use crate::link::{dial_loop, unexpected, Dialer, LinkError, Session, Upward};
use crate::proto::Msg;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Keeps the parent session up until `shutdown`.
pub(crate) async fn run(st: Arc<RelayState>, dialer: Dialer, shutdown: CancellationToken) {
    dial_loop(dialer, shutdown, |s| session(st.clone(), s)).await
}

async fn session(st: Arc<RelayState>, s: Session) -> Result<(), LinkError> {
    let Session { tx, mut rx, .. } = s;
    let up = Upward::start(st.outbox.clone(), tx.clone());
    let r = async {
        loop {
            match rx.recv().await? {
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
                    if let crate::proto::Action::Install(i) = &a.action {
                        let p = crate::proto::PackageRef {
                            name: i.name.clone(),
                            version: i.version.clone(),
                            manifest: i.manifest,
                        };
                        tokio::spawn(cache::prefetch(st.clone(), p));
                    }
                    assign::deliver(&st, &a, d);
                }
                Msg::Sync(order) => cache::route_sync(&st, order),
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
                Msg::Cancel { job } => {
                    let sends = cancel::apply(&st, job)?;
                    st.store.durable().await?;
                    crate::link::send(&tx, Msg::CancelAck { job }).await?;
                    cancel::send(&st, job, sends);
                }
                Msg::Ack { seq } => up.ack(seq)?,
                other => return Err(unexpected(&other, "from a parent")),
            }
        }
    }
    .await;
    drop(up);
    r
}
