//! Expiry: home leaves still pending when their attempt's expiry passes
//! become `expired`, once, including after the relay was down past it.

use super::{AttemptRecord, RelayState};
use crate::proto::{now_ms, JobId, LeafState, NodeName};
use crate::rules::LeafRecord;
use crate::store::{keys, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often to look.
const PERIOD: Duration = Duration::from_millis(250);

/// Sweeps until `shutdown`.
pub(crate) async fn run(st: Arc<RelayState>, shutdown: CancellationToken) {
    loop {
        match sweep(&st, now_ms()) {
            Ok(0) => {}
            Ok(n) => {
                if let Err(e) = st.store.durable().await {
                    warn!(error = %e, "cannot persist expiries");
                }
                info!(leaves = n, "expired pending leaves");
            }
            Err(e) => warn!(error = %e, "expiry sweep failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// Expires what is due at `now`; returns how many leaves expired.
pub(crate) fn sweep(st: &RelayState, now: u64) -> Result<usize, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let mut expired = 0;
    let due: Vec<(Vec<u8>, AttemptRecord)> = st
        .attempts
        .scan::<AttemptRecord>(b"")
        .filter_map(|r| r.ok())
        .filter(|(_, a)| !a.swept && a.expires_at_ms.is_some_and(|e| e <= now))
        .collect();
    for (ak, mut rec) in due {
        let (Some(job), Some(attempt)) = (
            keys::read_u64(&ak).map(JobId),
            ak.get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes),
        ) else {
            continue;
        };
        let mut events = Vec::new();
        let mut writes = Vec::new();
        for r in st.leaves.scan::<LeafRecord>(&keys::job(job)) {
            let (k, leaf) = r?;
            if leaf.attempt.0 != attempt || leaf.state != LeafState::Pending {
                continue;
            }
            let Some(client) = std::str::from_utf8(&k[8..])
                .ok()
                .and_then(|s| NodeName::new(s).ok())
            else {
                continue;
            };
            let (rec, ev) = super::close_here(
                st,
                job,
                &client,
                &leaf,
                LeafState::Expired,
                "not delivered before the job's expiry".to_string(),
                now,
            );
            writes.push((k, rec));
            events.push(ev);
        }
        expired += writes.len();
        // Events first: a crash keeps a prefix of the writes.
        st.outbox.push(&events)?;
        st.leaves
            .put_many(writes.iter().map(|(k, v)| (k.clone(), v)))?;
        rec.swept = true;
        st.attempts.put(&ak, &rec)?;
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Assignment, Attempt, Scope};
    use crate::relay::DirEntry;
    use crate::store::Store;

    #[tokio::test]
    async fn pending_leaves_expire_once_and_delivered_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeName::new("r1").unwrap();
        let st = RelayState::open(
            me.clone(),
            Store::open(dir.path()).unwrap(),
            crate::relay::cache::for_tests(dir.path()),
        )
        .unwrap();
        let home = DirEntry {
            home: me.clone(),
            via: me.clone(),
        };
        let (c1, c2) = (NodeName::new("c1").unwrap(), NodeName::new("c2").unwrap());
        for c in [&c1, &c2] {
            st.dir_clients.put(&keys::name(c), &home).unwrap();
        }
        let a = Assignment {
            job: JobId(1),
            attempt: Attempt(1),
            action: Action::Ping,
            expires_at_ms: Some(1_000),
            scope: Scope::AllLowerOf(vec![me.clone()]),
            orders: vec![],
        };
        crate::relay::assign::apply(&st, &a).unwrap();
        // c2 got it before the expiry.
        let k2 = keys::job_client(JobId(1), &c2);
        let mut l2: LeafRecord = st.leaves.get(&k2).unwrap().unwrap();
        l2.state = LeafState::Delivered;
        st.leaves.put(&k2, &l2).unwrap();

        assert_eq!(sweep(&st, 999).unwrap(), 0);
        assert_eq!(sweep(&st, 1_000).unwrap(), 1);
        assert_eq!(sweep(&st, 5_000).unwrap(), 0);
        let l1: LeafRecord = st
            .leaves
            .get(&keys::job_client(JobId(1), &c1))
            .unwrap()
            .unwrap();
        assert_eq!(l1.state, LeafState::Expired);
        let l2: LeafRecord = st.leaves.get(&k2).unwrap().unwrap();
        assert_eq!(l2.state, LeafState::Delivered);
    }
}
