//! A persistent outbox of upward events, keyed by sequence number.
//!
//! Entries stay until the parent acknowledges their sequence number; after a
//! reconnect everything unacknowledged is sent again. Several outboxes (the
//! agents of a swarm) can share one tree, each under its own key prefix.

use super::{keys, StoreError, Table};
use crate::proto::Event;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// What waits in one outbox, kept in memory for the metrics (depth and the
/// oldest entry's age) so a scrape never walks the tree.
#[derive(Default)]
struct Waiting {
    /// Highest sequence number pushed.
    last: u64,
    /// Highest sequence number acknowledged (everything up to it is gone).
    acked: u64,
    /// (last sequence number of a push, unix ms of the push), oldest first;
    /// pushes fully acknowledged are dropped.
    pushes: VecDeque<(u64, u64)>,
}

impl Waiting {
    fn pushed(&mut self, last: u64, at_ms: u64) {
        self.last = self.last.max(last);
        self.pushes.push_back((last, at_ms));
    }
    fn acked(&mut self, seq: u64) {
        self.acked = self.acked.max(seq.min(self.last));
        while self.pushes.front().is_some_and(|(l, _)| *l <= self.acked) {
            self.pushes.pop_front();
        }
    }
    /// (entries waiting, unix ms of the oldest push still waiting).
    fn stats(&self) -> (u64, Option<u64>) {
        (
            self.last.saturating_sub(self.acked),
            self.pushes.front().map(|(_, t)| *t),
        )
    }
}

/// Every outbox of this process, for the metrics.
static OUTBOXES: Mutex<Vec<Weak<Mutex<Waiting>>>> = Mutex::new(Vec::new());

/// Entries waiting in every outbox of this process, and the age of the
/// oldest one (zero when none waits).
pub fn waiting() -> (u64, std::time::Duration) {
    let now = crate::proto::now_ms();
    let mut all = OUTBOXES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    let (mut depth, mut oldest) = (0u64, None::<u64>);
    for w in all.iter().filter_map(|w| w.upgrade()) {
        let (d, t) = w.lock().unwrap_or_else(|p| p.into_inner()).stats();
        depth += d;
        if let Some(t) = t {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    let age = oldest.map_or(0, |t| now.saturating_sub(t));
    (depth, std::time::Duration::from_millis(age))
}

fn track(w: &Arc<Mutex<Waiting>>) {
    static COLLECTOR: std::sync::Once = std::sync::Once::new();
    COLLECTOR.call_once(|| {
        crate::metrics::on_scrape(|| {
            let (depth, age) = waiting();
            crate::metrics::set_outbox(depth, age);
            true
        })
    });
    let mut all = OUTBOXES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(w));
}

/// The outbox of one node.
#[derive(Clone)]
pub struct Outbox {
    table: Table,
    /// The same tree, as sled (outboxes live on sled only).
    tree: sled::Tree,
    prefix: Arc<[u8]>,
    /// Held while numbering and inserting, so entries become visible in
    /// sequence order: a reader never sees seq n+1 before n (it would skip n,
    /// and the parent's ack of n+1 would remove n unsent).
    append: Arc<Mutex<()>>,
    next: Arc<AtomicU64>,
    notify: Arc<Notify>,
    /// Depth and push times, for the metrics.
    waiting: Arc<Mutex<Waiting>>,
}

impl Outbox {
    pub(super) fn open(table: Table, prefix: &[u8]) -> Result<Outbox, StoreError> {
        let tree = table.sled()?.clone();
        let last = match tree.scan_prefix(prefix).next_back() {
            Some(r) => keys::read_u64(&r?.0[prefix.len()..]).unwrap_or(0),
            None => 0,
        };
        let first = match tree.scan_prefix(prefix).next() {
            Some(r) => keys::read_u64(&r?.0[prefix.len()..]).unwrap_or(1),
            None => last + 1,
        };
        // Entries left from before a restart count as pushed now.
        let mut waiting = Waiting {
            last,
            acked: first.saturating_sub(1),
            pushes: VecDeque::new(),
        };
        if last >= first {
            waiting.pushes.push_back((last, crate::proto::now_ms()));
        }
        let waiting = Arc::new(Mutex::new(waiting));
        track(&waiting);
        // After everything was acknowledged and removed, numbering restarts at 1:
        // harmless, since a parent keeps no per-sequence state (events are idempotent).
        Ok(Outbox {
            table,
            tree,
            prefix: prefix.into(),
            append: Arc::new(Mutex::new(())),
            next: Arc::new(AtomicU64::new(last + 1)),
            notify: Arc::new(Notify::new()),
            waiting,
        })
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 8);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&keys::seq(seq));
        k
    }

    /// Appends events (durable after `Store::durable`); returns the last sequence number.
    pub fn push(&self, events: &[Event]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(self.next.load(Ordering::SeqCst).saturating_sub(1));
        }
        let _order = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let first = self.next.load(Ordering::SeqCst);
        let items = events
            .iter()
            .enumerate()
            .map(|(i, e)| (self.key(first + i as u64), e));
        self.table.put_many(items)?;
        self.next
            .store(first + events.len() as u64, Ordering::SeqCst);
        self.pushed(first + events.len() as u64 - 1);
        self.notify.notify_waiters();
        Ok(first + events.len() as u64 - 1)
    }

    /// Appends events and writes `key` = `value` in the same tree, all in
    /// one atomic batch: after a crash, either all of it is there or none.
    pub fn push_with<V: serde::Serialize>(
        &self,
        events: &[Event],
        key: &[u8],
        value: &V,
    ) -> Result<u64, StoreError> {
        let _order = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let first = self.next.load(Ordering::SeqCst);
        let mut batch = sled::Batch::default();
        for (i, e) in events.iter().enumerate() {
            batch.insert(self.key(first + i as u64), rmp_serde::to_vec_named(e)?);
        }
        batch.insert(key, rmp_serde::to_vec_named(value)?);
        self.tree.apply_batch(batch)?;
        self.next
            .store(first + events.len() as u64, Ordering::SeqCst);
        if !events.is_empty() {
            self.pushed(first + events.len() as u64 - 1);
        }
        self.notify.notify_waiters();
        Ok((first + events.len() as u64).saturating_sub(1))
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
        let end = self.key(u64::MAX);
        for r in self.tree.range(self.key(after + 1)..=end) {
            let (k, v) = r?;
            let Some(seq) = keys::read_u64(&k[self.prefix.len()..]) else {
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

    fn pushed(&self, last: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pushed(last, crate::proto::now_ms());
    }

    /// Drops every entry up to and including `seq`.
    pub fn ack(&self, seq: u64) -> Result<(), StoreError> {
        for r in self.tree.range(self.key(0)..=self.key(seq)) {
            let (k, _) = r?;
            self.tree.remove(k)?;
        }
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked(seq);
        Ok(())
    }

    /// Entries waiting (walks them).
    pub fn len(&self) -> usize {
        self.tree.scan_prefix(&*self.prefix).count()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.tree.scan_prefix(&*self.prefix).next().is_none()
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
    use super::Waiting;
    use crate::proto::{Event, NodeName};
    use crate::store::Store;

    #[test]
    fn waiting_counts_depth_and_the_oldest_push() {
        let mut w = Waiting::default();
        assert_eq!(w.stats(), (0, None));
        w.pushed(3, 100); // 1..=3
        w.pushed(5, 200); // 4..=5
        assert_eq!(w.stats(), (5, Some(100)));
        w.acked(2); // 3 of the first push still waits
        assert_eq!(w.stats(), (3, Some(100)));
        w.acked(3);
        assert_eq!(w.stats(), (2, Some(200)));
        w.acked(9); // beyond what was pushed: everything
        assert_eq!(w.stats(), (0, None));
        w.pushed(6, 300);
        assert_eq!(w.stats(), (1, Some(300)));
    }

    #[tokio::test]
    async fn depth_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let o = s.outbox("outbox").unwrap();
            o.push(&[ev(1), ev(2), ev(3)]).unwrap();
            o.ack(1).unwrap();
            assert_eq!(o.waiting.lock().unwrap().stats().0, 2);
            drop(o);
            s.close().await.unwrap();
        }
        // sled's own threads may hold the file lock a moment after close:
        // open again as soon as it is released (within a deadline).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let s = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let o = s.outbox("outbox").unwrap();
        assert_eq!(o.waiting.lock().unwrap().stats().0, 2);
        o.ack(3).unwrap();
        assert_eq!(o.waiting.lock().unwrap().stats(), (0, None));
    }

    fn ev(i: u32) -> Event {
        Event::ClientJoined {
            client: NodeName::new(format!("c{i}")).unwrap(),
            relay: NodeName::new("r1").unwrap(),
            at_ms: 0,
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

    #[tokio::test]
    async fn prefixed_outboxes_share_a_tree_without_mixing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s.outbox_prefixed("outbox", b"a\0").unwrap();
        let b = s.outbox_prefixed("outbox", b"b\0").unwrap();
        a.push(&[ev(1), ev(2)]).unwrap();
        b.push(&[ev(3)]).unwrap();
        assert_eq!(a.read_after(0, 10).unwrap().len(), 2);
        assert_eq!(b.read_after(0, 10).unwrap(), vec![(1, ev(3))]);
        a.ack(2).unwrap();
        assert!(a.is_empty());
        assert_eq!(b.len(), 1);
        drop((a, b));
        let a = s.outbox_prefixed("outbox", b"a\0").unwrap();
        assert_eq!(a.push(&[ev(4)]).unwrap(), 1);
        let b = s.outbox_prefixed("outbox", b"b\0").unwrap();
        assert_eq!(b.push(&[ev(5)]).unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pushes_become_visible_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let o = s.outbox("outbox").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        o.push(&[ev(i)]).unwrap();
                    }
                })
            })
            .collect();
        // A reader following the outbox like the pump does never finds a gap.
        let mut seen = 0u64;
        while seen < 2000 {
            for (seq, _) in o.read_after(seen, 64).unwrap() {
                assert_eq!(seq, seen + 1, "gap after {seen}");
                seen = seq;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}
