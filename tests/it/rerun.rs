//! `job rerun --failed` re-executes exactly the failed leaves.

use crate::harness::*;

#[test]
fn rerun_touches_only_failed_leaves() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    for (c, r) in [("c1", &r1), ("c2", &r1), ("c3", &r2), ("c4", &r2)] {
        env.start_agent(c, r);
    }
    env.wait_clients(4);

    // c2 and c4 fail on attempt 1 only.
    let script = env.job_script(
        r#"case "$RELAYTREE_CLIENT" in c2|c4) [ "$RELAYTREE_ATTEMPT" -gt 1 ] || exit 3;; esac"#,
    );
    let job = env.create_job(&["r1"], &[], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "wait with failed leaves exits 1: {st}");
    let mut want = all(&["c1", "c3"], "succeeded");
    want.extend(all(&["c2", "c4"], "failed"));
    assert_eq!(states(&st), want, "{st}");
    assert_eq!(st["totals"]["failed"].as_u64(), Some(2), "{st}");
    for c in ["c2", "c4"] {
        assert_eq!(leaves(&st)[c]["exit_code"], 3, "{st}");
    }

    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(job_id(&r), job, "{r}");
    assert_eq!(r["attempt"], 2, "{r}");
    assert_eq!(r["targets"], 2, "{r}");

    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["attempt"], 2, "{st}");
    assert_eq!(states(&st), all(&["c1", "c2", "c3", "c4"], "succeeded"));
    let l = leaves(&st);
    for (c, a) in [("c1", 1), ("c2", 2), ("c3", 1), ("c4", 2)] {
        assert_eq!(l[c]["attempt"], a, "attempt of {c}: {st}");
    }
    let mut counts = each(&["c1", "c3"], 1);
    counts.extend(each(&["c2", "c4"], 2));
    assert_eq!(env.run_counts(&job), counts);
    let mut second: Vec<String> = env
        .job_runs(&job)
        .into_iter()
        .filter(|r| r.attempt == 2)
        .map(|r| r.client)
        .collect();
    second.sort();
    assert_eq!(second, ["c2", "c4"]);

    // Nothing failed any more: a rerun targets nothing and runs nothing.
    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(r["targets"], 0, "{r}");
    assert_eq!(r["attempt"], 2, "{r}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job), counts);
}

/// A failed leaf whose client then moves to another relay is rerun at the
/// client's new home (signed for it) and succeeds there.
#[test]
fn a_rerun_follows_a_client_that_moved() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);

    // c1 fails on attempt 1 only.
    let script = env.job_script(
        r#"case "$RELAYTREE_CLIENT" in c1) [ "$RELAYTREE_ATTEMPT" -gt 1 ] || exit 3;; esac"#,
    );
    let job = env.create_job(&["r1"], &[], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    assert_eq!(states(&st)["c1"], "failed", "{st}");

    // c1 moves from r1 to r2.
    env.kill_agent("c1");
    env.start_agent("c1", &r2);
    wait_until("hq to see c1 under r2", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["relay"] == "r2" && r["clients"] == 1)
    });

    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(
        (r["attempt"].as_u64(), r["targets"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let l = leaves(&st);
    assert_eq!(l["c1"]["state"], "succeeded", "{st}");
    assert_eq!(l["c1"]["relay"], "r2", "{st}");
    assert_eq!(l["c1"]["attempt"], 2, "{st}");
    // It really ran at r2, once per attempt.
    let runs: Vec<(u32, String)> = env
        .job_runs(&job)
        .into_iter()
        .filter(|r| r.client == "c1")
        .map(|r| (r.attempt, r.relay))
        .collect();
    assert_eq!(runs, vec![(1, "r1".to_string()), (2, "r2".to_string())]);
}

/// `--expired` also reruns leaves that expired; `--failed` alone does not.
#[test]
fn rerun_expired_takes_leaves_that_expired() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);
    // c2 is away while the job's short window passes.
    env.kill_agent("c2");
    let script = env.job_script("true");
    let job = env.create_job(&["r1"], &["--expires", "3s"], &script);
    let (_, st) = env.wait_job(&job);
    assert_eq!(states(&st)["c2"], "expired", "{st}");
    env.start_agent("c2", &r1);
    // c2 is connected again once it answers a ping.
    let ping = env.create_ping(&["r1"]);
    let (code, st) = env.wait_job(&ping);
    assert_eq!(code, 0, "{st}");
    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(r["targets"], 0, "--failed alone leaves expired leaves: {r}");
    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--expired", "--json"])
        .ok()
        .json();
    assert_eq!(
        (r["attempt"].as_u64(), r["targets"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    // The rerun has a fresh window of its own (the job's 3 s): c2 is back.
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1", "c2"], "succeeded"), "{st}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));
}
