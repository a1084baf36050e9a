//! Sends a node's outbox to its parent: everything unacknowledged at the start
//! of a session, then each new entry, in batches, one batch in flight.

use super::{LinkError, SessionTx};
use crate::proto::{Attempt, Event, JobId, Msg, NodeName};
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

/// Drops leaf updates that a later update in the same batch supersedes
/// (same job, client and attempt): one flush at the parent then covers only
/// the latest state per leaf. The parent acks the batch's last sequence
/// number, which still covers the dropped entries.
pub fn coalesce(batch: Vec<(u64, Event)>) -> Vec<(u64, Event)> {
    use std::collections::HashMap;
    let mut latest: HashMap<(JobId, &NodeName, Attempt), usize> = HashMap::new();
    for (i, (_, e)) in batch.iter().enumerate() {
        if let Event::Leaf(u) = e {
            latest.insert((u.job, &u.client, u.attempt), i);
        }
    }
    let keep: Vec<bool> = batch
        .iter()
        .enumerate()
        .map(|(i, (_, e))| match e {
            Event::Leaf(u) => latest.get(&(u.job, &u.client, u.attempt)) == Some(&i),
            _ => true,
        })
        .collect();
    let last = batch.last().map(|(s, _)| *s);
    let mut out: Vec<(u64, Event)> = batch
        .into_iter()
        .zip(keep)
        .filter_map(|(x, k)| k.then_some(x))
        .collect();
    // The last sequence number must be sent so that the ack covers the batch.
    if let (Some(last), Some((s, _))) = (last, out.last_mut()) {
        *s = last;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LeafState, LeafUpdate};

    fn leaf(client: &str, attempt: u32, state: LeafState) -> Event {
        Event::Leaf(LeafUpdate {
            job: JobId(1),
            attempt: Attempt(attempt),
            client: NodeName::new(client).unwrap(),
            relay: NodeName::new("r1").unwrap(),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms: 0,
            audit: None,
        })
    }

    #[test]
    fn superseded_updates_are_dropped_and_the_last_seq_kept() {
        let batch = vec![
            (10, leaf("c1", 1, LeafState::Delivered)),
            (11, leaf("c2", 1, LeafState::Delivered)),
            (12, leaf("c1", 1, LeafState::Succeeded)),
            (13, leaf("c2", 2, LeafState::Pending)),
            (14, leaf("c2", 1, LeafState::Running)),
        ];
        let out = coalesce(batch);
        let got: Vec<(u64, String)> = out
            .iter()
            .map(|(s, e)| match e {
                Event::Leaf(u) => (*s, format!("{}{}{}", u.client, u.attempt, u.state.as_str())),
                _ => (*s, String::new()),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (12, "c11succeeded".to_string()),
                (13, "c22pending".to_string()),
                (14, "c21running".to_string()),
            ]
        );
        assert!(coalesce(vec![]).is_empty());
    }
}
