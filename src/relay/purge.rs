//! Retention at a relay: a `Purge` from the parent removes every record of
//! the named jobs (attempts, home leaves, the per-client index, expiry index
//! entries, assignments and other messages of those jobs queued for
//! children), and passes the purge on: to every child relay, and to each
//! home agent that held leaves of those jobs (which drops its run records).
//!
//! Must not touch anything not keyed by a purged job, and decides nothing
//! about which jobs go (HQ does).

use super::RelayState;
use crate::link::queue::QueueKey;
use crate::proto::{Attempt, JobId, Msg, NodeName};
use crate::store::keys::{JobAttempt, JobClient, JobPrefix, Name, NameJob};
use crate::store::StoreError;
use std::collections::{BTreeMap, BTreeSet};

/// What a purge removed here, and what goes on.
pub(crate) struct Applied {
    /// Purges to send to children connected now (all are queued).
    pub fwd: Vec<(NodeName, Msg)>,
    /// Home leaves removed.
    pub leaves: usize,
    /// Attempts removed.
    pub attempts: usize,
}

/// Applies purge `id` of `jobs` (not yet durable). Idempotent: a re-sent
/// purge removes nothing more.
pub(crate) fn apply(st: &RelayState, id: u64, jobs: &[JobId]) -> Result<Applied, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let wanted: BTreeSet<JobId> = jobs.iter().copied().collect();
    // Direct child relays: every relay of the subtree is reached through one.
    let mut relays = BTreeSet::new();
    for r in st.dir_relays.scan() {
        relays.insert(r?.1);
    }
    relays.remove(&st.me);
    // What each purged job left here.
    let mut leaves: Vec<(JobClient, NodeName, JobId)> = Vec::new();
    let mut attempts: Vec<(JobAttempt, JobId, Attempt)> = Vec::new();
    let mut agents: BTreeMap<NodeName, Vec<JobId>> = BTreeMap::new();
    for &job in &wanted {
        for r in st.leaves.scan_prefix(&JobPrefix(job)) {
            let (k, _) = r?;
            let client = k.1.clone();
            let home = st.dir_clients.get(&Name(client.clone()))?;
            if home.is_some_and(|e| e.via == st.me) {
                agents.entry(client.clone()).or_default().push(job);
            }
            leaves.push((k, client, job));
        }
        for r in st.attempts.scan_prefix(&JobPrefix(job)) {
            let (k, _) = r?;
            let a = k.1;
            attempts.push((k, job, a));
        }
    }
    // The purge goes on first: once anything is removed, nothing here could
    // tell which agents held leaves of these jobs.
    let mut out = Vec::new();
    for r in &relays {
        let m = Msg::Purge {
            id,
            jobs: jobs.to_vec(),
        };
        st.down.put(r, &m)?;
        out.push((r.clone(), m));
    }
    for (a, js) in &agents {
        let m = Msg::Purge {
            id,
            jobs: js.clone(),
        };
        st.down.put(a, &m)?;
        out.push((a.clone(), m));
    }
    // Messages of these jobs still queued for children.
    let children: Vec<&NodeName> = relays.iter().chain(agents.keys()).collect();
    for child in &children {
        for &job in &wanted {
            st.down.remove(child, &QueueKey::Cancel(job))?;
            for (_, j, a) in attempts.iter().filter(|(_, j, _)| *j == job) {
                st.down.remove(child, &QueueKey::Assign(*j, *a))?;
            }
        }
    }
    let idx = super::expire::table(st)?;
    for r in idx.scan() {
        let (k, ()) = r?;
        if wanted.contains(&k.1) {
            idx.remove(&k)?;
        }
    }
    for (k, client, job) in &leaves {
        st.client_leaves.remove(&NameJob(client.clone(), *job))?;
        st.leaves.remove(k)?;
    }
    for &job in &wanted {
        // The rollout of a purged job: its record and its gate.
        st.rollouts.remove(&crate::store::keys::JobKey(job))?;
        st.gates.forget(job);
    }
    // The attempts last: a relay that still has one still knows the job.
    for (k, _, _) in &attempts {
        st.attempts.remove(k)?;
    }
    Ok(Applied {
        fwd: out,
        leaves: leaves.len(),
        attempts: attempts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::DirEntry;
    use super::*;
    use crate::proto::{Action, Assignment, Scope};

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_purge_removes_only_its_jobs_and_goes_on_to_children_that_had_them() {
        let dir = tempfile::tempdir().unwrap();
        let st = super::super::cancel::r1_for_tests(dir.path());
        let home = DirEntry {
            home: n("r1"),
            via: n("r1"),
        };
        st.dir_clients.put(&Name(n("c1")), &home).unwrap();
        st.dir_clients
            .put(
                &Name(n("c3")),
                &DirEntry {
                    home: n("r2"),
                    via: n("r2"),
                },
            )
            .unwrap();
        st.dir_relays.put(&Name(n("r2")), &n("r2")).unwrap();
        for job in [1, 2] {
            let a = Assignment {
                job: JobId(job),
                attempt: Attempt(1),
                action: Action::Ping,
                expires_at_ms: Some(1_000),
                scope: Scope::AllLowerOf(vec![n("r1")]),
                orders: vec![],
                placement: None,
                hq_now_ms: None,
                policy: None,
            };
            crate::relay::assign::apply(&st, &a).unwrap();
        }
        // Job 1's assignment for r2 is still queued (r2 is down).
        assert_eq!(st.down.queued(&n("r2")).unwrap().len(), 2);
        assert_eq!(crate::relay::expire::table(&st).unwrap().len(), 2);
        let out = apply(&st, 9, &[JobId(1)]).unwrap();
        assert_eq!((out.leaves, out.attempts), (1, 1));
        let to: Vec<String> = out.fwd.iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(to, vec!["r2", "c1"]);
        let kinds: Vec<String> = st
            .down
            .queued(&n("r2"))
            .unwrap()
            .iter()
            .map(|m| match m {
                Msg::Assign(a) => format!("assign {}", a.job),
                other => other.kind().to_string(),
            })
            .collect();
        // Job 2's assignment stays; job 1's went; the purge is queued.
        assert_eq!(kinds, vec!["assign 2", "purge"]);
        // Job 2 is untouched, job 1 is gone everywhere.
        assert_eq!(st.attempts.len(), 1);
        assert_eq!(st.leaves.len(), 1);
        assert_eq!(st.client_leaves.len(), 1);
        assert_eq!(crate::relay::expire::table(&st).unwrap().len(), 1);
        assert!(st
            .leaves
            .get(&JobClient(JobId(2), n("c1")))
            .unwrap()
            .is_some());
        // Again: nothing more goes, the child relay is told again (same id).
        let again = apply(&st, 9, &[JobId(1)]).unwrap();
        assert_eq!((again.fwd.len(), again.leaves), (1, 0));
        assert_eq!(st.attempts.len(), 1);
    }
}
