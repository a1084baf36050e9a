//! A persistent outbox of upward events, keyed by sequence number.
//!
//! Entries stay until the parent acknowledges their sequence number; after a
//! reconnect everything unacknowledged is sent again.

use super::{keys, StoreError, Table};
use crate::proto::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The outbox of one node.
#[derive(Clone)]
pub struct Outbox {
    table: Table,
    next: Arc<AtomicU64>,
    notify: Arc<Notify>,
}

impl Outbox {
    pub(super) fn open(table: Table) -> Result<Outbox, StoreError> {
        let last = match table.tree.last()? {
            Some((k, _)) => keys::read_u64(&k).unwrap_or(0),
            None => 0,
        };
        // After everything was acknowledged and removed, numbering restarts at 1:
        // harmless, since a parent keeps no per-sequence state (events are idempotent).
        Ok(Outbox {
            table,
            next: Arc::new(AtomicU64::new(last + 1)),
            notify: Arc::new(Notify::new()),
        })
    }

    /// Appends events (durable after `Store::durable`); returns the last sequence number.
    pub fn push(&self, events: &[Event]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(self.next.load(Ordering::SeqCst).saturating_sub(1));
        }
        let first = self.next.fetch_add(events.len() as u64, Ordering::SeqCst);
        let items = events
            .iter()
            .enumerate()
            .map(|(i, e)| (keys::seq(first + i as u64).to_vec(), e));
        self.table.put_many(items)?;
        self.notify.notify_waiters();
        Ok(first + events.len() as u64 - 1)
    }

    /// Up to `max` entries with sequence numbers above `after`.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        self.read_batch(after, max, usize::MAX)
    }

    /// Up to `max` entries above `after`, stopping before their stored size
    /// passes `max_bytes` (at least one entry, however large).
    pub fn read_batch(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Event)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in self.table.tree.range(keys::seq(after + 1).to_vec()..) {
            let (k, v) = r?;
            let Some(seq) = keys::read_u64(&k) else {
                continue;
            };
            bytes += v.len() + 16;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((seq, self.table.decode(&v)?));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Drops every entry up to and including `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for r in self.table.tree.range(..=keys::seq(seq)) {
            let (k, _) = r?;
            batch.remove(k);
        }
        self.table.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Resolves after the next push. Create it before reading to not miss one.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// The shared wake-up handle, for tasks that outlive a borrow.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::proto::{Event, NodeName};
    use crate::store::Store;

    fn ev(i: u32) -> Event {
        Event::ClientJoined {
            client: NodeName::new(format!("c{i}")).unwrap(),
            relay: NodeName::new("r1").unwrap(),
        }
    }

    #[tokio::test]
    async fn push_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let o = s.outbox("outbox").unwrap();
            assert_eq!(o.push(&[ev(1), ev(2), ev(3)]).unwrap(), 3);
            assert_eq!(o.read_after(0, 10).unwrap().len(), 3);
            assert_eq!(o.read_after(1, 1).unwrap(), vec![(2, ev(2))]);
            o.ack(2).unwrap();
            assert_eq!(o.read_after(0, 10).unwrap(), vec![(3, ev(3))]);
            drop(o);
            s.close().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let o = s.outbox("outbox").unwrap();
        assert_eq!(o.push(&[ev(4)]).unwrap(), 4);
        assert_eq!(o.read_after(0, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn batches_are_capped_by_bytes_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let o = s.outbox("outbox").unwrap();
        let evs: Vec<Event> = (0..100).map(ev).collect();
        o.push(&evs).unwrap();
        let small = o.read_batch(0, 1000, 200).unwrap();
        assert!(!small.is_empty() && small.len() < 100, "{}", small.len());
        assert_eq!(o.read_batch(0, 1000, 1).unwrap().len(), 1);
        assert_eq!(o.read_batch(0, 1000, usize::MAX).unwrap().len(), 100);
    }
}
