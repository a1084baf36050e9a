//! Sends a node's outbox to its parent: everything unacknowledged at the start
//! of a session, then each new entry, in batches, within a window of entries
//! sent but not yet acknowledged.

use super::{LinkError, SessionTx};
use crate::proto::Msg;
use crate::store::Outbox;
use tokio::sync::watch;

/// Entries per `Events` message, at most.
pub const BATCH: usize = 2048;
/// Stored bytes per `Events` message, at most (well under the frame limit).
pub const BATCH_BYTES: usize = 512 * 1024;
/// Entries sent but not acknowledged before the pump waits.
pub const WINDOW: u64 = 16 * BATCH as u64;

/// The highest sequence number the parent acknowledged in this session.
pub type AckCursor = watch::Sender<u64>;

/// Runs until the session's sender fails. `acked` is advanced by the session's
/// reader when `Ack`s arrive (after it removed them from the outbox).
pub async fn pump_outbox(
    outbox: Outbox,
    tx: SessionTx,
    acked: watch::Receiver<u64>,
) -> Result<(), LinkError> {
    let mut sent = 0u64;
    let mut acked = acked;
    let notify = outbox.notifier();
    loop {
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let batch = outbox.read_batch(sent, BATCH, BATCH_BYTES)?;
        if batch.is_empty() {
            changed.await;
            continue;
        }
        if let Some((last, _)) = batch.last() {
            sent = *last;
        }
        tx.send(Msg::Events(batch))
            .await
            .map_err(|_| LinkError::Closed)?;
        while sent > *acked.borrow() + WINDOW {
            acked.changed().await.map_err(|_| LinkError::Closed)?;
        }
    }
}
