//! The session to the parent: receive assignments (acknowledged after they
//! are on disk), pump the outbox upward, drop what the parent acknowledged.

use super::{assign, deny, moves, RelayState};
use crate::link::queue;
use crate::link::{dial_loop, pump_outbox, unexpected, Dialer, LinkError, Session};
use crate::proto::Msg;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Keeps the parent session up until `shutdown`.
pub(crate) async fn run(st: Arc<RelayState>, dialer: Dialer, shutdown: CancellationToken) {
    dial_loop(dialer, shutdown, |s| session(st.clone(), s)).await
}

async fn session(st: Arc<RelayState>, s: Session) -> Result<(), LinkError> {
    let Session { tx, mut rx, .. } = s;
    let (acked_tx, acked_rx) = watch::channel(0u64);
    let pump = tokio::spawn(pump_outbox(st.outbox.clone(), tx.clone(), acked_rx));
    let r = async {
        loop {
            match rx.recv().await? {
                Msg::Assign(a) => {
                    let d = assign::apply(&st, &a)?;
                    st.store.durable().await?;
                    tx.send(Msg::AssignAck {
                        job: a.job,
                        attempt: a.attempt,
                    })
                    .await
                    .map_err(|_| LinkError::Closed)?;
                    assign::deliver(&st, &a, d);
                }
                Msg::Forget { client, moved_to } => {
                    let (events, forget) = moves::forget(&st, &client, &moved_to)?;
                    st.outbox.push(&events)?;
                    st.store.durable().await?;
                    tx.send(Msg::ForgetAck { client })
                        .await
                        .map_err(|_| LinkError::Closed)?;
                    queue::send_forgets(&st.children, forget.into_iter().collect());
                }
                Msg::Deny { names } => {
                    deny::store(&st, &names)?;
                    st.store.durable().await?;
                    deny::apply(&st, names);
                }
                Msg::Ack { seq } => {
                    st.outbox.ack(seq)?;
                    acked_tx.send_replace(seq);
                }
                other => return Err(unexpected(&other, "from a parent")),
            }
        }
    }
    .await;
    pump.abort();
    r
}
