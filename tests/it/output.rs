//! Seeing what happens: a leaf's stdout and stderr apart (tails bounded at
//! 64 KiB each, through a nested relay), status filtered by state and relay
//! with a count of the rest, and `job wait --progress` (silent on a pipe,
//! a live line under a pseudo-terminal).

use crate::harness::*;
use std::process::Command;

const TAIL: usize = 64 * 1024;

#[test]
fn output_apart_through_a_nested_relay_and_bounded() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    for (c, r) in [("c1", &r1), ("c2", &r2), ("c3", &r2)] {
        env.start_agent(c, r);
    }
    env.wait_clients(3);

    // stdout: a head line, 200,000 bytes of "y\n", a tail line; stderr:
    // two lines. c3 exits 4.
    let script = env.job_script(
        r#"echo HEAD-OUT; echo first-err >&2; yes | head -c 200000; echo TAIL-OUT; echo "last-err $RELAYTREE_CLIENT" >&2; [ "$RELAYTREE_CLIENT" != c3 ] || exit 4"#,
    );
    let job = env.create_job(&["r1"], &[], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    // The status stays small: no output in it.
    for (_, l) in leaves(&st) {
        assert!(l.get("output").is_none(), "output in status: {l}");
    }

    for (c, exit) in [("c1", 0), ("c2", 0), ("c3", 4)] {
        let o = env.admin(&["job", "output", &job, c, "--json"]).ok().json();
        let out = o["stdout"].as_str().unwrap();
        let err = o["stderr"].as_str().unwrap();
        assert_eq!(err, format!("first-err\nlast-err {c}\n"), "{c}: {o}");
        assert_eq!(out.len(), TAIL, "{c}: stdout tail is 64 KiB");
        assert!(out.ends_with("y\ny\nTAIL-OUT\n"), "{c}");
        assert!(!out.contains("HEAD-OUT"), "{c}: the head was cut");
        assert!(!out.contains("err"), "{c}: stderr mixed into stdout");
        assert_eq!(o["stdout_bytes"], 200_000 + 9 + 9, "{c}: {o}");
        assert_eq!(o["exit_code"], exit, "{c}");
        assert_eq!(o["attempt"], 1, "{c}");
        let (s, f, d) = (
            o["started_at_ms"].as_u64().unwrap(),
            o["finished_at_ms"].as_u64().unwrap(),
            o["duration_ms"].as_u64().unwrap(),
        );
        assert!(s > 0 && f >= s && d <= f - s + 1000, "{c}: timings {o}");
    }

    // The human form: both streams, each under its heading, and the exit code.
    let text = env.admin(&["job", "output", &job, "c3"]).ok().stdout;
    assert!(text.contains("attempt 1: failed, exit code 4"), "{text}");
    assert!(
        text.contains("--- stdout (last 65536 of 200018 bytes) ---"),
        "{text:.300}"
    );
    let err_part = text.split("--- stderr").nth(1).expect("stderr heading");
    assert!(err_part.contains("first-err\nlast-err c3\n"), "{err_part}");
    assert!(text.contains("duration: "), "{text:.400}");

    // Rerun of c3 (fails again): the output follows the new attempt.
    env.admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok();
    let (_, st) = env.wait_job(&job);
    assert_eq!(st["attempt"], 2, "{st}");
    let o = env
        .admin(&["job", "output", &job, "c3", "--json"])
        .ok()
        .json();
    assert_eq!(o["attempt"], 2, "{o}");
    assert_eq!(o["latest_attempt"], 2, "{o}");

    // Bad input: one line, exit 2.
    let bad = env.admin(&["job", "output", &job, "nosuchclient"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("nosuchclient"), "{bad:?}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad:?}");
}

#[test]
fn status_filters_by_state_and_relay_and_counts_the_rest() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    for i in 1..=3 {
        env.start_agent(&format!("a{i}"), &r1);
    }
    for i in 1..=5 {
        env.start_agent(&format!("b{i}"), &r2);
    }
    env.wait_clients(8);
    // a1, b1..b4 fail.
    let job = env.create_job(
        &["r1", "r2"],
        &[],
        r#"case "$RELAYTREE_CLIENT" in a1|b[1-4]) exit 2;; esac"#,
    );
    let (_, st) = env.wait_job(&job);
    assert_eq!(st["totals"]["failed"], 5, "{st}");

    // JSON: the filter, every matching leaf; totals stay the whole job's.
    let v = env
        .admin(&[
            "job", "status", &job, "--state", "failed", "--relay", "r2", "--json",
        ])
        .ok()
        .json();
    let got: Vec<String> = leaves(&v).keys().cloned().collect();
    assert_eq!(got, ["b1", "b2", "b3", "b4"], "{v}");
    assert_eq!(v["totals"]["failed"], 5, "{v}");
    assert_eq!(v["matched"], 4, "{v}");
    let relays: Vec<&str> = v["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["relay"].as_str().unwrap())
        .collect();
    assert_eq!(relays, ["r2"], "{v}");
    // Several states.
    let v = env
        .admin(&[
            "job",
            "status",
            &job,
            "--state",
            "succeeded",
            "--state",
            "failed",
            "--relay",
            "r1",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(leaves(&v).len(), 3, "{v}");
    // No filter: every leaf (the contract).
    assert_eq!(leaves(&env.status(&job)).len(), 8);

    // The table: the first N of each state and a count of the rest.
    let text = env
        .admin(&["job", "status", &job, "--state", "failed", "--limit", "2"])
        .ok()
        .stdout;
    let listed = text
        .lines()
        .filter(|l| l.contains("exited with code"))
        .count();
    assert_eq!(listed, 2, "{text}");
    assert!(text.contains("not listed: 3 failed"), "{text}");
    assert!(text.contains("took "), "elapsed time shown: {text}");
    let text = env
        .admin(&[
            "job", "status", &job, "--state", "failed", "--relay", "r2", "--limit", "1",
        ])
        .ok()
        .stdout;
    assert!(text.contains("not listed: 3 failed"), "{text}");
    assert!(!text.contains("| a1 "), "{text}");

    // A bad state: one line, exit 2.
    let bad = env.admin(&["job", "status", &job, "--state", "broken"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("broken"), "{bad:?}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad:?}");
}

/// Runs `hq ARGS` under a pseudo-terminal (`script` from util-linux); the
/// text the terminal received.
fn under_pty(env: &Env, args: &[&str]) -> (i32, String) {
    let mut line = vec![HQ.to_string()];
    line.extend(args.iter().map(|a| a.to_string()));
    line.push("--data-dir".into());
    line.push(env.hq_dir.display().to_string());
    let cmd = line
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let typescript = env.root().join("typescript");
    let o = Out::of(run(Command::new("script")
        .args(["-qefc", &cmd])
        .arg(&typescript)
        .env("TERM", "xterm")));
    (o.code, o.stdout)
}

#[test]
fn wait_progress_draws_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) on this machine");
        return;
    }
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);
    // c2 takes a while: statuses and the line are drawn before the end.
    let job = env.create_job(
        &["r1"],
        &[],
        r#"[ "$RELAYTREE_CLIENT" = c1 ] || sleep 2; [ "$RELAYTREE_CLIENT" = c1 ]"#,
    );
    // `status --watch` on a pipe: a status per change of the counts, the
    // last one done; it returns when the job is done.
    let w = env.admin(&["job", "status", &job, "--watch"]).ok().stdout;
    let heads: Vec<&str> = w.lines().filter(|l| l.starts_with("job ")).collect();
    assert!(heads.len() >= 2, "a status per change: {w}");
    assert!(heads[0].contains("in progress"), "{w}");
    assert!(heads.last().unwrap().contains("  done  "), "{w}");
    assert!(w.is_ascii(), "{w}");

    let job = env.create_job(
        &["r1"],
        &[],
        r#"[ "$RELAYTREE_CLIENT" = c1 ] || sleep 2; [ "$RELAYTREE_CLIENT" = c1 ]"#,
    );
    let (code, text) = under_pty(
        &env,
        &["job", "wait", &job, "--progress", "--timeout", "30s"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("done"), "{text}");
    assert!(
        text.contains("not final: r1 1"),
        "progress line with lag: {text}"
    );
    // The final status follows, as without --progress.
    assert!(text.contains("1 failed"), "{text}");

    // On a pipe: only the final status, no progress line.
    let out = env.admin(&["job", "wait", &job, "--progress", "--timeout", "30s"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stdout.contains("not final:"), "{out:?}");
    assert!(!out.stderr.contains("not final:"), "{out:?}");
}
