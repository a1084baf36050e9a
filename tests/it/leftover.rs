//! No leftover commands: a `kill -9` of `agent serve` mid-command leaves
//! nothing running once the agent is back (before the leaf is reported
//! failed), a rerun runs it once more, never beside a leftover; a timeout
//! sends SIGTERM first and SIGKILL only after `--kill-grace`; `--timeout 0s`
//! is refused. Effects are counted in files the commands append to, and in
//! `/proc`, never in the records that claim them.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The live (not zombie) processes of process group `pgid`, from `/proc`
/// (in containers, pid 1 may never reap the zombies of orphans).
fn group_alive(pgid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        })
        .collect()
}

/// Every process group with a live (not zombie) process, in one read of `/proc`.
fn live_groups() -> std::collections::HashSet<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f.first() != Some(&"Z")).then(|| f.get(2)?.parse().ok())?
        })
        .collect()
}

/// A file's lines.
fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Starts agent `name` under `relay` with extra flags (the harness's
/// `start_agent` takes none).
fn start_agent_with(env: &mut Env, name: &str, relay: &str, extra: &[&str]) {
    let id = env.id_dir(name);
    if !id.exists() {
        env.issue("agent", name);
    }
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("data").join(name))
        .args(["--relay", relay])
        .args(extra);
    let proc = Proc::spawn(name, cmd, &env.logs());
    env.agents.insert(name.to_string(), proc);
}

/// The status of `job` once leaf `client` is final.
fn wait_leaf_final(env: &Env, job: &str, client: &str) -> serde_json::Value {
    wait_for(
        &format!("{client}'s leaf of {job} to end"),
        DEADLINE,
        || {
            let st = env.status(job);
            let s = leaves(&st)[client]["state"].as_str()?.to_string();
            (!["pending", "delivered", "running"].contains(&s.as_str())).then_some(st)
        },
    )
}

#[test]
fn agent_kill9_mid_command_leaves_nothing_running_and_a_rerun_runs_it_once_more() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);

    let f: PathBuf = env.root().join("effects");
    // Attempt 1 hangs (and would write "end" after 30 s); attempt 2 is quick.
    let script = env.job_script(&format!(
        r#"if [ "$RELAYTREE_ATTEMPT" = 1 ]; then echo "start $$" >> '{f}'; sleep 30; echo end >> '{f}'; fi"#,
        f = f.display()
    ));
    let job = env.create_job(&["r1"], &[], &script);
    let pgid: i32 = wait_for("attempt 1 to start", DEADLINE, || {
        let l = lines(&f);
        l.first()?.strip_prefix("start ")?.parse().ok()
    });
    assert!(!group_alive(pgid).is_empty(), "the command is running");

    env.kill_agent("c1");
    // What the issue saw: the command outlives its agent.
    assert!(
        !group_alive(pgid).is_empty(),
        "the command died with its agent: nothing left to test"
    );
    let restarted = Instant::now();
    env.start_agent("c1", &r1);

    let st = wait_leaf_final(&env, &job, "c1");
    eprintln!(
        "agent kill -9 mid-command: leftover group {pgid} stopped and the leaf reported failed {:?} after the restart",
        restarted.elapsed()
    );
    // Reported failed only after the leftover was stopped.
    let alive = group_alive(pgid);
    assert!(
        alive.is_empty(),
        "leftover of the interrupted attempt still running: {alive:?}"
    );
    let l = &leaves(&st)["c1"];
    assert_eq!(l["state"], "failed", "{st}");
    assert_eq!(l["attempt"], 1, "{st}");
    let reason = l["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("interrupted"), "{reason}");
    assert_eq!(env.run_counts(&job), each(&["c1"], 1));

    let rerun = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(rerun["targets"], 1, "{rerun}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(leaves(&st)["c1"]["attempt"], 2, "{st}");
    // Attempt 1 once, attempt 2 once: two executions in all.
    let runs: Vec<u32> = env.job_runs(&job).iter().map(|r| r.attempt).collect();
    assert_eq!(runs, [1, 2]);
    // The leftover never got to its end.
    assert_eq!(lines(&f), [format!("start {pgid}")]);
}

#[test]
fn a_timeout_sends_sigterm_first_and_sigkill_only_after_the_grace() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    // c1: the default grace (10 s); c2: a grace of 2 s.
    env.start_agent("c1", &r1);
    start_agent_with(&mut env, "c2", &r1, &["--kill-grace", "2s"]);
    env.wait_clients(2);

    let dir = env.root().join("effects");
    std::fs::create_dir_all(&dir).unwrap();
    // c1 cleans up on SIGTERM and exits; c2 ignores SIGTERM.
    let script = format!(
        r#"F='{d}'/$RELAYTREE_CLIENT; echo "start $$" >> "$F"
if [ "$RELAYTREE_CLIENT" = c1 ]; then trap 'echo term >> "$F"; exit 0' TERM; else trap '' TERM; fi
sleep 30 & wait; echo end >> "$F""#,
        d = dir.display()
    );
    let t0 = Instant::now();
    let job = env.create_job(&["r1"], &["--timeout", "1s"], &script);

    let st = wait_leaf_final(&env, &job, "c1");
    let c1_took = t0.elapsed();
    let l = &leaves(&st)["c1"];
    assert_eq!(l["state"], "timed_out", "{st}");
    // The trap ran: SIGTERM came, and well before the 10 s grace was over.
    let c1 = lines(&dir.join("c1"));
    assert_eq!(c1.len(), 2, "{c1:?}");
    assert_eq!(c1[1], "term", "{c1:?}");
    assert!(c1_took < Duration::from_secs(8), "c1 took {c1_took:?}");
    let reason = l["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SIGTERM"), "{reason}");

    let st = wait_leaf_final(&env, &job, "c2");
    let c2_took = t0.elapsed();
    let l = &leaves(&st)["c2"];
    assert_eq!(l["state"], "timed_out", "{st}");
    // 1 s timeout, then the 2 s grace, then SIGKILL.
    assert!(
        c2_took >= Duration::from_secs(3),
        "c2 killed before its grace: {c2_took:?}"
    );
    assert!(
        c2_took < Duration::from_secs(9),
        "--kill-grace 2s not honoured (the default is 10 s): {c2_took:?}"
    );
    let reason = l["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SIGKILL"), "{reason}");
    let c2 = lines(&dir.join("c2"));
    assert_eq!(c2.len(), 1, "{c2:?}");
    let pgid: i32 = c2[0].strip_prefix("start ").unwrap().parse().unwrap();
    assert!(group_alive(pgid).is_empty(), "c2's group outlived SIGKILL");
    let (code, _) = env.wait_job(&job);
    assert_eq!(code, 1);
    eprintln!(
        "--timeout 1s: the TERM-trapping command ended {c1_took:?} after create (grace 10 s); the TERM-ignoring one {c2_took:?} (grace 2 s)"
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    let env = Env::new();
    for zero in ["0s", "0", "0ms"] {
        let out = env.admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--timeout",
            zero,
            "--",
            "true",
        ]);
        assert_eq!(out.code, 2, "--timeout {zero}: {out:?}");
        assert!(out.stderr.contains("--timeout"), "{out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    }
}

/// `agent swarm` of `n` agents on one store, killed with `kill -9` while
/// every one of them runs a 30 s command: once restarted, nothing of the
/// `n` commands is left, every leaf is failed "interrupted", and a rerun
/// runs each once more.
fn swarm_kill9_mid_command(n: u32) {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let ids = env.root().join("swarm-ids");
    Out::of(run(Command::new(HQ)
        .args(["cert", "issue", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--role", "agent", "--name", "s", "--count", &n.to_string()])
        .arg("--out")
        .arg(&ids)))
    .ok();
    let data = env.root().join("data").join("swarm");
    let start = |env: &Env| {
        let mut c = Command::new(AGENT);
        c.args(["swarm", "--identities"])
            .arg(&ids)
            .arg("--data-dir")
            .arg(&data)
            .args(["--relay", &r1, "--kill-grace", "2s"]);
        Proc::spawn("swarm", c, &env.logs())
    };
    let mut swarm = start(&env);
    wait_until(
        "every agent of the swarm to register",
        Duration::from_secs(120),
        || env.tree()["clients"].as_u64() == Some(u64::from(n)),
    );

    let f = env.root().join("effects");
    let script = env.job_script(&format!(
        r#"if [ "$RELAYTREE_ATTEMPT" = 1 ]; then echo "start $$" >> '{f}'; sleep 30; echo end >> '{f}'; fi"#,
        f = f.display()
    ));
    let job = env.create_job(&["r1"], &[], &script);
    wait_until("every command to start", Duration::from_secs(120), || {
        lines(&f).len() == n as usize
    });
    let pgids: Vec<i32> = lines(&f)
        .iter()
        .map(|l| l.strip_prefix("start ").unwrap().parse().unwrap())
        .collect();
    swarm.kill();
    let live = live_groups();
    let dead = pgids.iter().filter(|g| !live.contains(g)).count();
    assert_eq!(
        dead, 0,
        "commands died with their swarm: nothing left to test"
    );
    let restarted = Instant::now();
    swarm = start(&env);

    let st = wait_for(
        "every leaf to be reported",
        Duration::from_secs(120),
        || {
            let st = env.status(&job);
            (st["done"] == true).then_some(st)
        },
    );
    let took = restarted.elapsed();
    let live = live_groups();
    let alive: Vec<i32> = pgids.iter().copied().filter(|g| live.contains(g)).collect();
    assert!(alive.is_empty(), "leftovers still running: {alive:?}");
    for (c, l) in leaves(&st) {
        assert_eq!(l["state"], "failed", "{c}: {l}");
        let reason = l["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("interrupted"), "{c}: {reason}");
    }
    eprintln!("swarm of {n} killed mid-command: {n} leftovers stopped and reported in {took:?}");

    let rerun = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(rerun["targets"], n, "{rerun}");
    let st = wait_for("the rerun to finish", Duration::from_secs(120), || {
        let st = env.status(&job);
        (st["done"] == true).then_some(st)
    });
    assert_eq!(st["totals"]["succeeded"], n, "{st}");
    let counts = env.run_counts(&job);
    assert_eq!(counts.len(), n as usize);
    assert!(counts.values().all(|c| *c == 2), "{counts:?}");
    assert!(
        !lines(&f).iter().any(|l| l == "end"),
        "a leftover ran to its end"
    );
    drop(swarm);
}

#[test]
fn a_swarm_killed_mid_command_leaves_nothing_running() {
    let n = if std::env::var_os("RELAYTREE_SLOW_TESTS").is_some() {
        1000
    } else {
        50
    };
    swarm_kill9_mid_command(n);
}
