//! Retention: `hq job purge --older-than` and `hq serve --retention` remove
//! finished jobs from HQ and from every relay's store (counted in the
//! relays' databases after they stop), report them as purged, and never
//! touch a job that is not done.

use crate::harness::*;
use relaytree::store::Store;
use serde::de::IgnoredAny;
use std::path::Path;
use std::process::Command;

/// Entries of `jobs` in a relay's database: (attempts, leaves,
/// client_leaves, expiry index) for each job, read after the relay stopped.
fn relay_entries(data: &Path, jobs: &[u64]) -> Vec<[usize; 4]> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(data).unwrap();
        let keys = |tree: &'static str| -> Vec<Vec<u8>> {
            store
                .table(tree)
                .unwrap()
                .scan::<IgnoredAny>(b"")
                .map(|r| r.unwrap().0)
                .collect()
        };
        let (attempts, leaves, by_client, expiry) = (
            keys("attempts"),
            keys("leaves"),
            keys("client_leaves"),
            keys("expiry"),
        );
        let out = jobs
            .iter()
            .map(|j| {
                let jb = j.to_be_bytes();
                [
                    attempts.iter().filter(|k| k.starts_with(&jb)).count(),
                    leaves.iter().filter(|k| k.starts_with(&jb)).count(),
                    by_client.iter().filter(|k| k.ends_with(&jb)).count(),
                    expiry
                        .iter()
                        .filter(|k| k.get(8..16) == Some(&jb[..]))
                        .count(),
                ]
            })
            .collect();
        store.close().await.unwrap();
        out
    })
}

fn listed(env: &Env) -> Vec<String> {
    env.admin(&["job", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(job_id)
        .collect()
}

/// Waits until relay `name` logged that purge `id` is applied and durable.
fn wait_purged(env: &Env, name: &str, id: u64) {
    let what = format!("purged jobs purge={id} ");
    wait_until(&format!("{name} applied purge {id}"), DEADLINE, || {
        env.relays[name].proc.stderr_text().contains(&what)
    });
}

#[test]
fn a_purge_removes_finished_jobs_everywhere_and_keeps_the_unfinished_one() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r2);
    env.wait_clients(2);
    let j1 = env.create_ping(&["r1"]);
    let j2 = env.create_job(&["r1"], &["--expires", "1h"], &env.job_script("true"));
    let stop = env.root().join("stop");
    let held = format!("while [ ! -f '{}' ]; do sleep 0.1; done", stop.display());
    let j3 = env.create_job(&["r1"], &["--expires", "1h"], &env.job_script(&held));
    for j in [&j1, &j2] {
        assert_eq!(env.wait_job(j).0, 0);
    }
    wait_until("job 3 runs on both clients", DEADLINE, || {
        env.run_counts(&j3).len() == 2
    });

    // r2 is down during the purge: it gets it when it is back.
    let r2_addr = env.kill_relay("r2");
    let p = env
        .admin(&["job", "purge", "--older-than", "0s", "--json"])
        .ok()
        .json();
    let purged: Vec<String> = p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| job_id(&serde_json::json!({ "job": j })))
        .collect();
    assert_eq!(purged, vec![j1.clone(), j2.clone()], "{p}");
    assert_eq!(p["leaves"], 4, "{p}");
    for j in [&j1, &j2] {
        let o = env.admin(&["job", "status", j]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains(&format!("job {j} was purged")), "{o:?}");
        assert!(
            !o.stderr.contains("lost") && !o.stderr.contains("no job"),
            "{o:?}"
        );
        for cmd in [
            &["job", "wait", j, "--timeout", "5s"][..],
            &["job", "rerun", j, "--failed"][..],
        ] {
            let o = env.admin(cmd);
            assert_eq!(o.code, 2, "{o:?}");
            assert!(o.stderr.contains("was purged"), "{o:?}");
        }
    }
    assert_eq!(listed(&env), vec![j3.clone()]);
    // The unfinished job is whole.
    assert_eq!(env.status(&j3)["totals"]["running"], 2);
    wait_purged(&env, "r1", 1);
    env.start_relay_on("r2", &r1, &r2_addr);
    wait_purged(&env, "r2", 1);

    // Finish job 3; it is too young for a purge of jobs older than an hour.
    std::fs::write(&stop, b"").unwrap();
    assert_eq!(env.wait_job(&j3).0, 0);
    let bad = env.admin(&["job", "purge", "--older-than", "soon"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--older-than"), "{bad:?}");
    let p = env
        .admin(&["job", "purge", "--older-than", "1h", "--json"])
        .ok()
        .json();
    assert_eq!(p["jobs"].as_array().unwrap().len(), 0, "{p}");
    assert_eq!(listed(&env), vec![j3.clone()]);

    env.kill_relay("r1");
    env.kill_relay("r2");
    let ids: Vec<u64> = [&j1, &j2, &j3].iter().map(|j| j.parse().unwrap()).collect();
    // [attempts, leaves, client_leaves, expiry index] per job.
    let r1_left = relay_entries(&env.relay_data("r1"), &ids);
    let r2_left = relay_entries(&env.relay_data("r2"), &ids);
    assert_eq!(
        r1_left[..2],
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        "r1: {r1_left:?}"
    );
    assert_eq!(
        r2_left[..2],
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        "r2: {r2_left:?}"
    );
    // What a relay still holds of a job it was not told to purge (so the
    // counts above can see entries): its attempt and its home leaf.
    assert_eq!(r1_left[2][..2], [1, 1], "r1: {r1_left:?}");
    assert_eq!(r2_left[2][..2], [1, 1], "r2: {r2_left:?}");
}

#[test]
fn hq_serve_purges_finished_jobs_past_its_retention() {
    let mut env = Env::new();
    let bad = Out::of(run(Command::new(HQ)
        .args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0", "--retention", "0s"])));
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--retention"), "{bad:?}");

    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"]).arg(&env.hq_dir).args([
        "--listen",
        "127.0.0.1:0",
        "--retention",
        "2s",
    ]);
    cmd.args(env.store_args());
    let mut proc = Proc::spawn("hq", cmd, &env.logs());
    let hq = proc.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    env.hq = Some(Server {
        proc,
        addr: hq.clone(),
    });
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let j = env.create_ping(&["r1"]);
    let stop = env.root().join("stop");
    let held = format!("while [ ! -f '{}' ]; do sleep 0.1; done", stop.display());
    let open = env.create_job(&["r1"], &[], &env.job_script(&held));
    wait_until("the held job runs", DEADLINE, || {
        env.run_counts(&open).len() == 1
    });
    wait_until("the ping job is purged", DEADLINE, || {
        let o = env.admin(&["job", "status", &j]);
        o.code == 2 && o.stderr.contains(&format!("job {j} was purged"))
    });
    wait_purged(&env, "r1", 1);
    // Older than the retention but not done: kept.
    assert_eq!(listed(&env), vec![open.clone()]);
    assert_eq!(env.status(&open)["totals"]["running"], 1);
    std::fs::write(&stop, b"").unwrap();
    assert_eq!(env.wait_job(&open).0, 0);
    wait_until("the finished job is purged", DEADLINE, || {
        listed(&env).is_empty()
    });
}
