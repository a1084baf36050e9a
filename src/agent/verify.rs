//! Checking HQ's signature before running anything: an assignment runs only
//! if one of its orders is signed by HQ's key, names this job, attempt and
//! action, has not expired, was issued after this agent registered, and
//! covers this agent: a rerun by name (its relay and targets), an original
//! by HQ's signed placement of this agent (its chain of relays starts at the
//! relay of this session and holds one of the order's destinations).
//!
//! Times are HQ's, as this agent estimates it (`link::clock`), never the
//! agent's own clock. Pure: no I/O.

use crate::proto::{Assignment, Labels, NodeName, Order, SignedOrder};
use crate::tls::VerifyKey;

/// HQ's time as this agent judges orders by it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HqTime {
    /// Now, unix ms by HQ's clock (the agent's clock plus the measured offset).
    pub now_ms: u64,
    /// When this data directory first registered, by HQ's clock: an order
    /// issued before it is a replay from an earlier life of this agent.
    pub registered_at_ms: u64,
}

/// This agent's first registration, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Registration {
    /// Unix ms: by HQ's clock when `by_hq`, else by this agent's own clock
    /// (HQ's time was not known at its first session).
    pub at_ms: u64,
    /// `at_ms` is HQ's time.
    pub by_hq: bool,
}

/// The registration to judge orders by in a session whose offset to HQ's
/// clock is `offset` (if known), given the one `kept`; and whether to record
/// it. The first session records one (by the local clock if HQ's time is
/// unknown); the first offset known moves a local one to HQ's time (a skew
/// is near constant).
pub(crate) fn registration(
    kept: Option<Registration>,
    offset: Option<i64>,
    local_now: u64,
) -> (Registration, bool) {
    match (kept, offset) {
        (Some(r), _) if r.by_hq => (r, false),
        (Some(r), None) => (r, false),
        (Some(r), Some(o)) => (
            Registration {
                at_ms: crate::link::clock::shift(r.at_ms, o),
                by_hq: true,
            },
            true,
        ),
        (None, o) => (
            Registration {
                at_ms: crate::link::clock::shift(local_now, o.unwrap_or(0)),
                by_hq: o.is_some(),
            },
            true,
        ),
    }
}

/// Ok when some order covers `a` for agent `me` (carrying `labels`) under
/// `relay`; otherwise why not.
pub(crate) fn check(
    key: &VerifyKey,
    a: &Assignment,
    me: &NodeName,
    labels: &Labels,
    relay: &NodeName,
    t: HqTime,
) -> Result<(), String> {
    if a.orders.is_empty() {
        return Err("no order signed by hq".into());
    }
    let mut why = String::new();
    for so in &a.orders {
        match covers(key, so, a, (me, labels), relay, t) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(why)
}

fn covers(
    key: &VerifyKey,
    so: &SignedOrder,
    a: &Assignment,
    (me, labels): (&NodeName, &Labels),
    relay: &NodeName,
    t: HqTime,
) -> Result<(), String> {
    if !key.verify(&so.body, &so.sig) {
        return Err("the order's signature is not hq's".into());
    }
    let o: Order =
        rmp_serde::from_slice(&so.body).map_err(|e| format!("undecodable order: {e}"))?;
    if o.job != a.job || o.attempt != a.attempt {
        return Err(format!(
            "the order is for job {} attempt {}, not job {} attempt {}",
            o.job, o.attempt, a.job, a.attempt
        ));
    }
    if o.action != a.action {
        return Err("the action differs from the one hq signed".into());
    }
    if o.expires_at_ms.is_some_and(|e| e <= t.now_ms) {
        return Err("the order has expired".into());
    }
    if o.issued_at_ms < t.registered_at_ms {
        return Err(format!(
            "the order was issued before {me} registered here (a replay to a fresh data directory)"
        ));
    }
    match (&o.targets, &o.relay) {
        (Some(targets), Some(r)) => {
            if r != relay {
                return Err(format!("the order covers leaves of relay {r}, not {relay}"));
            }
            if !targets.contains(me) {
                return Err(format!("{me} is not among the order's targets"));
            }
        }
        (None, None) if !o.dest.is_empty() => placed(key, a, me, relay, &o.dest)?,
        _ => return Err("the order names no destination".into()),
    }
    // Narrowed by labels or exclusions: only the agents it was meant for.
    if let Some(why) = o.filter.refuses(me, labels) {
        return Err(format!("not a target of the order: {why}"));
    }
    Ok(())
}

/// HQ's placement of `me` (attached by its home relay) puts it under `relay`
/// and under one of `dest`.
fn placed(
    key: &VerifyKey,
    a: &Assignment,
    me: &NodeName,
    relay: &NodeName,
    dest: &[NodeName],
) -> Result<(), String> {
    let Some(sp) = &a.placement else {
        return Err(format!(
            "no placement of {me} signed by hq came with the order"
        ));
    };
    if !key.verify(&sp.body, &sp.sig) {
        return Err("the placement's signature is not hq's".into());
    }
    let p = sp
        .placement()
        .map_err(|e| format!("undecodable placement: {e}"))?;
    if p.client != *me {
        return Err(format!("the placement is of {}, not {me}", p.client));
    }
    if p.chain.first() != Some(relay) {
        return Err(format!(
            "hq placed {me} under {}, not under relay {relay}",
            p.chain.first().map_or("nothing", |r| r.as_str())
        ));
    }
    if !dest.iter().any(|d| p.chain.contains(d)) {
        let names: Vec<&str> = dest.iter().map(|d| d.as_str()).collect();
        return Err(format!(
            "{me} is under none of the order's destinations ({})",
            names.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Attempt, JobId, Placement, RunSpec, Scope, SignedPlacement};
    use crate::tls::SigningKey;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }
    fn run(cmd: &str) -> Action {
        Action::Run(RunSpec {
            argv: vec![cmd.into()],
            env: vec![],
            cwd: None,
            timeout_ms: None,
        })
    }
    fn order(attempt: u32, action: Action, relay: Option<&str>, targets: Option<&[&str]>) -> Order {
        Order {
            job: JobId(1),
            attempt: Attempt(attempt),
            action,
            expires_at_ms: Some(10_000),
            issued_at_ms: 100,
            dest: if targets.is_none() {
                vec![n("r1")]
            } else {
                vec![]
            },
            relay: relay.map(n),
            targets: targets.map(|t| t.iter().map(|s| n(s)).collect()),
            filter: Default::default(),
        }
    }
    fn to(dest: &[&str], o: Order) -> Order {
        Order {
            dest: dest.iter().map(|s| n(s)).collect(),
            ..o
        }
    }
    fn signed(k: &SigningKey, o: &Order) -> SignedOrder {
        let body = o.encode().unwrap();
        SignedOrder {
            sig: k.sign(&body),
            body,
            relay: o.relay.clone(),
        }
    }
    fn placement(k: &SigningKey, client: &str, chain: &[&str]) -> SignedPlacement {
        let body = Placement {
            client: n(client),
            chain: chain.iter().map(|s| n(s)).collect(),
            issued_at_ms: 50,
        }
        .encode()
        .unwrap();
        SignedPlacement {
            sig: k.sign(&body),
            body,
        }
    }
    fn assignment(attempt: u32, action: Action, orders: Vec<SignedOrder>) -> Assignment {
        Assignment {
            job: JobId(1),
            attempt: Attempt(attempt),
            action,
            expires_at_ms: Some(10_000),
            scope: Scope::Targets(vec![n("c1")]),
            orders,
            placement: None,
            hq_now_ms: None,
            policy: None,
        }
    }
    fn with(p: &SignedPlacement, a: Assignment) -> Assignment {
        Assignment {
            placement: Some(p.clone()),
            ..a
        }
    }
    const NOW: HqTime = HqTime {
        now_ms: 1_000,
        registered_at_ms: 0,
    };

    #[test]
    fn registrations() {
        let r = |at_ms, by_hq| Registration { at_ms, by_hq };
        let cases = [
            // (kept, offset, local now) -> (judged by, record?)
            (None, Some(-7_200), 10_000, (r(2_800, true), true)),
            (None, None, 10_000, (r(10_000, false), true)),
            (
                Some(r(500, true)),
                Some(-7_200),
                10_000,
                (r(500, true), false),
            ),
            (Some(r(500, true)), None, 10_000, (r(500, true), false)),
            (
                Some(r(9_000, false)),
                None,
                10_000,
                (r(9_000, false), false),
            ),
            (
                Some(r(9_000, false)),
                Some(-7_200),
                10_000,
                (r(1_800, true), true),
            ),
        ];
        for (kept, offset, now, want) in cases {
            assert_eq!(registration(kept, offset, now), want, "{kept:?} {offset:?}");
        }
    }

    #[test]
    fn verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::create(dir.path()).unwrap();
        let key = k.verify_key();
        let other_key = {
            let d = tempfile::tempdir().unwrap();
            SigningKey::create(d.path()).unwrap()
        };
        let (c1, r1) = (n("c1"), n("r1"));
        let ok1 = signed(&k, &order(1, run("true"), None, None));
        let ok2 = signed(&k, &order(2, run("true"), Some("r1"), Some(&["c1", "c2"])));
        let other = signed(&k, &order(2, run("true"), Some("r1"), Some(&["c2"])));
        let elsewhere = signed(&k, &order(2, run("true"), Some("r9"), Some(&["c1"])));
        let upper = signed(&k, &to(&["r0"], order(1, run("true"), None, None)));
        let other_branch = signed(&k, &to(&["r5"], order(1, run("true"), None, None)));
        let narrowed = |labels: &[&str], exclude: &[&str]| {
            let mut o = order(1, run("true"), None, None);
            o.filter = crate::proto::TargetFilter {
                labels: crate::proto::labels::parse_labels(labels).unwrap(),
                exclude: exclude.iter().map(|s| n(s)).collect(),
            };
            signed(&k, &o)
        };
        let for_web = narrowed(&["role=web"], &[]);
        let for_db = narrowed(&["role=db"], &[]);
        let not_c1 = narrowed(&[], &["c1"]);
        let mut forged = ok1.clone();
        forged.sig[0] ^= 1;
        let foreign = signed(&other_key, &order(1, run("true"), None, None));
        let home = placement(&k, "c1", &["r1", "r0"]);
        let mut forged_home = home.clone();
        forged_home.sig[0] ^= 1;
        let foreign_home = placement(&other_key, "c1", &["r1", "r0"]);
        let someone_else = placement(&k, "c2", &["r1", "r0"]);
        let under_r9 = placement(&k, "c1", &["r9", "r0"]);
        let original = |o: &SignedOrder| assignment(1, run("true"), vec![o.clone()]);
        let fresh = HqTime {
            now_ms: 1_000,
            registered_at_ms: 101,
        };
        let at = |now_ms| HqTime {
            now_ms,
            registered_at_ms: 0,
        };
        let cases: Vec<(&str, Assignment, HqTime, Option<&str>)> = vec![
            ("original", with(&home, original(&ok1)), NOW, None),
            (
                "labels that match",
                with(&home, original(&for_web)),
                NOW,
                None,
            ),
            (
                "labels that differ",
                with(&home, original(&for_db)),
                NOW,
                Some("role=web, not role=db"),
            ),
            (
                "excluded",
                with(&home, original(&not_c1)),
                NOW,
                Some("c1 is excluded"),
            ),
            (
                "original to an upper relay",
                with(&home, original(&upper)),
                NOW,
                None,
            ),
            (
                "rerun, by name",
                assignment(2, run("true"), vec![ok2.clone()]),
                NOW,
                None,
            ),
            (
                "rerun with a placement",
                with(&home, assignment(2, run("true"), vec![ok2.clone()])),
                NOW,
                None,
            ),
            (
                "registered just as issued",
                with(&home, original(&ok1)),
                HqTime {
                    now_ms: 1_000,
                    registered_at_ms: 100,
                },
                None,
            ),
            (
                "just before expiry",
                with(&home, original(&ok1)),
                at(9_999),
                None,
            ),
            (
                "altered command",
                with(&home, assignment(1, run("rm"), vec![ok1.clone()])),
                NOW,
                Some("action"),
            ),
            (
                "widened rerun",
                assignment(2, run("true"), vec![other]),
                NOW,
                Some("not among"),
            ),
            (
                "other relay's rerun",
                assignment(2, run("true"), vec![elsewhere]),
                NOW,
                Some("r9"),
            ),
            (
                "replayed attempt",
                with(&home, assignment(2, run("true"), vec![ok1.clone()])),
                NOW,
                Some("attempt 1"),
            ),
            (
                "forged",
                with(&home, original(&forged)),
                NOW,
                Some("signature"),
            ),
            (
                "foreign key",
                with(&home, original(&foreign)),
                NOW,
                Some("signature"),
            ),
            (
                "unsigned",
                with(&home, assignment(1, run("true"), vec![])),
                NOW,
                Some("no order"),
            ),
            (
                "expired",
                with(&home, original(&ok1)),
                at(10_000),
                Some("expired"),
            ),
            (
                "original without placement",
                original(&ok1),
                NOW,
                Some("no placement"),
            ),
            (
                "forged placement",
                with(&forged_home, original(&ok1)),
                NOW,
                Some("placement's signature"),
            ),
            (
                "placement by another key",
                with(&foreign_home, original(&ok1)),
                NOW,
                Some("placement's signature"),
            ),
            (
                "another agent's placement",
                with(&someone_else, original(&ok1)),
                NOW,
                Some("placement is of c2"),
            ),
            (
                "placed under another relay",
                with(&under_r9, original(&ok1)),
                NOW,
                Some("not under relay r1"),
            ),
            (
                "another subtree's destination",
                with(&home, original(&other_branch)),
                NOW,
                Some("none of the order's destinations (r5)"),
            ),
            (
                "replay to a fresh data directory",
                with(&home, original(&ok1)),
                fresh,
                Some("issued before"),
            ),
            (
                "rerun replayed to a fresh data directory",
                assignment(2, run("true"), vec![ok2]),
                fresh,
                Some("issued before"),
            ),
        ];
        for (what, a, t, refused) in cases {
            let web = crate::proto::labels::parse_labels(&["role=web"]).unwrap();
            let got = check(&key, &a, &c1, &web, &r1, t);
            match refused {
                None => assert_eq!(got, Ok(()), "{what}"),
                Some(word) => {
                    let e = got.expect_err(what);
                    assert!(e.contains(word), "{what}: {e}");
                }
            }
        }
    }
}
