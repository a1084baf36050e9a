//! Pure decisions shared by HQ and relays: which state wins, which leaves a
//! rerun targets, where a name routes. No I/O; table-tested.

use crate::proto::{Attempt, LeafState, LeafUpdate, NodeName};
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
/// failed or timed out. Succeeded, expired, canceled and unfinished leaves are not.
pub fn rerun_targets<'a>(
    leaves: impl IntoIterator<Item = (&'a NodeName, &'a LeafRecord)>,
) -> Vec<(NodeName, NodeName)> {
    leaves
        .into_iter()
        .filter(|(_, l)| l.state.is_rerunnable())
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
    fn rerun_selects_only_failed_and_timed_out() {
        let names: Vec<NodeName> = (0..8).map(|i| n(&format!("c{i}"))).collect();
        let states = [
            Succeeded, Failed, TimedOut, Expired, Canceled, Pending, Running, Delivered,
        ];
        let recs: Vec<LeafRecord> = states.iter().map(|s| rec(1, *s)).collect();
        let picked = rerun_targets(names.iter().zip(recs.iter()));
        let picked: Vec<&str> = picked.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(picked, vec!["c1", "c2"]);
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
}
