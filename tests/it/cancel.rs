//! `hq job cancel`: every leaf not yet final becomes `canceled` at HQ and at
//! its relay, the job is done, pending leaves are never delivered, and a
//! canceled job cannot be rerun.

use crate::harness::*;
use std::path::Path;

/// Waits until relay `name` logged the cancel of a job.
fn wait_relay_canceled(env: &Env, name: &str) {
    wait_until(&format!("{name} to apply the cancel"), DEADLINE, || {
        env.relays[name].proc.stderr_text().contains("job canceled")
    });
}

/// A script that appends its start to the runs log, then waits for `gate`
/// to exist (at most about 60 s).
fn blocking_script(env: &Env, gate: &Path) -> String {
    env.job_script(&format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
        gate.display()
    ))
}

/// HQ <- r1 <- r2; c1 under r1 and c2 under r2 run a blocking command; c3
/// (under r2) is away, so its leaf is pending at r2.
#[test]
fn cancel_closes_every_open_leaf_and_delivers_nothing_more() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r2);
    env.start_agent("c3", &r2);
    env.wait_clients(3);
    env.kill_agent("c3");

    let gate = env.root().join("gate");
    let job = env.create_job(&["r1"], &[], &blocking_script(&env, &gate));
    wait_until("c1 and c2 to run the command", DEADLINE, || {
        let s = states(&env.status(&job));
        s.get("c1").map(String::as_str) == Some("running")
            && s.get("c2").map(String::as_str) == Some("running")
            && s.get("c3").map(String::as_str) == Some("pending")
    });
    let st = env.status(&job);
    assert_eq!(st["state"], "active", "{st}");
    assert_eq!(st["done"], false, "{st}");

    let r = env.admin(&["job", "cancel", &job, "--json"]).ok().json();
    assert_eq!(job_id(&r), job, "{r}");
    assert_eq!(r["canceled"], 3, "{r}");

    // A canceled job is done: wait returns (exit 1: not every leaf succeeded).
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    assert_eq!(st["done"], true, "{st}");
    assert_eq!(st["state"], "canceled", "{st}");
    assert_eq!(states(&st), all(&["c1", "c2", "c3"], "canceled"), "{st}");
    for (c, l) in leaves(&st) {
        assert_eq!(l["reason"], "canceled by the operator", "{c}: {st}");
    }
    let list = env.admin(&["job", "list", "--json"]).ok().json();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| job_id(j) == job)
        .cloned()
        .unwrap();
    assert_eq!(mine["state"], "canceled", "{list}");

    // The cancel reaches both relays; c3 comes back: its pending leaf is
    // never delivered.
    wait_relay_canceled(&env, "r1");
    wait_relay_canceled(&env, "r2");
    env.start_agent("c3", &r2);
    let ping = env.create_ping(&["r2"]);
    let (code, pst) = env.wait_job(&ping);
    assert_eq!(code, 0, "c3 is back and answers: {pst}");
    std::fs::write(&gate, b"").unwrap();
    let barrier = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, bst) = env.wait_job(&barrier);
    assert_eq!(code, 0, "{bst}");
    let ran: Vec<String> = env.job_runs(&job).into_iter().map(|r| r.client).collect();
    assert!(
        !ran.contains(&"c3".to_string()),
        "c3 ran a canceled job: {ran:?}"
    );
    assert_eq!(ran.len(), 2, "only c1 and c2 had started: {ran:?}");
    let st = env.status(&job);
    assert_eq!(states(&st), all(&["c1", "c2", "c3"], "canceled"), "{st}");

    // A canceled job cannot be rerun.
    let out = env.admin(&["job", "rerun", &job, "--failed"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("canceled"), "{out:?}");
    // Canceling again changes nothing; an unknown job is an error.
    let r = env.admin(&["job", "cancel", &job, "--json"]).ok().json();
    assert_eq!(r["canceled"], 0, "{r}");
    let out = env.admin(&["job", "cancel", "999"]);
    assert_eq!(out.code, 2, "{out:?}");
}

/// A relay that is down when the job is canceled gets the cancel when it
/// returns, and its pending leaves are never delivered.
#[test]
fn a_relay_down_at_cancel_time_cancels_when_it_returns() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    env.kill_agent("c1");
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    wait_until("c1's leaf to be pending", DEADLINE, || {
        states(&env.status(&job)).get("c1").map(String::as_str) == Some("pending")
    });
    let addr = env.kill_relay("r1");
    let r = env.admin(&["job", "cancel", &job, "--json"]).ok().json();
    assert_eq!(r["canceled"], 1, "{r}");
    env.start_relay_on("r1", &hq, &addr);
    wait_relay_canceled(&env, "r1");
    env.start_agent("c1", &r1);
    let ping = env.create_ping(&["r1"]);
    let (code, pst) = env.wait_job(&ping);
    assert_eq!(code, 0, "{pst}");
    let barrier = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, _) = env.wait_job(&barrier);
    assert_eq!(code, 0);
    assert!(env.job_runs(&job).is_empty(), "a canceled job ran");
    let st = env.status(&job);
    assert_eq!(states(&st), all(&["c1"], "canceled"), "{st}");
}
