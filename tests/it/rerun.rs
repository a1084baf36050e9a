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

/// A rerun of many failed leaves under one relay, with 57-character names:
/// every agent gets only the order chunk naming it, so nothing outgrows an
/// agent frame. 20,000 leaves (19,500 where the open-file limit is 20,000)
/// run with `RELAYTREE_SLOW_TESTS=1`; `RELAYTREE_RERUN_LEAVES=N` changes the
/// count. Slow: on a shared 2-core machine (debug build) the agents ran all
/// rerun targets within 3 minutes, but results then reached HQ at about 8
/// per second and the 30-minute wait ran out at 13,420 of 19,500, with
/// 39,000 agent sessions dropped and redialled meanwhile (heartbeats missed
/// under load); no frame was too large. 1,000 leaves take 16 s.
/// The normal suite proves the bound itself
/// (`relay::assign::tests::an_agents_assignment_does_not_grow_with_the_rerun`).
#[test]
fn a_rerun_of_many_long_named_leaves_completes() {
    if std::env::var_os("RELAYTREE_SLOW_TESTS").is_none() {
        eprintln!("skipped: set RELAYTREE_SLOW_TESTS=1");
        return;
    }
    let n: u32 = std::env::var("RELAYTREE_RERUN_LEAVES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    // The relay holds a socket per agent: a machine whose open-file limit is
    // 20,000 (this one's hard limit) fits a few hundred fewer.
    let limit: Option<u32> = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        });
    let n = match limit {
        Some(l) if n + 500 > l => {
            eprintln!(
                "open-file limit {l}: running {} leaves instead of {n}",
                l - 500
            );
            l - 500
        }
        _ => n,
    };
    let t0 = std::time::Instant::now();
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    // PREFIX-00001 ...: 51 + 6 = 57 characters.
    let prefix = format!("rerun-{}", "x".repeat(45));
    let ids = env.root().join("many-ids");
    // Not `run`: issuing thousands of keys takes longer than its deadline.
    let issued = std::process::Command::new(HQ)
        .args(["cert", "issue", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--role", "agent", "--name", &prefix, "--count"])
        .arg(n.to_string())
        .arg("--out")
        .arg(&ids)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(issued.success());
    eprintln!("{n} identities issued after {:?}", t0.elapsed());
    let mut c = std::process::Command::new(AGENT);
    c.args(["swarm", "--identities"])
        .arg(&ids)
        .arg("--data-dir")
        .arg(env.root().join("data/many"))
        .args(["--relay", &r1]);
    let _swarm = Proc::spawn("swarm", c, &env.logs());
    let slow = std::time::Duration::from_secs(1800);
    wait_until("every agent to register", slow, || {
        env.tree()["clients"].as_u64() == Some(n as u64)
    });
    eprintln!("{n} agents registered after {:?}", t0.elapsed());
    let job = env.create_job(&["r1"], &[], r#"[ "$RELAYTREE_ATTEMPT" -gt 1 ]"#);
    // Not `env.admin`: its runner gives up after a minute.
    let wait = |env: &Env| {
        let out = Out::of(
            std::process::Command::new(HQ)
                .args([
                    "job",
                    "wait",
                    &job,
                    "--timeout",
                    "30m",
                    "--json",
                    "--data-dir",
                ])
                .arg(&env.hq_dir)
                .output()
                .unwrap(),
        );
        assert!(out.code == 0 || out.code == 1, "{out:?}");
        out.json()
    };
    let st = wait(&env);
    assert_eq!(
        st["totals"]["failed"].as_u64(),
        Some(n as u64),
        "{}",
        st["totals"]
    );
    let t1 = std::time::Instant::now();
    let r = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(r["targets"].as_u64(), Some(n as u64), "{r}");
    let st = wait(&env);
    assert_eq!(
        st["totals"]["succeeded"].as_u64(),
        Some(n as u64),
        "{}",
        st["totals"]
    );
    eprintln!(
        "rerun of {n} leaves took {:?} (whole test {:?})",
        t1.elapsed(),
        t0.elapsed()
    );
    assert!(
        !env.relays["r1"].proc.stderr_text().contains("does not fit"),
        "an assignment outgrew an agent frame"
    );
}
