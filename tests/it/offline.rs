//! Agents that are down when a job is created: served on return, or expired.

use crate::harness::*;

/// Starts HQ, r1 and `agents` under r1, waits until all are registered.
fn tree_with(env: &mut Env, agents: &[&str]) -> String {
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    for a in agents {
        env.start_agent(a, &r1);
    }
    env.wait_clients(agents.len() as u64);
    r1
}

#[test]
fn offline_agent_is_served_on_return() {
    let mut env = Env::new();
    let r1 = tree_with(&mut env, &["c1", "c2", "c3"]);
    env.kill_agent("c3");

    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let mut want = all(&["c1", "c2"], "succeeded");
    want.insert("c3".into(), "pending".into());
    wait_until("c1 c2 succeeded, c3 pending", DEADLINE, || {
        states(&env.status(&job)) == want
    });
    let st = env.status(&job);
    assert_eq!(st["done"], false, "{st}");
    assert_eq!(st["totals"]["pending"], 1, "{st}");
    // `job wait` gives up with exit 3 while a leaf is open.
    let out = env.admin(&["job", "wait", &job, "--timeout", "300ms"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("not finished"), "{out:?}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));

    env.start_agent("c3", &r1);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1", "c2", "c3"], "succeeded"));
    assert_eq!(env.run_counts(&job), each(&["c1", "c2", "c3"], 1));
}

#[test]
fn leaf_expires_and_is_not_run_on_return() {
    let mut env = Env::new();
    let r1 = tree_with(&mut env, &["c1", "c2"]);
    env.kill_agent("c2");

    let script = env.job_script("true");
    let job = env.create_job(&["r1"], &["--expires", "2s"], &script);
    let mut want = all(&["c1"], "succeeded");
    want.insert("c2".into(), "expired".into());
    wait_until("c2 to expire", DEADLINE, || {
        states(&env.status(&job)) == want
    });
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "an expired leaf is not a success: {st}");
    assert_eq!(st["done"], true, "{st}");
    assert_eq!(st["totals"]["expired"], 1, "{st}");

    // c2 comes back; a later job reaching it proves it is connected and
    // has been handed whatever its relay had for it.
    env.start_agent("c2", &r1);
    let later = env.create_job(&["r1"], &[], &script);
    let (code, st) = env.wait_job(&later);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&later), each(&["c1", "c2"], 1));

    assert_eq!(
        env.run_counts(&job),
        each(&["c1"], 1),
        "expired job ran on c2"
    );
    assert_eq!(states(&env.status(&job)), want);
}
