//! Links that fail: a fault proxy ([`crate::proxy`]) between two tiers makes
//! a link half-open, slow, reset or cut. Servers run with short session
//! timers so that detection is quick.

use crate::harness::*;
use crate::proxy::Proxy;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The session timers every server here runs with.
const HEARTBEAT: &str = "200ms";
const IDLE: Duration = Duration::from_secs(1);
const IDLE_ARG: &str = "1s";

/// Adds the short timers and the default log level (tests read the logs).
fn timers(cmd: &mut Command, idle: &str) {
    cmd.args(["--heartbeat", HEARTBEAT, "--idle-timeout", idle])
        .env("RUST_LOG", "info");
}

fn serve(env: &Env, name: &str, cmd: Command) -> Server {
    let mut proc = Proc::spawn(name, cmd, &env.logs());
    let addr = proc.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    Server { proc, addr }
}

/// `hq serve` with the short timers (idle timeout `idle`).
fn start_hq(env: &mut Env, idle: &str) -> String {
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0"]);
    timers(&mut cmd, idle);
    let s = serve(env, "hq", cmd);
    let addr = s.addr.clone();
    env.hq = Some(s);
    addr
}

/// `relay serve` under `parent` with the short timers.
fn start_relay(env: &mut Env, name: &str, parent: &str) -> String {
    start_relay_idle(env, name, parent, IDLE_ARG)
}

/// `relay serve` under `parent` with idle timeout `idle`.
fn start_relay_idle(env: &mut Env, name: &str, parent: &str, idle: &str) -> String {
    if !env.id_dir(name).exists() {
        env.issue("relay", name);
    }
    let mut cmd = Command::new(RELAY);
    cmd.args(["serve", "--identity"])
        .arg(env.id_dir(name))
        .arg("--data-dir")
        .arg(env.relay_data(name))
        .args(["--listen", "127.0.0.1:0", "--parent", parent]);
    timers(&mut cmd, idle);
    let s = serve(env, name, cmd);
    let addr = s.addr.clone();
    env.relays.insert(name.to_string(), s);
    addr
}

/// `agent serve` under `relay` with the short timers.
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
    timers(&mut cmd, IDLE_ARG);
    let p = Proc::spawn(name, cmd, &env.logs());
    env.agents.insert(name.to_string(), p);
}

/// `n` agents PREFIX-00001... in one `agent swarm` process under `relay`;
/// returns their names.
fn start_swarm(env: &mut Env, prefix: &str, n: u32, relay: &str) -> Vec<String> {
    let ids = env.root().join("ids").join(format!("{prefix}-swarm"));
    Out::of(run(Command::new(HQ)
        .args(["cert", "issue", "--data-dir"])
        .arg(&env.hq_dir)
        .args([
            "--role",
            "agent",
            "--name",
            prefix,
            "--count",
            &n.to_string(),
        ])
        .arg("--out")
        .arg(&ids)))
    .ok();
    let mut cmd = Command::new(AGENT);
    cmd.args(["swarm", "--identities"])
        .arg(&ids)
        .args(["--relay", relay, "--data-dir"])
        .arg(env.root().join("data").join(format!("{prefix}-swarm")));
    timers(&mut cmd, IDLE_ARG);
    let p = Proc::spawn(&format!("{prefix}-swarm"), cmd, &env.logs());
    env.agents.insert(format!("{prefix}-swarm"), p);
    (1..=n).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// `relays[].connected` of `relay` in `hq tree --json`.
fn connected(env: &Env, relay: &str) -> Option<bool> {
    let t = env.tree();
    t["relays"]
        .as_array()?
        .iter()
        .find(|r| r["relay"] == relay)?["connected"]
        .as_bool()
}

fn wait_connected(env: &Env, relay: &str, want: bool, within: Duration) -> Duration {
    let t = Instant::now();
    wait_until(&format!("{relay} connected == {want}"), within, || {
        connected(env, relay) == Some(want)
    });
    t.elapsed()
}

/// Lines of a process's stderr that contain every one of `needles`.
fn log_lines(p: &Proc, needles: &[&str]) -> usize {
    p.stderr_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

fn relay_log<'a>(env: &'a Env, name: &str) -> &'a Proc {
    &env.relays[name].proc
}

fn hq_log(env: &Env) -> &Proc {
    &env.hq.as_ref().expect("hq running").proc
}

fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Asserts the job ended with every one of `clients` succeeded in attempt 1,
/// each run exactly once, and the relay's totals equal the job's.
fn assert_all_once(env: &Env, job: &str, clients: &[&str]) {
    let (code, st) = env.wait_job(job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(clients, "succeeded"), "{st}");
    for (c, l) in leaves(&st) {
        assert_eq!(l["attempt"], 1, "{c}: {st}");
    }
    assert_eq!(st["totals"]["succeeded"], clients.len(), "{st}");
    let relays = st["relays"].as_array().expect("relays");
    assert_eq!(relays.len(), 1, "{st}");
    assert_eq!(relays[0]["totals"], st["totals"], "{st}");
    assert_eq!(env.run_counts(job), each(clients, 1));
}

/// relay -> proxy -> HQ, then the proxy goes silent (half-open): both ends
/// notice within the idle timeout, the relay redials, and reconnects once
/// the link is back.
#[test]
fn half_open_link_to_hq_is_detected_on_both_sides() {
    let mut env = Env::new();
    let hq = start_hq(&mut env, IDLE_ARG);
    let proxy = Proxy::start(&hq);
    start_relay(&mut env, "r1", &proxy.addr());
    wait_connected(&env, "r1", true, DEADLINE);
    let dials = proxy.accepted();
    let relay_silent = |env: &Env| {
        log_lines(
            relay_log(env, "r1"),
            &["session to parent ended", "peer silent"],
        )
    };
    let hq_silent =
        |env: &Env| log_lines(hq_log(env), &["peer=r1 ", "session ended", "peer silent"]);
    let (relay0, hq0) = (relay_silent(&env), hq_silent(&env));

    proxy.blackhole();
    let t0 = Instant::now();
    let (mut hq_saw, mut relay_saw) = (None, None);
    while hq_saw.is_none() || relay_saw.is_none() {
        assert!(
            t0.elapsed() < 3 * IDLE,
            "half-open link not detected within 3x the idle timeout: hq {hq_saw:?}, relay {relay_saw:?}"
        );
        if hq_saw.is_none() && connected(&env, "r1") == Some(false) {
            hq_saw = Some(t0.elapsed());
        }
        if relay_saw.is_none() && relay_silent(&env) > relay0 {
            relay_saw = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (hq_saw, relay_saw) = (hq_saw.unwrap(), relay_saw.unwrap());
    eprintln!(
        "half-open relay<->hq (heartbeat {HEARTBEAT}, idle timeout {IDLE:?}): \
         hq showed r1 disconnected after {hq_saw:?}, r1 noticed after {relay_saw:?}"
    );
    // HQ's log names the silent peer.
    assert!(hq_silent(&env) > hq0, "{}", hq_log(&env).stderr_text());
    // The relay redials (into the still silent link).
    wait_until("r1 to redial", 3 * IDLE, || proxy.accepted() > dials);
    assert_eq!(connected(&env, "r1"), Some(false));

    proxy.restore();
    let back = wait_connected(&env, "r1", true, DEADLINE);
    eprintln!("half-open relay<->hq: r1 reconnected {back:?} after the link was restored");
}

/// HQ <- proxy <- r1 <- c1 c2 c3: the link to HQ is cut while a job runs;
/// the agents finish and report to r1, HQ shows the leaves open behind the
/// unreachable relay; once restored, r1's backlog reaches HQ, nothing twice.
#[test]
fn relay_cut_off_from_hq_keeps_collecting_then_drains() {
    let mut env = Env::new();
    let hq = start_hq(&mut env, IDLE_ARG);
    let proxy = Proxy::start(&hq);
    let r1 = start_relay(&mut env, "r1", &proxy.addr());
    let clients = ["c1", "c2", "c3"];
    for c in clients {
        start_agent(&mut env, c, &r1);
    }
    env.wait_clients(3);

    let done = env.root().join("done.log");
    let script = env.job_script(&format!(
        "sleep 1.5; echo $RELAYTREE_CLIENT >> '{}'",
        done.display()
    ));
    let job = env.create_job(&["r1"], &[], &script);
    wait_until("every agent to start the job", DEADLINE, || {
        env.run_counts(&job) == each(&clients, 1)
    });
    proxy.cut();
    let t = wait_connected(&env, "r1", false, 3 * IDLE);
    eprintln!("cut relay<->hq: hq showed r1 disconnected after {t:?}");

    // Behind the cut, the agents finish, each once.
    wait_until("the agents to finish while cut", DEADLINE, || {
        lines_of(&done) == 3
    });
    assert_eq!(env.run_counts(&job), each(&clients, 1));
    // HQ answers from its own store: the leaves are still open there.
    let out = env.admin(&["job", "status", &job, "--json"]).ok();
    assert!(out.stderr.is_empty(), "{out:?}");
    let st = out.json();
    assert_eq!(st["done"], false, "{st}");
    for (c, s) in states(&st) {
        assert!(
            ["pending", "delivered", "running"].contains(&s.as_str()),
            "{c} is {s} at hq while r1 is cut off: {st}"
        );
    }
    assert_eq!(connected(&env, "r1"), Some(false));

    proxy.restore();
    let t = wait_connected(&env, "r1", true, DEADLINE);
    eprintln!("cut relay<->hq: r1 reconnected {t:?} after the link was restored");
    assert_all_once(&env, &job, &clients);
    let dials = log_lines(relay_log(&env, "r1"), &["cannot reach parent"]);
    eprintln!("cut relay<->hq: r1 made {dials} failed dials while cut");
}

/// 200 ms each way on relay <-> HQ (handshakes included): a job completes.
#[test]
fn slow_link_to_hq_job_completes() {
    let mut env = Env::new();
    // 2 s idle timeout: a loaded machine must not pass for a broken link.
    let hq = start_hq(&mut env, "2s");
    let proxy = Proxy::start(&hq);
    proxy.delay(Duration::from_millis(200));
    let r1 = start_relay_idle(&mut env, "r1", &proxy.addr(), "2s");
    let clients = ["c1", "c2", "c3"];
    for c in clients {
        start_agent(&mut env, c, &r1);
    }
    env.wait_clients(3);

    let t = Instant::now();
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    assert_all_once(&env, &job, &clients);
    let took = t.elapsed();
    eprintln!("delay 200ms each way relay<->hq: job done in {took:?}");
    // Down and up again: at least one round trip through the delay.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // The delayed link stayed up throughout (heartbeats beat the idle timeout).
    assert_eq!(
        log_lines(relay_log(&env, "r1"), &["connected to parent"]),
        1,
        "{}",
        relay_log(&env, "r1").stderr_text()
    );
}

/// The relay's link to HQ is reset 5 times while a job for 10 agents (one
/// swarm) is in flight: every leaf succeeds exactly once, and the relay
/// redials a bounded number of times.
#[test]
fn reset_storm_on_link_to_hq_loses_nothing() {
    const CYCLES: usize = 5;
    let mut env = Env::new();
    let hq = start_hq(&mut env, IDLE_ARG);
    let proxy = Proxy::start(&hq);
    let r1 = start_relay(&mut env, "r1", &proxy.addr());
    let clients = start_swarm(&mut env, "a", 10, &r1);
    env.wait_clients(10);

    // Results trickle back over 2 s (one every 200 ms): each reset below
    // waits for two more, so resets and results interleave.
    let mut stagger = String::from("case $RELAYTREE_CLIENT in ");
    for (i, c) in clients.iter().enumerate() {
        let ms = (i + 1) * 200;
        stagger += &format!("{c}) sleep {}.{};; ", ms / 1000, ms % 1000 / 100);
    }
    stagger += "esac";
    let job = env.create_job(&["r1"], &[], &env.job_script(&stagger));
    let t = Instant::now();
    let mut at_hq = Vec::new();
    for i in 0..CYCLES {
        let want = 2 * i as u64;
        at_hq.push(wait_for(&format!("{want} results at hq"), DEADLINE, || {
            let n = env.status(&job)["totals"]["succeeded"].as_u64()?;
            (n >= want).then_some(n)
        }));
        let log = relay_log(&env, "r1");
        let ended = log_lines(log, &["session to parent ended"]);
        let up = log_lines(log, &["connected to parent"]);
        // RST on the open link, and new connections pass at once: the
        // relay's first redial (50-150 ms later) must be its only one.
        proxy.reset();
        proxy.pass();
        wait_until(&format!("r1 to see reset {i}"), DEADLINE, || {
            log_lines(log, &["session to parent ended"]) > ended
        });
        wait_until(
            &format!("r1 to reconnect after reset {i}"),
            DEADLINE,
            || log_lines(log, &["connected to parent"]) > up,
        );
    }
    let storm = t.elapsed();
    assert_all_once(&env, &job, &names(&clients));

    let log = relay_log(&env, "r1");
    let sessions = log_lines(log, &["connected to parent"]);
    let failed = log_lines(log, &["cannot reach parent"]);
    eprintln!(
        "reset storm ({CYCLES} resets in {storm:?}, results at hq before each: {at_hq:?}): \
         r1 connected {sessions} times (1 + {CYCLES} expected), {failed} failed dials; \
         proxy accepted {}",
        proxy.accepted()
    );
    // As RELIABILITY.md says: one session per reset, no failed dial.
    assert_eq!(
        (sessions, failed),
        (1 + CYCLES, 0),
        "r1 redialed more than once per reset (sessions, failed dials)"
    );
    assert_eq!(
        proxy.accepted(),
        1 + CYCLES,
        "connections through the proxy"
    );
}

/// agents -> proxy -> relay, then the proxy goes silent: the relay drops
/// the agents' sessions after its idle timeout; a job made meanwhile waits
/// at the relay and reaches the agents once the link is back.
#[test]
fn half_open_agent_links_are_dropped_and_agents_come_back() {
    let mut env = Env::new();
    let hq = start_hq(&mut env, IDLE_ARG);
    let r1 = start_relay(&mut env, "r1", &hq);
    let proxy = Proxy::start(&r1);
    let clients = ["c1", "c2"];
    for c in clients {
        start_agent(&mut env, c, &proxy.addr());
    }
    env.wait_clients(2);
    // Counts of log lines per agent, before and after (a session that a
    // loaded machine timed out early only raises the baseline).
    let dropped = |env: &Env| -> Vec<usize> {
        let log = relay_log(env, "r1");
        clients
            .iter()
            .map(|c| {
                log_lines(
                    log,
                    &[&format!("peer={c} "), "session ended", "peer silent"],
                )
            })
            .collect()
    };
    let noticed = |env: &Env| -> Vec<usize> {
        let ended = ["session to parent ended", "peer silent"];
        clients
            .iter()
            .map(|c| log_lines(&env.agents[*c], &ended))
            .collect()
    };
    let sessions = |env: &Env| -> Vec<usize> {
        clients
            .iter()
            .map(|c| log_lines(&env.agents[*c], &["connected to parent"]))
            .collect()
    };
    let more = |now: Vec<usize>, before: &[usize]| now.iter().zip(before).all(|(n, b)| n > b);
    let (dropped0, noticed0) = (dropped(&env), noticed(&env));

    proxy.blackhole();
    let t0 = Instant::now();
    wait_until("r1 to drop both agent sessions", 3 * IDLE, || {
        more(dropped(&env), &dropped0)
    });
    let t = t0.elapsed();
    eprintln!(
        "half-open agents->relay (idle timeout {IDLE:?}): r1 dropped both sessions after {t:?}"
    );
    // The agents notice too.
    wait_until("the agents to notice", 3 * IDLE, || {
        more(noticed(&env), &noticed0)
    });

    // A job made now waits at r1 for its agents.
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let st = env.status(&job);
    assert_eq!(st["done"], false, "{st}");
    assert!(env.run_counts(&job).is_empty());

    let sessions0 = sessions(&env);
    proxy.restore();
    let t1 = Instant::now();
    assert_all_once(&env, &job, &clients);
    eprintln!(
        "half-open agents->relay: job done {:?} after the link was restored",
        t1.elapsed()
    );
    assert!(more(sessions(&env), &sessions0), "agents did not redial");
}

/// A middlebox forgets the relay's connection (it stays open but silent)
/// while new connections pass. HQ's idle timeout is longer than the relay's,
/// so the relay is back on a new session before HQ gives up on the old one:
/// the old session ending must not mark the relay disconnected.
#[test]
fn stale_session_at_hq_ending_late_does_not_hide_the_new_one() {
    let mut env = Env::new();
    let hq = start_hq(&mut env, "3s");
    let proxy = Proxy::start(&hq);
    start_relay(&mut env, "r1", &proxy.addr());
    wait_connected(&env, "r1", true, DEADLINE);

    proxy.blackhole_open();
    wait_until("r1 to reconnect on a new connection", 3 * IDLE, || {
        log_lines(relay_log(&env, "r1"), &["connected to parent"]) == 2
    });
    wait_until("hq to time out the stale session", 3 * 3 * IDLE, || {
        log_lines(hq_log(&env), &["peer=r1 ", "session ended", "peer silent"]) == 1
    });
    // HQ updated the relay's record before it logged the end.
    assert_eq!(
        connected(&env, "r1"),
        Some(true),
        "r1 is connected on its new session but hq shows it disconnected"
    );
}

/// The same one tier down: HQ <- r1 <- proxy <- r2, r1's idle timeout longer
/// than r2's. The stale session ending at r1 must not report r2 gone.
#[test]
fn stale_session_at_relay_ending_late_does_not_hide_the_new_one() {
    let mut env = Env::new();
    let hq = start_hq(&mut env, IDLE_ARG);
    let r1 = start_relay_idle(&mut env, "r1", &hq, "3s");
    let proxy = Proxy::start(&r1);
    let r2 = start_relay(&mut env, "r2", &proxy.addr());
    start_agent(&mut env, "c1", &r2);
    env.wait_clients(1);
    wait_connected(&env, "r2", true, DEADLINE);

    proxy.blackhole_open();
    wait_until("r2 to reconnect on a new connection", 3 * IDLE, || {
        log_lines(relay_log(&env, "r2"), &["connected to parent"]) == 2
    });
    wait_until("r1 to time out the stale session", 3 * 3 * IDLE, || {
        log_lines(
            relay_log(&env, "r1"),
            &["peer=r2 ", "session ended", "peer silent"],
        ) == 1
    });
    // A job's results travel behind anything r1 queued for HQ before.
    let job = env.create_ping(&["r2"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(
        connected(&env, "r2"),
        Some(true),
        "r2 is connected on its new session but hq shows it disconnected"
    );
}
