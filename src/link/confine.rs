//! What a child may say: every event a child relay sends up is checked
//! against that child's subtree before its parent (HQ or a relay) applies or
//! forwards it. A pure fold over one batch; the role supplies the facts
//! ([`Facts`]) from its own directory, and applies only what the fold kept.
//!
//! The rules (the child is the sender; "in the subtree" is the child itself
//! or a relay below it, as the parent knows now or as this batch showed):
//! - a leaf result names a home relay in the subtree; where the parent keeps
//!   leaves (HQ) that relay must also be the leaf's recorded home for that
//!   attempt or the client's current home, for an attempt the job has;
//! - a target set is reported by a relay in the subtree; each (client, home)
//!   has its home in the subtree and does not take a leaf recorded for
//!   another branch;
//! - a client joins a home in the subtree, and not earlier than the join the
//!   directory holds (a stale re-send, e.g. from an outbox whose ack was
//!   lost in a crash, would undo a later move); a relay joins a parent in the
//!   subtree and is not attached, live, to another branch; a relay that left
//!   is one in the subtree;
//! - an inventory is of a client living in the subtree, a cache report of a
//!   relay in it;
//! - a presence change (online, offline, labels) is reported by a relay in
//!   the subtree for a client whose current home is that relay (a late
//!   "offline" from a client's old home after a move is dropped, so it
//!   cannot mark the client offline at its new one).
//!
//! A refused event is dropped: never applied, never forwarded, logged by the
//! caller with the sender. The batch is still acknowledged (its refusal is
//! the durable decision), and the session stays open: an honest relay can
//! send an event the parent's newer view refuses (an inventory of a client
//! that moved away meanwhile, the departure of a relay that re-attached
//! elsewhere), and closing on it would wedge that relay's outbox for good.
//!
//! Does no I/O and knows nothing of sessions.

use crate::proto::{Attempt, Event, JobId, LeafUpdate, NodeName};
use std::collections::{HashMap, HashSet};

/// What the parent knows about a child's subtree, looked up as needed.
pub trait Facts {
    /// `relay` is the child or lies below it.
    fn relay_in(&self, relay: &NodeName) -> bool;
    /// `client` lives in the child's subtree now.
    fn client_in(&self, client: &NodeName) -> bool;
    /// `relay` is attached elsewhere in the parent's tree, outside the
    /// child's subtree, on a path that is connected now.
    fn relay_live_elsewhere(&self, relay: &NodeName) -> bool;
    /// Where leaves are recorded (HQ): the job's latest attempt, `None` for
    /// an unknown job. Nodes that keep no leaves of their children return
    /// `Some(Attempt(u32::MAX))`, and [`Facts::leaf`] is never asked.
    fn job_attempt(&self, job: JobId) -> Option<Attempt>;
    /// The leaf's recorded (attempt, home), `None` if it was never targeted.
    fn leaf(&self, job: JobId, client: &NodeName) -> Option<(Attempt, NodeName)>;
    /// The client's current home relay.
    fn client_home(&self, client: &NodeName) -> Option<NodeName>;
    /// When the client registered at its current home, unix ms by that
    /// home's clock (0: unknown).
    fn client_since(&self, client: &NodeName) -> u64;
    /// Whether this node records every leaf (HQ) or not (a relay).
    fn keeps_leaves(&self) -> bool;
}

/// One batch after the check.
#[derive(Debug, Default, PartialEq)]
pub struct Confined {
    /// What may be applied, in order (a target set may have lost pairs).
    pub kept: Vec<(u64, Event)>,
    /// What was refused, with why.
    pub refused: Vec<(u64, String)>,
}

/// Checks one batch from `child`, received by `me`.
pub fn fold(
    facts: &impl Facts,
    me: &NodeName,
    child: &NodeName,
    events: Vec<(u64, Event)>,
) -> Confined {
    let mut seen = Seen::default();
    let mut out = Confined::default();
    for (seq, ev) in events {
        match check_event(facts, me, child, &mut seen, ev) {
            Ok(ev) => out.kept.push((seq, ev)),
            Err(why) => out.refused.push((seq, why)),
        }
    }
    out
}

/// What this batch changed so far, as later events in it must see it:
/// relays and clients placed in the subtree, client homes, leaves targeted.
#[derive(Default)]
pub struct Seen {
    relays: HashSet<NodeName>,
    clients: HashSet<NodeName>,
    homes: HashMap<NodeName, NodeName>,
    leaves: HashMap<(JobId, NodeName), (Attempt, NodeName)>,
}

impl Seen {
    fn leaf(
        &self,
        facts: &impl Facts,
        job: JobId,
        client: &NodeName,
    ) -> Option<(Attempt, NodeName)> {
        match self.leaves.get(&(job, client.clone())) {
            Some(l) => Some(l.clone()),
            None => facts.leaf(job, client),
        }
    }
    fn client_home(&self, facts: &impl Facts, client: &NodeName) -> Option<NodeName> {
        match self.homes.get(client) {
            Some(h) => Some(h.clone()),
            None => facts.client_home(client),
        }
    }
}

/// Checks one event; returns it (a target set possibly trimmed) or why not.
pub fn check_event(
    facts: &impl Facts,
    me: &NodeName,
    child: &NodeName,
    seen: &mut Seen,
    ev: Event,
) -> Result<Event, String> {
    let relay_in =
        |r: &NodeName, seen: &Seen| r != me && (seen.relays.contains(r) || facts.relay_in(r));
    let client_in = |c: &NodeName, seen: &Seen| seen.clients.contains(c) || facts.client_in(c);
    match ev {
        Event::Leaf(u) => {
            leaf_ok(facts, seen, &u, relay_in(&u.relay, seen))?;
            if facts.keeps_leaves() {
                let k = (u.job, u.client.clone());
                if seen
                    .leaf(facts, u.job, &u.client)
                    .is_none_or(|(a, _)| u.attempt >= a)
                {
                    seen.leaves.insert(k, (u.attempt, u.relay.clone()));
                }
            }
            Ok(Event::Leaf(u))
        }
        Event::Targets {
            job,
            attempt,
            reporter,
            leaves,
            last,
        } => {
            if !relay_in(&reporter, seen) {
                return Err(format!(
                    "targets of job {job} reported for relay {reporter}, outside the sender's subtree"
                ));
            }
            if facts.job_attempt(job).is_none_or(|a| attempt > a) {
                return Err(format!(
                    "targets of job {job} attempt {attempt}, which it does not have"
                ));
            }
            let before = leaves.len();
            let leaves: Vec<(NodeName, NodeName)> = leaves
                .into_iter()
                .filter(|(client, home)| {
                    relay_in(home, seen)
                        && (!facts.keeps_leaves()
                            || seen
                                .leaf(facts, job, client)
                                .is_none_or(|(_, h)| relay_in(&h, seen)))
                })
                .collect();
            if facts.keeps_leaves() {
                for (client, home) in &leaves {
                    let k = (job, client.clone());
                    if seen
                        .leaf(facts, job, client)
                        .is_none_or(|(a, _)| a < attempt)
                    {
                        seen.leaves.insert(k, (attempt, home.clone()));
                    }
                }
            }
            if leaves.len() != before && leaves.is_empty() && !last {
                return Err(format!(
                    "targets of job {job}: every leaf lies outside the sender's subtree"
                ));
            }
            Ok(Event::Targets {
                job,
                attempt,
                reporter,
                leaves,
                last,
            })
        }
        Event::ClientJoined {
            client,
            relay,
            at_ms,
        } => {
            if !relay_in(&relay, seen) {
                return Err(format!(
                    "client {client} joined relay {relay}, outside the sender's subtree"
                ));
            }
            if join_is_stale(
                seen.client_home(facts, &client).as_ref(),
                facts.client_since(&client),
                &relay,
                at_ms,
            ) {
                return Err(format!(
                    "client {client} joined relay {relay} at {at_ms}, before its current home's join: stale"
                ));
            }
            seen.clients.insert(client.clone());
            seen.homes.insert(client.clone(), relay.clone());
            Ok(Event::ClientJoined {
                client,
                relay,
                at_ms,
            })
        }
        Event::RelayJoined { relay, parent } => {
            if relay == *me || relay == *child {
                return Err(format!("relay {relay} re-parented by its own subtree"));
            }
            if !relay_in(&parent, seen) {
                return Err(format!(
                    "relay {relay} joined parent {parent}, outside the sender's subtree"
                ));
            }
            if !relay_in(&relay, seen) && facts.relay_live_elsewhere(&relay) {
                return Err(format!(
                    "relay {relay} is attached to another branch and connected"
                ));
            }
            seen.relays.insert(relay.clone());
            Ok(Event::RelayJoined { relay, parent })
        }
        Event::RelayLeft {
            relay,
            parent,
            at_ms,
        } => {
            if relay == *child || !relay_in(&relay, seen) {
                return Err(format!(
                    "relay {relay} left, but it is not below the sender"
                ));
            }
            Ok(Event::RelayLeft {
                relay,
                parent,
                at_ms,
            })
        }
        Event::Inventory(i) => {
            if !client_in(&i.client, seen) || !relay_in(&i.relay, seen) {
                return Err(format!(
                    "inventory of client {} (home {}), outside the sender's subtree",
                    i.client, i.relay
                ));
            }
            Ok(Event::Inventory(i))
        }
        Event::Presence { relay, changes } => {
            if !relay_in(&relay, seen) {
                return Err(format!(
                    "presence reported for relay {relay}, outside the sender's subtree"
                ));
            }
            let before = changes.len();
            let changes: Vec<_> = changes
                .into_iter()
                .filter(|p| seen.client_home(facts, &p.client).as_ref() == Some(&relay))
                .collect();
            if changes.is_empty() && before > 0 {
                return Err(format!(
                    "presence of clients whose home is not relay {relay}"
                ));
            }
            Ok(Event::Presence { relay, changes })
        }
        Event::Cache(c) => {
            if !relay_in(&c.relay, seen) {
                return Err(format!(
                    "cache report of relay {}, outside the sender's subtree",
                    c.relay
                ));
            }
            Ok(Event::Cache(c))
        }
    }
}

/// A join of `client` at `home` at `at_ms` is stale when the directory holds
/// a later join at another home (times unknown, 0, never make it stale).
/// Compares two relays' clocks: a move faster than their skew can be
/// misread, which a later reconnect of the agent repairs.
pub fn join_is_stale(cur: Option<&NodeName>, since: u64, home: &NodeName, at_ms: u64) -> bool {
    cur.is_some_and(|c| c != home) && at_ms != 0 && since > at_ms
}

/// A leaf result: its home in the subtree; at HQ, the leaf's recorded home
/// for that attempt (or the client's current home, for a result its new home
/// passes on after a move), for an attempt the job has.
fn leaf_ok(facts: &impl Facts, seen: &Seen, u: &LeafUpdate, home_in: bool) -> Result<(), String> {
    let what = || format!("result of job {} for client {}", u.job, u.client);
    if !home_in {
        return Err(format!(
            "{} from home {}, outside the sender's subtree",
            what(),
            u.relay
        ));
    }
    if !facts.keeps_leaves() {
        return Ok(());
    }
    match facts.job_attempt(u.job) {
        None => return Err(format!("{}: no such job", what())),
        Some(a) if u.attempt > a => {
            return Err(format!(
                "{}: attempt {} beyond the job's {a}",
                what(),
                u.attempt
            ))
        }
        Some(_) => {}
    }
    match seen.leaf(facts, u.job, &u.client) {
        None => Err(format!("{}: that leaf was never targeted", what())),
        // An older attempt's straggler: the merge keeps the newer state.
        Some((attempt, _)) if u.attempt < attempt => Ok(()),
        Some((attempt, _)) if u.attempt > attempt => Err(format!(
            "{}: attempt {} was never given to it (its latest is {attempt})",
            what(),
            u.attempt
        )),
        Some((_, home)) if home == u.relay => Ok(()),
        Some(_) if seen.client_home(facts, &u.client).as_ref() == Some(&u.relay) => Ok(()),
        Some((_, home)) => Err(format!("{}: its home is {home}, not {}", what(), u.relay)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{InventoryReport, LeafState};
    use std::collections::HashMap;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    /// HQ's view: hq <- r1 <- r1a, hq <- r2 <- r2a; c1 at r1, c1a at r1a,
    /// c2 at r2. Job 1 at attempt 2: c1 (home r1, attempt 1), c2 (home r2,
    /// attempt 1), c1a (home r1a, attempt 2).
    struct Hq {
        child: NodeName,
        parent: HashMap<NodeName, NodeName>,
        connected: HashSet<NodeName>,
        clients: HashMap<NodeName, NodeName>,
        leaves: HashMap<NodeName, (Attempt, NodeName)>,
        keeps: bool,
    }

    fn hq(child: &str, keeps: bool) -> Hq {
        let parent: HashMap<NodeName, NodeName> =
            [("r1", "hq"), ("r1a", "r1"), ("r2", "hq"), ("r2a", "r2")]
                .into_iter()
                .map(|(a, b)| (n(a), n(b)))
                .collect();
        Hq {
            child: n(child),
            parent,
            connected: ["r1", "r1a", "r2", "r2a"].into_iter().map(n).collect(),
            clients: [("c1", "r1"), ("c1a", "r1a"), ("c2", "r2")]
                .into_iter()
                .map(|(a, b)| (n(a), n(b)))
                .collect(),
            leaves: [("c1", 1, "r1"), ("c2", 1, "r2"), ("c1a", 2, "r1a")]
                .into_iter()
                .map(|(c, a, h)| (n(c), (Attempt(a), n(h))))
                .collect(),
            keeps,
        }
    }

    impl Hq {
        fn top(&self, r: &NodeName) -> Option<NodeName> {
            let mut cur = r.clone();
            for _ in 0..10 {
                let p = self.parent.get(&cur)?;
                if *p == n("hq") {
                    return Some(cur);
                }
                cur = p.clone();
            }
            None
        }
    }

    impl Facts for Hq {
        fn relay_in(&self, r: &NodeName) -> bool {
            self.top(r).as_ref() == Some(&self.child)
        }
        fn client_in(&self, c: &NodeName) -> bool {
            self.clients.get(c).is_some_and(|h| self.relay_in(h))
        }
        fn relay_live_elsewhere(&self, r: &NodeName) -> bool {
            self.parent.contains_key(r) && !self.relay_in(r) && self.connected.contains(r)
        }
        fn job_attempt(&self, job: JobId) -> Option<Attempt> {
            if !self.keeps {
                return Some(Attempt(u32::MAX));
            }
            (job == JobId(1)).then_some(Attempt(2))
        }
        fn leaf(&self, _job: JobId, c: &NodeName) -> Option<(Attempt, NodeName)> {
            self.leaves.get(c).cloned()
        }
        fn client_home(&self, c: &NodeName) -> Option<NodeName> {
            self.clients.get(c).cloned()
        }
        fn client_since(&self, _c: &NodeName) -> u64 {
            100
        }
        fn keeps_leaves(&self) -> bool {
            self.keeps
        }
    }

    fn leaf(client: &str, attempt: u32, home: &str) -> Event {
        Event::Leaf(LeafUpdate {
            job: JobId(1),
            attempt: Attempt(attempt),
            client: n(client),
            relay: n(home),
            state: LeafState::Succeeded,
            exit_code: Some(0),
            reason: None,
            output: None,
            at_ms: 1,
            out: None,
            audit: None,
        })
    }

    fn targets(reporter: &str, pairs: &[(&str, &str)]) -> Event {
        Event::Targets {
            job: JobId(1),
            attempt: Attempt(1),
            reporter: n(reporter),
            leaves: pairs.iter().map(|(c, h)| (n(c), n(h))).collect(),
            last: true,
        }
    }

    fn inventory(client: &str, home: &str) -> Event {
        Event::Inventory(InventoryReport {
            client: n(client),
            relay: n(home),
            packages: vec![],
            at_ms: 1,
        })
    }

    fn presence(relay: &str, clients: &[&str]) -> Event {
        Event::Presence {
            relay: n(relay),
            changes: clients
                .iter()
                .map(|c| crate::proto::Presence {
                    client: n(c),
                    online: true,
                    at_ms: 1,
                    about: None,
                })
                .collect(),
        }
    }

    fn joined(relay: &str, parent: &str) -> Event {
        Event::RelayJoined {
            relay: n(relay),
            parent: n(parent),
        }
    }

    fn client(c: &str, r: &str) -> Event {
        Event::ClientJoined {
            client: n(c),
            relay: n(r),
            at_ms: 200,
        }
    }

    /// Each event alone from r1, at HQ: kept or refused.
    #[test]
    fn events_about_another_branch_are_refused() {
        let table: Vec<(&str, Event, bool)> = vec![
            ("own leaf", leaf("c1", 1, "r1"), true),
            ("own leaf, deeper home", leaf("c1a", 2, "r1a"), true),
            ("straggler of an older attempt", leaf("c1a", 1, "r1a"), true),
            ("another branch's leaf", leaf("c2", 1, "r2"), false),
            ("another branch's leaf as mine", leaf("c2", 1, "r1"), false),
            (
                "another branch's leaf, high attempt",
                leaf("c2", 2, "r1"),
                false,
            ),
            ("an attempt the job never had", leaf("c1", 3, "r1"), false),
            ("an attempt the leaf never had", leaf("c1", 2, "r1"), false),
            ("a leaf never targeted", leaf("c9", 1, "r1"), false),
            ("targets of my own", targets("r1", &[("c1", "r1")]), true),
            (
                "targets of another reporter",
                targets("r2", &[("c1", "r1")]),
                false,
            ),
            ("my client joins me", client("c1", "r1a"), true),
            ("a client moves to me", client("c2", "r1"), true),
            (
                "a client put under another branch",
                client("c1", "r2a"),
                false,
            ),
            (
                "a stale re-send of an older join",
                Event::ClientJoined {
                    client: n("c2"),
                    relay: n("r1"),
                    at_ms: 50,
                },
                false,
            ),
            (
                "an old peer's join (time unknown)",
                Event::ClientJoined {
                    client: n("c2"),
                    relay: n("r1"),
                    at_ms: 0,
                },
                true,
            ),
            (
                "a re-send of the current join",
                Event::ClientJoined {
                    client: n("c1"),
                    relay: n("r1"),
                    at_ms: 50,
                },
                true,
            ),
            (
                "my relay re-parented in my subtree",
                joined("r1a", "r1"),
                true,
            ),
            ("another branch's live relay", joined("r2a", "r1"), false),
            (
                "a relay under another branch's parent",
                joined("r9", "r2"),
                false,
            ),
            ("a new relay under me", joined("r9", "r1a"), true),
            ("myself", joined("r1", "r1a"), false),
            ("my client online", presence("r1a", &["c1a"]), true),
            (
                "my client at another of my relays",
                presence("r1", &["c1a"]),
                false,
            ),
            ("another branch's client", presence("r1", &["c2"]), false),
            (
                "presence for another branch",
                presence("r2", &["c2"]),
                false,
            ),
            ("my client's inventory", inventory("c1a", "r1a"), true),
            ("another's inventory", inventory("c2", "r2"), false),
            ("another's inventory, my home", inventory("c2", "r1"), false),
            (
                "a relay of mine left",
                Event::RelayLeft {
                    relay: n("r1a"),
                    parent: n("r1"),
                    at_ms: 1,
                },
                true,
            ),
            (
                "another branch's relay left",
                Event::RelayLeft {
                    relay: n("r2a"),
                    parent: n("r2"),
                    at_ms: 1,
                },
                false,
            ),
        ];
        let facts = hq("r1", true);
        for (what, ev, ok) in table {
            let c = fold(&facts, &n("hq"), &n("r1"), vec![(1, ev)]);
            assert_eq!(c.kept.len() == 1, ok, "{what}: {c:?}");
            assert_eq!(c.refused.len() == 1, !ok, "{what}: {c:?}");
        }
    }

    #[test]
    fn a_relay_joined_in_the_batch_counts_for_later_events() {
        let facts = hq("r1", true);
        let batch = vec![
            (1, joined("r9", "r1")),
            (2, client("c9", "r9")),
            (3, inventory("c9", "r9")),
            (4, inventory("c2", "r9")),
        ];
        let c = fold(&facts, &n("hq"), &n("r1"), batch);
        let kept: Vec<u64> = c.kept.iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, vec![1, 2, 3]);
        assert_eq!(c.refused.len(), 1);
        // A presence list keeps only the clients whose home is the reporter.
        let c = fold(
            &facts,
            &n("hq"),
            &n("r1"),
            vec![(1, presence("r1", &["c1", "c2", "c1a"]))],
        );
        match &c.kept[..] {
            [(_, Event::Presence { changes, .. })] => {
                let names: Vec<&str> = changes.iter().map(|p| p.client.as_str()).collect();
                assert_eq!(names, vec!["c1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_then_results_in_one_batch() {
        let facts = hq("r1", true);
        let batch = vec![
            (1, targets("r1", &[("c7", "r1a")])),
            (2, leaf("c7", 1, "r1a")),
            (3, client("c8", "r1")),
            (4, leaf("c8", 1, "r1")),
        ];
        let c = fold(&facts, &n("hq"), &n("r1"), batch);
        let kept: Vec<u64> = c.kept.iter().map(|(s, _)| *s).collect();
        // c8 was never targeted: its move does not make a leaf.
        assert_eq!(kept, vec![1, 2, 3], "{c:?}");
    }

    #[test]
    fn a_target_set_loses_the_pairs_of_other_branches() {
        let facts = hq("r1", true);
        let c = fold(
            &facts,
            &n("hq"),
            &n("r1"),
            vec![(
                1,
                targets(
                    "r1",
                    &[("c1", "r1"), ("c2", "r2"), ("c2", "r1"), ("c7", "r1a")],
                ),
            )],
        );
        let Event::Targets { leaves, .. } = &c.kept[0].1 else {
            panic!("{c:?}")
        };
        assert_eq!(leaves, &vec![(n("c1"), n("r1")), (n("c7"), n("r1a"))]);
    }

    #[test]
    fn a_relay_checks_homes_but_keeps_no_leaves() {
        // At a relay (r0 above r1 and r2): a result from r1's subtree for any
        // leaf with a home there is forwarded (HQ checks the rest); a moved
        // client's in-flight result still goes up.
        let facts = hq("r1", false);
        for (ev, ok) in [
            (leaf("c2", 7, "r1"), true),
            (leaf("c2", 1, "r2"), false),
            (leaf("c1", 1, "r0"), false),
        ] {
            let c = fold(&facts, &n("r0"), &n("r1"), vec![(1, ev.clone())]);
            assert_eq!(c.kept.len() == 1, ok, "{ev:?}");
        }
    }

    #[test]
    fn a_disconnected_relay_may_be_adopted() {
        let mut facts = hq("r1", true);
        facts.connected.remove(&n("r2a"));
        let c = fold(&facts, &n("hq"), &n("r1"), vec![(1, joined("r2a", "r1a"))]);
        assert_eq!(c.kept.len(), 1, "{c:?}");
    }
}
