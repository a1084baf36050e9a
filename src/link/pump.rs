//! Sends a node's outbox to its parent: everything unacknowledged at the start
//! of a session, then each new entry, in batches, one batch in flight. Which
//! entries a batch may drop is decided in `rules::coalesce`, not here.

use super::{LinkError, SessionTx};
use crate::proto::Msg;
use crate::rules::coalesce;
use crate::store::Outbox;
use tokio::sync::watch;

/// Entries per `Events` message, at most.
pub const BATCH: usize = 2048;
/// Stored bytes per `Events` message, at most (well under the frame limit).
pub const BATCH_BYTES: usize = 512 * 1024;

/// The highest sequence number the parent acknowledged in this session.
pub type AckCursor = watch::Sender<u64>;

/// The child's side of a session with its parent: the outbox pump runs as
/// long as this lives; [`Upward::ack`] takes the parent's acknowledgements.
pub struct Upward {
    outbox: Outbox,
    acked: AckCursor,
    pump: tokio::task::JoinHandle<Result<(), LinkError>>,
}

impl Upward {
    /// Starts pumping `outbox` (from its oldest entry) into the session.
    pub fn start(outbox: Outbox, tx: SessionTx) -> Upward {
        let (acked, rx) = watch::channel(0u64);
        let pump = tokio::spawn(pump_outbox(outbox.clone(), tx, rx));
        Upward {
            outbox,
            acked,
            pump,
        }
    }

    /// The parent stored everything up to `seq`: drop it from the outbox.
    pub fn ack(&self, seq: u64) -> Result<(), LinkError> {
        self.outbox.ack(seq)?;
        self.acked.send_replace(seq);
        Ok(())
    }
}

impl Drop for Upward {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

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
        crate::link::send(&tx, Msg::Events(coalesce(batch))).await?;
        // One batch in flight: while the parent stores it (one flush), new
        // events gather here, and the next batch carries them all. Under load
        // batches grow and flushes stay few; when idle, each event goes at once.
        while sent > *acked.borrow() {
            acked.changed().await.map_err(|_| LinkError::Closed)?;
        }
    }
}
