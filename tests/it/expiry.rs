//! Lost leaves: a leaf delivered to an agent that then dies (`kill -9`, not
//! restarted) becomes `expired` once the job's expiry passes and the agent
//! stayed away for the relay's grace (its idle timeout), so the job ends.
//! A leaf whose agent is connected and still running is not touched. A
//! relay that was down past the expiry does the same when it comes back.

use crate::harness::*;
use std::process::Command;

/// Short session timers: the relay's grace for lost agents is its idle timeout.
fn timers(cmd: &mut Command, idle: &str) {
    cmd.args(["--heartbeat", "200ms", "--idle-timeout", idle]);
}

fn start_relay(env: &mut Env, name: &str, parent: &str, listen: &str, idle: &str) -> String {
    if !env.id_dir(name).exists() {
        env.issue("relay", name);
    }
    let mut cmd = Command::new(RELAY);
    cmd.args(["serve", "--identity"])
        .arg(env.id_dir(name))
        .arg("--data-dir")
        .arg(env.relay_data(name))
        .args(["--listen", listen, "--parent", parent])
        .env("RUST_LOG", "info");
    timers(&mut cmd, idle);
    let mut proc = Proc::spawn(name, cmd, &env.logs());
    let addr = proc.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    env.relays.insert(
        name.to_string(),
        Server {
            proc,
            addr: addr.clone(),
        },
    );
    addr
}

fn start_agent(env: &mut Env, name: &str, relay: &str) {
    if !env.id_dir(name).exists() {
        env.issue("agent", name);
    }
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--identity"])
        .arg(env.id_dir(name))
        .arg("--data-dir")
        .arg(env.root().join("data").join(name))
        .args(["--relay", relay]);
    timers(&mut cmd, "5s");
    let p = Proc::spawn(name, cmd, &env.logs());
    env.agents.insert(name.to_string(), p);
}

/// A script that records its shell's pid in `pids/CLIENT` (so the test can
/// stop what a killed agent left), then sleeps `long` on c1 and `short` elsewhere.
fn script(env: &Env, long: u32, short: u32) -> String {
    let pids = env.root().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    env.job_script(&format!(
        r#"echo $$ > '{}'/$RELAYTREE_CLIENT; if [ "$RELAYTREE_CLIENT" = c1 ]; then exec sleep {long}; else exec sleep {short}; fi"#,
        pids.display()
    ))
}

/// Stops the command a killed agent left running.
fn stop_leftover(env: &Env, client: &str) {
    if let Ok(pid) = std::fs::read_to_string(env.root().join("pids").join(client)) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

fn reason(status: &serde_json::Value, client: &str) -> String {
    leaves(status)[client]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_leaf_whose_agent_died_expires_and_the_job_ends() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = start_relay(&mut env, "r1", &hq, "127.0.0.1:0", "1s");
    start_agent(&mut env, "c1", &r1);
    start_agent(&mut env, "c2", &r1);
    env.wait_clients(2);
    // c2 runs past the expiry, connected; c1's agent dies mid-command.
    let job = env.create_job(&["r1"], &["--expires", "3s"], &script(&env, 60, 6));
    wait_until("both commands started", DEADLINE, || {
        env.run_counts(&job).len() == 2
    });
    env.kill_agent("c1");
    let (code, st) = env.wait_job(&job);
    stop_leftover(&env, "c1");
    assert_eq!(code, 1, "{st}");
    let s = states(&st);
    assert_eq!(s["c1"], "expired", "{st}");
    assert!(
        reason(&st, "c1").starts_with("agent lost: disconnected since"),
        "{st}"
    );
    assert_eq!(
        s["c2"], "succeeded",
        "a connected agent's leaf was touched: {st}"
    );
    assert_eq!(env.run_counts(&job), each(&["c1", "c2"], 1));
}

#[test]
fn a_relay_down_past_the_expiry_expires_lost_leaves_when_it_returns() {
    let mut env = Env::new();
    let hq = env.start_hq();
    // An idle timeout (the grace) longer than the agents' reconnect backoff
    // after a short outage.
    let r1 = start_relay(&mut env, "r1", &hq, "127.0.0.1:0", "5s");
    start_agent(&mut env, "c1", &r1);
    start_agent(&mut env, "c2", &r1);
    env.wait_clients(2);
    let job = env.create_job(&["r1"], &["--expires", "2s"], &script(&env, 60, 10));
    wait_until("both commands started", DEADLINE, || {
        env.run_counts(&job).len() == 2
    });
    let expires_at = env.status(&job)["expires_at_ms"].as_u64().unwrap();
    let old = env.kill_relay("r1");
    env.kill_agent("c1");
    wait_until("the expiry passed", DEADLINE, || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            > expires_at + 500
    });
    start_relay(&mut env, "r1", &hq, &old, "5s");
    let (code, st) = env.wait_job(&job);
    stop_leftover(&env, "c1");
    assert_eq!(code, 1, "{st}");
    let s = states(&st);
    assert_eq!(s["c1"], "expired", "{st}");
    assert!(reason(&st, "c1").starts_with("agent lost"), "{st}");
    assert_eq!(s["c2"], "succeeded", "{st}");
}
