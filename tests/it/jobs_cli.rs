//! Flags around jobs and identities: `hq serve --order-ttl` (every order
//! expires) and `hq cert issue` refusing to overwrite an identity.

use crate::harness::*;
use std::process::Command;

fn issue(env: &Env, name: &str, out: &std::path::Path, extra: &[&str]) -> Out {
    Out::of(run(Command::new(HQ)
        .args(["cert", "issue", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--role", "agent", "--name", name, "--out"])
        .arg(out)
        .args(extra)))
}

#[test]
fn cert_issue_over_an_existing_identity_needs_force() {
    let env = Env::new();
    let out = env.root().join("ids/c1");
    issue(&env, "c1", &out, &[]).ok();
    let key = std::fs::read(out.join("node.key")).unwrap();
    let again = issue(&env, "c1", &out, &[]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains(&out.display().to_string()) && again.stderr.contains("--force"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read(out.join("node.key")).unwrap(),
        key,
        "key was replaced"
    );
    issue(&env, "c1", &out, &["--force"]).ok();
    assert_ne!(
        std::fs::read(out.join("node.key")).unwrap(),
        key,
        "--force replaces"
    );

    // With --count, one existing identity stops the whole batch before any write.
    let many = env.root().join("many");
    issue(&env, "a", &many, &["--count", "2"]).ok();
    std::fs::remove_dir_all(many.join("a-00001")).unwrap();
    let again = issue(&env, "a", &many, &["--count", "2"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("a-00002"), "{again:?}");
    assert!(!many.join("a-00001").exists(), "nothing written");
}

#[test]
fn orders_expire_by_default_after_the_order_ttl() {
    let mut env = Env::new();
    let bad = Out::of(run(Command::new(HQ)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--order-ttl",
            "0s",
            "--data-dir",
        ])
        .arg(&env.hq_dir)));
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--order-ttl"), "{bad:?}");

    let mut cmd = Command::new(HQ);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--order-ttl",
        "1h",
        "--data-dir",
    ])
    .arg(&env.hq_dir)
    .args(env.store_args());
    let mut hq = Proc::spawn("hq", cmd, &env.logs());
    let addr = hq.wait_listening().unwrap();
    env.hq = Some(Server {
        proc: hq,
        addr: addr.clone(),
    });
    let r1 = env.start_relay("r1", &addr);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let job = env.create_ping(&["r1"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let window = st["expires_at_ms"].as_u64().unwrap() - st["created_at_ms"].as_u64().unwrap();
    assert_eq!(window, 3_600_000, "{st}");
    // The operator's --expires wins.
    let mut args = vec![
        "job",
        "create",
        "--dest",
        "all-lower-clients",
        "--relay",
        "r1",
    ];
    args.extend(["--expires", "10m", "--ping", "--json"]);
    let job = job_id(&env.admin(&args).ok().json());
    let st = env.status(&job);
    let window = st["expires_at_ms"].as_u64().unwrap() - st["created_at_ms"].as_u64().unwrap();
    assert_eq!(window, 600_000, "{st}");
}
