//! An assignment from the parent: snapshot or route its targets, create home
//! leaves, queue the rest for child relays, then acknowledge (after a flush)
//! and deliver. `apply` only reads and writes the store; what it writes is
//! decided by `rules::plan_assignment`.

use super::{AttemptRecord, DirEntry, RelayState};
#[cfg(test)]
use crate::proto::Event;
use crate::proto::{now_ms, Assignment, LeafState, Msg, NodeName, Scope, SignedOrder};
use crate::rules::{self, AssignView, Placement};
use crate::store::keys::{JobAttempt, JobClient, Name, NameJob};
use crate::store::StoreError;
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};

/// What to deliver once the assignment is durable.
pub(crate) struct Deliveries {
    /// Home agents to send the assignment to.
    pub agents: Vec<NodeName>,
    /// Child relays and what to send each.
    pub relays: Vec<(NodeName, Assignment)>,
}

/// Every client in the subtree, with its directory entry.
fn all_clients(st: &RelayState) -> Result<Vec<(NodeName, DirEntry)>, StoreError> {
    let mut out = Vec::new();
    for r in st.dir_clients.scan() {
        let (Name(n), e) = r?;
        out.push((n, e));
    }
    Ok(out)
}

/// Applies an assignment (not yet durable): reads what the scope needs,
/// plans with [`rules::plan_assignment`], writes the plan. Idempotent: a
/// re-sent assignment creates nothing new.
pub(crate) fn apply(st: &RelayState, a: &Assignment) -> Result<Deliveries, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let ak = JobAttempt(a.job, a.attempt);
    if st.attempts.contains(&ak)? {
        return Ok(Deliveries {
            agents: vec![],
            relays: vec![],
        });
    }
    // Read.
    let place = |e: DirEntry| Placement {
        home: e.home,
        via: e.via,
    };
    let mut skipped = Vec::new();
    let view = match &a.scope {
        Scope::AllLowerOf(list) if list.contains(&st.me) => AssignView::Snapshot(
            super::narrow::narrowed(st, a, all_clients(st)?)?
                .into_iter()
                .map(|(c, e)| (c, place(e)))
                .collect(),
        ),
        Scope::AllLowerOf(list) => AssignView::Relays(
            list.iter()
                .map(|r| {
                    let hop = st.dir_relays.get(&Name(r.clone())).ok().flatten();
                    (r.clone(), hop)
                })
                .collect(),
        ),
        Scope::Targets(list) => {
            let (kept, out) = super::narrow::skip_refused(st, a, list)?;
            skipped = out;
            AssignView::Clients(kept.into_iter().map(|(c, e)| (c, e.map(place))).collect())
        }
    };
    let mut leaves = BTreeMap::new();
    for c in view.home_clients(&st.me) {
        if let Some(rec) = st.leaves.get(&JobClient(a.job, c.clone()))? {
            leaves.insert(c.clone(), rec);
        }
    }
    // Plan.
    let plan = rules::plan_assignment(&st.me, a, view, &leaves, now_ms());
    // Write, the attempt record last: once it is there, so is all it implies.
    if !plan.report.is_empty() {
        st.outbox.push(&plan.report)?;
        info!(job = %a.job, attempt = %a.attempt, targets = plan.reported(), "snapshot of lower clients");
    }
    for r in &plan.unknown_relays {
        warn!(job = %a.job, relay = %r, "destination relay not in this subtree");
    }
    for (client, _) in &plan.create {
        st.client_leaves
            .put(&NameJob(client.clone(), a.job), &a.attempt.0)?;
    }
    st.leaves.put_many(
        plan.create
            .iter()
            .map(|(c, rec)| (JobClient(a.job, c.clone()), rec)),
    )?;
    if !plan.lost.is_empty() {
        st.outbox.push(&plan.lost)?;
    }
    if !skipped.is_empty() {
        info!(job = %a.job, attempt = %a.attempt, skipped = skipped.len(), "named clients the order's filter no longer admits here: canceled");
        st.outbox.push(&skipped)?;
    }
    for (child, fwd) in &plan.relays {
        st.down.put(child, &Msg::Assign(fwd.clone()))?;
    }
    super::expire::index(st, a.job, a.attempt, a.expires_at_ms)?;
    super::rollout::note_policy(st, a.job, a.policy.as_ref())?;
    if !plan.create.is_empty() {
        // New leaves: the gate is counted again from the store.
        st.gates.forget(a.job);
    }
    st.attempts.put(
        &ak,
        &AttemptRecord {
            action: a.action.clone(),
            expires_at_ms: a.expires_at_ms,
            swept: false,
            orders: a.orders.clone(),
        },
    )?;
    Ok(Deliveries {
        agents: plan.agents,
        relays: plan.relays,
    })
}

/// The order names a rerun chunk covers, read from its signed body without
/// copying them.
#[derive(serde::Deserialize)]
struct OrderTargets<'a> {
    #[serde(borrow, default)]
    targets: Option<Vec<&'a str>>,
}

/// The orders of an assignment as the agents of relay `me` need them: an
/// original attempt's order covers every agent; a rerun's orders come one
/// per chunk of at most a few hundred targets, and an agent gets only the
/// chunk naming it, so its assignment does not grow with the rerun. Each
/// order body is decoded once.
pub(crate) struct AgentOrders<'a> {
    every: Vec<&'a SignedOrder>,
    by_client: HashMap<&'a str, &'a SignedOrder>,
}

impl<'a> AgentOrders<'a> {
    /// Indexes `orders` for the agents of `me`.
    pub(crate) fn new(orders: &'a [SignedOrder], me: &NodeName) -> AgentOrders<'a> {
        let mut out = AgentOrders {
            every: vec![],
            by_client: HashMap::new(),
        };
        for o in orders {
            match &o.relay {
                None => out.every.push(o),
                Some(r) if r == me => {
                    match rmp_serde::from_slice::<OrderTargets<'a>>(&o.body) {
                        Ok(OrderTargets {
                            targets: Some(list),
                        }) => {
                            for c in list {
                                out.by_client.entry(c).or_insert(o);
                            }
                        }
                        // Undecodable or unbounded: the agent judges it.
                        _ => out.every.push(o),
                    }
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Whether `client` has a rerun chunk of its own (beyond the orders
    /// that cover every agent).
    fn has_own(&self, client: &NodeName) -> bool {
        self.by_client.contains_key(client.as_str())
    }

    /// The orders that can cover `client`.
    pub(crate) fn for_client(&self, client: &NodeName) -> Vec<SignedOrder> {
        self.every
            .iter()
            .chain(self.by_client.get(client.as_str()))
            .map(|o| (*o).clone())
            .collect()
    }
}

/// The assignment an agent of relay `me` receives for one of its leaves,
/// with only the orders that can cover it (an original attempt's, or the
/// chunk of `me`'s rerun order naming it). Copies nothing else of `a`.
pub(crate) fn for_agent(a: &Assignment, me: &NodeName, client: &NodeName) -> Assignment {
    agent_assignment(a, &AgentOrders::new(&a.orders, me), client)
}

fn agent_assignment(a: &Assignment, orders: &AgentOrders<'_>, client: &NodeName) -> Assignment {
    Assignment {
        job: a.job,
        attempt: a.attempt,
        action: a.action.clone(),
        expires_at_ms: a.expires_at_ms,
        scope: Scope::Targets(vec![client.clone()]),
        orders: orders.for_client(client),
        // Set on the last hop by `placement::attach`.
        placement: None,
        hq_now_ms: None,
        policy: None,
    }
}

/// Room kept in an agent frame for the message envelope.
const FRAME_SLACK: usize = 4096;

/// The encoded size of `m` as an agent receives it (`None`: not encodable).
fn agent_frame_len(m: &Assignment) -> Option<usize> {
    crate::proto::codec::encode(&Msg::Assign(m.clone()))
        .ok()
        .map(|b| b.len())
}

/// Whether `m` fits in one agent frame.
fn fits_agent_frame(m: &Assignment) -> bool {
    // Bounded by construction (one chunk of orders), but an oversized
    // message would kill the session at every re-send: measure.
    agent_frame_len(m).is_some_and(|n| n + FRAME_SLACK <= crate::proto::AGENT_MAX_FRAME)
}

/// Whether the agents' assignments of one delivery fit in an agent frame.
/// Those with only the orders covering every agent differ in the agent's
/// name alone: the first is encoded, the others are bounded by its size
/// plus their name (no encoding per leaf). One with a rerun chunk of its
/// own is encoded.
#[derive(Default)]
struct FrameCheck {
    /// Encoded size of the first assignment with the common orders only.
    common: Option<Option<usize>>,
}

impl FrameCheck {
    fn fits(&mut self, m: &Assignment, client: &NodeName, own_chunk: bool) -> bool {
        if own_chunk {
            return fits_agent_frame(m);
        }
        let common = *self.common.get_or_insert_with(|| agent_frame_len(m));
        common.is_some_and(|n| {
            n + client.as_str().len() + FRAME_SLACK <= crate::proto::AGENT_MAX_FRAME
        })
    }
}

/// A home leaf that cannot be sent to its agent fails here, with the reason,
/// rather than being re-sent for ever (durable at the next flush).
fn fail_undeliverable(st: &RelayState, a: &Assignment, client: &NodeName, reason: String) {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let k = JobClient(a.job, client.clone());
    let r = (|| -> Result<(), StoreError> {
        super::results::settle(st, &_w)?;
        let Some(leaf) = st.leaves.get(&k)? else {
            return Ok(());
        };
        if leaf.attempt != a.attempt || leaf.state.is_final() {
            return Ok(());
        }
        let (rec, ev) = super::close_here(
            st,
            a.job,
            client,
            &leaf,
            LeafState::Failed,
            reason,
            now_ms(),
        );
        st.outbox.push(&[ev])?;
        st.leaves.put(&k, &rec)
    })();
    if let Err(e) = r {
        warn!(job = %a.job, %client, error = %e, "cannot record an undeliverable leaf");
    }
}

/// Sends what `apply` decided to whoever is connected now; the rest is sent
/// when they connect. Nothing of a job canceled here is delivered.
pub(crate) fn deliver(st: &RelayState, a: &Assignment, d: Deliveries) {
    match super::cancel::is_canceled(st, a.job) {
        Ok(false) => {}
        Ok(true) => {
            info!(job = %a.job, attempt = %a.attempt, "job canceled here; not delivered");
            return;
        }
        Err(e) => warn!(job = %a.job, error = %e, "cannot read the cancel record"),
    }
    let now = now_ms();
    if a.expires_at_ms.is_some_and(|e| e <= now) {
        // Past expiry: the sweeper expires home leaves; child relays still get
        // it so that they account for their own.
        for (child, fwd) in d.relays {
            if let Some(tx) = st.child(&child) {
                crate::link::send_soon(&tx, Msg::Assign(fwd));
            }
        }
        return;
    }
    let orders = AgentOrders::new(&a.orders, &st.me);
    let agents = match super::rollout::record(st, a.job) {
        // Gated: only what the rollout lets start now; the rest as others end.
        Ok(Some(_)) => match super::rollout::release(st, a.job) {
            Ok(list) => list,
            Err(e) => {
                warn!(job = %a.job, error = %e, "cannot release leaves");
                vec![]
            }
        },
        Ok(None) => d.agents,
        Err(e) => {
            warn!(job = %a.job, error = %e, "cannot read the job's rollout");
            vec![]
        }
    };
    let mut check = FrameCheck::default();
    for client in agents {
        let m = agent_assignment(a, &orders, &client);
        if !check.fits(&m, &client, orders.has_own(&client)) {
            let reason = format!(
                "the assignment does not fit in an agent frame ({} bytes)",
                crate::proto::AGENT_MAX_FRAME
            );
            warn!(job = %a.job, attempt = %a.attempt, %client, "{reason}; leaf failed");
            fail_undeliverable(st, a, &client, reason);
            continue;
        }
        if let Some(tx) = st.child(&client) {
            match super::placement::attach(st, &client, m) {
                Ok(Some(cut)) => crate::link::send_soon(&tx, Msg::Assign(cut)),
                Ok(None) => {}
                // Still pending: sent again when the agent reconnects.
                Err(e) => warn!(%client, error = %e, "cannot read the agent's placement"),
            }
        }
    }
    for (child, fwd) in d.relays {
        if let Some(tx) = st.child(&child) {
            crate::link::send_soon(&tx, Msg::Assign(fwd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Attempt, JobId};
    use crate::rules::LeafRecord;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn relay(dir: &std::path::Path) -> RelayState {
        let st = RelayState::open(
            n("r1"),
            Store::open(dir).unwrap(),
            crate::relay::cache::for_tests(dir),
        )
        .unwrap();
        let home = DirEntry {
            home: n("r1"),
            via: n("r1"),
        };
        let below = DirEntry {
            home: n("r2"),
            via: n("r2"),
        };
        let deeper = DirEntry {
            home: n("r4"),
            via: n("r2"),
        };
        for (c, e) in [
            ("c1", &home),
            ("c2", &home),
            ("c3", &below),
            ("c4", &deeper),
        ] {
            st.dir_clients.put(&Name(n(c)), e).unwrap();
        }
        st.dir_relays.put(&Name(n("r2")), &n("r2")).unwrap();
        st.dir_relays.put(&Name(n("r4")), &n("r2")).unwrap();
        st
    }

    fn assignment(attempt: u32, scope: Scope) -> Assignment {
        Assignment {
            job: JobId(7),
            attempt: Attempt(attempt),
            action: Action::Ping,
            expires_at_ms: None,
            scope,
            orders: vec![],
            placement: None,
            hq_now_ms: None,
            policy: None,
        }
    }

    fn targets_reported(st: &RelayState) -> Vec<(String, String)> {
        st.outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .flat_map(|(_, e)| match e {
                Event::Targets { leaves, .. } => leaves,
                _ => vec![],
            })
            .map(|(c, h)| (c.to_string(), h.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn snapshot_covers_every_lower_client_and_splits_by_hop() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r1")]))).unwrap();
        assert_eq!(d.agents, vec![n("c1"), n("c2")]);
        assert_eq!(d.relays.len(), 1);
        assert_eq!(d.relays[0].0, n("r2"));
        assert_eq!(d.relays[0].1.scope, Scope::Targets(vec![n("c3"), n("c4")]));
        let reported = targets_reported(&st);
        assert_eq!(reported.len(), 4);
        assert!(reported.contains(&("c4".into(), "r4".into())));
        // The same assignment again creates nothing and reports nothing new.
        let again = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r1")]))).unwrap();
        assert!(again.agents.is_empty() && again.relays.is_empty());
        assert_eq!(targets_reported(&st).len(), 4);
    }

    #[tokio::test]
    async fn a_filtered_snapshot_takes_only_matching_clients_below() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let web = crate::proto::About {
            labels: crate::proto::labels::parse_labels(&["role=web"]).unwrap(),
            version: None,
        };
        for c in ["c1", "c3", "c4"] {
            st.dir_about.put(&Name(n(c)), &web).unwrap();
        }
        let order = crate::proto::Order {
            job: JobId(7),
            attempt: Attempt(1),
            action: Action::Ping,
            expires_at_ms: None,
            issued_at_ms: 0,
            dest: vec![n("r1")],
            relay: None,
            targets: None,
            filter: crate::proto::TargetFilter {
                labels: web.labels.clone(),
                exclude: vec![n("c4")],
            },
        };
        let a = Assignment {
            orders: vec![SignedOrder {
                body: order.encode().unwrap(),
                sig: vec![],
                relay: None,
            }],
            ..assignment(1, Scope::AllLowerOf(vec![n("r1")]))
        };
        let d = apply(&st, &a).unwrap();
        assert_eq!(d.agents, vec![n("c1")]);
        assert_eq!(d.relays[0].1.scope, Scope::Targets(vec![n("c3")]));
        assert_eq!(
            targets_reported(&st),
            vec![("c1".into(), "r1".into()), ("c3".into(), "r2".into())]
        );
    }

    #[tokio::test]
    async fn a_named_lower_relay_is_routed_not_snapshotted_here() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(&st, &assignment(1, Scope::AllLowerOf(vec![n("r4")]))).unwrap();
        assert!(d.agents.is_empty());
        assert_eq!(d.relays[0].0, n("r2"));
        assert_eq!(d.relays[0].1.scope, Scope::AllLowerOf(vec![n("r4")]));
        assert!(targets_reported(&st).is_empty());
    }

    #[tokio::test]
    async fn explicit_targets_route_and_unknown_clients_are_accounted_for() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let d = apply(
            &st,
            &assignment(2, Scope::Targets(vec![n("c2"), n("c4"), n("gone")])),
        )
        .unwrap();
        assert_eq!(d.agents, vec![n("c2")]);
        assert_eq!(d.relays[0].1.scope, Scope::Targets(vec![n("c4")]));
        let canceled: Vec<_> = st
            .outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) if u.state == LeafState::Canceled => Some(u.client.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(canceled, vec!["gone"]);
    }

    /// Orders as HQ makes them for a rerun at `home`: sorted targets in
    /// chunks of 256, one signed order each.
    fn rerun_orders(home: &str, names: &[NodeName]) -> Vec<SignedOrder> {
        let mut sorted = names.to_vec();
        sorted.sort();
        sorted
            .chunks(256)
            .map(|chunk| {
                let o = crate::proto::Order {
                    job: JobId(7),
                    attempt: Attempt(2),
                    action: Action::Ping,
                    expires_at_ms: None,
                    issued_at_ms: 0,
                    dest: vec![],
                    relay: Some(n(home)),
                    targets: Some(chunk.to_vec()),
                    filter: Default::default(),
                };
                SignedOrder {
                    body: rmp_serde::to_vec_named(&o).unwrap(),
                    sig: vec![0; 64],
                    relay: Some(n(home)),
                }
            })
            .collect()
    }

    fn long_names(count: usize) -> Vec<NodeName> {
        (0..count)
            .map(|i| n(&format!("{}-{i:07}", "a".repeat(49))))
            .collect()
    }

    fn agent_bytes(a: &Assignment, client: &NodeName) -> usize {
        let m = for_agent(a, &n("r1"), client);
        crate::proto::codec::encode(&Msg::Assign(m)).unwrap().len()
    }

    #[test]
    fn an_agents_assignment_does_not_grow_with_the_rerun() {
        let mut sizes = Vec::new();
        for count in [300, 20_000] {
            let names = long_names(count);
            let mut orders = rerun_orders("r1", &names);
            // Another home's orders ride along to this relay; no agent here gets them.
            orders.extend(rerun_orders("r9", &names[..300]));
            let a = Assignment {
                orders,
                ..assignment(2, Scope::Targets(names.clone()))
            };
            let whole = crate::proto::codec::encode(&Msg::Assign(a.clone()))
                .unwrap()
                .len();
            for c in [&names[0], &names[count / 2], &names[count - 1]] {
                let m = for_agent(&a, &n("r1"), c);
                assert_eq!(m.orders.len(), 1, "exactly the chunk naming {c}");
                let o: crate::proto::Order = rmp_serde::from_slice(&m.orders[0].body).unwrap();
                assert!(o.targets.unwrap().contains(c));
                sizes.push(agent_bytes(&a, c));
            }
            if count == 20_000 {
                // The whole assignment would not fit an agent frame.
                assert!(whole > crate::proto::AGENT_MAX_FRAME, "{whole}");
            }
        }
        // At most one full chunk, the same at 300 targets as at 20,000.
        let (small, large) = sizes.split_at(3);
        let (s, l) = (small.iter().max().unwrap(), large.iter().max().unwrap());
        assert!(*l < 32 * 1024, "per-agent assignment {l} bytes");
        assert_eq!(s, l, "grew with the target count: {sizes:?}");
        // An original attempt's order (no relay) goes to every agent.
        let orig = Assignment {
            orders: vec![SignedOrder {
                body: vec![1],
                sig: vec![],
                relay: None,
            }],
            ..assignment(1, Scope::AllLowerOf(vec![n("r1")]))
        };
        assert_eq!(for_agent(&orig, &n("r1"), &n("c1")).orders.len(), 1);
    }

    #[tokio::test]
    async fn an_assignment_too_large_for_an_agent_fails_its_leaf_once() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path());
        let huge = Action::Run(crate::proto::RunSpec {
            argv: vec!["x".repeat(crate::proto::AGENT_MAX_FRAME)],
            env: vec![],
            cwd: None,
            timeout_ms: None,
        });
        let a = Assignment {
            action: huge,
            ..assignment(1, Scope::Targets(vec![n("c1")]))
        };
        let d = apply(&st, &a).unwrap();
        assert_eq!(d.agents, vec![n("c1")]);
        deliver(&st, &a, d);
        let l: LeafRecord = st
            .leaves
            .get(&JobClient(JobId(7), n("c1")))
            .unwrap()
            .unwrap();
        assert_eq!(l.state, LeafState::Failed);
        assert!(l.reason.unwrap().contains("agent frame"));
        let failed = st
            .outbox
            .read_after(0, 100)
            .unwrap()
            .into_iter()
            .filter(|(_, e)| matches!(e, Event::Leaf(u) if u.state == LeafState::Failed))
            .count();
        assert_eq!(failed, 1);
    }
}
