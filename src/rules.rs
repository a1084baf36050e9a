//! Pure decisions shared by HQ and relays: which state wins, which leaves a
//! rerun targets, where a name routes, which outbox entries a batch may drop,
//! what an assignment makes a relay write and send. No I/O (callers read the
//! store, call these, then write what they return); table-tested.

use crate::proto::{Assignment, Attempt, Event, JobId, LeafState, LeafUpdate, NodeName, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A leaf's latest known result, as HQ and home relays store it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    /// The client's home relay.
    pub relay: NodeName,
    /// The attempt this state belongs to.
    pub attempt: Attempt,
    /// The state.
    pub state: LeafState,
    /// Exit code, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, expired or was canceled.
    #[serde(default)]
    pub reason: Option<String>,
    /// Output tail.
    #[serde(default)]
    pub output: Option<String>,
    /// When, unix ms.
    pub at_ms: u64,
    /// Stdout and stderr apart, and timings (HQ moves them to a table of
    /// their own; relays do not keep them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<crate::proto::LeafOutput>,
    /// An audit's differences or a snapshot's upload (audit and snapshot jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::proto::audit::AuditOutcome>,
}

impl LeafRecord {
    /// A fresh pending leaf.
    pub fn pending(relay: NodeName, attempt: Attempt, at_ms: u64) -> LeafRecord {
        LeafRecord {
            relay,
            attempt,
            state: LeafState::Pending,
            exit_code: None,
            reason: None,
            output: None,
            at_ms,
            out: None,
            audit: None,
        }
    }
}

/// Whether an update at (`attempt`, `state`) supersedes what is stored: a
/// later attempt always does; within an attempt, only a higher rank does.
pub fn supersedes(cur: Option<(Attempt, LeafState)>, attempt: Attempt, state: LeafState) -> bool {
    match cur {
        None => true,
        Some((a, s)) => attempt > a || (attempt == a && state.rank() > s.rank()),
    }
}

/// Applies an update to a stored leaf; `None` when it changes nothing (stale,
/// duplicate or backwards), so a re-sent batch is harmless.
pub fn merge(cur: Option<&LeafRecord>, u: &LeafUpdate) -> Option<LeafRecord> {
    if !supersedes(cur.map(|c| (c.attempt, c.state)), u.attempt, u.state) {
        return None;
    }
    Some(LeafRecord {
        relay: u.relay.clone(),
        attempt: u.attempt,
        state: u.state,
        exit_code: u.exit_code,
        reason: u.reason.clone(),
        output: u.output.clone(),
        at_ms: u.at_ms,
        out: u.out.clone(),
        audit: u.audit.clone(),
    })
}

/// A target of attempt `attempt` becomes pending unless the leaf already holds
/// that attempt or a later one.
pub fn target(
    cur: Option<&LeafRecord>,
    relay: &NodeName,
    attempt: Attempt,
    at_ms: u64,
) -> Option<LeafRecord> {
    match cur {
        Some(c) if c.attempt >= attempt => None,
        _ => Some(LeafRecord::pending(relay.clone(), attempt, at_ms)),
    }
}

/// The leaves a `rerun --failed` targets: those whose latest result is
/// failed or timed out, and with `expired` (`--expired`) also those that
/// expired. Succeeded, canceled and unfinished leaves never are. Returns
/// (client, home the leaf last had).
pub fn rerun_targets<'a>(
    leaves: impl IntoIterator<Item = (&'a NodeName, &'a LeafRecord)>,
    expired: bool,
) -> Vec<(NodeName, NodeName)> {
    leaves
        .into_iter()
        .filter(|(_, l)| l.state.is_rerunnable() || (expired && l.state == LeafState::Expired))
        .map(|(c, l)| (c.clone(), l.relay.clone()))
        .collect()
}

/// Groups names by the next hop that leads to them; names with no route are
/// returned separately.
pub fn split_by_hop<F>(
    names: impl IntoIterator<Item = NodeName>,
    mut next_hop: F,
) -> (BTreeMap<NodeName, Vec<NodeName>>, Vec<NodeName>)
where
    F: FnMut(&NodeName) -> Option<NodeName>,
{
    let mut by_hop: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
    let mut lost = Vec::new();
    for n in names {
        match next_hop(&n) {
            Some(h) => by_hop.entry(h).or_default().push(n),
            None => lost.push(n),
        }
    }
    (by_hop, lost)
}

/// The chain of ancestors of `relay` up to the root, given each relay's
/// parent; stops at a cycle or an unknown parent.
pub fn ancestors(
    relay: &NodeName,
    parent_of: impl Fn(&NodeName) -> Option<NodeName>,
) -> Vec<NodeName> {
    let mut out = Vec::new();
    let mut cur = relay.clone();
    while let Some(p) = parent_of(&cur) {
        if p == *relay || out.contains(&p) {
            break;
        }
        out.push(p.clone());
        cur = p;
    }
    out
}

/// Drops destinations that lie under another destination, so that every
/// client is targeted through exactly one of them.
pub fn normalize_dest(
    dest: &[NodeName],
    parent_of: impl Fn(&NodeName) -> Option<NodeName>,
) -> Vec<NodeName> {
    let mut out: Vec<NodeName> = Vec::new();
    for d in dest {
        if out.contains(d) {
            continue;
        }
        if ancestors(d, &parent_of).iter().any(|a| dest.contains(a)) {
            continue;
        }
        out.push(d.clone());
    }
    out
}

/// Target-set chunk size in `Targets` events.
pub const TARGETS_CHUNK: usize = 4096;

/// Where a client lives, as one relay knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Its home relay.
    pub home: NodeName,
    /// The direct child through which it is reached (the relay itself for
    /// its own agents).
    pub via: NodeName,
}

/// What a relay read from its store for an assignment, by scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignView {
    /// The scope names this relay: every client of its subtree, now.
    Snapshot(Vec<(NodeName, Placement)>),
    /// The scope names lower relays: the child leading to each (`None`: not
    /// in this subtree).
    Relays(Vec<(NodeName, Option<NodeName>)>),
    /// Explicit targets: where each lives (`None`: not in this subtree).
    Clients(Vec<(NodeName, Option<Placement>)>),
}

impl AssignView {
    /// The targets that are `me`'s own agents: their stored leaves are what
    /// [`plan_assignment`] needs besides the view.
    pub fn home_clients(&self, me: &NodeName) -> Vec<&NodeName> {
        match self {
            AssignView::Snapshot(v) => v
                .iter()
                .filter(|(_, p)| p.via == *me)
                .map(|(c, _)| c)
                .collect(),
            AssignView::Clients(v) => v
                .iter()
                .filter(|(_, p)| p.as_ref().is_some_and(|p| p.via == *me))
                .map(|(c, _)| c)
                .collect(),
            AssignView::Relays(_) => vec![],
        }
    }
}

/// What applying an assignment writes, in this order (after a crash, writes
/// survive as a prefix, and the attempt record, written last, says the rest
/// is there), and whom it then goes to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssignPlan {
    /// Snapshot report for the outbox (`Targets` chunks, the last marked).
    pub report: Vec<Event>,
    /// Home leaves to create (pending at this attempt).
    pub create: Vec<(NodeName, LeafRecord)>,
    /// Home agents to deliver to: the created leaves, and pending ones of
    /// this attempt left by an apply cut short by a crash.
    pub agents: Vec<NodeName>,
    /// Targets not in this subtree, reported canceled through the outbox.
    pub lost: Vec<Event>,
    /// Named relays not in this subtree (logged, nothing else).
    pub unknown_relays: Vec<NodeName>,
    /// What to queue for, then send to, each child relay.
    pub relays: Vec<(NodeName, Assignment)>,
}

impl AssignPlan {
    /// How many clients the snapshot report names.
    pub fn reported(&self) -> usize {
        self.report
            .iter()
            .map(|e| match e {
                Event::Targets { leaves, .. } => leaves.len(),
                _ => 0,
            })
            .sum()
    }
}

/// Plans assignment `a` at relay `me` from what it read: `view` for the
/// scope, `leaves` the stored leaf of each of its own agents among the
/// targets (absent: none yet). `now` stamps new records.
pub fn plan_assignment(
    me: &NodeName,
    a: &Assignment,
    view: AssignView,
    leaves: &BTreeMap<NodeName, LeafRecord>,
    now: u64,
) -> AssignPlan {
    let mut plan = AssignPlan::default();
    let forward = |scope| Assignment { scope, ..a.clone() };
    let targets: Vec<(NodeName, Option<Placement>)> = match view {
        AssignView::Relays(hops) => {
            let (by_hop, lost) = split_by_hop(hops.iter().map(|(r, _)| r.clone()), |r| {
                hops.iter()
                    .find(|(n, _)| n == r)
                    .and_then(|(_, h)| h.clone())
            });
            plan.unknown_relays = lost;
            plan.relays = by_hop
                .into_iter()
                .map(|(child, sub)| (child, forward(Scope::AllLowerOf(sub))))
                .collect();
            return plan;
        }
        AssignView::Snapshot(snap) => {
            let pairs: Vec<(NodeName, NodeName)> = snap
                .iter()
                .map(|(c, p)| (c.clone(), p.home.clone()))
                .collect();
            let chunks: Vec<_> = pairs.chunks(TARGETS_CHUNK).collect();
            let n = chunks.len().max(1);
            plan.report = (0..n)
                .map(|i| Event::Targets {
                    job: a.job,
                    attempt: a.attempt,
                    reporter: me.clone(),
                    leaves: chunks.get(i).map(|c| c.to_vec()).unwrap_or_default(),
                    last: i + 1 == n,
                })
                .collect();
            snap.into_iter().map(|(c, p)| (c, Some(p))).collect()
        }
        AssignView::Clients(list) => list,
    };
    let mut to_child: BTreeMap<NodeName, Vec<NodeName>> = BTreeMap::new();
    for (client, place) in targets {
        match place {
            Some(p) if p.via == *me => {
                let cur = leaves.get(&client);
                if let Some(rec) = target(cur, me, a.attempt, now) {
                    plan.create.push((client.clone(), rec));
                    plan.agents.push(client);
                } else if cur
                    .is_some_and(|c| c.attempt == a.attempt && c.state == LeafState::Pending)
                {
                    // Left by an earlier apply cut short by a crash (the
                    // attempt record is written last): still to deliver.
                    plan.agents.push(client);
                }
            }
            Some(p) => to_child.entry(p.via).or_default().push(client),
            None => {
                // A client that left this subtree: account for it rather than drop it.
                plan.lost.push(Event::Leaf(LeafUpdate {
                    job: a.job,
                    attempt: a.attempt,
                    client: client.clone(),
                    relay: me.clone(),
                    state: LeafState::Canceled,
                    exit_code: None,
                    reason: Some(format!("client {client} is not under relay {me}")),
                    output: None,
                    at_ms: now,
                    out: None,
                    audit: None,
                }))
            }
        }
    }
    plan.relays = to_child
        .into_iter()
        .map(|(child, list)| (child, forward(Scope::Targets(list))))
        .collect();
    plan
}

/// Drops leaf updates that a later update in the same batch supersedes
/// (same job, client and attempt), and presence changes of a client that a
/// later one in the batch supersedes: one flush at the parent then covers
/// only the latest state per leaf and per client. The parent acks the
/// batch's last sequence number, which still covers the dropped entries.
pub fn coalesce(batch: Vec<(u64, Event)>) -> Vec<(u64, Event)> {
    use std::collections::HashMap;
    let mut latest: HashMap<(JobId, &NodeName, Attempt), usize> = HashMap::new();
    for (i, (_, e)) in batch.iter().enumerate() {
        if let Event::Leaf(u) = e {
            latest.insert((u.job, &u.client, u.attempt), i);
        }
    }
    let presence = crate::proto::labels::latest_presence(batch.iter().flat_map(|(_, e)| match e {
        Event::Presence { changes, .. } => changes.as_slice(),
        _ => &[],
    }));
    let keep: Vec<bool> = batch
        .iter()
        .enumerate()
        .map(|(i, (_, e))| match e {
            Event::Leaf(u) => latest.get(&(u.job, &u.client, u.attempt)) == Some(&i),
            _ => true,
        })
        .collect();
    let last = batch.last().map(|(s, _)| *s);
    let mut kept_presence = presence.into_iter();
    let mut out: Vec<(u64, Event)> = batch
        .into_iter()
        .zip(keep)
        .filter_map(|((seq, e), k)| match e {
            Event::Presence { relay, changes } => {
                let changes: Vec<_> = changes
                    .into_iter()
                    .filter(|_| kept_presence.next().unwrap_or(true))
                    .collect();
                (!changes.is_empty()).then_some((seq, Event::Presence { relay, changes }))
            }
            e => k.then_some((seq, e)),
        })
        .collect();
    // The last sequence number must be sent so that the ack covers the batch.
    if let (Some(last), Some((s, _))) = (last, out.last_mut()) {
        *s = last;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::JobId;
    use LeafState::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }
    fn upd(attempt: u32, state: LeafState) -> LeafUpdate {
        LeafUpdate {
            job: JobId(1),
            attempt: Attempt(attempt),
            client: n("c1"),
            relay: n("r1"),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms: 0,
            out: None,
            audit: None,
        }
    }
    fn rec(attempt: u32, state: LeafState) -> LeafRecord {
        LeafRecord {
            state,
            ..LeafRecord::pending(n("r1"), Attempt(attempt), 0)
        }
    }

    #[test]
    fn merge_table() {
        // (stored, update, applies)
        let cases = [
            (None, (1, Pending), true),
            (None, (1, Succeeded), true),
            (Some((1, Pending)), (1, Delivered), true),
            (Some((1, Delivered)), (1, Running), true),
            (Some((1, Running)), (1, Failed), true),
            (Some((1, Pending)), (1, Succeeded), true),
            (Some((1, Running)), (1, Delivered), false),
            (Some((1, Succeeded)), (1, Running), false),
            (Some((1, Succeeded)), (1, Failed), false),
            (Some((1, Failed)), (1, Failed), false),
            (Some((1, Failed)), (2, Pending), true),
            (Some((2, Pending)), (1, Succeeded), false),
            (Some((2, Running)), (2, Pending), false),
            (Some((1, Pending)), (1, Expired), true),
            (Some((1, Delivered)), (1, Canceled), true),
            // A late result never undoes a cancel (or any final state).
            (Some((1, Canceled)), (1, Succeeded), false),
            (Some((1, Canceled)), (1, Failed), false),
            (Some((1, Canceled)), (1, Running), false),
        ];
        for (stored, (a, s), applies) in cases {
            let cur = stored.map(|(a, s)| rec(a, s));
            let got = merge(cur.as_ref(), &upd(a, s));
            assert_eq!(got.is_some(), applies, "{stored:?} + ({a}, {s:?})");
            if let Some(g) = got {
                assert_eq!((g.attempt, g.state), (Attempt(a), s));
            }
        }
    }

    #[test]
    fn merging_twice_is_harmless() {
        let u = upd(1, Succeeded);
        let once = merge(None, &u).unwrap();
        assert_eq!(merge(Some(&once), &u), None);
    }

    #[test]
    fn target_table() {
        let r1 = n("r1");
        assert!(target(None, &r1, Attempt(1), 0).is_some());
        assert!(target(Some(&rec(1, Failed)), &r1, Attempt(2), 0).is_some());
        assert!(target(Some(&rec(1, Pending)), &r1, Attempt(1), 0).is_none());
        assert!(target(Some(&rec(2, Running)), &r1, Attempt(1), 0).is_none());
    }

    #[test]
    fn rerun_targets_table() {
        // (state, picked by --failed, picked by --failed --expired)
        let cases = [
            (Succeeded, false, false),
            (Failed, true, true),
            (TimedOut, true, true),
            (Expired, false, true),
            (Canceled, false, false),
            (Pending, false, false),
            (Delivered, false, false),
            (Running, false, false),
        ];
        for (state, failed, with_expired) in cases {
            let (c, r) = (n("c1"), rec(1, state));
            for (expired, want) in [(false, failed), (true, with_expired)] {
                let got = rerun_targets([(&c, &r)], expired);
                assert_eq!(!got.is_empty(), want, "{state:?} expired={expired}");
                if want {
                    assert_eq!(got, vec![(n("c1"), n("r1"))]);
                }
            }
        }
    }

    #[test]
    fn split_and_normalize() {
        let hop = |c: &NodeName| match c.as_str() {
            "c1" | "c2" => Some(n("r2")),
            "c3" => Some(n("r1")),
            _ => None,
        };
        let (by, lost) = split_by_hop(vec![n("c1"), n("c3"), n("c2"), n("c9")], hop);
        assert_eq!(by[&n("r2")], vec![n("c1"), n("c2")]);
        assert_eq!(by[&n("r1")], vec![n("c3")]);
        assert_eq!(lost, vec![n("c9")]);

        // hq <- r1 <- r2 <- r4 ; hq <- r3
        let parent = |r: &NodeName| match r.as_str() {
            "r1" | "r3" => Some(n("hq")),
            "r2" => Some(n("r1")),
            "r4" => Some(n("r2")),
            _ => None,
        };
        assert_eq!(ancestors(&n("r4"), parent), vec![n("r2"), n("r1"), n("hq")]);
        assert_eq!(
            normalize_dest(&[n("r4"), n("r1"), n("r3"), n("r1")], parent),
            vec![n("r1"), n("r3")]
        );
        assert_eq!(normalize_dest(&[n("r2"), n("r4")], parent), vec![n("r2")]);
    }

    fn leaf_event(client: &str, attempt: u32, state: LeafState) -> Event {
        Event::Leaf(LeafUpdate {
            job: JobId(1),
            attempt: Attempt(attempt),
            client: NodeName::new(client).unwrap(),
            relay: NodeName::new("r1").unwrap(),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms: 0,
            out: None,
            audit: None,
        })
    }

    #[test]
    fn superseded_updates_are_dropped_and_the_last_seq_kept() {
        let batch = vec![
            (10, leaf_event("c1", 1, Delivered)),
            (11, leaf_event("c2", 1, Delivered)),
            (12, leaf_event("c1", 1, Succeeded)),
            (13, leaf_event("c2", 2, Pending)),
            (14, leaf_event("c2", 1, Running)),
        ];
        let out = coalesce(batch);
        let got: Vec<(u64, String)> = out
            .iter()
            .map(|(s, e)| match e {
                Event::Leaf(u) => (*s, format!("{}{}{}", u.client, u.attempt, u.state.as_str())),
                _ => (*s, String::new()),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (12, "c11succeeded".to_string()),
                (13, "c22pending".to_string()),
                (14, "c21running".to_string()),
            ]
        );
        assert!(coalesce(vec![]).is_empty());
        // Presence: the latest change per client, across events.
        let p = |c: &str, online: bool| crate::proto::Presence {
            client: NodeName::new(c).unwrap(),
            online,
            at_ms: 0,
            about: None,
        };
        let r1 = NodeName::new("r1").unwrap();
        let batch = vec![
            (
                20,
                Event::Presence {
                    relay: r1.clone(),
                    changes: vec![p("c1", false), p("c2", false)],
                },
            ),
            (21, leaf_event("c1", 1, Running)),
            (
                22,
                Event::Presence {
                    relay: r1.clone(),
                    changes: vec![p("c1", true), p("c2", true)],
                },
            ),
            (
                23,
                Event::Presence {
                    relay: r1,
                    changes: vec![p("c2", false)],
                },
            ),
        ];
        let got: Vec<(u64, Vec<(String, bool)>)> = coalesce(batch)
            .into_iter()
            .map(|(s, e)| match e {
                Event::Presence { changes, .. } => (
                    s,
                    changes
                        .into_iter()
                        .map(|p| (p.client.to_string(), p.online))
                        .collect(),
                ),
                _ => (s, vec![]),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (21, vec![]),
                (22, vec![("c1".into(), true)]),
                (23, vec![("c2".into(), false)]),
            ]
        );
    }

    fn assignment(attempt: u32, scope: Scope) -> Assignment {
        Assignment {
            job: JobId(7),
            attempt: Attempt(attempt),
            action: crate::proto::Action::Ping,
            expires_at_ms: None,
            scope,
            orders: vec![],
            placement: None,
            hq_now_ms: None,
            policy: None,
        }
    }

    fn at(home: &str, via: &str) -> Placement {
        Placement {
            home: n(home),
            via: n(via),
        }
    }

    fn leaf_at(attempt: u32, state: LeafState) -> LeafRecord {
        LeafRecord {
            state,
            ..LeafRecord::pending(n("r1"), Attempt(attempt), 1)
        }
    }

    fn names(v: &[NodeName]) -> Vec<&str> {
        v.iter().map(|c| c.as_str()).collect()
    }

    #[test]
    fn a_home_leaf_is_created_delivered_or_left_by_what_is_stored() {
        // (stored leaf, attempt assigned) -> (created, delivered)
        type Stored = Option<(u32, LeafState)>;
        let table: [(Stored, u32, bool, bool); 7] = [
            (None, 1, true, true),
            // Created before a crash cut the apply short: deliver it again.
            (Some((1, Pending)), 1, false, true),
            (Some((1, Delivered)), 1, false, false),
            (Some((1, Succeeded)), 1, false, false),
            (Some((1, Failed)), 2, true, true),
            (Some((3, Pending)), 2, false, false),
            (Some((2, Pending)), 1, false, false),
        ];
        for (stored, attempt, created, delivered) in table {
            let leaves: BTreeMap<NodeName, LeafRecord> = stored
                .map(|(a, s)| (n("c1"), leaf_at(a, s)))
                .into_iter()
                .collect();
            let a = assignment(attempt, Scope::Targets(vec![n("c1")]));
            let view = AssignView::Clients(vec![(n("c1"), Some(at("r1", "r1")))]);
            let plan = plan_assignment(&n("r1"), &a, view, &leaves, 42);
            let case = format!("{stored:?} attempt {attempt}");
            assert_eq!(!plan.create.is_empty(), created, "{case}");
            assert_eq!(!plan.agents.is_empty(), delivered, "{case}");
            if created {
                assert_eq!(
                    plan.create,
                    vec![(n("c1"), LeafRecord::pending(n("r1"), Attempt(attempt), 42))]
                );
            }
            assert!(plan.report.is_empty() && plan.lost.is_empty() && plan.relays.is_empty());
        }
    }

    #[test]
    fn a_snapshot_reports_every_client_and_splits_them_by_hop() {
        let view = AssignView::Snapshot(vec![
            (n("c1"), at("r1", "r1")),
            (n("c2"), at("r4", "r2")),
            (n("c3"), at("r1", "r1")),
            (n("c4"), at("r2", "r2")),
            (n("c5"), at("r3", "r3")),
        ]);
        assert_eq!(view.home_clients(&n("r1")), vec![&n("c1"), &n("c3")]);
        let leaves = BTreeMap::from([(n("c3"), leaf_at(1, Succeeded))]);
        let a = assignment(1, Scope::AllLowerOf(vec![n("r1")]));
        let plan = plan_assignment(&n("r1"), &a, view, &leaves, 5);
        let [Event::Targets {
            leaves: reported,
            last,
            reporter,
            ..
        }] = &plan.report[..]
        else {
            panic!("one Targets chunk: {:?}", plan.report)
        };
        assert!(*last);
        assert_eq!(reporter, &n("r1"));
        assert_eq!(reported.len(), 5);
        assert_eq!(plan.reported(), 5);
        assert!(reported.contains(&(n("c2"), n("r4"))));
        assert_eq!(names(&plan.agents), ["c1"]);
        assert_eq!(plan.create.len(), 1);
        let relays: Vec<(&str, Scope)> = plan
            .relays
            .iter()
            .map(|(c, f)| (c.as_str(), f.scope.clone()))
            .collect();
        assert_eq!(
            relays,
            vec![
                ("r2", Scope::Targets(vec![n("c2"), n("c4")])),
                ("r3", Scope::Targets(vec![n("c5")])),
            ]
        );
        assert!(plan
            .relays
            .iter()
            .all(|(_, f)| f.job == a.job && f.attempt == a.attempt));
        assert!(plan.lost.is_empty() && plan.unknown_relays.is_empty());
    }

    #[test]
    fn snapshots_are_reported_in_chunks_and_an_empty_one_still_ends() {
        for (clients, chunks) in [(0, 1), (1, 1), (TARGETS_CHUNK, 1), (TARGETS_CHUNK + 1, 2)] {
            let view = AssignView::Snapshot(
                (0..clients)
                    .map(|i| (n(&format!("c{i}")), at("r2", "r2")))
                    .collect(),
            );
            let a = assignment(1, Scope::AllLowerOf(vec![n("r1")]));
            let plan = plan_assignment(&n("r1"), &a, view, &BTreeMap::new(), 0);
            let got: Vec<(usize, bool)> = plan
                .report
                .iter()
                .map(|e| match e {
                    Event::Targets { leaves, last, .. } => (leaves.len(), *last),
                    _ => panic!("{e:?}"),
                })
                .collect();
            assert_eq!(got.len(), chunks, "{clients} clients");
            assert_eq!(got.iter().map(|(l, _)| l).sum::<usize>(), clients);
            assert_eq!(
                got.iter().map(|(_, last)| *last).collect::<Vec<_>>(),
                (0..chunks).map(|i| i + 1 == chunks).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn named_lower_relays_are_routed_and_unknown_ones_only_named() {
        let view = AssignView::Relays(vec![
            (n("r4"), Some(n("r2"))),
            (n("zz"), None),
            (n("r5"), Some(n("r2"))),
            (n("r3"), Some(n("r3"))),
        ]);
        let a = assignment(
            1,
            Scope::AllLowerOf(vec![n("r4"), n("zz"), n("r5"), n("r3")]),
        );
        let plan = plan_assignment(&n("r1"), &a, view, &BTreeMap::new(), 0);
        let relays: Vec<(&str, Scope)> = plan
            .relays
            .iter()
            .map(|(c, f)| (c.as_str(), f.scope.clone()))
            .collect();
        assert_eq!(
            relays,
            vec![
                ("r2", Scope::AllLowerOf(vec![n("r4"), n("r5")])),
                ("r3", Scope::AllLowerOf(vec![n("r3")])),
            ]
        );
        assert_eq!(names(&plan.unknown_relays), ["zz"]);
        assert!(plan.report.is_empty() && plan.create.is_empty() && plan.agents.is_empty());
        assert!(plan.lost.is_empty());
    }

    #[test]
    fn targets_outside_the_subtree_are_reported_canceled() {
        let view = AssignView::Clients(vec![
            (n("c1"), Some(at("r1", "r1"))),
            (n("gone"), None),
            (n("c4"), Some(at("r4", "r2"))),
        ]);
        let a = assignment(2, Scope::Targets(vec![n("c1"), n("gone"), n("c4")]));
        let plan = plan_assignment(&n("r1"), &a, view, &BTreeMap::new(), 9);
        assert_eq!(names(&plan.agents), ["c1"]);
        assert_eq!(plan.relays.len(), 1);
        assert_eq!(plan.relays[0].1.scope, Scope::Targets(vec![n("c4")]));
        let [Event::Leaf(u)] = &plan.lost[..] else {
            panic!("{:?}", plan.lost)
        };
        assert_eq!(
            (
                u.client.as_str(),
                u.state,
                u.attempt,
                u.relay.as_str(),
                u.at_ms
            ),
            ("gone", Canceled, Attempt(2), "r1", 9)
        );
        assert_eq!(
            u.reason.as_deref(),
            Some("client gone is not under relay r1")
        );
    }
}
