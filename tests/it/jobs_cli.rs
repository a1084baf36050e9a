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

/// The certificate's notAfter, as days from now (openssl's reading).
fn days_left(crt: &std::path::Path) -> i64 {
    let o = run(Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(crt));
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let date = text.trim().trim_start_matches("notAfter=").to_string();
    let o = run(Command::new("date").args(["-u", "-d", &date, "+%s"]));
    assert!(o.status.success(), "{o:?}");
    let end: i64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (end - now) / 86_400
}

#[test]
fn cert_issue_many_writes_every_file_and_days_sets_the_validity() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let many = env.root().join("many");
    issue(&env, "d", &many, &["--count", "5", "--days", "30"]).ok();
    let sign_pub = std::fs::read(env.hq_dir.join("ca/sign.pub")).unwrap();
    let ca = std::fs::read(env.hq_dir.join("ca/ca.crt")).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    for i in 1..=5 {
        let dir = many.join(format!("d-{i:05}"));
        let key = dir.join("node.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        keys.insert(std::fs::read(&key).unwrap());
        assert_eq!(std::fs::read(dir.join("sign.pub")).unwrap(), sign_pub);
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);
        // Signed by the CA, for exactly this name.
        let o = run(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(env.hq_dir.join("ca/ca.crt"))
            .arg(dir.join("node.crt")));
        assert!(o.status.success(), "{o:?}");
        let o = run(Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(dir.join("node.crt")));
        let san = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(san.contains(&format!("/agent/d-{i:05}")), "{san}");
        let left = days_left(&dir.join("node.crt"));
        assert!((29..=30).contains(&left), "{left} days left");
    }
    assert_eq!(keys.len(), 5, "every identity has its own key");
    assert!(!many.join("d-00006").exists());

    // The default is about ten years, as before --days existed.
    let one = env.root().join("one");
    issue(&env, "e", &one, &[]).ok();
    let left = days_left(&one.join("node.crt"));
    assert!((3649..=3650).contains(&left), "{left} days left");

    let bad = issue(&env, "f", &env.root().join("f"), &["--days", "0"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--days"), "{bad:?}");
}

#[test]
fn status_json_in_pages_is_the_whole_document() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    for (c, r) in [
        ("c1", &r1),
        ("c2", &r2),
        ("c3", &r1),
        ("c4", &r2),
        ("c5", &r1),
    ] {
        env.start_agent(c, r);
    }
    env.wait_clients(5);
    let job = env.create_ping(&["r1", "r2"]);
    let (code, _) = env.wait_job(&job);
    assert_eq!(code, 0);
    let status = |extra: &[&str], page: Option<&str>| {
        let mut cmd = Command::new(HQ);
        cmd.args(["job", "status", &job, "--json"])
            .args(extra)
            .arg("--data-dir")
            .arg(&env.hq_dir)
            .env_remove("RELAYTREE_HQ")
            .env_remove("RELAYTREE_IDENTITY")
            .env_remove("RELAYTREE_DATA_DIR");
        match page {
            Some(p) => cmd.env("RELAYTREE_STATUS_PAGE", p),
            None => cmd.env_remove("RELAYTREE_STATUS_PAGE"),
        };
        Out::of(run(&mut cmd)).ok().stdout
    };
    // One frame (a limit asks for no paging) against pages of 2 and 1.
    let whole = status(&["--limit", "1000"], None);
    let v: serde_json::Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(v["clients"].as_array().unwrap().len(), 5, "{whole}");
    assert!(v.get("next").is_none(), "{whole}");
    for page in ["2", "1", "5"] {
        assert_eq!(status(&[], Some(page)), whole, "pages of {page}");
    }
    // With a filter, pages hold only matching leaves.
    let failed = status(&["--state", "failed"], Some("1"));
    let v: serde_json::Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(v["clients"].as_array().unwrap().len(), 0, "{failed}");
    assert_eq!(v["totals"]["succeeded"], 5, "{failed}");
    let r1_only = status(&["--relay", "r1"], Some("1"));
    let v: serde_json::Value = serde_json::from_str(&r1_only).unwrap();
    let names: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c1", "c3", "c5"], "{r1_only}");
}
