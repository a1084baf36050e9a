//! Leaves per state for each job, kept in memory as results arrive, so that
//! `job wait` and `job list` need not read every leaf of a large job. Built
//! from the store on first use (after a restart), then moved with each write.

use crate::proto::{JobId, LeafState, Totals};
use std::collections::HashMap;
use std::sync::Mutex;

/// Per-job totals, for the jobs looked at since start-up.
#[derive(Default)]
pub(crate) struct Counters(Mutex<HashMap<JobId, Totals>>);

impl Counters {
    /// A leaf of `job` moved from `from` (none: new) to `to`. Ignored for a
    /// job not counted yet: it is counted from the store when first asked.
    pub fn moved(&self, job: JobId, from: Option<LeafState>, to: LeafState) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = m.get_mut(&job) {
            if let Some(f) = from {
                t.remove(f);
            }
            t.add(to);
        }
    }

    /// Drops `job` (purged).
    pub fn forget(&self, job: JobId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
    }

    /// The totals of `job`, counting them with `count` the first time.
    /// Call with the HQ write lock held, so no write slips in between.
    pub fn get_or_count<E>(
        &self,
        job: JobId,
        count: impl FnOnce() -> Result<Totals, E>,
    ) -> Result<Totals, E> {
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
        c.moved(JobId(1), None, LeafState::Pending); // not counted yet: ignored
        let t = c
            .get_or_count(JobId(1), || {
                let mut t = Totals::default();
                t.add(LeafState::Pending);
                t.add(LeafState::Pending);
                Ok::<_, ()>(t)
            })
            .unwrap();
        assert_eq!(t.pending, 2);
        c.moved(JobId(1), Some(LeafState::Pending), LeafState::Succeeded);
        c.moved(JobId(1), None, LeafState::Failed);
        let t = c.get_or_count(JobId(1), || Err(())).unwrap();
        assert_eq!((t.pending, t.succeeded, t.failed), (1, 1, 1));
    }
}
