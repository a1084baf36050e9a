//! Jobs behind a relay that moved: when a relay joins under another parent
//! (it failed over between its `--parent`s), the original attempt of every
//! open job still waiting for the target set of a relay in the moved
//! subtree is queued again through the relay's new top. The old parent may
//! hold it unacknowledged (or be dead with it); the relays dedupe an attempt
//! they already have, so a copy that arrives twice runs nothing twice.
//!
//! The copy carries the order of the queued original when HQ still holds
//! one, else an order signed anew with the job's own fields. A new top that
//! already took the job (another destination of it lies there) cannot take
//! a second scope of the same attempt: that part waits for the old parent,
//! and is logged.
//!
//! Reads HQ's records and queues (not yet durable); never sends: what it
//! queues is returned for the session to send once durable.

use super::jobs::{top_child, JobRecord};
use super::HqState;
use crate::link::downstream::Outgoing;
use crate::proto::{Assignment, Attempt, Msg, NodeName, Order, Scope};
use crate::rules;
use crate::store::keys::JobKey;
use crate::store::StoreError;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Queues again, through their new tops, the original attempts still
/// awaited from relays under any of `moved`.
pub(crate) fn after_move(st: &HqState, moved: &[NodeName]) -> Result<Outgoing, StoreError> {
    let parent_of = |r: &NodeName| super::jobs::parent_of(st, r);
    let under = |r: &NodeName| {
        moved.contains(r)
            || rules::ancestors(r, parent_of)
                .iter()
                .any(|a| moved.contains(a))
    };
    let mut out = Vec::new();
    let jobs: Vec<JobRecord> = st
        .jobs
        .scan()
        .filter_map(|r| r.ok())
        .map(|(_, j)| j)
        .filter(|j| j.canceled_at_ms.is_none() && !j.awaiting.is_empty())
        .collect();
    for mut rec in jobs {
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        for r in rec.awaiting.iter().filter(|r| under(r)) {
            if let Ok(top) = top_child(st, r) {
                by_top.entry(top).or_default().push(r.clone());
            }
        }
        if by_top.is_empty() {
            continue;
        }
        let original = queued_original(st, &rec)?;
        let mut changed = false;
        for (top, list) in by_top {
            let queued = find(st, &top, &rec)?;
            let a = match queued {
                Some(mut a) => {
                    let Scope::AllLowerOf(have) = &mut a.scope else {
                        continue;
                    };
                    let before = have.len();
                    for r in &list {
                        if !have.contains(r) {
                            have.push(r.clone());
                        }
                    }
                    if have.len() == before {
                        continue;
                    }
                    a
                }
                None if rec.sent_to.contains(&top) => {
                    warn!(job = %rec.job, %top, relays = ?list, "relays moved under a relay that already took the job; their part waits for their old parent");
                    continue;
                }
                None => {
                    let orders = match &original {
                        Some(o) => o.clone(),
                        None => match sign_again(st, &rec) {
                            Some(o) => vec![o],
                            None => continue,
                        },
                    };
                    Assignment {
                        job: rec.job,
                        attempt: Attempt(1),
                        action: rec.action.clone(),
                        expires_at_ms: first_expiry(&rec),
                        scope: Scope::AllLowerOf(list.clone()),
                        orders,
                        placement: None,
                        hq_now_ms: None,
                        policy: Some(rec.rollout.policy.clone()).filter(|p| p.is_gated()),
                    }
                }
            };
            info!(job = %rec.job, %top, relays = ?list, "job routed again: its relays moved");
            let m = Msg::Assign(a);
            st.down.put(&top, &m)?;
            if !rec.sent_to.contains(&top) {
                rec.sent_to.push(top.clone());
                changed = true;
            }
            out.push((top, m));
        }
        if changed {
            st.jobs.put(&JobKey(rec.job), &rec)?;
        }
    }
    Ok(out)
}

/// Attempt 1's assignment of `rec` queued for `top`, if any.
fn find(st: &HqState, top: &NodeName, rec: &JobRecord) -> Result<Option<Assignment>, StoreError> {
    Ok(st.down.queued(top)?.into_iter().find_map(|m| match m {
        Msg::Assign(a) if a.job == rec.job && a.attempt == Attempt(1) => Some(a),
        _ => None,
    }))
}

/// The signed orders of attempt 1 as still queued for any top that got it.
fn queued_original(
    st: &HqState,
    rec: &JobRecord,
) -> Result<Option<Vec<crate::proto::SignedOrder>>, StoreError> {
    for top in &rec.sent_to {
        if let Some(a) = find(st, top, rec)? {
            return Ok(Some(a.orders));
        }
    }
    Ok(None)
}

/// Attempt 1's expiry.
fn first_expiry(rec: &JobRecord) -> Option<u64> {
    if rec.attempt == Attempt(1) {
        rec.expires_at_ms
    } else {
        rec.expires_ms.map(|e| rec.created_at_ms + e)
    }
}

/// Attempt 1's order signed anew from the job's record (the destination as
/// the tree stands now).
fn sign_again(st: &HqState, rec: &JobRecord) -> Option<crate::proto::SignedOrder> {
    let parent_of = |r: &NodeName| super::jobs::parent_of(st, r);
    let order = Order {
        job: rec.job,
        attempt: Attempt(1),
        action: rec.action.clone(),
        expires_at_ms: first_expiry(rec),
        issued_at_ms: rec.created_at_ms,
        dest: rules::normalize_dest(&rec.dest, parent_of),
        relay: None,
        targets: None,
        filter: rec.filter.clone(),
    };
    match super::jobs::sign(st, &order) {
        Ok(o) => Some(o),
        Err(e) => {
            warn!(job = %rec.job, error = %e, "cannot sign the order again");
            None
        }
    }
}
