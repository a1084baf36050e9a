//! kill -9 of a relay or of HQ: nothing acknowledged is lost, nothing runs twice.

use crate::harness::*;
use std::collections::BTreeMap;

const SLOW: &str = "sleep 2; echo done";

/// Waits until every one of `clients` has started `job`, per the runs log.
fn wait_started(env: &Env, job: &str, clients: &[&str]) {
    wait_until(&format!("{clients:?} to start job {job}"), DEADLINE, || {
        env.run_counts(job) == each(clients, 1)
    });
}

#[test]
fn relay_kill9_mid_command_each_leaf_runs_once() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let clients = ["c1", "c2", "c3"];
    for c in clients {
        env.start_agent(c, &r1);
    }
    env.wait_clients(3);

    let job = env.create_job(&["r1"], &[], &env.job_script(SLOW));
    wait_started(&env, &job, &clients);
    let old = env.kill_relay("r1");
    let again = env.start_relay_on("r1", &hq, &old);
    assert_eq!(again, old);

    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&clients, "succeeded"));
    for (c, l) in leaves(&st) {
        assert_eq!(l["attempt"], 1, "{c}: {st}");
    }
    assert_eq!(env.run_counts(&job), each(&clients, 1));

    // The restarted relay still serves new work.
    let next = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&next);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&next), each(&clients, 1));
}

/// HQ <- r1 (c1 c2), HQ <- r2 (c3).
fn two_relays(env: &mut Env) -> Vec<&'static str> {
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.start_agent("c3", &r2);
    env.wait_clients(3);
    vec!["c1", "c2", "c3"]
}

#[test]
fn hq_kill9_keeps_acknowledged_results() {
    let mut env = Env::new();
    let clients = two_relays(&mut env);
    let job = env.create_job(&["r1", "r2"], &[], &env.job_script("true"));
    let (code, before) = env.wait_job(&job);
    assert_eq!(code, 0, "{before}");

    let old = env.kill_hq();
    assert_eq!(env.start_hq_on(&old), old);

    let after = env.status(&job);
    assert_eq!(after["done"], true, "{after}");
    assert_eq!(states(&after), all(&clients, "succeeded"));
    assert_eq!(after["totals"], before["totals"]);
    assert_eq!(after["clients"], before["clients"]);
    let list = env.admin(&["job", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");

    // The relays reconnect and a new job goes through.
    let next = env.create_job(&["r1", "r2"], &[], &env.job_script("true"));
    assert_ne!(next, job);
    let (code, st) = env.wait_job(&next);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&clients, "succeeded"));
    assert_eq!(env.run_counts(&next), each(&clients, 1));
    assert_eq!(env.run_counts(&job), each(&clients, 1));
}

#[test]
fn hq_kill9_while_job_runs_all_results_arrive() {
    let mut env = Env::new();
    let clients = two_relays(&mut env);
    let job = env.create_job(&["r1", "r2"], &[], &env.job_script(SLOW));
    wait_started(&env, &job, &clients);

    let old = env.kill_hq();
    assert_eq!(env.start_hq_on(&old), old);

    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&clients, "succeeded"));
    assert_eq!(env.run_counts(&job), each(&clients, 1));
}

#[test]
fn agent_kill9_mid_command_is_reported_failed_not_rerun() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);

    let job = env.create_job(&["r1"], &[], &env.job_script("sleep 3"));
    wait_started(&env, &job, &["c1", "c2"]);
    env.kill_agent("c1");
    env.start_agent("c1", &r1);

    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    let l = leaves(&st);
    assert_eq!(l["c1"]["state"], "failed", "{st}");
    let reason = l["c1"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("interrupted"), "{reason}");
    assert_eq!(l["c2"]["state"], "succeeded", "{st}");
    // The interrupted attempt was not run again by the restarted agent.
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));

    // Only an operator's rerun runs it again.
    let rerun = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(rerun["targets"], 1, "{rerun}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(
        env.run_counts(&job),
        BTreeMap::from([("c1".into(), 2), ("c2".into(), 1)])
    );
}

#[test]
fn timeout_kills_the_command_and_rerun_picks_it_up() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);
    // c1 hangs in its first attempt; everyone else is quick.
    let script = env.job_script(
        r#"if [ "$RELAYTREE_CLIENT" = c1 ] && [ "$RELAYTREE_ATTEMPT" = 1 ]; then sleep 30; fi"#,
    );
    let job = env.create_job(&["r1"], &["--timeout", "1s"], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    assert_eq!(
        states(&st),
        BTreeMap::from([
            ("c1".into(), "timed_out".into()),
            ("c2".into(), "succeeded".into())
        ])
    );
    let rerun = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(rerun["targets"], 1, "{rerun}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(leaves(&st)["c1"]["attempt"], 2, "{st}");
}
