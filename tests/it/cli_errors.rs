//! Bad input gives exit code 2 and one line on stderr naming the problem.

use crate::harness::*;
use std::process::Command;

/// Asserts exit 2 and a single stderr line containing every one of `needles`.
fn fails(out: Out, needles: &[&str]) {
    assert_eq!(out.code, 2, "{out:?}");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "stderr should be one line: {out:?}");
    for n in needles {
        assert!(err.contains(n), "stderr should name {n:?}: {out:?}");
    }
}

#[test]
fn cli_errors_exit_2_with_one_line() {
    let mut env = Env::new();
    let hq = env.start_hq();
    env.start_relay("r1", &hq);
    wait_until("r1 in hq tree", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["relay"] == "r1"))
    });
    let create = ["job", "create", "--dest", "all-lower-clients"];

    // Unknown relay.
    let args = [&create[..], &["--relay", "nosuchrelay", "--", "true"]].concat();
    fails(env.admin(&args), &["nosuchrelay"]);
    // Malformed durations.
    let args = [
        &create[..],
        &["--relay", "r1", "--timeout", "abc", "--", "true"],
    ]
    .concat();
    fails(env.admin(&args), &["abc", "--timeout"]);
    let args = [
        &create[..],
        &["--relay", "r1", "--expires", "soon", "--", "true"],
    ]
    .concat();
    fails(env.admin(&args), &["soon", "--expires"]);
    fails(
        env.admin(&["job", "wait", "1", "--timeout", "1x"]),
        &["1x", "--timeout"],
    );
    // No command and no --ping.
    let args = [&create[..], &["--relay", "r1"]].concat();
    fails(env.admin(&args), &["command"]);
    // Invalid relay name.
    let args = [&create[..], &["--relay", "Bad/Name", "--", "true"]].concat();
    fails(env.admin(&args), &["Bad/Name"]);
    // Invalid job ids.
    fails(env.admin(&["job", "status", "abc", "--json"]), &["abc"]);
    fails(env.admin(&["job", "wait", "0"]), &["job id", "0"]);
    fails(env.admin(&["job", "rerun", "x1", "--failed"]), &["x1"]);
    // Unreachable HQ.
    fails(
        env.admin(&["job", "list", "--hq", "127.0.0.1:1"]),
        &["127.0.0.1:1"],
    );
    // Nothing was created by any of the above.
    let list = env.admin(&["job", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().map(|l| l.len()), Some(0), "{list}");

    // relay serve with a missing identity directory.
    let missing = env.root().join("no-such-identity");
    let out = Out::of(run(Command::new(RELAY)
        .args(["serve", "--identity"])
        .arg(&missing)
        .arg("--data-dir")
        .arg(env.root().join("rx"))
        .args(["--listen", "127.0.0.1:0", "--parent", &hq])));
    assert!(out.stdout.is_empty(), "nothing announced: {out:?}");
    fails(out, &["no-such-identity"]);
}

#[test]
fn unknown_job_is_an_error() {
    let mut env = Env::new();
    env.start_hq();
    fails(env.admin(&["job", "status", "999", "--json"]), &["999"]);
    fails(
        env.admin(&["job", "wait", "999", "--timeout", "1s"]),
        &["999"],
    );
    fails(env.admin(&["job", "rerun", "999", "--failed"]), &["999"]);
}
