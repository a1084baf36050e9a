//! Failover between parents: agents with several `--relay`, relays with
//! several `--parent`. A parent is killed (-9) mid-job; the child moves to
//! the next one, and what it ran is counted once (lines its command
//! appended), nothing acknowledged lost.

use crate::harness::*;
use std::process::Command;

/// Starts agent `name` with `--relay` for each of `relays`, in order.
fn start_agent_on(env: &mut Env, name: &str, relays: &[&str]) {
    let id = env.id_dir(name);
    if !id.exists() {
        env.issue("agent", name);
    }
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("data").join(name));
    for r in relays {
        cmd.args(["--relay", r]);
    }
    let proc = Proc::spawn(name, cmd, &env.logs());
    env.agents.insert(name.to_string(), proc);
}

/// `hq tree`: relay -> (parent, clients whose home it is).
fn tree_rows(env: &Env) -> std::collections::BTreeMap<String, (String, u64)> {
    let t = env.tree();
    t["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relay"].as_str().unwrap().to_string(),
                (
                    r["parent"].as_str().unwrap().to_string(),
                    r["clients"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Clients whose home `relay` is, per `hq tree`.
fn clients_of(env: &Env, relay: &str) -> u64 {
    tree_rows(env).get(relay).map_or(0, |r| r.1)
}

/// The lines the job's command appended, once it started on every client.
fn wait_started(env: &Env, job: &str, clients: &[&str]) {
    wait_until("the job to start everywhere", DEADLINE, || {
        let c = env.run_counts(job);
        clients.iter().all(|n| c.contains_key(*n))
    });
}

/// Runs a job of a few seconds for the clients under `relay` (c1 and c2),
/// kills r1 once it started on both, and checks it still succeeds, having
/// run once on each; returns the job.
fn r1_dies_under_a_job(env: &mut Env, relay: &str) -> String {
    let job = env.create_job(&[relay], &[], &env.job_script("sleep 3"));
    wait_started(env, &job, &["c1", "c2"]);
    env.kill_relay("r1");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(states(&st), all(&["c1", "c2"], "succeeded"));
    assert_eq!(
        env.run_counts(&job),
        each(&["c1", "c2"], 1),
        "ran once each"
    );
    job
}

#[test]
fn an_agent_moves_to_its_next_relay_and_its_job_completes_once() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    start_agent_on(&mut env, "c1", &[&r1, &r2]);
    start_agent_on(&mut env, "c2", &[&r1, &r2]);
    env.wait_clients(2);
    assert_eq!(clients_of(&env, "r1"), 2, "the first is preferred");

    // A job under r1 whose command runs for a while: r1 dies under it; the
    // agents move to r2, their results reach HQ through it.
    let job = r1_dies_under_a_job(&mut env, "r1");
    wait_until("hq to see both agents under r2", DEADLINE, || {
        clients_of(&env, "r2") == 2
    });

    // They are served there: a new job under r2 reaches both (their
    // placements now name r2).
    let later = env.create_job(&["r2"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&later);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(env.run_counts(&later), each(&["c1", "c2"], 1));
    assert_eq!(
        env.run_counts(&job),
        each(&["c1", "c2"], 1),
        "nothing ran again"
    );
}

#[test]
fn parents_of_two_installations_are_refused_at_start() {
    let mut env = Env::new();
    let hq = env.start_hq();
    // Another `hq init`: another CA.
    let mut other = Env::new();
    let foreign = other.start_hq();
    let id = env.issue("relay", "r9");
    let mut cmd = Command::new(RELAY);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.relay_data("r9"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--parent",
            &hq,
            "--parent",
            &foreign,
        ]);
    let mut p = Proc::spawn("r9", cmd, &env.logs());
    let status = p.wait_exit(DEADLINE);
    assert!(!status.success(), "{status:?}");
    let err = p.stderr_text();
    assert!(
        err.contains(&foreign) && err.contains("disagree on the trust domain"),
        "{err}"
    );
    // Nothing of it reached HQ.
    assert_eq!(env.tree()["relays"].as_array().map(|a| a.len()), Some(0));
}

#[test]
fn a_nested_relay_moves_to_its_next_parent_with_its_clients() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    let r3 = env.start_relay_with("r3", &r1, &["--parent", &r2]);
    env.start_agent("c1", &r3);
    env.start_agent("c2", &r3);
    env.wait_clients(2);
    assert_eq!(tree_rows(&env)["r3"].0, "r1", "the first is preferred");

    // r1 dies while r3's clients run a job; their results reach HQ
    // through r2.
    let job = r1_dies_under_a_job(&mut env, "r3");
    wait_until("hq to see r3 under r2", DEADLINE, || {
        tree_rows(&env)["r3"].0 == "r2"
    });

    // r2 learned r3's subtree: all-lower-clients of r2 now holds them, and
    // a job to r3 is routed through r2.
    let under_r2 = env.create_job(&["r2"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&under_r2);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(env.run_counts(&under_r2), each(&["c1", "c2"], 1), "{st}");
    let to_r3 = env.create_ping(&["r3"]);
    let (code, st) = env.wait_job(&to_r3);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(states(&st), all(&["c1", "c2"], "succeeded"));
    assert_eq!(
        env.run_counts(&job),
        each(&["c1", "c2"], 1),
        "nothing ran again"
    );
}

#[test]
fn a_job_queued_behind_a_dead_parent_follows_the_relay_that_moved() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    env.start_relay_with("r3", &r1, &["--parent", &r2]);
    let r3 = env.relays["r3"].addr.clone();
    env.start_agent("c1", &r3);
    env.wait_clients(1);
    // r3 stops, then r1 dies: a job for r3 can only be queued for r1.
    env.kill_relay("r3");
    wait_until("hq to see r3 gone", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["relay"] == "r3" && r["connected"] == false)
    });
    env.kill_relay("r1");
    let job = env.create_job(&["r3"], &[], &env.job_script("true"));
    // r3 comes back, finds r1 dead, joins r2: the job follows it there.
    env.start_relay_on_with("r3", &r1, &r3, &["--parent", &r2]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(states(&st), all(&["c1"], "succeeded"));
    assert_eq!(env.run_counts(&job), each(&["c1"], 1));
}
