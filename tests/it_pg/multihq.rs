//! Two HQs serving at once on one PostgreSQL database (the same CA,
//! signing key and identity from one `hq init`): work created on either
//! reaches a relay connected to the other without a poll and is watched
//! from either; one HQ killed mid-job, its relays fail over and the job
//! completes through the other with nothing run twice; a recurring job
//! fires once per occurrence; a revocation on one HQ closes the other's
//! door; the database restarted under a running HQ.

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A second `hq serve` on the same database: a copy of `hq init`'s
/// identities (the depot shared, as on a shared filesystem).
fn second_hq(env: &Env) -> Server {
    let dir = env.root().join("hq2");
    for sub in ["ca", "hq", "admin"] {
        copy_dir(&env.hq_dir.join(sub), &dir.join(sub));
    }
    std::fs::create_dir_all(env.hq_dir.join("depot")).unwrap();
    std::os::unix::fs::symlink(env.hq_dir.join("depot"), dir.join("depot")).unwrap();
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(env.store_args());
    let mut proc = Proc::spawn("hq2", cmd, &env.logs());
    let addr = proc.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    Server { proc, addr }
}

/// HQ A, then HQ B on the same database, relay r1 under both (A
/// preferred) and agents `clients` under r1, once HQ counts them: (A's
/// address, B). None without PostgreSQL.
fn two_hqs_and_r1(env: &mut Env, clients: &[&str]) -> Option<(String, Server)> {
    env.store_url.as_ref()?;
    let a = env.start_hq();
    let b = second_hq(env);
    let r1 = env.start_relay_with("r1", &a, &["--parent", &b.addr]);
    for c in clients {
        env.start_agent(c, &r1);
    }
    env.wait_clients(clients.len() as u64);
    Some((a, b))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// An admin command against the HQ at `addr` (`--hq`, before any `--`).
fn at(env: &Env, addr: &str, args: &[&str]) -> Out {
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let mut all: Vec<&str> = args[..split].to_vec();
    all.extend(["--hq", addr]);
    all.extend(&args[split..]);
    env.admin(&all)
}

fn create_at(env: &Env, addr: &str, relays: &[&str], script: &str) -> String {
    let mut args = vec!["job", "create", "--dest", "all-lower-clients", "--json"];
    for r in relays {
        args.extend(["--relay", r]);
    }
    args.extend(["--", "sh", "-c", script]);
    job_id(&at(env, addr, &args).ok().json())
}

/// `job wait` at `addr`: (exit code, status).
fn wait_at(env: &Env, addr: &str, job: &str) -> (i32, serde_json::Value) {
    let out = at(
        env,
        addr,
        &["job", "wait", job, "--timeout", "60s", "--json"],
    );
    assert!(
        out.code == 0 || out.code == 1,
        "job wait {job} at {addr}: {out:?}\n{}",
        env.log_text()
    );
    (out.code, out.json())
}

fn status_at(env: &Env, addr: &str, job: &str) -> serde_json::Value {
    at(env, addr, &["job", "status", job, "--json"]).ok().json()
}

#[test]
fn work_created_on_one_hq_reaches_a_relay_on_the_other_and_is_watched_from_both() {
    let mut env = Env::new();
    if env.store_url.is_none() {
        return;
    }
    let a = env.start_hq();
    let b = second_hq(&env);
    // r1 knows only HQ A: whatever HQ B creates must travel through A.
    let r1 = env.start_relay("r1", &a);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);
    let job = create_at(&env, &b.addr, &["r1"], &env.job_script("sleep 1"));
    // Watched on B while the results arrive at A (B hears of A's commits).
    let (code, st) = wait_at(&env, &b.addr, &job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(st["totals"]["succeeded"], 2, "{st}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));
    for addr in [&a, &b.addr] {
        let st = status_at(&env, addr, &job);
        assert_eq!(st["totals"]["succeeded"], 2, "at {addr}: {st}");
    }
    // And the other way round: created on A, waited for on B.
    let job2 = create_at(&env, &a, &["r1"], &env.job_script("true"));
    let (code, st) = wait_at(&env, &b.addr, &job2);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job2), each(&["c1", "c2"], 1));
    // A cancel on B reaches r1 through A too.
    let job3 = create_at(&env, &b.addr, &["r1"], &env.job_script("sleep 60"));
    wait_until("job3 to start", Duration::from_secs(60), || {
        env.job_runs(&job3).len() == 2
    });
    at(&env, &b.addr, &["job", "cancel", &job3]).ok();
    let (_, st) = wait_at(&env, &a, &job3);
    assert_eq!(st["totals"]["canceled"], 2, "{st}");
    // A revocation on B closes A's door too (A re-reads the deny list).
    let ops = env.issue("admin", "ops");
    let as_ops = |addr: &str| {
        let ops = ops.to_str().unwrap();
        at(&env, addr, &["job", "list", "--identity", ops])
    };
    assert_eq!(as_ops(&a).code, 0, "{:?}", as_ops(&a));
    at(&env, &b.addr, &["cert", "revoke", "ops", "--force"]).ok();
    wait_until(
        "A to refuse the admin revoked on B",
        Duration::from_secs(60),
        || as_ops(&a).code != 0,
    );
    drop(b);
}

#[test]
fn one_hq_killed_mid_job_its_relays_fail_over_and_nothing_runs_twice() {
    let mut env = Env::new();
    let Some((_a, b)) = two_hqs_and_r1(&mut env, &["c1", "c2"]) else {
        return;
    };
    let job = env.create_job(&["r1"], &[], &env.job_script("sleep 3"));
    wait_until("the job to start", Duration::from_secs(60), || {
        env.job_runs(&job).len() == 2
    });
    env.kill_hq();
    let (code, st) = wait_at(&env, &b.addr, &job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(st["totals"]["succeeded"], 2, "{st}");
    // A second job through B alone; the first never ran again.
    let job2 = create_at(&env, &b.addr, &["r1"], &env.job_script("true"));
    let (code, st) = wait_at(&env, &b.addr, &job2);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));
    assert_eq!(env.run_counts(&job2), each(&["c1", "c2"], 1));
    drop(b);
}

#[test]
fn a_recurring_job_under_two_hqs_fires_once_per_occurrence() {
    let mut env = Env::new();
    let Some((a, b)) = two_hqs_and_r1(&mut env, &["c1"]) else {
        return;
    };
    // Due at the next whole minute (HQ's schedules are by the minute).
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let due_s = (now_s / 60 + 1) * 60;
    let m = (due_s / 60) % 1440;
    let spec = format!("daily {:02}:{:02}", m / 60, m % 60);
    // Several schedules due at once: the HQs' looks overlap while the
    // occurrences are made, so one made twice would show.
    const SCHEDULES: usize = 8;
    let script = env.job_script("true");
    let mut schedules = Vec::new();
    for i in 0..SCHEDULES {
        let addr = if i % 2 == 0 { &a } else { &b.addr };
        let out = at(&env, addr, &repeat_args("r1", &spec, &script))
            .ok()
            .json();
        schedules.push(out["schedule"].as_u64().expect("a schedule id"));
    }
    let occurrences = |addr: &str| -> Vec<serde_json::Value> {
        let list = at(&env, addr, &["job", "list", "--json"]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|j| {
                j["repeat"]["schedule"]
                    .as_u64()
                    .is_some_and(|s| schedules.contains(&s))
            })
            .cloned()
            .collect()
    };
    let jobs = wait_for("the occurrences", Duration::from_secs(150), || {
        let occ = occurrences(&a);
        (occ.len() >= SCHEDULES).then(|| occ.iter().map(job_id).collect::<Vec<_>>())
    });
    for job in &jobs {
        let (code, st) = wait_at(&env, &b.addr, job);
        assert_eq!(code, 0, "{st}");
    }
    // Both HQs look every second: give the other one time to fire too.
    std::thread::sleep(Duration::from_secs(3));
    for addr in [&a, &b.addr] {
        let occ = occurrences(addr);
        assert_eq!(occ.len(), SCHEDULES, "at {addr}: {occ:?}");
        for o in &occ {
            assert_eq!(o["repeat"]["next_ms"], (due_s + 86_400) * 1000, "{o}");
        }
    }
    assert_eq!(env.runs().len(), SCHEDULES, "{:?}", env.runs());
    drop(b);
}

#[test]
fn the_database_restarted_under_a_running_hq_loses_nothing_acked() {
    let mut env = Env::new();
    if env.store_url.is_none() {
        return;
    }
    let job = crate::start_r1_pair_and_run_a_job(&mut env);
    env.pg.as_mut().unwrap().restart().unwrap();
    // HQ reconnects (or, if writes were cut off, restarts: the harness
    // would see it exit) and takes new work; what it acked is all there.
    let job2 = wait_for(
        "a job accepted after the restart",
        Duration::from_secs(60),
        || {
            let mut args = vec!["job", "create", "--dest", "all-lower-clients", "--json"];
            args.extend(["--relay", "r1", "--", "sh", "-c"]);
            let script = env.job_script("true");
            args.push(&script);
            let out = env.admin(&args);
            (out.code == 0).then(|| job_id(&out.json()))
        },
    );
    let (code, st) = env.wait_job(&job2);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    let st = env.status(&job);
    assert_eq!(st["totals"]["succeeded"], 2, "{st}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));
    assert_eq!(env.run_counts(&job2), each(&["c1", "c2"], 1));
    assert!(
        env.hq.as_mut().unwrap().proc.try_wait().is_none(),
        "HQ exited:\n{}",
        env.log_text()
    );
}
