//! Creating, rerunning and canceling jobs: validate, pick targets, route an
//! assignment (or a cancel) to each top-level relay, write it with the job's
//! records in one atomic change, make it durable, then send it. Never sends
//! before the write is durable; never writes a part of a change alone.

use super::{HqError, HqState};
use crate::proto::{
    now_ms, Action, Assignment, Attempt, CancelResult, JobId, LeafState, Msg, NodeName, Order,
    RerunResult, Scope, SignedOrder,
};
use crate::rules::{self, LeafRecord};
use crate::store::keys::{JobClient, JobKey, JobPrefix, Name};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};

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
    /// When the job was canceled (`hq job cancel`); a canceled job is done.
    #[serde(default)]
    pub canceled_at_ms: Option<u64>,
    /// The relays under HQ that were sent an attempt of the job (a cancel
    /// goes to each); empty for jobs recorded before it was kept.
    #[serde(default)]
    pub sent_to: Vec<NodeName>,
    /// Its rollout: policy, pause, canaries (the default: none).
    #[serde(default)]
    pub rollout: super::rollout::JobRollout,
    /// The recurring job it is an occurrence of.
    #[serde(default)]
    pub repeat: Option<u64>,
    /// What narrows attempt 1's destinations (labels, exclusions), as
    /// signed in its order (an order signed anew carries it too).
    #[serde(default)]
    pub filter: crate::proto::TargetFilter,
}

/// The parent HQ records for relay `r`, if it knows `r`.
pub(crate) fn parent_of(st: &HqState, r: &NodeName) -> Option<NodeName> {
    st.relays
        .get(&Name(r.clone()))
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
        .scan()
        .filter_map(|r| r.ok())
        .map(|(k, _)| k.0.to_string())
        .collect()
}

/// Encodes and signs an order.
pub(crate) fn sign(st: &HqState, order: &Order) -> Result<SignedOrder, HqError> {
    let body = order
        .encode()
        .map_err(|e| HqError::Refused(format!("cannot encode order: {e}")))?;
    Ok(SignedOrder {
        sig: st.signer.sign(&body),
        body,
        relay: order.relay.clone(),
    })
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

/// Most targets one signed rerun order names: an agent gets the one chunk
/// that names it, so its assignment does not grow with the rerun.
pub(crate) const ORDER_CHUNK: usize = 256;

/// Largest encoded assignment HQ accepts to send an agent (half the agent
/// frame, leaving room for the chunk of a rerun order).
const AGENT_ASSIGNMENT_BUDGET: usize = crate::proto::AGENT_MAX_FRAME / 2;

/// Room kept in a relay frame for the message envelope.
const RELAY_FRAME_SLACK: usize = 64 * 1024;

/// Refuses an action too large to reach an agent in one frame.
fn check_size(a: &Assignment) -> Result<(), HqError> {
    let n = crate::proto::codec::encode(&Msg::Assign(a.clone()))
        .map_err(|e| HqError::Refused(format!("cannot encode the job: {e}")))?
        .len();
    if n > AGENT_ASSIGNMENT_BUDGET {
        return Err(HqError::Refused(format!(
            "the job is too large to send to an agent ({n} bytes encoded, at most {AGENT_ASSIGNMENT_BUDGET})"
        )));
    }
    Ok(())
}

/// The relays directly under HQ, for jobs recorded before `sent_to` was kept.
pub(crate) fn top_relays(st: &HqState) -> Result<Vec<NodeName>, HqError> {
    let mut out = Vec::new();
    for r in st.relays.scan() {
        let (k, rec) = r?;
        if rec.parent != st.me {
            continue;
        }
        let Name(n) = k;
        out.push(n);
    }
    Ok(out)
}

fn merge_sent_to(rec: &mut JobRecord, tops: impl IntoIterator<Item = NodeName>) {
    for t in tops {
        if !rec.sent_to.contains(&t) {
            rec.sent_to.push(t);
        }
    }
}

/// Refuses an action that cannot run (an empty command, a package the
/// depot lacks).
pub(super) fn check_action(st: &HqState, action: &Action) -> Result<(), HqError> {
    match action {
        Action::Run(r) if r.argv.is_empty() => Err(HqError::Refused("empty command".into())),
        Action::Install(i) => super::packages::check_install(st, i),
        Action::Sync(_) | Action::Batch(_) => Err(HqError::Refused(
            "sync and batch jobs are made by `hq sync`, not `job create`".into(),
        )),
        _ => Ok(()),
    }
}

/// `hq job create --dest all-lower-clients`, narrowed by `filter` (applied
/// where the snapshot is taken; it travels in the signed order).
pub(crate) async fn create(
    st: &HqState,
    dest: Vec<NodeName>,
    filter: crate::proto::TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
) -> Result<JobId, HqError> {
    create_with(st, dest, filter, action, expires_ms, &Default::default()).await
}

/// What `create` refuses before anything is written: no destination, an
/// empty command, a package not in the depot, an unknown relay (for
/// schedules, checked again at each occurrence).
pub(crate) fn check_create(
    st: &HqState,
    dest: &[NodeName],
    filter: &crate::proto::TargetFilter,
    action: &Action,
    policy: &crate::proto::PolicyRequest,
) -> Result<(), HqError> {
    if dest.is_empty() {
        return Err(HqError::Refused("no destination relay given".into()));
    }
    check_action(st, action)?;
    super::targets::check_excluded(st, filter)?;
    for d in dest.iter().chain(policy.after_sync.iter()) {
        if !st.relays.contains(&Name(d.clone()))? {
            return Err(HqError::Refused(format!(
                "unknown relay {d} (known: {})",
                known_relays(st).join(", ")
            )));
        }
    }
    Ok(())
}

/// `hq job create`: `policy` travels with every assignment of the job.
pub(crate) async fn create_with(
    st: &HqState,
    dest: Vec<NodeName>,
    filter: crate::proto::TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
    policy: &crate::proto::PolicyRequest,
) -> Result<JobId, HqError> {
    create_inner(st, dest, filter, action, expires_ms, policy, None).await
}

/// One occurrence of a recurring job, due at `rec.next_ms`: the job and
/// the schedule moved to its next due time in one atomic change.
pub(crate) async fn create_occurrence(
    st: &HqState,
    rec: &super::repeat::RepeatRecord,
    now: u64,
) -> Result<JobId, HqError> {
    if !rec.clients.is_empty() {
        return super::targets::create_named(
            st,
            rec.clients.clone(),
            rec.filter.clone(),
            rec.action.clone(),
            rec.expires_ms,
            &rec.policy,
            Some((rec, now)),
        )
        .await;
    }
    create_inner(
        st,
        rec.dest.clone(),
        rec.filter.clone(),
        rec.action.clone(),
        rec.expires_ms,
        &rec.policy,
        Some((rec, now)),
    )
    .await
}

async fn create_inner(
    st: &HqState,
    dest: Vec<NodeName>,
    filter: crate::proto::TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
    policy_req: &crate::proto::PolicyRequest,
    occurrence: Option<(&super::repeat::RepeatRecord, u64)>,
) -> Result<JobId, HqError> {
    check_create(st, &dest, &filter, &action, policy_req)?;
    // Every order ends: the operator's window, or HQ's default.
    let expires_ms = Some(expires_ms.unwrap_or(st.order_ttl_ms));
    let queued = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        check_occurrence(st, occurrence)?;
        let dest_n = rules::normalize_dest(&dest, |r| parent_of(st, r));
        let policy = super::rollout::make_policy(
            policy_req,
            || super::rollout::clients_under(st, &dest_n),
            now_ms(),
        )?;
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        for d in &dest_n {
            by_top.entry(top_child(st, d)?).or_default().push(d.clone());
        }
        let now = now_ms();
        let expires_at_ms = expires_ms.map(|e| now + e);
        let order_of = |job: JobId| {
            sign(
                st,
                &Order {
                    job,
                    attempt: Attempt(1),
                    action: action.clone(),
                    expires_at_ms,
                    issued_at_ms: now,
                    dest: dest_n.clone(),
                    relay: None,
                    targets: None,
                    filter: filter.clone(),
                },
            )
        };
        // The size check before a job id is spent.
        check_size(&Assignment {
            job: JobId(0),
            attempt: Attempt(1),
            action: action.clone(),
            expires_at_ms,
            scope: Scope::Targets(vec![]),
            orders: vec![order_of(JobId(0))?],
            placement: None,
            hq_now_ms: None,
            policy: None,
        })?;
        let job = JobId(st.store.next_id("job")?);
        let order = order_of(job)?;
        let ro = NewRollout::new(st, job, policy, policy_req, occurrence)?;
        let rec = JobRecord {
            job,
            action: action.clone(),
            dest: dest.clone(),
            created_at_ms: now,
            expires_ms,
            expires_at_ms,
            attempt: Attempt(1),
            awaiting: dest_n,
            canceled_at_ms: None,
            sent_to: by_top.keys().cloned().collect(),
            rollout: ro.rollout.clone(),
            repeat: occurrence.map(|(r, _)| r.id),
            filter: filter.clone(),
        };
        let queued: Vec<(NodeName, Assignment)> = by_top
            .into_iter()
            .map(|(top, list)| {
                let a = Assignment {
                    job,
                    attempt: Attempt(1),
                    action: action.clone(),
                    expires_at_ms,
                    scope: Scope::AllLowerOf(list),
                    orders: vec![order.clone()],
                    placement: None,
                    hq_now_ms: None,
                    policy: ro.gated(),
                };
                (top, a)
            })
            .collect();
        let sends = ro.messages(queued);
        // The job and its queue (and its hold, and its schedule's next due
        // time) in one atomic write: after a crash, all or nothing.
        st.store.atomically(
            &[&st.jobs, st.down.table(), &st.repeats, &st.after_sync],
            |w| {
                w.put_at(&st.jobs, &JobKey(job), &rec)?;
                for (top, m) in &sends {
                    st.down.put_in(w, top, m)?;
                }
                ro.write(st, w, job)
            },
        )?;
        sends
    };
    st.store.durable().await?;
    let job = queued
        .iter()
        .find_map(|(_, m)| match m {
            Msg::Assign(a) => Some(a.job),
            _ => None,
        })
        .unwrap_or_default();
    info!(%job, relays = ?dest, "job created");
    crate::link::queue::send_now(&st.children, queued);
    st.bump();
    Ok(job)
}

/// Refuses an occurrence of a schedule removed meanwhile (it would bring
/// the schedule back). Call with HQ's write lock held.
fn check_occurrence(
    st: &HqState,
    occurrence: Option<(&super::repeat::RepeatRecord, u64)>,
) -> Result<(), HqError> {
    match occurrence {
        Some((r, _)) if !super::repeat::exists(st, r.id)? => {
            Err(HqError::Refused(format!("schedule {} was removed", r.id)))
        }
        _ => Ok(()),
    }
}

/// What a new job's rollout adds to its creation, for relay destinations
/// and named clients alike: the record's rollout, the hold that goes before
/// its assignments (`--after-sync`), its schedule's next state.
struct NewRollout {
    rollout: super::rollout::JobRollout,
    hold: Option<(NodeName, Msg)>,
    next: Option<super::repeat::RepeatRecord>,
}

impl NewRollout {
    /// For `job` (just numbered; HQ's write lock held).
    fn new(
        st: &HqState,
        job: JobId,
        policy: crate::proto::Policy,
        req: &crate::proto::PolicyRequest,
        occurrence: Option<(&super::repeat::RepeatRecord, u64)>,
    ) -> Result<Self, HqError> {
        let hold = match &req.after_sync {
            Some(relay) => Some((
                relay.clone(),
                Msg::Pause {
                    job,
                    seq: st.store.next_id("control")?,
                    reason: super::repeat::waiting_reason(relay),
                },
            )),
            None => None,
        };
        Ok(NewRollout {
            rollout: super::rollout::JobRollout {
                policy,
                // Held until the relay's sync finished: created paused.
                paused: req.after_sync.as_ref().map(super::repeat::waiting_reason),
                ..Default::default()
            },
            hold,
            next: occurrence
                .map(|(r, now)| super::repeat::advanced(r, r.next_ms.unwrap_or(now), now, job)),
        })
    }

    /// The policy the assignments carry (none when nothing is gated).
    fn gated(&self) -> Option<crate::proto::Policy> {
        Some(self.rollout.policy.clone()).filter(|p| p.is_gated())
    }

    /// What to queue and send to each relay under HQ: the hold first (a
    /// relay learns the job is paused before it gets the job), then the
    /// assignment.
    fn messages(&self, queued: Vec<(NodeName, Assignment)>) -> Vec<(NodeName, Msg)> {
        let mut out = Vec::new();
        for (top, a) in queued {
            if let Some((_, m)) = &self.hold {
                out.push((top.clone(), m.clone()));
            }
            out.push((top, Msg::Assign(a)));
        }
        out
    }

    /// Its part of the job's atomic change: the schedule's next due time,
    /// the relay whose sync the job waits for.
    fn write(
        &self,
        st: &HqState,
        w: &crate::store::Txn<'_>,
        job: JobId,
    ) -> Result<(), crate::store::TxnError> {
        if let Some(n) = &self.next {
            // Only the holder of the duty commits an occurrence.
            st.store.fence(super::repeat::DUTY)?;
            w.put_at(&st.repeats, &crate::store::keys::Seq(n.id), n)?;
        }
        if let Some((relay, _)) = &self.hold {
            w.put_at(&st.after_sync, &JobKey(job), relay)?;
        }
        Ok(())
    }
}

/// A job for one named client, routed to its home relay with an order
/// signed for that home naming the client (as a rerun's are): a snapshot's
/// master. The caller checked the client.
pub(crate) async fn create_for_client(
    st: &HqState,
    client: &NodeName,
    home: &NodeName,
    action: Action,
    expires_ms: Option<u64>,
) -> Result<JobId, HqError> {
    create_for_clients(st, &[(client.clone(), home.clone())], action, expires_ms).await
}

/// A job for named clients (each with its home relay), routed to their
/// homes with one order per home relay (and chunk) naming them, as a
/// rerun's are: a snapshot's master, a sync's collection. No rollout rules.
pub(crate) async fn create_for_clients(
    st: &HqState,
    clients: &[(NodeName, NodeName)],
    action: Action,
    expires_ms: Option<u64>,
) -> Result<JobId, HqError> {
    let filter = Default::default();
    create_for_clients_with(
        st,
        clients,
        &filter,
        action,
        expires_ms,
        &Default::default(),
        None,
    )
    .await
}

/// [`create_for_clients`] with a rollout policy (canaries picked among the
/// named clients) and, for a recurring job, the occurrence. The caller
/// checked the clients; written like `create` (job, leaves, queue, hold and
/// schedule in one atomic change, durable, then sent).
pub(crate) async fn create_for_clients_with(
    st: &HqState,
    clients: &[(NodeName, NodeName)],
    filter: &crate::proto::TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
    policy_req: &crate::proto::PolicyRequest,
    occurrence: Option<(&super::repeat::RepeatRecord, u64)>,
) -> Result<JobId, HqError> {
    if clients.is_empty() {
        return Err(HqError::Refused("no client given".into()));
    }
    if let Some(r) = &policy_req.after_sync {
        if !st.relays.contains(&Name(r.clone()))? {
            return Err(HqError::Refused(format!(
                "unknown relay {r} (known: {})",
                known_relays(st).join(", ")
            )));
        }
    }
    let expires_ms = Some(expires_ms.unwrap_or(st.order_ttl_ms));
    let (job, queued) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        check_occurrence(st, occurrence)?;
        let now = now_ms();
        let policy = super::rollout::make_policy(policy_req, || Ok(clients.to_vec()), now)?;
        let expires_at_ms = expires_ms.map(|e| now + e);
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        let mut by_home: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        for (client, home) in clients {
            by_top
                .entry(top_child(st, home)?)
                .or_default()
                .push(client.clone());
            by_home
                .entry(home.clone())
                .or_default()
                .push(client.clone());
        }
        let mut homes: Vec<NodeName> = by_home.keys().cloned().collect();
        homes.sort();
        let record = |job: JobId, rollout: super::rollout::JobRollout| JobRecord {
            job,
            action: action.clone(),
            dest: homes.clone(),
            created_at_ms: now,
            expires_ms,
            expires_at_ms,
            attempt: Attempt(1),
            awaiting: vec![],
            canceled_at_ms: None,
            sent_to: by_top.keys().cloned().collect(),
            rollout,
            repeat: occurrence.map(|(r, _)| r.id),
            filter: filter.clone(),
        };
        let assignments = |rec: &JobRecord| -> Result<Vec<(NodeName, Assignment)>, HqError> {
            let mut orders = rerun_orders(st, rec, Attempt(1), now, by_home.clone(), filter)?;
            let gated = Some(rec.rollout.policy.clone()).filter(|p| p.is_gated());
            Ok(by_top
                .iter()
                .map(|(top, list)| {
                    let a = Assignment {
                        job: rec.job,
                        attempt: Attempt(1),
                        action: action.clone(),
                        expires_at_ms,
                        scope: Scope::Targets(list.clone()),
                        orders: orders.remove(top).unwrap_or_default(),
                        placement: None,
                        hq_now_ms: None,
                        policy: gated.clone(),
                    };
                    (top.clone(), a)
                })
                .collect())
        };
        // The size check before a job id is spent (an agent gets one order).
        let probe = super::rollout::JobRollout {
            policy: policy.clone(),
            ..Default::default()
        };
        for (_, mut a) in assignments(&record(JobId(0), probe))? {
            a.orders.truncate(1);
            check_size(&a)?;
        }
        let job = JobId(st.store.next_id("job")?);
        let ro = NewRollout::new(st, job, policy, policy_req, occurrence)?;
        let rec = record(job, ro.rollout.clone());
        let sends = ro.messages(assignments(&rec)?);
        let fresh: Vec<(JobClient, LeafRecord)> = clients
            .iter()
            .map(|(c, home)| {
                (
                    JobClient(job, c.clone()),
                    LeafRecord::pending(home.clone(), Attempt(1), now),
                )
            })
            .collect();
        st.store.atomically(
            &[
                &st.leaves,
                &st.jobs,
                st.down.table(),
                &st.repeats,
                &st.after_sync,
            ],
            |w| {
                for (k, v) in &fresh {
                    w.put_at(&st.leaves, k, v)?;
                }
                w.put_at(&st.jobs, &JobKey(job), &rec)?;
                for (top, m) in &sends {
                    st.down.put_in(w, top, m)?;
                }
                ro.write(st, w, job)
            },
        )?;
        for (_, home) in clients {
            st.counters.moved(job, None, (LeafState::Pending, home));
        }
        (job, sends)
    };
    st.store.durable().await?;
    info!(%job, clients = clients.len(), "job for named clients created");
    crate::link::queue::send_now(&st.children, queued);
    st.bump();
    Ok(job)
}

/// Signs one order per home relay and chunk of at most [`ORDER_CHUNK`]
/// targets (sorted, so a chunk covers a span of names), grouped by the relay
/// under HQ they travel through.
fn rerun_orders(
    st: &HqState,
    rec: &JobRecord,
    attempt: Attempt,
    now: u64,
    by_home: BTreeMap<NodeName, Vec<NodeName>>,
    filter: &crate::proto::TargetFilter,
) -> Result<BTreeMap<NodeName, Vec<SignedOrder>>, HqError> {
    let mut orders: BTreeMap<NodeName, Vec<SignedOrder>> = BTreeMap::new();
    for (home, mut list) in by_home {
        list.sort();
        let top = top_child(st, &home)?;
        for chunk in list.chunks(ORDER_CHUNK) {
            let o = sign(
                st,
                &Order {
                    job: rec.job,
                    attempt,
                    action: rec.action.clone(),
                    expires_at_ms: rec.expires_at_ms,
                    issued_at_ms: now,
                    dest: vec![],
                    relay: Some(home.clone()),
                    targets: Some(chunk.to_vec()),
                    filter: filter.clone(),
                },
            )?;
            orders.entry(top.clone()).or_default().push(o);
        }
    }
    Ok(orders)
}

/// `hq job rerun JOB --failed [--expired]`: a new attempt for the failed and
/// timed-out leaves (and the expired ones with `expired`), each sent to the
/// client's current home and signed for it.
pub(crate) async fn rerun(st: &HqState, job: JobId, expired: bool) -> Result<RerunResult, HqError> {
    if let Some(rec) = st.jobs.get(&JobKey(job))? {
        if let Some(b) = super::batch::children(&rec) {
            let b = b.clone();
            return super::batch::rerun(st, &rec, &b, expired).await;
        }
    }
    rerun_one(st, job, expired).await
}

/// A rerun of one job that is not a batch.
pub(crate) async fn rerun_one(
    st: &HqState,
    job: JobId,
    expired: bool,
) -> Result<RerunResult, HqError> {
    let (result, queued) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let jk = JobKey(job);
        let mut rec: JobRecord = st
            .jobs
            .get(&jk)?
            .ok_or_else(|| super::retention::missing(st, job))?;
        if rec.canceled_at_ms.is_some() {
            return Err(HqError::Refused(format!(
                "job {job} was canceled; a canceled job cannot be rerun"
            )));
        }
        let leaves = load_leaves(st, job)?;
        let mut targets = Vec::new();
        let picked = rules::rerun_targets(leaves.iter().map(|(c, l)| (c, l)), expired);
        // The clients' homes now (they may have moved since the leaves
        // ran), read in one go.
        let names: Vec<Name> = picked.iter().map(|(c, _)| Name(c.clone())).collect();
        for ((client, old_home), now) in picked.into_iter().zip(st.clients.get_many(&names)?) {
            match now {
                Some(c) => targets.push((client, c.relay)),
                None => {
                    warn!(%job, %client, home = %old_home, "client no longer in the directory; not rerun")
                }
            }
        }
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
        rec.expires_at_ms = rec.expires_ms.or(Some(st.order_ttl_ms)).map(|e| now + e);
        let mut by_top: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        let mut by_home: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
        let mut fresh = Vec::with_capacity(targets.len());
        // Each home's top relay, looked up once per home.
        let mut tops: HashMap<&NodeName, NodeName> = HashMap::new();
        for (client, home) in &targets {
            let top = match tops.get(home) {
                Some(t) => t.clone(),
                None => {
                    let t = top_child(st, home)?;
                    tops.insert(home, t.clone());
                    t
                }
            };
            by_top.entry(top).or_default().push(client.clone());
            by_home
                .entry(home.clone())
                .or_default()
                .push(client.clone());
            fresh.push((
                JobClient(job, client.clone()),
                LeafRecord::pending(home.clone(), attempt, now),
            ));
        }
        merge_sent_to(&mut rec, by_top.keys().cloned());
        let mut orders = rerun_orders(st, &rec, attempt, now, by_home, &Default::default())?;
        let queued: Vec<(NodeName, Assignment)> = by_top
            .into_iter()
            .map(|(top, list)| {
                let a = Assignment {
                    job,
                    attempt,
                    action: rec.action.clone(),
                    expires_at_ms: rec.expires_at_ms,
                    scope: Scope::Targets(list),
                    orders: orders.remove(&top).unwrap_or_default(),
                    placement: None,
                    hq_now_ms: None,
                    policy: Some(rec.rollout.policy.clone()).filter(|p| p.is_gated()),
                };
                (top, a)
            })
            .collect();
        // A relay frame carries one assignment: refuse a rerun that would
        // not fit rather than wedge the relay's session re-sending it.
        for (top, a) in &queued {
            let n = crate::proto::codec::encode(&Msg::Assign(a.clone()))
                .map_err(|e| HqError::Refused(format!("cannot encode the rerun: {e}")))?
                .len();
            if n + RELAY_FRAME_SLACK > crate::proto::MAX_FRAME {
                return Err(HqError::Refused(format!(
                    "the rerun sends relay {top} {} targets ({n} bytes), more than one frame holds",
                    match &a.scope {
                        Scope::Targets(t) => t.len(),
                        Scope::AllLowerOf(_) => 0,
                    }
                )));
            }
        }
        // Leaves at n+1, the job at n+1 and the queue: one atomic write.
        st.store
            .atomically(&[&st.leaves, &st.jobs, st.down.table()], |w| {
                for (k, v) in &fresh {
                    w.put_at(&st.leaves, k, v)?;
                }
                w.put_at(&st.jobs, &jk, &rec)?;
                for (top, a) in &queued {
                    st.down.put_in(w, top, &Msg::Assign(a.clone()))?;
                }
                Ok(())
            })?;
        let picked: HashMap<&NodeName, &NodeName> = targets.iter().map(|(c, h)| (c, h)).collect();
        st.counters.moved_many(leaves.iter().filter_map(|(c, l)| {
            let home = picked.get(c)?;
            Some((job, Some((l.state, &l.relay)), (LeafState::Pending, *home)))
        }));
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

/// Why HQ cancels a leaf on `hq job cancel`.
pub(crate) const CANCEL_REASON: &str = "canceled by the operator";

/// `hq job cancel JOB`: in one atomic write, the job is marked canceled,
/// every leaf not yet final becomes `canceled`, and a `Cancel` is queued for
/// every relay under HQ that received the job; then sent to those connected.
pub(crate) async fn cancel(st: &HqState, job: JobId) -> Result<CancelResult, HqError> {
    if let Some(rec) = st.jobs.get(&JobKey(job))? {
        if let Some(b) = super::batch::children(&rec) {
            let b = b.clone();
            return super::batch::cancel(st, rec, &b).await;
        }
    }
    cancel_one(st, job).await
}

/// A cancel of one job that is not a batch.
pub(crate) async fn cancel_one(st: &HqState, job: JobId) -> Result<CancelResult, HqError> {
    let (result, sends) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let jk = JobKey(job);
        let mut rec: JobRecord = st
            .jobs
            .get(&jk)?
            .ok_or_else(|| super::retention::missing(st, job))?;
        let now = now_ms();
        let first = rec.canceled_at_ms.is_none();
        if first && super::view::is_done(&rec, &super::view::counts_held(st, job)?.totals) {
            return Err(HqError::Refused(format!(
                "job {job} is done; there is nothing to cancel"
            )));
        }
        rec.canceled_at_ms.get_or_insert(now);
        rec.awaiting.clear();
        let leaves = load_leaves(st, job)?;
        let closed: Vec<(NodeName, LeafState, LeafRecord)> = leaves
            .into_iter()
            .filter(|(_, l)| !l.state.is_final())
            .map(|(c, l)| {
                let from = l.state;
                let new = LeafRecord {
                    state: LeafState::Canceled,
                    exit_code: None,
                    reason: Some(CANCEL_REASON.into()),
                    output: None,
                    at_ms: now,
                    ..l
                };
                (c, from, new)
            })
            .collect();
        let relays = if rec.sent_to.is_empty() {
            top_relays(st)?
        } else {
            rec.sent_to.clone()
        };
        let msg = Msg::Cancel { job };
        st.store
            .atomically(&[&st.leaves, &st.jobs, st.down.table()], |w| {
                for (c, _, l) in &closed {
                    w.put_at(&st.leaves, &JobClient(job, c.clone()), l)?;
                }
                w.put_at(&st.jobs, &jk, &rec)?;
                for r in &relays {
                    st.down.put_in(w, r, &msg)?;
                }
                Ok(())
            })?;
        for (_, from, l) in &closed {
            st.counters.moved(
                job,
                Some((*from, &l.relay)),
                (LeafState::Canceled, &l.relay),
            );
        }
        if first {
            info!(%job, leaves = closed.len(), relays = ?relays, "job canceled");
        }
        (
            CancelResult {
                job,
                canceled: closed.len() as u64,
            },
            relays
                .into_iter()
                .map(|r| (r, msg.clone()))
                .collect::<Vec<_>>(),
        )
    };
    st.store.durable().await?;
    crate::link::queue::send_now(&st.children, sends);
    st.bump();
    Ok(result)
}

/// Every leaf of a job, by client.
pub(crate) fn load_leaves(
    st: &HqState,
    job: JobId,
) -> Result<Vec<(NodeName, LeafRecord)>, HqError> {
    let mut out = Vec::new();
    for r in st.leaves.scan_prefix(&JobPrefix(job)) {
        let (JobClient(_, n), rec) = r?;
        out.push((n, rec));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::{ClientRecord, RelayRecord};
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn hq(dir: &std::path::Path) -> (HqState, crate::tls::VerifyKey) {
        let key = crate::tls::SigningKey::create(dir).unwrap();
        let public = key.verify_key();
        let depot = crate::pkg::ChunkStore::open(dir.join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir).unwrap(), key, depot).unwrap();
        // hq <- r1, hq <- r2 <- r3
        for (r, p) in [("r1", "hq"), ("r2", "hq"), ("r3", "r2")] {
            st.relays
                .put(
                    &Name(n(r)),
                    &RelayRecord {
                        parent: n(p),
                        connected: false,
                        last_seen_ms: 0,
                    },
                )
                .unwrap();
        }
        (st, public)
    }

    fn home(st: &HqState, client: &NodeName, relay: &str) {
        st.clients
            .put(
                &Name(client.clone()),
                &ClientRecord {
                    relay: n(relay),
                    since_ms: 0,
                    online: false,
                    seen_ms: 0,
                    about: Default::default(),
                },
            )
            .unwrap();
    }

    fn leaf(st: &HqState, job: JobId, client: &NodeName, relay: &str, state: LeafState) {
        let l = LeafRecord {
            state,
            ..LeafRecord::pending(n(relay), Attempt(1), 0)
        };
        st.leaves.put(&JobClient(job, client.clone()), &l).unwrap();
    }

    fn queued(st: &HqState, child: &str) -> Vec<Assignment> {
        st.down
            .queued(&n(child))
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                Msg::Assign(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn run(argv: &str) -> Action {
        Action::Run(crate::proto::RunSpec {
            argv: vec![argv.into()],
            env: vec![],
            cwd: None,
            timeout_ms: None,
        })
    }

    #[tokio::test]
    async fn create_queues_with_the_job_and_gives_every_order_an_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (st, _) = hq(dir.path());
        let before = now_ms();
        let job = create(
            &st,
            vec![n("r1"), n("r3")],
            Default::default(),
            Action::Ping,
            None,
        )
        .await
        .unwrap();
        let rec: JobRecord = st.jobs.get(&JobKey(job)).unwrap().unwrap();
        let exp = rec.expires_at_ms.expect("a default expiry");
        assert!(exp >= before + super::super::DEFAULT_ORDER_TTL_MS);
        assert_eq!(rec.sent_to, vec![n("r1"), n("r2")]);
        assert_eq!(queued(&st, "r1").len(), 1);
        assert_eq!(queued(&st, "r2")[0].scope, Scope::AllLowerOf(vec![n("r3")]));
        // The operator's window wins over the default.
        let job2 = create(
            &st,
            vec![n("r1")],
            Default::default(),
            Action::Ping,
            Some(1_000),
        )
        .await
        .unwrap();
        let rec2: JobRecord = st.jobs.get(&JobKey(job2)).unwrap().unwrap();
        assert!(rec2.expires_at_ms.unwrap() <= now_ms() + 1_000);
        // Too large for an agent frame: refused, and no job is made.
        let huge = Action::Run(crate::proto::RunSpec {
            argv: vec!["x".repeat(crate::proto::AGENT_MAX_FRAME / 2)],
            env: vec![],
            cwd: None,
            timeout_ms: None,
        });
        let e = create(&st, vec![n("r1")], Default::default(), huge, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert_eq!(st.jobs.len(), 2);
    }

    #[tokio::test]
    async fn a_rerun_goes_to_the_clients_current_home_signed_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (st, public) = hq(dir.path());
        let job = create(&st, vec![n("r1")], Default::default(), run("false"), None)
            .await
            .unwrap();
        st.down
            .remove(
                &n("r1"),
                &crate::link::queue::QueueKey::Assign(job, Attempt(1)),
            )
            .unwrap();
        let (c1, c2, c3) = (n("c1"), n("c2"), n("c3"));
        leaf(&st, job, &c1, "r1", LeafState::Failed);
        leaf(&st, job, &c2, "r1", LeafState::Expired);
        leaf(&st, job, &c3, "r1", LeafState::Failed);
        home(&st, &c1, "r3"); // moved from r1 to r3 (under r2)
        home(&st, &c2, "r1");
        // c3 left the directory (revoked): not rerun.
        let r = rerun(&st, job, false).await.unwrap();
        assert_eq!((r.attempt, r.targets), (Attempt(2), 1));
        assert!(queued(&st, "r1").is_empty());
        let a = queued(&st, "r2");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].scope, Scope::Targets(vec![c1.clone()]));
        assert_eq!(a[0].orders.len(), 1);
        let so = &a[0].orders[0];
        assert!(public.verify(&so.body, &so.sig));
        let o: Order = rmp_serde::from_slice(&so.body).unwrap();
        assert_eq!(o.relay, Some(n("r3")));
        assert_eq!(o.targets, Some(vec![c1.clone()]));
        let l: LeafRecord = st.leaves.get(&JobClient(job, c1.clone())).unwrap().unwrap();
        assert_eq!(
            (l.relay, l.attempt, l.state),
            (n("r3"), Attempt(2), LeafState::Pending)
        );
        // --expired also takes the expired leaf, at its home.
        let r = rerun(&st, job, true).await.unwrap();
        assert_eq!((r.attempt, r.targets), (Attempt(3), 1));
        assert_eq!(queued(&st, "r1")[0].scope, Scope::Targets(vec![c2]));
    }

    #[tokio::test]
    async fn rerun_orders_come_in_chunks_that_name_each_target_once() {
        let dir = tempfile::tempdir().unwrap();
        let (st, _) = hq(dir.path());
        let job = create(&st, vec![n("r1")], Default::default(), run("false"), None)
            .await
            .unwrap();
        let total = 20_000;
        let names: Vec<NodeName> = (0..total)
            .map(|i| n(&format!("{}-{i:07}", "a".repeat(49))))
            .collect();
        assert_eq!(names[0].as_str().len(), 57);
        for c in &names {
            leaf(&st, job, c, "r1", LeafState::Failed);
            home(&st, c, "r1");
        }
        let r = rerun(&st, job, false).await.unwrap();
        assert_eq!(r.targets, total as u64);
        let a = queued(&st, "r1")
            .into_iter()
            .find(|a| a.attempt == Attempt(2))
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for so in &a.orders {
            let o: Order = rmp_serde::from_slice(&so.body).unwrap();
            let t = o.targets.unwrap();
            assert!(!t.is_empty() && t.len() <= ORDER_CHUNK);
            assert_eq!(o.relay, Some(n("r1")));
            for c in t {
                assert!(seen.insert(c), "a target in two orders");
            }
        }
        assert_eq!(seen.len(), total);
        assert_eq!(a.orders.len(), total.div_ceil(ORDER_CHUNK));
    }

    #[tokio::test]
    async fn cancel_closes_open_leaves_queues_cancels_and_forbids_reruns() {
        let dir = tempfile::tempdir().unwrap();
        let (st, _) = hq(dir.path());
        let job = create(
            &st,
            vec![n("r1"), n("r3")],
            Default::default(),
            run("sleep"),
            None,
        )
        .await
        .unwrap();
        let states = [
            ("c1", LeafState::Pending),
            ("c2", LeafState::Running),
            ("c3", LeafState::Succeeded),
            ("c4", LeafState::Failed),
        ];
        for (c, s) in states {
            leaf(&st, job, &n(c), "r1", s);
        }
        let r = cancel(&st, job).await.unwrap();
        assert_eq!(r.canceled, 2);
        let rec: JobRecord = st.jobs.get(&JobKey(job)).unwrap().unwrap();
        assert!(rec.canceled_at_ms.is_some() && rec.awaiting.is_empty());
        let got: Vec<(String, LeafState)> = load_leaves(&st, job)
            .unwrap()
            .into_iter()
            .map(|(c, l)| (c.to_string(), l.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("c1".into(), LeafState::Canceled),
                ("c2".into(), LeafState::Canceled),
                ("c3".into(), LeafState::Succeeded),
                ("c4".into(), LeafState::Failed),
            ]
        );
        for r in ["r1", "r2"] {
            // The job's own assignment may still be queued (never acked here).
            let cancels: Vec<Msg> = st
                .down
                .queued(&n(r))
                .unwrap()
                .into_iter()
                .filter(|m| !matches!(m, Msg::Assign(_)))
                .collect();
            assert_eq!(cancels, vec![Msg::Cancel { job }]);
        }
        assert!(st.down.queued(&n("r3")).unwrap().is_empty());
        let e = rerun(&st, job, false).await.unwrap_err();
        assert!(e.to_string().contains("canceled"), "{e}");
        // Twice: nothing more to cancel.
        assert_eq!(cancel(&st, job).await.unwrap().canceled, 0);
        assert!(cancel(&st, JobId(99)).await.is_err());
    }

    #[tokio::test]
    async fn status_pages_give_every_matching_leaf_once_in_order() {
        use crate::hq::view;
        let dir = tempfile::tempdir().unwrap();
        let (st, _) = hq(dir.path());
        let job = create(&st, vec![n("r1")], Default::default(), Action::Ping, None)
            .await
            .unwrap();
        let names: Vec<NodeName> = (0..7).map(|i| n(&format!("c{i}"))).collect();
        for (i, c) in names.iter().enumerate() {
            let state = if i % 2 == 0 {
                LeafState::Failed
            } else {
                LeafState::Succeeded
            };
            leaf(&st, job, c, if i < 4 { "r1" } else { "r2" }, state);
        }
        // A leaf of the next job must not leak into the last page.
        leaf(&st, JobId(job.0 + 1), &n("c0"), "r1", LeafState::Failed);
        for (f, want) in [
            (view::Filter::default(), vec![0, 1, 2, 3, 4, 5, 6]),
            (
                view::Filter {
                    states: vec![LeafState::Failed],
                    ..Default::default()
                },
                vec![0, 2, 4, 6],
            ),
            (
                view::Filter {
                    relay: Some(n("r2")),
                    ..Default::default()
                },
                vec![4, 5, 6],
            ),
        ] {
            for size in [1u64, 2, 3, 7, 100] {
                let first = view::status_of(&st, job, &f, Some(size)).unwrap();
                assert_eq!(first.totals.total(), 7);
                assert_eq!(first.matched, want.len() as u64);
                let mut got: Vec<NodeName> =
                    first.clients.iter().map(|c| c.client.clone()).collect();
                assert!(got.len() as u64 <= size);
                let mut next = first.next;
                let mut pages = 0;
                while let Some(after) = next {
                    pages += 1;
                    assert!(
                        pages <= 10,
                        "{f:?} in pages of {size}: no end after {after}"
                    );
                    let p = view::status_after(&st, job, &f, &after, size).unwrap();
                    assert!(!p.clients.is_empty() && p.clients.len() as u64 <= size);
                    got.extend(p.clients.iter().map(|c| c.client.clone()));
                    next = p.next;
                }
                let want: Vec<NodeName> = want.iter().map(|i| names[*i].clone()).collect();
                assert_eq!(got, want, "{f:?} in pages of {size}");
            }
        }
        // Without a page, every leaf in one answer and no `next`.
        let all = view::status_of(&st, job, &view::Filter::default(), None).unwrap();
        assert_eq!(all.clients.len(), 7);
        assert_eq!(all.next, None);
    }
}
