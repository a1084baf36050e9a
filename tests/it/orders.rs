//! Orders are bound: an agent runs an original order only under HQ's signed
//! placement of it, judges order times by HQ's clock (not its own), and a
//! fresh data directory refuses orders issued before it first registered.
//!
//! The replay test stands up a relay with a real relay certificate that
//! speaks the protocol from the test: under HQ it gets genuine signed orders
//! and placements, and it delivers them to a real agent process. Runs are
//! counted from the lines the command appends to a file.

use crate::harness::*;
use relaytree::link::{self, HqClock, Session};
use relaytree::proto::{
    now_ms, Assignment, Event, JobId, LeafState, LeafUpdate, Msg, NodeName, Purpose, Role, Scope,
    SignedPlacement,
};
use relaytree::tls::Identity;
use std::path::Path;
use std::process::Command;

fn n(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

/// Reads an agent's messages (acking each batch like a relay) until `job`'s
/// leaf is final; returns that update.
async fn final_update(s: &mut Session, job: u64) -> LeafUpdate {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let msg = tokio::time::timeout_at(deadline, s.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no final result for job {job}"))
            .expect("agent session");
        if let Msg::Events(evs) = msg {
            let last = evs.last().map(|(q, _)| *q).unwrap_or(0);
            link::send(&s.tx, Msg::Ack { seq: last }).await.unwrap();
            for (_, e) in evs {
                if let Event::Leaf(u) = e {
                    if u.job == JobId(job) && u.state.is_final() {
                        return u;
                    }
                }
            }
        }
    }
}

/// The next assignment HQ sends down `up`, acknowledged.
async fn next_assignment(up: &mut Session) -> Assignment {
    let a = recv_until(up, DEADLINE, |m| match m {
        Msg::Assign(a) => Some(a),
        _ => None,
    })
    .await;
    link::send(
        &up.tx,
        Msg::AssignAck {
            job: a.job,
            attempt: a.attempt,
        },
    )
    .await
    .unwrap();
    a
}

/// What a home relay hands its agent `c1`.
fn to_c1(a: &Assignment, home: &SignedPlacement) -> Msg {
    Msg::Assign(Assignment {
        scope: Scope::Targets(vec![n("c1")]),
        placement: Some(home.clone()),
        ..a.clone()
    })
}

fn agent(env: &Env, id: &Path, relay: &str) -> Proc {
    let mut c = Command::new(AGENT);
    c.args(["serve", "--identity"])
        .arg(id)
        .arg("--data-dir")
        .arg(env.root().join("data/c1"))
        .args(["--relay", relay]);
    Proc::spawn("c1", c, &env.logs())
}

fn job_number(job: &str) -> u64 {
    job.parse().unwrap()
}

#[test]
fn a_replayed_or_misdirected_order_runs_nothing() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let evil_dir = env.issue("relay", "evil");
    let evil_id = Identity::load(&evil_dir).unwrap();
    let agent_id = env.issue("agent", "c1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();

    // Up: "evil" under HQ, with a real relay certificate. It says c1 joined
    // it and x is its child relay; HQ signs where c1 lives.
    let (mut up, home) = rt.block_on(async {
        let mut up = dial_as(&hq, &evil_dir, Role::Hq, Purpose::Session).await;
        assert!(up.hq_offset_ms.is_some(), "hq's hello carries its clock");
        let mut seq = 0;
        send_events(
            &mut up,
            &mut seq,
            vec![
                Event::RelayJoined {
                    relay: n("x"),
                    parent: n("evil"),
                },
                Event::ClientJoined {
                    client: n("c1"),
                    relay: n("evil"),
                    at_ms: now_ms(),
                },
            ],
        )
        .await;
        let home = recv_until(&mut up, DEADLINE, |m| match m {
            Msg::Placement(p) => Some(p),
            _ => None,
        })
        .await;
        let p = home.placement().unwrap();
        assert_eq!((p.client, p.chain), (n("c1"), vec![n("evil")]));
        link::send(&up.tx, Msg::PlacementAck { client: n("c1") })
            .await
            .unwrap();
        (up, home)
    });

    // Down: the agent dials evil, which passes HQ's clock on like a relay.
    let clock = HqClock::default();
    clock.set_offset(up.hq_offset_ms.unwrap());
    let (addr, mut sessions) = rt.block_on(crate::forged::listen_as_relay(
        &evil_id,
        clock,
        stop.clone(),
    ));
    let mut c1 = agent(&env, &agent_id, &addr);
    // Jobs made after it first connected (and so registered).
    let mut s = rt.block_on(async {
        tokio::time::timeout(DEADLINE, sessions.recv())
            .await
            .expect("the agent connects")
            .unwrap()
    });

    // A genuine job for evil's clients runs once.
    let first = env.create_job(&["evil"], &[], &env.job_script("true"));
    let a1 = rt.block_on(next_assignment(&mut up));
    assert_eq!(a1.job, JobId(job_number(&first)));
    // And one for x's subtree, which c1 (evil's own agent) is not in.
    let misdirected = env.create_job(&["x"], &[], &env.job_script("true"));
    let a2 = rt.block_on(next_assignment(&mut up));
    assert_eq!(a2.job, JobId(job_number(&misdirected)));
    rt.block_on(async {
        link::send(&s.tx, to_c1(&a1, &home)).await.unwrap();
        let u = final_update(&mut s, a1.job.0).await;
        assert_eq!(u.state, LeafState::Succeeded, "{u:?}");
        link::send(&s.tx, to_c1(&a2, &home)).await.unwrap();
        let u = final_update(&mut s, a2.job.0).await;
        assert_eq!(u.state, LeafState::Failed, "{u:?}");
        let why = u.reason.unwrap_or_default();
        assert!(
            why.contains("none of the order's destinations (x)"),
            "{why}"
        );
    });
    assert_eq!(env.run_counts(&first), each(&["c1"], 1));

    // The agent's data directory is wiped (a reimaged agent): the same
    // assignment, replayed verbatim, is refused.
    c1.kill();
    std::fs::remove_dir_all(env.root().join("data/c1")).unwrap();
    let mut c1 = agent(&env, &agent_id, &addr);
    let mut s = rt.block_on(async {
        let mut s = tokio::time::timeout(DEADLINE, sessions.recv())
            .await
            .expect("the agent connects again")
            .unwrap();
        link::send(&s.tx, to_c1(&a1, &home)).await.unwrap();
        let u = final_update(&mut s, a1.job.0).await;
        assert_eq!(u.state, LeafState::Failed, "{u:?}");
        let why = u.reason.unwrap_or_default();
        assert!(why.contains("issued before c1 registered"), "{why}");
        s
    });
    // A job made after it registered again runs: the agent is alive and bound.
    let later = env.create_job(&["evil"], &[], &env.job_script("true"));
    rt.block_on(async {
        let a3 = next_assignment(&mut up).await;
        assert_eq!(a3.job, JobId(job_number(&later)));
        link::send(&s.tx, to_c1(&a3, &home)).await.unwrap();
        let u = final_update(&mut s, a3.job.0).await;
        assert_eq!(u.state, LeafState::Succeeded, "{u:?}");
    });
    stop.cancel();
    c1.kill();
    assert_eq!(env.run_counts(&later), each(&["c1"], 1));
    assert_eq!(env.run_counts(&first), each(&["c1"], 1), "a replay ran");
    assert!(
        env.run_counts(&misdirected).is_empty(),
        "a misdirected order ran"
    );
}

/// Debian's libfaketime, as the `faketime` wrapper preloads it.
fn libfaketime() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap_or_else(|| {
        panic!("libfaketime.so.1 not found: apt-get install faketime (.ci/run does)")
    })
}

/// Seconds `faketime -f SKEW` moves the clock of a program it starts; a
/// missing faketime is a failure (apt-get install faketime; .ci/run does).
fn faketime_shift(skew: &str) -> i64 {
    let date = |c: &mut Command| -> i64 {
        let out = c.output().unwrap_or_else(|e| {
            panic!("faketime cannot be started ({e}): install it (apt-get install faketime; .ci/run does)")
        });
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let faked = date(Command::new("faketime").args(["-f", skew, "date", "+%s"]));
    let real = date(Command::new("date").arg("+%s"));
    faked - real
}

/// Agents whose clocks are two hours ahead and two hours behind (started
/// under `faketime`) both run a job that expires in an hour, and refuse
/// nothing valid: they judge its times by HQ's clock, not their own.
#[test]
fn agents_with_skewed_clocks_judge_orders_by_hqs_time() {
    for (skew, secs) in [("+2h", 7200), ("-2h", -7200)] {
        let got = faketime_shift(skew);
        assert!(
            (got - secs).abs() < 60,
            "faketime {skew} moved the clock {got}s"
        );
    }
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let mut agents = Vec::new();
    for (name, skew) in [("ahead", "+2h"), ("behind", "-2h")] {
        let id = env.issue("agent", name);
        // libfaketime preloaded into the agent itself (not the `faketime`
        // wrapper, which would fork it and leave it running when killed).
        let mut c = Command::new(AGENT);
        c.args(["serve", "--identity"])
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", skew)
            .arg(&id)
            .arg("--data-dir")
            .arg(env.root().join("data").join(name))
            .args(["--relay", &r1])
            // Only the wall clock is skewed: timers keep running normally.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        agents.push(Proc::spawn(name, c, &env.logs()));
    }
    env.wait_clients(2);
    let job = env.create_job(&["r1"], &["--expires", "1h"], &env.job_script("true"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["ahead", "behind"], "succeeded"));
    assert_eq!(env.run_counts(&job), each(&["ahead", "behind"], 1));
    for a in &mut agents {
        a.kill();
    }
}
