//! Leaves per state for each job, kept in memory as results arrive, so that
//! `job wait` and `job list` need not read every leaf of a large job. Built
//! from the store on first use (after a restart), then moved with each write.

use crate::proto::{JobId, LeafState, NodeName, Totals};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// One job's leaves by state, in all and per home relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct JobCounts {
    /// Every leaf.
    pub totals: Totals,
    /// Per home relay.
    pub relays: BTreeMap<NodeName, Totals>,
}

impl JobCounts {
    /// Counts one more leaf of `relay` in `state`.
    pub fn add(&mut self, state: LeafState, relay: &NodeName) {
        self.totals.add(state);
        // The relay is nearly always counted already: no copy of its name.
        match self.relays.get_mut(relay) {
            Some(t) => t.add(state),
            None => self.relays.entry(relay.clone()).or_default().add(state),
        }
    }

    fn remove(&mut self, state: LeafState, relay: &NodeName) {
        self.totals.remove(state);
        if let Some(t) = self.relays.get_mut(relay) {
            t.remove(state);
            if t.total() == 0 {
                self.relays.remove(relay);
            }
        }
    }
}

/// Per-job counts, for the jobs looked at since start-up.
#[derive(Default)]
pub(crate) struct Counters(Mutex<HashMap<JobId, JobCounts>>);

impl Counters {
    /// A leaf of `job` moved from `from` (none: new) to `to`, each a state
    /// and the leaf's home relay then. Ignored for a job not counted yet: it
    /// is counted from the store when first asked.
    pub fn moved(
        &self,
        job: JobId,
        from: Option<(LeafState, &NodeName)>,
        to: (LeafState, &NodeName),
    ) {
        self.moved_many([(job, from, to)]);
    }

    /// [`Counters::moved`] for many leaves, under one lock.
    pub fn moved_many<'a>(
        &self,
        moves: impl IntoIterator<
            Item = (
                JobId,
                Option<(LeafState, &'a NodeName)>,
                (LeafState, &'a NodeName),
            ),
        >,
    ) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (job, from, to) in moves {
            if let Some(c) = m.get_mut(&job) {
                if let Some((s, r)) = from {
                    c.remove(s, r);
                }
                c.add(to.0, to.1);
            }
        }
    }

    /// Drops `job` (purged).
    pub fn forget(&self, job: JobId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
    }

    /// Drops every job's counts (another HQ wrote leaves): each is counted
    /// from the store again when next asked.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The counts of `job`, counting them with `count` the first time.
    /// Call with the HQ write lock held, so no write slips in between.
    pub fn get_or_count<E>(
        &self,
        job: JobId,
        count: impl FnOnce() -> Result<JobCounts, E>,
    ) -> Result<JobCounts, E> {
        if let Some(t) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&job) {
            return Ok(t.clone());
        }
        let t = count()?;
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job, t.clone());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_are_counted_once_counting_started() {
        let c = Counters::default();
        let (r1, r2) = (NodeName::new("r1").unwrap(), NodeName::new("r2").unwrap());
        c.moved(JobId(1), None, (LeafState::Pending, &r1)); // not counted yet: ignored
        let t = c
            .get_or_count(JobId(1), || {
                let mut t = JobCounts::default();
                t.add(LeafState::Pending, &r1);
                t.add(LeafState::Pending, &r1);
                Ok::<_, ()>(t)
            })
            .unwrap();
        assert_eq!(t.totals.pending, 2);
        c.moved(
            JobId(1),
            Some((LeafState::Pending, &r1)),
            (LeafState::Succeeded, &r1),
        );
        c.moved(JobId(1), None, (LeafState::Failed, &r2));
        let t = c.get_or_count(JobId(1), || Err(())).unwrap();
        let tt = &t.totals;
        assert_eq!((tt.pending, tt.succeeded, tt.failed), (1, 1, 1));
        assert_eq!(t.relays[&r1].open(), 1);
        assert_eq!(t.relays[&r2].failed, 1);
        // A leaf that moved home: counted off its old relay.
        c.moved(
            JobId(1),
            Some((LeafState::Pending, &r1)),
            (LeafState::Pending, &r2),
        );
        let t = c.get_or_count(JobId(1), || Err(())).unwrap();
        assert_eq!(t.relays[&r1].total(), 1);
        assert_eq!(t.relays[&r2].total(), 2);
    }
}
