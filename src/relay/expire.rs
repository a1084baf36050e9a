//! Expiry: home leaves still pending when their attempt's expiry passes
//! become `expired`, once, including after the relay was down past it.

use super::{AttemptRecord, RelayState};
use crate::proto::{now_ms, Event, JobId, LeafState, LeafUpdate, NodeName};
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
            let reason = "not delivered before the job's expiry".to_string();
            writes.push((
                k,
                LeafRecord {
                    state: LeafState::Expired,
                    reason: Some(reason.clone()),
                    at_ms: now,
                    ..leaf.clone()
                },
            ));
            events.push(Event::Leaf(LeafUpdate {
                job,
                attempt: leaf.attempt,
                client,
                relay: st.me.clone(),
                state: LeafState::Expired,
                exit_code: None,
                reason: Some(reason),
                output: None,
                at_ms: now,
            }));
        }
        expired += writes.len();
        st.leaves
            .put_many(writes.iter().map(|(k, v)| (k.clone(), v)))?;
        st.outbox.push(&events)?;
        rec.swept = true;
        st.attempts.put(&ak, &rec)?;
    }
    Ok(expired)
}
