//! Checking HQ's signature before running anything: an assignment runs only
//! if one of its orders is signed by HQ's key, names this job, attempt and
//! action, has not expired, and covers this agent.

use crate::proto::{Assignment, NodeName, Order};
use crate::tls::VerifyKey;

/// Ok when some order covers `a` for agent `me` under `relay`; otherwise why not.
pub(crate) fn check(
    key: &VerifyKey,
    a: &Assignment,
    me: &NodeName,
    relay: &NodeName,
    now_ms: u64,
) -> Result<(), String> {
    if a.orders.is_empty() {
        return Err("no order signed by hq".into());
    }
    let mut why = String::new();
    for so in &a.orders {
        match covers(key, so, a, me, relay, now_ms) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(why)
}

fn covers(
    key: &VerifyKey,
    so: &crate::proto::SignedOrder,
    a: &Assignment,
    me: &NodeName,
    relay: &NodeName,
    now_ms: u64,
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
    if o.expires_at_ms.is_some_and(|e| e <= now_ms) {
        return Err("the order has expired".into());
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
        (None, None) if !o.dest.is_empty() => {}
        _ => return Err("the order names no destination".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Action, Attempt, JobId, RunSpec, Scope, SignedOrder};
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
            issued_at_ms: 0,
            dest: if targets.is_none() {
                vec![n("r1")]
            } else {
                vec![]
            },
            relay: relay.map(n),
            targets: targets.map(|t| t.iter().map(|s| n(s)).collect()),
        }
    }
    fn signed(k: &SigningKey, o: &Order) -> SignedOrder {
        let body = rmp_serde::to_vec_named(o).unwrap();
        SignedOrder {
            sig: k.sign(&body),
            body,
            relay: o.relay.clone(),
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
        }
    }

    #[test]
    fn verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::create(dir.path()).unwrap();
        let key = k.verify_key();
        let (c1, r1) = (n("c1"), n("r1"));
        let ok1 = signed(&k, &order(1, run("true"), None, None));
        let ok2 = signed(&k, &order(2, run("true"), Some("r1"), Some(&["c1", "c2"])));
        let other = signed(&k, &order(2, run("true"), Some("r1"), Some(&["c2"])));
        let elsewhere = signed(&k, &order(2, run("true"), Some("r9"), Some(&["c1"])));
        let mut forged = ok1.clone();
        forged.sig[0] ^= 1;
        let foreign = {
            let d = tempfile::tempdir().unwrap();
            signed(
                &SigningKey::create(d.path()).unwrap(),
                &order(1, run("true"), None, None),
            )
        };
        let cases: Vec<(&str, Assignment, u64, Option<&str>)> = vec![
            (
                "original",
                assignment(1, run("true"), vec![ok1.clone()]),
                0,
                None,
            ),
            (
                "rerun",
                assignment(2, run("true"), vec![ok2.clone()]),
                0,
                None,
            ),
            (
                "altered command",
                assignment(1, run("rm"), vec![ok1.clone()]),
                0,
                Some("action"),
            ),
            (
                "widened rerun",
                assignment(2, run("true"), vec![other]),
                0,
                Some("not among"),
            ),
            (
                "other relay's rerun",
                assignment(2, run("true"), vec![elsewhere]),
                0,
                Some("r9"),
            ),
            (
                "replayed attempt",
                assignment(2, run("true"), vec![ok1.clone()]),
                0,
                Some("attempt 1"),
            ),
            (
                "forged",
                assignment(1, run("true"), vec![forged]),
                0,
                Some("signature"),
            ),
            (
                "foreign key",
                assignment(1, run("true"), vec![foreign]),
                0,
                Some("signature"),
            ),
            (
                "unsigned",
                assignment(1, run("true"), vec![]),
                0,
                Some("no order"),
            ),
            (
                "expired",
                assignment(1, run("true"), vec![ok1]),
                10_000,
                Some("expired"),
            ),
        ];
        for (what, a, now, refused) in cases {
            let got = check(&key, &a, &c1, &r1, now);
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
