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
