//! How the commands read from a terminal or a script: one-line argument
//! errors, ASCII tables on a pipe, `--help` with examples and environment,
//! `--json` on init and cert issue, `--log-format json` on servers, and
//! `agent runlog` on a running agent.

use crate::harness::*;
use std::process::Command;

fn cmd(bin: &str, args: &[&str]) -> Out {
    Out::of(run(Command::new(bin).args(args)))
}

#[test]
fn argument_errors_are_one_line_and_help_has_examples_and_environment() {
    for (bin, args, needle) in [
        (HQ, &["job", "rerun", "1"][..], "--failed"),
        (HQ, &["job", "status", "1", "--state", "nope"], "nope"),
        (HQ, &["jobb"], "jobb"),
        (
            HQ,
            &["job", "create", "--dest", "somewhere", "--relay", "r1"],
            "somewhere",
        ),
        (RELAY, &["serve", "--listen", "127.0.0.1:0"], "--identity"),
        (AGENT, &["serve", "--bogus"], "--bogus"),
        (
            HQ,
            &[
                "serve",
                "--data-dir",
                "x",
                "--listen",
                "y",
                "--log-format",
                "xml",
            ],
            "xml",
        ),
    ] {
        let o = cmd(bin, args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    }
    for bin in [HQ, RELAY, AGENT] {
        let o = cmd(bin, &["--help"]).ok();
        for want in [
            "Examples:",
            "Environment:",
            "RUST_LOG",
            "RELAYTREE_LOG_FORMAT",
        ] {
            assert!(
                o.stdout.contains(want),
                "{bin} --help lacks {want}: {}",
                o.stdout
            );
        }
    }
    let o = cmd(HQ, &["--help"]).ok();
    for want in [
        "RELAYTREE_HQ",
        "RELAYTREE_IDENTITY",
        "RELAYTREE_DATA_DIR",
        "Exit codes",
    ] {
        assert!(o.stdout.contains(want), "hq --help lacks {want}");
    }
    let o = cmd(HQ, &["job", "status", "--help"]).ok();
    assert!(
        o.stdout.contains("--state failed --relay r2"),
        "{}",
        o.stdout
    );
}

#[test]
fn init_and_cert_issue_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let hq = dir.path().join("hq");
    let o = cmd(HQ, &["init", "--data-dir", hq.to_str().unwrap(), "--json"]).ok();
    let v = o.json();
    assert_eq!(v["admin"], hq.join("admin").to_str().unwrap(), "{v}");
    assert!(hq.join("admin/node.key").is_file());
    let out = dir.path().join("ids");
    let o = cmd(
        HQ,
        &[
            "cert",
            "issue",
            "--data-dir",
            hq.to_str().unwrap(),
            "--role",
            "agent",
            "--name",
            "a",
            "--count",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let v = o.json();
    assert_eq!(v["role"], "agent", "{v}");
    let names: Vec<&str> = v["issued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-00001", "a-00002"], "{v}");
    assert!(out.join("a-00002/node.crt").is_file());
    // Grammar: one identity.
    let o = cmd(
        HQ,
        &[
            "cert",
            "issue",
            "--data-dir",
            hq.to_str().unwrap(),
            "--role",
            "agent",
            "--name",
            "b",
            "--count",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(o.stdout.starts_with("issued 1 identity under"), "{o:?}");
}

#[test]
fn tables_are_ascii_on_a_pipe_and_servers_log_json() {
    let mut env = Env::new();
    // HQ logging JSON: every stderr line is an object.
    let hq = {
        let mut c = Command::new(HQ);
        c.args(["serve", "--log-format", "json", "--data-dir"])
            .arg(&env.hq_dir)
            .args(["--listen", "127.0.0.1:0"]);
        let mut proc = Proc::spawn("hq", c, &env.logs());
        let addr = proc.wait_listening().expect("hq listening");
        env.hq = Some(Server {
            proc,
            addr: addr.clone(),
        });
        addr
    };
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let t = env.admin(&["tree"]).ok().stdout;
    assert!(t.contains("+---"), "{t}");
    assert!(t.is_ascii(), "box-drawing characters on a pipe: {t}");
    assert!(t.contains("1 relay, 1 client"), "{t}");
    let job = env.create_ping(&["r1"]);
    env.wait_job(&job);
    let s = env.admin(&["job", "status", &job, "--clients"]).ok().stdout;
    assert!(s.is_ascii() && s.contains("| c1 "), "{s}");
    let l = env.admin(&["job", "list"]).ok().stdout;
    assert!(l.is_ascii(), "{l}");

    let logs = std::fs::read_to_string(&env.hq.as_ref().unwrap().proc.stderr).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "hq logged nothing");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

#[test]
fn runlog_of_a_running_agent_says_it_is_running() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let data = env.root().join("data").join("c1");
    assert!(
        data.join("db").exists(),
        "agent data dir is {}",
        data.display()
    );
    let o = cmd(AGENT, &["runlog", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(o.stderr.trim().lines().count(), 1, "{o:?}");
    assert!(o.stderr.contains("is running"), "{o:?}");
    assert!(!o.stderr.contains("could not acquire lock"), "{o:?}");
    // Stopped, it reads.
    env.kill_agent("c1");
    let o = cmd(
        AGENT,
        &["runlog", "--data-dir", data.to_str().unwrap(), "--json"],
    )
    .ok();
    assert!(o.json().is_array(), "{o:?}");
}
