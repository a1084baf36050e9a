//! HQ killed (kill -9) at random points while jobs are created and rerun
//! back to back. Creating a job writes the job and its queue; a rerun writes
//! the leaves at attempt n+1, the job record and the queue: each in one
//! atomic write. After every cycle: every job HQ acknowledged exists and
//! finishes (`job wait`), and no leaf has an attempt above its job's.
//!
//! The fast suite runs a few cycles; `RELAYTREE_SLOW_TESTS=1` runs many.

use crate::harness::*;
use rand::Rng;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AGENTS: u32 = 60;

fn cycles() -> usize {
    if std::env::var_os("RELAYTREE_SLOW_TESTS").is_some() {
        25
    } else {
        3
    }
}

/// `hq cert issue --count` then `agent swarm` (half the attempts fail on
/// purpose, so every job has leaves to rerun).
fn start_swarm(env: &Env, relay: &str) -> Proc {
    let ids = env.root().join("swarm-ids");
    if !ids.exists() {
        Out::of(run(Command::new(HQ)
            .args(["cert", "issue", "--data-dir"])
            .arg(&env.hq_dir)
            .args(["--role", "agent", "--name", "a", "--count"])
            .arg(AGENTS.to_string())
            .arg("--out")
            .arg(&ids)))
        .ok();
    }
    let mut c = Command::new(AGENT);
    c.args(["swarm", "--identities"])
        .arg(&ids)
        .arg("--data-dir")
        .arg(env.root().join("data/swarm"))
        .args(["--relay", relay, "--fail-fraction", "0.5"]);
    Proc::spawn("swarm", c, &env.logs())
}

/// `hq ARGS --data-dir HQ` from another thread.
fn admin(hq_dir: &std::path::Path, args: &[&str]) -> Out {
    Out::of(run(Command::new(HQ)
        .args(args)
        .arg("--data-dir")
        .arg(hq_dir)
        .env_remove("RELAYTREE_HQ")
        .env_remove("RELAYTREE_IDENTITY")
        .env_remove("RELAYTREE_DATA_DIR")))
}

/// Creates ping jobs and reruns their failed leaves until `stop`; records
/// every job whose creation HQ acknowledged.
fn churn(hq_dir: std::path::PathBuf, stop: Arc<AtomicBool>, acked: Arc<Mutex<BTreeSet<String>>>) {
    while !stop.load(Ordering::SeqCst) {
        let out = admin(
            &hq_dir,
            &[
                "job",
                "create",
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
                "--ping",
                "--json",
            ],
        );
        if out.code == 0 {
            acked.lock().unwrap().insert(job_id(&out.json()));
        }
        let jobs: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
        for job in jobs.iter().rev().take(3) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let _ = admin(&hq_dir, &["job", "rerun", job, "--failed"]);
        }
    }
}

#[test]
fn hq_killed_during_creates_and_reruns_leaves_every_job_finishable() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let _swarm = start_swarm(&env, &r1);
    wait_until("all agents to register", Duration::from_secs(120), || {
        env.tree()["clients"].as_u64() == Some(AGENTS as u64)
    });
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut addr = hq;
    for cycle in 0..cycles() {
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (dir, stop, acked) = (env.hq_dir.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || churn(dir, stop, acked))
        };
        // Fault injection, not synchronisation: the kill lands at a random point.
        let ms = rand::rng().random_range(300..2500);
        std::thread::sleep(Duration::from_millis(ms));
        env.kill_hq();
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        env.start_hq_on(&addr);
        addr = env.hq.as_ref().unwrap().addr.clone();

        let listed: BTreeSet<String> = env
            .admin(&["job", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(job_id)
            .collect();
        let acked_now = acked.lock().unwrap().clone();
        let lost: Vec<&String> = acked_now.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged jobs lost: {lost:?}"
        );
        for job in &listed {
            // As the restart left it, and once finished.
            let first = env.status(job);
            let (_, st) = env.wait_job(job);
            assert_eq!(
                st["done"], true,
                "cycle {cycle}: job {job} never finished: {st}"
            );
            assert_eq!(
                leaves(&st).len(),
                AGENTS as usize,
                "cycle {cycle}: job {job}: {st}"
            );
            for s in [&first, &st] {
                let attempt = s["attempt"].as_u64().unwrap();
                for (c, leaf) in leaves(s) {
                    let a = leaf["attempt"].as_u64().unwrap();
                    assert!(
                        a <= attempt,
                        "cycle {cycle}: job {job}: {c} at attempt {a} above the job's {attempt}"
                    );
                }
            }
        }
        eprintln!(
            "cycle {cycle}: killed after {ms} ms; {} jobs, all finished",
            listed.len()
        );
    }
}
