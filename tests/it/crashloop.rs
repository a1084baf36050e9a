//! Crash loops: kill -9 a relay, HQ or the agents themselves at random points
//! while a job with 1,000 leaves is in flight, many times. Every leaf runs a
//! real command (`sh`, 0.3 s long, so that kills land mid-run) that appends
//! a start and an end line to a file. After each cycle HQ's picture must
//! equal a recount from the agents' own run logs and from that file: nothing
//! acknowledged lost, no attempt executed twice, a succeeded leaf executed
//! exactly once, no rerun overlapping a leftover of the attempt before it,
//! no result for a leaf that was not targeted, no state moving backwards.
//!
//! The fast suite runs a few cycles; `RELAYTREE_SLOW_TESTS=1` runs many.

use crate::harness::*;
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const AGENTS: u32 = 1000;

fn cycles(fast: usize, slow: usize) -> usize {
    if std::env::var_os("RELAYTREE_SLOW_TESTS").is_some() {
        slow
    } else {
        fast
    }
}

/// `hq cert issue --count` then `agent swarm` under `relay`.
struct Swarm {
    ids: std::path::PathBuf,
    data: std::path::PathBuf,
    proc: Option<Proc>,
}

impl Swarm {
    fn new(env: &Env, count: u32) -> Swarm {
        let ids = env.root().join("swarm-ids");
        Out::of(run(Command::new(HQ)
            .args(["cert", "issue", "--data-dir"])
            .arg(&env.hq_dir)
            .args([
                "--role",
                "agent",
                "--name",
                "a",
                "--count",
                &count.to_string(),
            ])
            .arg("--out")
            .arg(&ids)))
        .ok();
        Swarm {
            ids,
            data: env.root().join("data/swarm"),
            proc: None,
        }
    }

    fn start(&mut self, env: &Env, relay: &str) {
        let mut c = Command::new(AGENT);
        c.args(["swarm", "--identities"])
            .arg(&self.ids)
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--relay",
                relay,
                "--fail-fraction",
                "0.05",
                "--kill-grace",
                "2s",
            ]);
        self.proc = Some(Proc::spawn("swarm", c, &env.logs()));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The run log, by (job, client): (attempt, result) of each run.
    fn runlog(&self) -> BTreeMap<(String, String), Vec<(u64, Value)>> {
        let out = Out::of(run(Command::new(AGENT)
            .args(["runlog", "--json", "--data-dir"])
            .arg(&self.data)))
        .ok();
        let mut m: BTreeMap<(String, String), Vec<(u64, Value)>> = BTreeMap::new();
        for r in out.json().as_array().cloned().unwrap_or_default() {
            let key = (
                r["job"].as_str().unwrap_or_default().to_string(),
                r["client"].as_str().unwrap_or_default().to_string(),
            );
            m.entry(key)
                .or_default()
                .push((r["attempt"].as_u64().unwrap_or(0), r["result"].clone()));
        }
        m
    }
}

/// The command every leaf runs: a start line, 0.3 s, an end line, each
/// "start|end JOB CLIENT ATTEMPT", appended to `effects`.
fn command(effects: &Path) -> String {
    let line = "$RELAYTREE_JOB $RELAYTREE_CLIENT $RELAYTREE_ATTEMPT";
    format!(
        r#"echo "start {line}" >> '{f}'; sleep 0.3; echo "end {line}" >> '{f}'"#,
        f = effects.display()
    )
}

/// What the commands of `job` did, per client, in the order it happened:
/// (start or end, attempt).
fn effects_of(effects: &Path, job: &str) -> BTreeMap<String, Vec<(bool, u64)>> {
    let text = std::fs::read_to_string(effects).unwrap_or_default();
    let mut m: BTreeMap<String, Vec<(bool, u64)>> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 4, "bad effects line {l:?}");
        if f[1] != job {
            continue;
        }
        let start = match f[0] {
            "start" => true,
            "end" => false,
            other => panic!("bad effects line {other:?}"),
        };
        m.entry(f[2].to_string())
            .or_default()
            .push((start, f[3].parse().unwrap()));
    }
    m
}

/// Real executions of `job` against HQ's final status: each attempt
/// started at most once; every end after its start and before any later
/// attempt's start (a rerun never overlaps a leftover); a succeeded leaf
/// started and ended exactly once in its final attempt; nothing ran for a
/// client that is no leaf, or for an attempt above its leaf's.
fn check_effects(st: &Value, effects: &Path, job: &str) -> usize {
    let leaves = leaves(st);
    let mut executions = 0;
    for (client, seq) in effects_of(effects, job) {
        let Some(l) = leaves.get(&client) else {
            panic!("{client} ran job {job} but is no leaf of it");
        };
        let last = l["attempt"].as_u64().unwrap_or(0);
        let mut started: BTreeMap<u64, usize> = BTreeMap::new();
        let mut highest_start = 0;
        for (is_start, attempt) in &seq {
            assert!(
                *attempt <= last,
                "{client} ran attempt {attempt} of job {job}, above its leaf's {last}"
            );
            if *is_start {
                *started.entry(*attempt).or_default() += 1;
                highest_start = highest_start.max(*attempt);
                executions += 1;
            } else {
                assert!(
                    started.contains_key(attempt),
                    "{client}: job {job} attempt {attempt} ended without a start: {seq:?}"
                );
                assert!(
                    *attempt == highest_start,
                    "{client}: job {job} attempt {attempt} still ran after attempt {highest_start} started: {seq:?}"
                );
            }
        }
        for (attempt, n) in &started {
            assert_eq!(
                *n, 1,
                "{client} executed job {job} attempt {attempt} {n} times: {seq:?}"
            );
        }
        if l["state"] == "succeeded" {
            assert!(
                seq.contains(&(true, last)) && seq.contains(&(false, last)),
                "{client}: job {job} attempt {last} succeeded without running to its end: {seq:?}"
            );
        }
    }
    for (client, l) in &leaves {
        if l["state"] == "succeeded" {
            assert!(
                effects_of(effects, job).contains_key(client),
                "{client}: job {job} succeeded but never ran"
            );
        }
    }
    executions
}

/// HQ's final status of `job` equals the recount from the run log.
fn recount(st: &Value, log: &BTreeMap<(String, String), Vec<(u64, Value)>>, job: &str) {
    let leaves = leaves(st);
    assert_eq!(leaves.len(), AGENTS as usize, "every agent is a leaf once");
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (client, l) in &leaves {
        let runs = log
            .get(&(job.to_string(), client.clone()))
            .unwrap_or_else(|| panic!("{client} has no run of job {job} in its log"));
        let attempt = l["attempt"].as_u64().unwrap_or(0);
        let mine: Vec<_> = runs.iter().filter(|(a, _)| *a == attempt).collect();
        assert_eq!(
            mine.len(),
            1,
            "{client} ran job {job} attempt {attempt} once"
        );
        assert_eq!(
            mine[0].1, l["state"],
            "{client}: hq says {} but its run log says {}",
            l["state"], mine[0].1
        );
        *totals
            .entry(l["state"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    // No run for a leaf HQ did not target.
    for (j, c) in log.keys() {
        if j == job {
            assert!(
                leaves.contains_key(c),
                "{c} ran job {job} but is no leaf of it"
            );
        }
    }
    for (state, n) in totals {
        assert_eq!(st["totals"][&state], n, "totals[{state}]: {st}");
    }
}

/// Polls status while waiting, checking that no leaf's (attempt, state)
/// ever moves backwards.
fn wait_monotonic(env: &Env, job: &str) -> Value {
    fn rank(s: &str) -> u8 {
        match s {
            "pending" => 0,
            "delivered" => 1,
            "running" => 2,
            _ => 3,
        }
    }
    let mut seen: BTreeMap<String, (u64, u8)> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let st = env.status(job);
        for (c, l) in leaves(&st) {
            let now = (
                l["attempt"].as_u64().unwrap_or(0),
                rank(l["state"].as_str().unwrap_or("")),
            );
            if let Some(before) = seen.insert(c.clone(), now) {
                assert!(now >= before, "{c} moved backwards: {before:?} -> {now:?}");
            }
        }
        if st["done"] == true {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let open: Vec<String> = leaves(&st)
                .into_iter()
                .filter(|(_, l)| rank(l["state"].as_str().unwrap_or("")) < 3)
                .take(10)
                .map(|(c, l)| format!("{c}: {l}"))
                .collect();
            env.dump_logs();
            panic!(
                "job {job} not done after 180 s: totals {} awaiting {}; open leaves: {open:#?}",
                st["totals"], st["awaiting"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn random_pause() {
    // Fault injection, not synchronisation: the kill lands at a random point.
    let ms = rand::rng().random_range(0..1200);
    std::thread::sleep(Duration::from_millis(ms));
}

enum Victim {
    Relay,
    Hq,
    Agents,
}

fn crash_loop(victim: Victim, n: usize) {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let mut swarm = Swarm::new(&env, AGENTS);
    swarm.start(&env, &r1);
    wait_clients(&env);
    let effects = env.root().join("effects");
    let mut finished = Vec::new();
    let mut interrupted = 0;
    for cycle in 0..n {
        let job = env.create_job(&["r1"], &[], &command(&effects));
        if let Victim::Agents = victim {
            // Kill them mid-run: once commands of this job run.
            wait_until("commands of the job to start", DEADLINE, || {
                !effects_of(&effects, &job).is_empty()
            });
            let ms = rand::rng().random_range(0..400);
            std::thread::sleep(Duration::from_millis(ms));
        } else {
            random_pause();
        }
        match victim {
            Victim::Relay => {
                let addr = env.kill_relay("r1");
                random_pause();
                env.start_relay_on("r1", &hq, &addr);
            }
            Victim::Hq => {
                let addr = env.kill_hq();
                random_pause();
                env.start_hq_on(&addr);
            }
            Victim::Agents => {
                swarm.kill();
                random_pause();
                swarm.start(&env, &r1);
            }
        }
        let st = wait_monotonic(&env, &job);
        let cut = leaves(&st)
            .values()
            .filter(|l| {
                l["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("interrupted"))
            })
            .count();
        interrupted += cut;
        // Rerun the failed leaves (on purpose, or interrupted) once: reruns
        // survive too, and never overlap what they replace.
        let rr = env
            .admin(&["job", "rerun", &job, "--failed", "--json"])
            .ok()
            .json();
        let st = if rr["targets"].as_u64().unwrap_or(0) > 0 {
            wait_monotonic(&env, &job)
        } else {
            st
        };
        let executions = check_effects(&st, &effects, &job);
        eprintln!(
            "cycle {cycle}: job {job}: {} ({executions} executions, {cut} interrupted mid-run)",
            st["totals"]
        );
        finished.push((job, st));
    }
    if let Victim::Agents = victim {
        // Otherwise this loop tested nothing about commands cut short.
        assert!(interrupted > 0, "no kill landed while a command ran");
    }
    // The agents' own run logs, read once they are stopped, must agree with
    // HQ about every job of every cycle.
    swarm.kill();
    let log = swarm.runlog();
    for (job, st) in &finished {
        recount(st, &log, job);
    }
}

/// Waits until HQ knows all the agents (a thousand TLS handshakes on a busy
/// machine take a while).
fn wait_clients(env: &Env) {
    wait_until("all agents to register", Duration::from_secs(120), || {
        env.tree()["clients"].as_u64() == Some(AGENTS as u64)
    });
}

#[test]
fn relay_killed_at_random_points_loses_nothing() {
    crash_loop(Victim::Relay, cycles(2, 20));
}

#[test]
fn hq_killed_at_random_points_loses_nothing() {
    crash_loop(Victim::Hq, cycles(1, 10));
}

#[test]
fn agents_killed_at_random_points_run_nothing_twice() {
    crash_loop(Victim::Agents, cycles(1, 10));
}
