//! Creating jobs and reruns: validate, pick targets, route an assignment to
//! each top-level relay, persist it in that relay's queue, then send it.

use super::{HqError, HqState, RelayRecord};
use crate::proto::{
    now_ms, Action, Assignment, Attempt, JobId, LeafState, Msg, NodeName, Order, RerunResult,
    Scope, SignedOrder,
};
use crate::rules::{self, LeafRecord};
use crate::store::keys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::info;

/// A job as HQ stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub job: JobId,
    pub action: Action,
    /// Destination relays as the operator named them.
    pub dest: Vec<NodeName>,
    pub created_at_ms: u64,
    /// Expiry window of each attempt, from its creation.
    pub expires_ms: Option<u64>,
    /// Expiry of the latest attempt.
    pub expires_at_ms: Option<u64>,
    /// Latest attempt.
    pub attempt: Attempt,
    /// Destination relays that have not yet reported attempt 1's targets.
    pub awaiting: Vec<NodeName>,
}

fn parent_of(st: &HqState, r: &NodeName) -> Option<NodeName> {
    st.relays
        .get::<RelayRecord>(&keys::name(r))
        .ok()
        .flatten()
        .map(|x| x.parent)
}

/// The relay directly under HQ through which `relay` is reached.
pub(crate) fn top_child(st: &HqState, relay: &NodeName) -> Result<NodeName, HqError> {
    let mut chain = vec![relay.clone()];
    chain.extend(rules::ancestors(relay, |r| parent_of(st, r)));
    let pos = chain.iter().position(|r| *r == st.me);
    match pos {
        Some(i) if i >= 1 => Ok(chain[i - 1].clone()),
        _ => Err(HqError::Refused(format!(
            "relay {relay} has no known path to hq"
        ))),
    }
}

fn known_relays(st: &HqState) -> Vec<String> {
    st.relays
        .scan::<RelayRecord>(b"")
        .filter_map(|r| r.ok())
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// Encodes and signs an order.
fn sign(st: &HqState, order: &Order) -> Result<SignedOrder, HqError> {
    let body = rmp_serde::to_vec_named(order)
        .map_err(|e| HqError::Refused(format!("cannot encode order: {e}")))?;
    Ok(SignedOrder {
        sig: st.signer.sign(&body),
        body,
        relay: order.relay.clone(),
    })
}

/// Queues `a` for `child` (not yet durable).
fn enqueue(st: &HqState, child: &NodeName, a: &Assignment) -> Result<(), HqError> {
    st.down.put(child, &Msg::Assign(a.clone()))?;
    Ok(())
}

/// Sends freshly queued assignments to children that are connected now; the
/// others get them from their queue when they connect.
fn send_now(st: &HqState, sent: Vec<(NodeName, Assignment)>) {
    let children = st.children.lock().unwrap_or_else(|p| p.into_inner());
    for (child, a) in sent {
        if let Some(tx) = children.get(&child) {
            crate::link::send_soon(tx, Msg::Assign(a));
        }
    }
}

/// `hq job create`.
pub(crate) async fn create(
    st: &HqState,
    dest: Vec<NodeName>,
    action: Action,
    expires_ms: Option<u64>,
) -> Result<JobId, HqError> {
    if dest.is_empty() {
        return Err(HqError::Refused("no destination relay given".into()));
    }
    match &action {
        Action::Run(r) if r.argv.is_empty() => {
            return Err(HqError::Refused("empty command".into()));
        }
        Action::Install(i) => super::packages::check_install(st, i)?,
        _ => {}
    }
    let queued = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        for d in &dest {
            if !st.relays.contains(&keys::name(d))? {
                return Err(HqError::Refused(format!(
                    "unknown relay {d} (known: {})",
                    known_relays(st).join(", ")
                )));
            }
        }
        let dest_n = rules::normalize_dest(&dest, |r| parent_of(st, r));
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        for d in &dest_n {
            by_top.entry(top_child(st, d)?).or_default().push(d.clone());
        }
        let job = JobId(st.store.next_id("job")?);
        let now = now_ms();
        let expires_at_ms = expires_ms.map(|e| now + e);
        let rec = JobRecord {
            job,
            action: action.clone(),
            dest: dest.clone(),
            created_at_ms: now,
            expires_ms,
            expires_at_ms,
            attempt: Attempt(1),
            awaiting: dest_n,
        };
        st.jobs.put(&keys::job(job), &rec)?;
        let order = sign(
            st,
            &Order {
                job,
                attempt: Attempt(1),
                action: action.clone(),
                expires_at_ms,
                issued_at_ms: now,
                dest: rec.awaiting.clone(),
                relay: None,
                targets: None,
            },
        )?;
        let mut queued = Vec::new();
        for (top, list) in by_top {
            let a = Assignment {
                job,
                attempt: Attempt(1),
                action: action.clone(),
                expires_at_ms,
                scope: Scope::AllLowerOf(list),
                orders: vec![order.clone()],
            };
            enqueue(st, &top, &a)?;
            queued.push((top, a));
        }
        queued
    };
    st.store.durable().await?;
    let job = queued.first().map(|(_, a)| a.job).unwrap_or_default();
    info!(%job, relays = ?dest, "job created");
    send_now(st, queued);
    st.bump();
    Ok(job)
}

/// A job for one named client, routed to its home relay with an order
/// signed for that home naming the client (as a rerun's are): a snapshot's
/// master. Validated by the caller.
pub(crate) async fn create_for_client(
    st: &HqState,
    client: &NodeName,
    home: &NodeName,
    action: Action,
    expires_ms: Option<u64>,
) -> Result<JobId, HqError> {
    let (job, queued) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let top = top_child(st, home)?;
        let job = JobId(st.store.next_id("job")?);
        let now = now_ms();
        let expires_at_ms = expires_ms.map(|e| now + e);
        let rec = JobRecord {
            job,
            action: action.clone(),
            dest: vec![home.clone()],
            created_at_ms: now,
            expires_ms,
            expires_at_ms,
            attempt: Attempt(1),
            awaiting: vec![],
        };
        st.leaves.put(
            &keys::job_client(job, client),
            &LeafRecord::pending(home.clone(), Attempt(1), now),
        )?;
        st.counters.moved(job, None, LeafState::Pending);
        st.jobs.put(&keys::job(job), &rec)?;
        let order = sign(
            st,
            &Order {
                job,
                attempt: Attempt(1),
                action: action.clone(),
                expires_at_ms,
                issued_at_ms: now,
                dest: vec![],
                relay: Some(home.clone()),
                targets: Some(vec![client.clone()]),
            },
        )?;
        let a = Assignment {
            job,
            attempt: Attempt(1),
            action,
            expires_at_ms,
            scope: Scope::Targets(vec![client.clone()]),
            orders: vec![order],
        };
        enqueue(st, &top, &a)?;
        (job, vec![(top, a)])
    };
    st.store.durable().await?;
    info!(%job, %client, %home, "job for one client created");
    send_now(st, queued);
    st.bump();
    Ok(job)
}

/// `hq job rerun JOB --failed`.
pub(crate) async fn rerun(st: &HqState, job: JobId) -> Result<RerunResult, HqError> {
    let (result, queued) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let jk = keys::job(job);
        let mut rec: JobRecord = st
            .jobs
            .get(&jk)?
            .ok_or_else(|| super::retention::missing(st, job))?;
        let leaves = load_leaves(st, job)?;
        let targets = rules::rerun_targets(leaves.iter().map(|(c, l)| (c, l)));
        if targets.is_empty() {
            return Ok(RerunResult {
                job,
                attempt: rec.attempt,
                targets: 0,
            });
        }
        let attempt = Attempt(rec.attempt.0 + 1);
        let now = now_ms();
        rec.attempt = attempt;
        rec.expires_at_ms = rec.expires_ms.map(|e| now + e);
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        let mut by_home: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        let mut fresh = Vec::with_capacity(targets.len());
        for (client, home) in &targets {
            by_top
                .entry(top_child(st, home)?)
                .or_default()
                .push(client.clone());
            by_home
                .entry(home.clone())
                .or_default()
                .push(client.clone());
            fresh.push((
                keys::job_client(job, client),
                LeafRecord::pending(home.clone(), attempt, now),
            ));
        }
        st.leaves
            .put_many(fresh.iter().map(|(k, v)| (k.clone(), v)))?;
        for (_, l) in leaves.iter().filter(|(_, l)| l.state.is_rerunnable()) {
            st.counters.moved(job, Some(l.state), LeafState::Pending);
        }
        st.jobs.put(&jk, &rec)?;
        // One signed order per home relay, naming exactly its targets.
        let mut orders: BTreeMap<NodeName, Vec<SignedOrder>> = BTreeMap::new();
        for (home, list) in by_home {
            let o = sign(
                st,
                &Order {
                    job,
                    attempt,
                    action: rec.action.clone(),
                    expires_at_ms: rec.expires_at_ms,
                    issued_at_ms: now,
                    dest: vec![],
                    relay: Some(home.clone()),
                    targets: Some(list),
                },
            )?;
            orders.entry(top_child(st, &home)?).or_default().push(o);
        }
        let mut queued = Vec::new();
        for (top, list) in by_top {
            let a = Assignment {
                job,
                attempt,
                action: rec.action.clone(),
                expires_at_ms: rec.expires_at_ms,
                scope: Scope::Targets(list),
                orders: orders.remove(&top).unwrap_or_default(),
            };
            enqueue(st, &top, &a)?;
            queued.push((top, a));
        }
        (
            RerunResult {
                job,
                attempt,
                targets: targets.len() as u64,
            },
            queued,
        )
    };
    st.store.durable().await?;
    info!(%job, attempt = %result.attempt, targets = result.targets, "rerun created");
    send_now(st, queued);
    st.bump();
    Ok(result)
}

/// Every leaf of a job, by client.
pub(crate) fn load_leaves(
    st: &HqState,
    job: JobId,
) -> Result<Vec<(NodeName, LeafRecord)>, HqError> {
    let prefix = keys::job(job);
    let mut out = Vec::new();
    for r in st.leaves.scan::<LeafRecord>(&prefix) {
        let (k, rec) = r?;
        let name = std::str::from_utf8(&k[8..])
            .ok()
            .and_then(|s| NodeName::new(s).ok());
        if let Some(n) = name {
            out.push((n, rec));
        }
    }
    Ok(out)
}
