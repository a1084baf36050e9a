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

/// The number of a batch sent outside the outbox (a relay's subtree
/// announced to a new parent): outbox entries start at 1, so its `Ack`
/// drops nothing from the outbox.
pub const OUT_OF_OUTBOX: u64 = 0;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        Attempt, Event, JobId, LeafOutput, LeafState, LeafUpdate, NodeName, AGENT_MAX_FRAME,
        MAX_FRAME,
    };

    /// Leaves with the largest output an agent sends (64 KiB of stdout, 64
    /// KiB of stderr, the 4 KiB mixed tail, a long reason): a batch read
    /// for sending stays under the byte bound, so its frame fits what a
    /// relay accepts from an agent (1 MiB), and a relay's batch of them
    /// fits what HQ accepts (8 MiB).
    #[tokio::test]
    async fn batches_of_the_largest_outputs_fit_the_frames() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let outbox = store.outbox("outbox").unwrap();
        let tail = LeafOutput::TAIL_BYTES;
        let big = |i: u32| {
            Event::Leaf(LeafUpdate {
                job: JobId(1),
                attempt: Attempt(1),
                client: NodeName::new(format!("c{i}")).unwrap(),
                relay: NodeName::new("r1").unwrap(),
                state: LeafState::Failed,
                exit_code: Some(1),
                reason: Some("r".repeat(1024)),
                output: Some("m".repeat(4096)),
                at_ms: 0,
                out: Some(LeafOutput {
                    stdout: "o".repeat(tail),
                    stderr: "€".repeat(tail / 3),
                    stdout_bytes: 1 << 40,
                    stderr_bytes: 1 << 40,
                    started_at_ms: u64::MAX,
                    duration_ms: u64::MAX,
                }),
                audit: None,
            })
        };
        let events: Vec<Event> = (0..100).map(big).collect();
        outbox.push(&events).unwrap();
        let mut after = 0;
        let mut sent = 0;
        while sent < events.len() {
            let batch = outbox.read_batch(after, BATCH, BATCH_BYTES).unwrap();
            assert!(!batch.is_empty());
            after = batch.last().unwrap().0;
            sent += batch.len();
            let frame = rmp_serde::to_vec_named(&Msg::Events(coalesce(batch))).unwrap();
            assert!(
                frame.len() <= BATCH_BYTES + 64 * 1024,
                "a batch of {} bytes",
                frame.len()
            );
            assert!(frame.len() < AGENT_MAX_FRAME && frame.len() < MAX_FRAME);
        }
        assert_eq!(sent, 100);
    }
}
