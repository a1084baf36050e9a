//! Agents' results gathered between flushes: the home-leaf changes and the
//! events that report them, held in memory until the store's next flush
//! round writes them all at once (`Store::before_flush`), so results from
//! many agents within one flush cost one outbox record, not one each.
//!
//! The rules it keeps: an agent is acknowledged only after `durable`, whose
//! round writes what it gathered before (acked == fsynced); the events go
//! into the outbox before the leaves they report (a crash keeps a prefix);
//! one record per leaf per flush, the latest merge (state never regresses:
//! a later update merges into the gathered record, not the stored one).
//! Every other writer of leaves holds `RelayState::write` and calls
//! [`Gathered::settle`] first, so it never reads a leaf older than what is
//! gathered. Decides nothing about what a result means (`home.rs` does).

use super::RelayState;
use crate::proto::Event;
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, NameJob};
use crate::store::{Outbox, StoreError, Tree};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What waits for the next flush round.
#[derive(Default)]
struct Buffer {
    /// Events for the parent, in the order they were gathered.
    events: Vec<Event>,
    /// Latest record of each changed leaf, in first-change order.
    leaves: Vec<(JobClient, LeafRecord)>,
    /// Index into `leaves`.
    at: HashMap<JobClient, usize>,
}

/// Home-leaf changes and their events, gathered until the next flush.
pub(crate) struct Gathered {
    /// `RelayState::write`: held while writing what was gathered.
    write: Arc<Mutex<()>>,
    buf: Mutex<Buffer>,
    outbox: Outbox,
    leaves: Tree<JobClient, LeafRecord>,
    client_leaves: Tree<NameJob, u32>,
}

impl Gathered {
    pub(super) fn new(
        write: Arc<Mutex<()>>,
        outbox: Outbox,
        leaves: Tree<JobClient, LeafRecord>,
        client_leaves: Tree<NameJob, u32>,
    ) -> Arc<Gathered> {
        Arc::new(Gathered {
            write,
            buf: Mutex::new(Buffer::default()),
            outbox,
            leaves,
            client_leaves,
        })
    }

    /// Has the store's flush rounds write what is gathered (the hook holds
    /// only a weak reference: the store outlives no relay by it).
    pub(super) fn hook_into(
        self: &Arc<Self>,
        store: &crate::store::Store,
    ) -> Result<(), StoreError> {
        let me = Arc::downgrade(self);
        store.before_flush(move || match me.upgrade() {
            Some(g) => {
                let _w = g.write.lock().unwrap_or_else(|p| p.into_inner());
                g.write_out()
            }
            None => Ok(()),
        })
    }

    fn buf(&self) -> MutexGuard<'_, Buffer> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leaf as it will be after the next flush: gathered, else stored.
    pub(crate) fn leaf(&self, k: &JobClient) -> Result<Option<LeafRecord>, StoreError> {
        if let Some(r) = self.gathered(k) {
            return Ok(Some(r));
        }
        self.leaves.get(k)
    }

    /// The gathered record of a leaf, if it changed since the last flush.
    pub(crate) fn gathered(&self, k: &JobClient) -> Option<LeafRecord> {
        let b = self.buf();
        b.at.get(k).map(|&i| b.leaves[i].1.clone())
    }

    /// Gathers `events` and the leaf `records` they report (the caller holds
    /// `RelayState::write` and merged each record into [`Gathered::leaf`]).
    pub(crate) fn add(&self, events: Vec<Event>, records: Vec<(JobClient, LeafRecord)>) {
        let mut b = self.buf();
        b.events.extend(events);
        for (k, r) in records {
            match b.at.get(&k) {
                Some(&i) => b.leaves[i].1 = r,
                None => {
                    let i = b.leaves.len();
                    b.at.insert(k.clone(), i);
                    b.leaves.push((k, r));
                }
            }
        }
    }

    /// Writes what is gathered now (not yet durable). The caller holds
    /// `RelayState::write`.
    pub(crate) fn settle(&self, _write: &MutexGuard<'_, ()>) -> Result<(), StoreError> {
        self.write_out()
    }

    /// Events first, then the leaves they report; a final leaf leaves the
    /// per-client index (nothing left to deliver). On an error what was
    /// taken goes back, to be written again by the next round or writer
    /// (re-sent events are idempotent): a settle outside a flush round may
    /// fail while a later round succeeds, and that round must not
    /// acknowledge results it never wrote.
    fn write_out(&self) -> Result<(), StoreError> {
        let b = std::mem::take(&mut *self.buf());
        if b.events.is_empty() && b.leaves.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_all(&b) {
            // The caller holds `RelayState::write`: nothing was gathered since.
            *self.buf() = b;
            return Err(e);
        }
        Ok(())
    }

    fn write_all(&self, b: &Buffer) -> Result<(), StoreError> {
        self.outbox.push(&b.events)?;
        self.leaves
            .put_many(b.leaves.iter().map(|(k, r)| (k.clone(), r)))?;
        for (JobClient(job, client), r) in &b.leaves {
            if r.state.is_final() {
                self.client_leaves.remove(&NameJob(client.clone(), *job))?;
            }
        }
        Ok(())
    }
}

/// [`Gathered::settle`] for the relay's state: write what is gathered,
/// holding `RelayState::write` (`w`).
pub(crate) fn settle(st: &RelayState, w: &MutexGuard<'_, ()>) -> Result<(), StoreError> {
    st.results.settle(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, JobId, LeafState, LeafUpdate, NodeName};
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn relay(dir: &std::path::Path, clients: &[&str]) -> RelayState {
        let st = RelayState::open(
            n("r1"),
            Store::open(dir).unwrap(),
            crate::relay::cache::for_tests(dir),
        )
        .unwrap();
        for c in clients {
            let k = JobClient(JobId(1), n(c));
            st.leaves
                .put(&k, &LeafRecord::pending(n("r1"), Attempt(1), 0))
                .unwrap();
            st.client_leaves.put(&NameJob(n(c), JobId(1)), &1).unwrap();
        }
        st
    }

    fn result(c: &str, state: LeafState) -> LeafUpdate {
        LeafUpdate {
            job: JobId(1),
            attempt: Attempt(1),
            client: n(c),
            relay: n(c),
            state,
            exit_code: Some(0),
            reason: None,
            output: None,
            at_ms: 1,
            out: None,
            audit: None,
        }
    }

    /// Records in the outbox tree (a group of events is one).
    fn outbox_records(st: &RelayState) -> usize {
        st.store.table("outbox").unwrap().len()
    }

    #[tokio::test]
    async fn results_of_many_agents_in_one_flush_are_one_outbox_record() {
        let dir = tempfile::tempdir().unwrap();
        let clients = ["c1", "c2", "c3", "c4"];
        let st = relay(dir.path(), &clients);
        for c in clients {
            super::super::home::apply_home(&st, &n(c), &[result(c, LeafState::Succeeded)]).unwrap();
        }
        // Nothing is written before the flush round.
        assert_eq!(outbox_records(&st), 0);
        st.store.durable().await.unwrap();
        assert_eq!(outbox_records(&st), 1, "one group for the four results");
        assert_eq!(st.outbox.len(), 4);
        for c in clients {
            let k = JobClient(JobId(1), n(c));
            assert_eq!(
                st.leaves.get(&k).unwrap().unwrap().state,
                LeafState::Succeeded
            );
            // Final: out of the per-client index.
            assert!(st
                .client_leaves
                .get(&NameJob(n(c), JobId(1)))
                .unwrap()
                .is_none());
        }
        // The parent's ack removes the one record.
        st.outbox.ack(4).unwrap();
        assert!(st.outbox.is_empty());
    }

    #[tokio::test]
    async fn a_writer_after_a_gathered_result_never_regresses_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path(), &["c1", "c2"]);
        super::super::home::apply_home(&st, &n("c1"), &[result("c1", LeafState::Succeeded)])
            .unwrap();
        // A cancel before the flush: the gathered result is written first,
        // so the cancel finds c1 final and closes only c2.
        let sends = super::super::cancel::apply(&st, JobId(1)).unwrap();
        assert!(sends.agents.is_empty());
        st.store.durable().await.unwrap();
        let state = |c: &str| {
            st.leaves
                .get(&JobClient(JobId(1), n(c)))
                .unwrap()
                .unwrap()
                .state
        };
        assert_eq!(state("c1"), LeafState::Succeeded);
        assert_eq!(state("c2"), LeafState::Canceled);
        // The result's event went up before the cancel's.
        let sent: Vec<(String, LeafState)> = st
            .outbox
            .read_after(0, 10)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) => Some((u.client.to_string(), u.state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                ("c1".to_string(), LeafState::Succeeded),
                ("c2".to_string(), LeafState::Canceled)
            ]
        );
    }
}
