//! All-lower-clients fan-out through nested relays, and clients that move:
//! idle, with a result in flight, and while their old relay is down.

use crate::harness::*;
use relaytree::link;
use relaytree::proto::{Attempt, Event, JobId, LeafState, LeafUpdate, Msg, NodeName, Role};

/// HQ <- r1 <- r2, HQ <- r3; c1 c2 under r1, c3 c4 under r2, c5 under r3.
#[test]
fn nested_fanout_reaches_exactly_the_lower_clients() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    let r3 = env.start_relay("r3", &hq);
    for (c, r) in [
        ("c1", &r1),
        ("c2", &r1),
        ("c3", &r2),
        ("c4", &r2),
        ("c5", &r3),
    ] {
        env.start_agent(c, r);
    }
    env.wait_clients(5);
    let tree = env.tree();
    let parents: Vec<(String, String)> = tree["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relay"].as_str().unwrap().to_string(),
                r["parent"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let hq_name = tree["hq"].as_str().unwrap().to_string();
    for (relay, parent) in [
        ("r1", hq_name.as_str()),
        ("r2", "r1"),
        ("r3", hq_name.as_str()),
    ] {
        assert!(
            parents.contains(&(relay.to_string(), parent.to_string())),
            "{relay} should have parent {parent}: {tree}"
        );
    }

    let script = env.job_script("true");
    let home = [
        ("c1", "r1"),
        ("c2", "r1"),
        ("c3", "r2"),
        ("c4", "r2"),
        ("c5", "r3"),
    ];

    for (dest, expect) in [
        (&["r1"][..], &["c1", "c2", "c3", "c4"][..]),
        (&["r2"][..], &["c3", "c4"][..]),
        (&["r1", "r3"][..], &["c1", "c2", "c3", "c4", "c5"][..]),
    ] {
        let job = env.create_job(dest, &[], &script);
        let (code, st) = env.wait_job(&job);
        assert_eq!(code, 0, "job {job} to {dest:?}: {st}");
        assert_eq!(st["done"], true, "{st}");
        assert_eq!(
            states(&st),
            all(expect, "succeeded"),
            "job to {dest:?}: {st}"
        );
        assert_eq!(
            st["totals"]["succeeded"].as_u64(),
            Some(expect.len() as u64)
        );
        for (c, leaf) in leaves(&st) {
            let want = home.iter().find(|(n, _)| *n == c).unwrap().1;
            assert_eq!(leaf["relay"], want, "home relay of {c}: {st}");
            assert_eq!(leaf["attempt"], 1);
            assert_eq!(leaf["exit_code"], 0);
        }
        assert_eq!(
            env.run_counts(&job),
            each(expect, 1),
            "runs of job {job} to {dest:?}"
        );
        // The command saw its own home relay in RELAYTREE_RELAY.
        for r in env.job_runs(&job) {
            let want = home.iter().find(|(n, _)| *n == r.client).unwrap().1;
            assert_eq!(r.relay, want, "{r:?}");
            assert_eq!(r.attempt, 1, "{r:?}");
        }
    }
    // A ping reaches the same leaves without spawning anything.
    let ping = env.create_ping(&["r1", "r3"]);
    let (code, st) = env.wait_job(&ping);
    assert_eq!(code, 0, "{st}");
    assert_eq!(
        states(&st),
        all(&["c1", "c2", "c3", "c4", "c5"], "succeeded")
    );

    // No late or duplicate runs of any job (c5 in particular ran only for
    // the last job): 4 + 2 + 5 lines in all.
    assert_eq!(env.runs().len(), 11, "{:?}", env.runs());
}

#[test]
fn a_client_that_moves_is_counted_once_under_its_new_relay() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    let r3 = env.start_relay("r3", &hq);
    env.start_agent("c1", &r2);
    env.start_agent("c2", &r1);
    env.wait_clients(2);

    // c1 moves from r2 (under r1) to r3 (under hq).
    env.kill_agent("c1");
    env.start_agent("c1", &r3);
    wait_until("hq to see c1 under r3", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["relay"] == "r3" && r["clients"] == 1)
    });
    let forgotten = || {
        let job = env.create_ping(&["r1"]);
        let (_, st) = env.wait_job(&job);
        states(&st)
    };
    // r1's subtree forgets c1 (the Forget travels hq -> r1 -> r2).
    wait_until("r1's subtree to forget c1", DEADLINE, || {
        forgotten() == all(&["c2"], "succeeded")
    });
    let job = env.create_ping(&["r1", "r3"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1", "c2"], "succeeded"));
    assert_eq!(leaves(&st)["c1"]["relay"], "r3", "{st}");
}

fn leaf(job: &str, attempt: Attempt, client: &str, home: &str, state: LeafState) -> Event {
    Event::Leaf(LeafUpdate {
        job: JobId(job.parse().unwrap()),
        attempt,
        client: NodeName::new(client).unwrap(),
        relay: NodeName::new(home).unwrap(),
        state,
        exit_code: (state == LeafState::Succeeded).then_some(0),
        reason: None,
        output: None,
        at_ms: relaytree::proto::now_ms(),
        out: None,
        audit: None,
    })
}

fn home_of(env: &Env, client: &str) -> String {
    let v = env.admin(&["client", "show", client, "--json"]);
    if v.code != 0 {
        return String::new();
    }
    v.json()["relay"].as_str().unwrap_or("").to_string()
}

/// HQ <- r0 <- {r1, r2}; r1 is the test (a real relay certificate speaking
/// the protocol). c1's leaf is running at r1 when c1 moves to r2: r0 tells
/// r1 to forget c1, and the result r1 still holds reaches HQ, once, even
/// when r1 sends it twice (its ack lost).
#[test]
fn a_result_in_flight_when_its_client_moves_reaches_hq_exactly_once() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r0 = env.start_relay("r0", &hq);
    let r2 = env.start_relay("r2", &r0);
    let r1 = env.issue("relay", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = rt.block_on(dial_as(&r0, &r1, Role::Relay, Default::default()));
    let mut seq = 0;
    let (c1, r1n) = (NodeName::new("c1").unwrap(), NodeName::new("r1").unwrap());
    rt.block_on(send_events(
        &mut s,
        &mut seq,
        vec![Event::ClientJoined {
            client: c1.clone(),
            relay: r1n.clone(),
            at_ms: relaytree::proto::now_ms(),
        }],
    ));
    wait_until("hq to see c1 under r1", DEADLINE, || {
        home_of(&env, "c1") == "r1"
    });
    let job = env.create_ping(&["r1"]);
    let a = rt.block_on(recv_until(&mut s, DEADLINE, |m| match m {
        Msg::Assign(a) => Some(a),
        _ => None,
    }));
    rt.block_on(async {
        link::send(
            &s.tx,
            Msg::AssignAck {
                job: a.job,
                attempt: a.attempt,
            },
        )
        .await
        .unwrap();
        send_events(
            &mut s,
            &mut seq,
            vec![
                Event::Targets {
                    job: a.job,
                    attempt: a.attempt,
                    reporter: r1n.clone(),
                    leaves: vec![(c1.clone(), r1n.clone())],
                    last: true,
                },
                leaf(&job, a.attempt, "c1", "r1", LeafState::Running),
            ],
        )
        .await;
    });
    wait_until("c1 to run", DEADLINE, || {
        states(&env.status(&job)).get("c1").map(String::as_str) == Some("running")
    });

    // c1 moves to r2 while its result is still in r1's outbox.
    env.start_agent("c1", &r2);
    wait_until("hq to see c1 under r2", DEADLINE, || {
        home_of(&env, "c1") == "r2"
    });
    let forgotten = rt.block_on(recv_until(&mut s, DEADLINE, |m| match m {
        Msg::Forget { client, moved_to } => Some((client, moved_to)),
        _ => None,
    }));
    assert_eq!(forgotten, (c1.clone(), NodeName::new("r2").unwrap()));
    rt.block_on(async {
        link::send(&s.tx, Msg::ForgetAck { client: c1.clone() })
            .await
            .unwrap();
        let done = leaf(&job, a.attempt, "c1", "r1", LeafState::Succeeded);
        send_events(&mut s, &mut seq, vec![done.clone()]).await;
        // The same entry again, as after a lost ack.
        seq -= 1;
        send_events(&mut s, &mut seq, vec![done]).await;
    });
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1"], "succeeded"), "{st}");
    assert_eq!(st["totals"]["succeeded"], 1, "{st}");
    assert_eq!(leaves(&st)["c1"]["relay"], "r1", "{st}");
    assert!(
        !env.log_text().contains("event refused"),
        "{}",
        env.log_text()
    );
}

/// HQ <- r0 <- {r1, r2}; c0 c1 under r1. r1 is down when c1 moves to r2:
/// r0 keeps the Forget for r1 and sends it when r1 is back, so a later job
/// to r1 does not target c1 and closes.
#[test]
fn a_relay_down_during_a_move_forgets_the_client_when_it_returns() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r0 = env.start_relay("r0", &hq);
    let r1 = env.start_relay("r1", &r0);
    let r2 = env.start_relay("r2", &r0);
    env.start_agent("c0", &r1);
    env.start_agent("c1", &r1);
    env.wait_clients(2);

    let r1_addr = env.kill_relay("r1");
    env.kill_agent("c1");
    env.start_agent("c1", &r2);
    wait_until("hq to see c1 under r2", DEADLINE, || {
        home_of(&env, "c1") == "r2"
    });
    env.start_relay_on("r1", &r0, &r1_addr);
    wait_until("r1 to be back", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["relay"] == "r1" && r["connected"] == true)
    });
    let job = env.create_ping(&["r1"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c0"], "succeeded"), "{st}");
    // And c1 answers under its new home.
    let job = env.create_ping(&["r0"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c0", "c1"], "succeeded"), "{st}");
    assert_eq!(leaves(&st)["c1"]["relay"], "r2", "{st}");
}
