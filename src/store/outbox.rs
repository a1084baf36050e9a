//! A persistent outbox of upward events, keyed by sequence number.
//!
//! Entries stay until the parent acknowledges their sequence number; after a
//! reconnect everything unacknowledged is sent again. Several outboxes (the
//! agents of a swarm) can share one tree, each under its own key prefix.
//!
//! Every event has its own sequence number, but the events of one push share
//! a record (a group, keyed by the sequence number of its **last** event;
//! value: a MessagePack array of the events, or a single event for a group
//! of one, the layout before groups). So a push costs one insert and an ack
//! one remove per group, however many events; reading `after` n starts at
//! the first group whose last event is past n and skips what it holds up
//! to n; acknowledging n removes the groups that end at or before n, and a
//! group acknowledged in part stays (its acknowledged events are sent again
//! if asked for, which parents take as duplicates). A record may carry a
//! rider, one more key of the tree written with it (`record.rs`).

mod record;

use super::{keys, StoreError, Table};
use crate::proto::Event;
use record::{encode_group, group, group_len, is_group};
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
            Some(r) => {
                let (k, v) = r?;
                let end = keys::read_u64(&k[prefix.len()..]).unwrap_or(1);
                (end + 1).saturating_sub(group_len(group(&v))).max(1)
            }
            None => last + 1,
        };
        // A rider whose own write did not survive a crash (see `record`).
        for r in tree.scan_prefix(prefix) {
            let (_, v) = r?;
            if let (Some((k, val)), _) = record::split(&v) {
                if !tree.contains_key(k)? {
                    tree.insert(k, val)?;
                }
            }
        }
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

    /// Groups of at most this many events, and of about this many bytes.
    const GROUP_EVENTS: usize = 256;
    const GROUP_BYTES: usize = 64 * 1024;

    /// The records for `events` numbered from `first`: (key, value) per
    /// group, each group as large as the limits allow.
    fn groups(&self, first: u64, events: &[Event]) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        let mut group: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        let mut seq = first;
        for e in events {
            let v = rmp_serde::to_vec_named(e)?;
            if !group.is_empty()
                && (group.len() >= Self::GROUP_EVENTS || bytes + v.len() > Self::GROUP_BYTES)
            {
                out.push((
                    self.key(seq - 1),
                    encode_group(std::mem::take(&mut group), bytes),
                ));
                bytes = 0;
            }
            bytes += v.len();
            group.push(v);
            seq += 1;
        }
        if !group.is_empty() {
            out.push((self.key(seq - 1), encode_group(group, bytes)));
        }
        Ok(out)
    }

    /// The events of a group record whose last event is `last`, numbered.
    fn decode_group(&self, last: u64, v: &[u8]) -> Result<Vec<(u64, Event)>, StoreError> {
        let v = group(v);
        if is_group(v) {
            let evs: Vec<Event> = self.table.decode(v)?;
            let first = (last + 1).saturating_sub(evs.len() as u64);
            Ok((first..).zip(evs).collect())
        } else {
            Ok(vec![(last, self.table.decode(v)?)])
        }
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
        for (k, v) in self.groups(first, events)? {
            self.tree.insert(k, v)?;
        }
        self.next
            .store(first + events.len() as u64, Ordering::SeqCst);
        self.pushed(first + events.len() as u64 - 1);
        self.notify.notify_waiters();
        Ok(first + events.len() as u64 - 1)
    }

    /// Appends events and writes `key` = `value` in the same tree, all at
    /// once: after a crash, either all of it is there or none. A new key
    /// with events that make one group rides in the group's record (two
    /// plain inserts, see `record`); anything else is one sled batch.
    pub fn push_with<V: serde::Serialize>(
        &self,
        events: &[Event],
        key: &[u8],
        value: &V,
    ) -> Result<u64, StoreError> {
        let _order = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let first = self.next.load(Ordering::SeqCst);
        let value = rmp_serde::to_vec_named(value)?;
        let mut groups = self.groups(first, events)?;
        if groups.len() == 1 && !self.tree.contains_key(key)? {
            // The group (with its rider) first: sled recovers a prefix.
            let (k, g) = groups.remove(0);
            self.tree.insert(k, record::with_rider(key, &value, &g))?;
            self.tree.insert(key, value)?;
        } else {
            let mut batch = sled::Batch::default();
            for (k, v) in groups {
                batch.insert(k, v);
            }
            batch.insert(key, value);
            self.tree.apply_batch(batch)?;
        }
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
        'groups: for r in self.tree.range(self.key(after + 1)..=end) {
            let (k, v) = r?;
            let Some(last) = keys::read_u64(&k[self.prefix.len()..]) else {
                continue;
            };
            let g = group(&v);
            let n = group_len(g) as usize;
            let each = g.len() / n.max(1) + 16;
            for (seq, e) in self.decode_group(last, &v)? {
                if seq <= after {
                    continue;
                }
                bytes += each;
                if !out.is_empty() && bytes > max_bytes {
                    break 'groups;
                }
                out.push((seq, e));
                if out.len() >= max {
                    break 'groups;
                }
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

    /// Drops every entry up to and including `seq`: the groups that end
    /// there or before, and the acknowledged start of a group that goes on
    /// past it (rewritten with the rest, under the same key).
    pub fn ack(&self, seq: u64) -> Result<(), StoreError> {
        for r in self.tree.range(self.key(0)..=self.key(seq)) {
            let (k, _) = r?;
            self.tree.remove(k)?;
        }
        let _order = self.append.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self
            .tree
            .range(self.key(seq.saturating_add(1))..=self.key(u64::MAX))
            .next()
        {
            let (k, v) = r?;
            let last = keys::read_u64(&k[self.prefix.len()..]).unwrap_or(0);
            if (last + 1).saturating_sub(group_len(group(&v))) <= seq {
                let rest: Vec<Event> = self
                    .decode_group(last, &v)?
                    .into_iter()
                    .filter(|(s, _)| *s > seq)
                    .map(|(_, e)| e)
                    .collect();
                for (k, v) in self.groups(seq + 1, &rest)? {
                    self.tree.insert(k, v)?;
                }
            }
        }
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked(seq);
        Ok(())
    }

    /// Events waiting (walks them).
    pub fn len(&self) -> usize {
        self.tree
            .scan_prefix(&*self.prefix)
            .map(|r| r.map_or(0, |(_, v)| group_len(group(&v)) as usize))
            .sum()
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

/// A stored group: key and value.
type Record = (Vec<u8>, Vec<u8>);

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
        let s = reopen(dir.path()).await;
        let o = s.outbox("outbox").unwrap();
        assert_eq!(o.waiting.lock().unwrap().stats().0, 2);
        o.ack(3).unwrap();
        assert_eq!(o.waiting.lock().unwrap().stats(), (0, None));
    }

    /// Opens the store at `dir` again after a close: sled's own threads may
    /// hold the file lock a moment longer, so retry until it is released
    /// (within a deadline).
    async fn reopen(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline && e.is_locked() => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
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

    #[tokio::test]
    async fn a_push_is_one_record_read_and_acked_by_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let o = s.outbox("outbox").unwrap();
        let evs: Vec<Event> = (1..=5).map(ev).collect();
        assert_eq!(o.push(&evs).unwrap(), 5);
        assert_eq!(o.push(&[ev(6)]).unwrap(), 6);
        // Two records: the group of five, and the single event.
        assert_eq!(o.tree.len(), 2);
        assert_eq!(o.len(), 6);
        // Read from inside the group: only what follows.
        let got = o.read_after(2, 10).unwrap();
        let want: Vec<(u64, Event)> = (3..=6).map(|i| (i as u64, ev(i))).collect();
        assert_eq!(got, want);
        assert_eq!(o.read_after(2, 2).unwrap(), want[..2].to_vec());
        // An ack inside a group keeps the group's rest.
        o.ack(3).unwrap();
        assert_eq!(o.tree.len(), 2);
        assert_eq!(o.read_after(0, 10).unwrap(), want[1..].to_vec());
        assert_eq!(o.read_after(3, 10).unwrap(), want[1..].to_vec());
        assert_eq!(o.waiting.lock().unwrap().stats().0, 3);
        o.ack(5).unwrap();
        assert_eq!(o.tree.len(), 1);
        assert_eq!(o.read_after(0, 10).unwrap(), vec![(6, ev(6))]);
        o.ack(6).unwrap();
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn groups_are_capped_and_a_reopen_counts_from_the_first_unacked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let o = s.outbox("outbox").unwrap();
            let evs: Vec<Event> = (0..600).map(ev).collect();
            assert_eq!(o.push(&evs).unwrap(), 600);
            assert_eq!(o.tree.len(), 3, "256 + 256 + 88");
            let all = o.read_after(0, 1000).unwrap();
            assert_eq!(all.len(), 600);
            assert!(all
                .iter()
                .enumerate()
                .all(|(i, (seq, e))| *seq == i as u64 + 1 && *e == ev(i as u32)));
            o.ack(300).unwrap();
            assert_eq!(o.tree.len(), 2);
            drop(o);
            s.close().await.unwrap();
        }
        let s = reopen(dir.path()).await;
        let o = s.outbox("outbox").unwrap();
        // What the ack left of the second group, and the third: 301..=600.
        assert_eq!(o.waiting.lock().unwrap().stats().0, 300);
        assert_eq!(o.read_after(300, 1000).unwrap().len(), 300);
        assert_eq!(o.push(&[ev(1)]).unwrap(), 601);
    }

    #[tokio::test]
    async fn records_of_one_event_each_still_read() {
        // The layout before groups: one event per record, keyed by its seq.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.table("outbox").unwrap();
        for i in 1..=3u32 {
            t.put(&crate::store::keys::seq(u64::from(i)), &ev(i))
                .unwrap();
        }
        let o = s.outbox("outbox").unwrap();
        assert_eq!(o.waiting.lock().unwrap().stats().0, 3);
        assert_eq!(o.read_after(1, 10).unwrap(), vec![(2, ev(2)), (3, ev(3))]);
        assert_eq!(o.push(&[ev(4), ev(5)]).unwrap(), 5);
        o.ack(3).unwrap();
        assert_eq!(o.read_after(0, 10).unwrap(), vec![(4, ev(4)), (5, ev(5))]);
    }

    #[tokio::test]
    async fn a_new_key_rides_with_its_event_and_survives_a_lost_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let o = s.outbox_prefixed("agent", b"o\0").unwrap();
            assert_eq!(o.push_with(&[ev(1)], b"r\0one", &7u32).unwrap(), 1);
            // An existing key: a batch, no rider.
            assert_eq!(o.push_with(&[ev(2)], b"r\0one", &8u32).unwrap(), 2);
            assert_eq!(o.push_with(&[ev(3)], b"r\0two", &9u32).unwrap(), 3);
            let t = s.table("agent").unwrap();
            assert_eq!(t.get::<u32>(b"r\0one").unwrap(), Some(8));
            assert_eq!(
                o.read_after(0, 10).unwrap(),
                vec![(1, ev(1)), (2, ev(2)), (3, ev(3))]
            );
            // As after a crash between the record and its rider's own write.
            t.remove(b"r\0two").unwrap();
            drop(o);
            s.close().await.unwrap();
        }
        let s = reopen(dir.path()).await;
        let o = s.outbox_prefixed("agent", b"o\0").unwrap();
        let t = s.table("agent").unwrap();
        // Restored from its rider; a later value is never undone by one.
        assert_eq!(t.get::<u32>(b"r\0two").unwrap(), Some(9));
        assert_eq!(t.get::<u32>(b"r\0one").unwrap(), Some(8));
        assert_eq!(o.len(), 3);
        o.ack(2).unwrap();
        assert_eq!(o.read_after(0, 10).unwrap(), vec![(3, ev(3))]);
        o.ack(3).unwrap();
        assert!(o.is_empty());
    }
}
