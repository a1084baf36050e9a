//! A job canceled from above: recorded durably (a tombstone, so an
//! assignment of the job arriving later is ignored), every home leaf not
//! yet final becomes `canceled` with its event up, agents holding a
//! delivered or running leaf and every child relay get a queued `Cancel`.
//!
//! Writes in an order that a crash leaves harmless (sled keeps a prefix of
//! the writes): events, then queued cancels, then leaves, then the
//! tombstone. A re-sent `Cancel` redoes whatever did not land. Sends
//! nothing before the caller made it durable.

use super::{close_here, RelayState};
use crate::proto::{now_ms, JobId, LeafState, Msg, NodeName};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, JobPrefix, NameJob};
use crate::store::{StoreError, Tree};
use tracing::info;

/// Why a relay cancels a home leaf.
const REASON: &str = "canceled by the operator";

/// Whom to send the cancel once it is durable.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CancelSends {
    /// Home agents with a delivered or running leaf of the job.
    pub agents: Vec<NodeName>,
    /// Direct child relays.
    pub relays: Vec<NodeName>,
}

/// job -> unix ms: the jobs canceled here.
fn tombstones(st: &RelayState) -> Result<Tree<JobKey, u64>, StoreError> {
    st.store.tree(super::trees::CANCELED)
}

/// Whether `job` was canceled here: its assignments are ignored.
pub(crate) fn is_canceled(st: &RelayState, job: JobId) -> Result<bool, StoreError> {
    tombstones(st)?.contains(&JobKey(job))
}

/// The relays directly under this one.
pub(crate) fn child_relays(st: &RelayState) -> Result<Vec<NodeName>, StoreError> {
    let mut out = Vec::new();
    for r in st.dir_relays.scan() {
        let (k, via) = r?;
        if k.0 == via {
            out.push(via);
        }
    }
    Ok(out)
}

/// Applies a cancel of `job` (not yet durable). Idempotent.
pub(crate) fn apply(st: &RelayState, job: JobId) -> Result<CancelSends, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let now = now_ms();
    let mut open: Vec<(NodeName, LeafRecord)> = Vec::new();
    for r in st.leaves.scan_prefix(&JobPrefix(job)) {
        let (JobClient(_, c), l) = r?;
        if l.state.is_final() {
            continue;
        }
        open.push((c, l));
    }
    let mut sends = CancelSends {
        agents: open
            .iter()
            .filter(|(_, l)| matches!(l.state, LeafState::Delivered | LeafState::Running))
            .map(|(c, _)| c.clone())
            .collect(),
        relays: child_relays(st)?,
    };
    let (records, events): (Vec<_>, Vec<_>) = open
        .iter()
        .map(|(c, l)| {
            let (rec, ev) = close_here(st, job, c, l, LeafState::Canceled, REASON.into(), now);
            ((JobClient(job, c.clone()), rec), ev)
        })
        .unzip();
    st.outbox.push(&events)?;
    let msg = Msg::Cancel { job };
    for to in sends.agents.iter().chain(sends.relays.iter()) {
        st.down.put(to, &msg)?;
    }
    st.leaves
        .put_many(records.iter().map(|(k, v)| (k.clone(), v)))?;
    for (c, _) in &open {
        // Nothing left to deliver: keep the per-client index small.
        st.client_leaves.remove(&NameJob(c.clone(), job))?;
    }
    let t = tombstones(st)?;
    if !t.contains(&JobKey(job))? {
        t.put(&JobKey(job), &now)?;
        info!(%job, leaves = open.len(), agents = sends.agents.len(), relays = sends.relays.len(), "job canceled");
    }
    sends.agents.sort();
    Ok(sends)
}

/// Sends the cancel to whoever of `sends` is connected now (the rest get it
/// from the queue when they connect). Call once the cancel is durable.
pub(crate) fn send(st: &RelayState, job: JobId, sends: CancelSends) {
    let msgs = sends
        .agents
        .into_iter()
        .chain(sends.relays)
        .map(|to| (to, Msg::Cancel { job }))
        .collect();
    crate::link::queue::send_now(&st.children, msgs);
}

/// Relay r1 on a fresh store in `dir`, for the tests here and in
/// `purge.rs` (they act on its trees only: no sessions).
#[cfg(test)]
pub(super) fn r1_for_tests(dir: &std::path::Path) -> RelayState {
    RelayState::open(
        NodeName::new("r1").unwrap(),
        crate::store::Store::open(dir).unwrap(),
        super::cache::for_tests(dir),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, Event};
    use crate::relay::DirEntry;
    use crate::store::keys::Name;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn open_home_leaves_are_canceled_and_agents_and_child_relays_told() {
        let dir = tempfile::tempdir().unwrap();
        let st = r1_for_tests(dir.path());
        st.dir_relays.put(&Name(n("r2")), &n("r2")).unwrap();
        st.dir_relays.put(&Name(n("r4")), &n("r2")).unwrap();
        st.dir_clients
            .put(
                &Name(n("c9")),
                &DirEntry {
                    home: n("r2"),
                    via: n("r2"),
                },
            )
            .unwrap();
        let job = JobId(5);
        let states = [
            ("c1", LeafState::Pending),
            ("c2", LeafState::Delivered),
            ("c3", LeafState::Running),
            ("c4", LeafState::Succeeded),
            ("c5", LeafState::Failed),
        ];
        for (c, s) in states {
            let l = LeafRecord {
                state: s,
                ..LeafRecord::pending(n("r1"), Attempt(1), 0)
            };
            st.leaves.put(&JobClient(job, n(c)), &l).unwrap();
        }
        // Another job's leaf is left alone.
        st.leaves
            .put(
                &JobClient(JobId(6), n("c1")),
                &LeafRecord::pending(n("r1"), Attempt(1), 0),
            )
            .unwrap();
        assert!(!is_canceled(&st, job).unwrap());
        let sends = apply(&st, job).unwrap();
        assert_eq!(sends.agents, vec![n("c2"), n("c3")]);
        assert_eq!(sends.relays, vec![n("r2")]);
        assert!(is_canceled(&st, job).unwrap());
        let state = |j: JobId, c: &str| st.leaves.get(&JobClient(j, n(c))).unwrap().unwrap().state;
        for (c, want) in [
            ("c1", LeafState::Canceled),
            ("c2", LeafState::Canceled),
            ("c3", LeafState::Canceled),
            ("c4", LeafState::Succeeded),
            ("c5", LeafState::Failed),
        ] {
            assert_eq!(state(job, c), want, "{c}");
        }
        assert_eq!(state(JobId(6), "c1"), LeafState::Pending);
        let up: Vec<String> = st
            .outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) if u.state == LeafState::Canceled => Some(u.client.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(up, vec!["c1", "c2", "c3"]);
        for to in ["c2", "c3", "r2"] {
            assert_eq!(st.down.queued(&n(to)).unwrap(), vec![Msg::Cancel { job }]);
        }
        assert!(st.down.queued(&n("c1")).unwrap().is_empty());
        // Again: nothing new to report; the relays are told again (idempotent).
        let again = apply(&st, job).unwrap();
        assert!(again.agents.is_empty());
        assert_eq!(st.outbox.read_after(0, 100).unwrap().len(), 3);
    }
}
