//! All-lower-clients fan-out through nested relays.

use crate::harness::*;

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
