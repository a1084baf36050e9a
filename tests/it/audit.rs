//! Audits against a master and snapshots, with real processes: agents with
//! `--root` temp dirs under nested relays; every difference kind (files,
//! modes, dpkg versions, missing and extra); a snapshot audited while its
//! master is offline; path escapes refused; a snapshot cut mid-upload,
//! rerun, resuming; bad input refused with nothing launched. (How the
//! master's object list travels: `audit_wire.rs`.)

use crate::harness::*;
use crate::packages::noise;
use relaytree::pkg::{ChunkHash, ChunkStore};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Starts agent `name` with `--root root`.
pub(crate) fn start_rooted(env: &mut Env, name: &str, relay_addr: &str, root: &Path) {
    let id = env.id_dir(name);
    if !id.exists() {
        env.issue("agent", name);
    }
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("data").join(name))
        .args(["--relay", relay_addr])
        .arg("--root")
        .arg(root);
    let proc = Proc::spawn(name, cmd, &env.logs());
    env.agents.insert(name.to_string(), proc);
}

/// A client's root: /etc/app/{a,b,c}.conf and a dpkg database.
pub(crate) fn make_root(base: &Path, name: &str, dpkg: &[(&str, &str)]) -> PathBuf {
    let r = base.join("roots").join(name);
    std::fs::create_dir_all(r.join("etc/app")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    for f in ["a", "b", "c"] {
        let p = r.join(format!("etc/app/{f}.conf"));
        std::fs::write(&p, format!("{f} = 1\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut status = String::new();
    for (p, v) in dpkg {
        status.push_str(&format!(
            "Package: {p}\nStatus: install ok installed\nVersion: {v}\nArchitecture: amd64\nMaintainer: x\nDescription: x\n\n"
        ));
    }
    std::fs::write(r.join("var/lib/dpkg/status"), status).unwrap();
    r
}

pub(crate) fn audit_status(env: &Env, audit: &str) -> Value {
    env.admin(&["audit", "status", audit, "--json"]).ok().json()
}

pub(crate) fn by_client(v: &Value) -> BTreeMap<String, Value> {
    v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["client"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

pub(crate) fn kinds(c: &Value) -> Vec<(String, String)> {
    c["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["object"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `hq snapshot create --client CLIENT --name base --files
/// /etc/app/*.conf EXTRA...`, which must succeed.
pub(crate) fn snapshot_base(env: &Env, client: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "snapshot",
        "create",
        "--client",
        client,
        "--name",
        "base",
        "--files",
        "/etc/app/*.conf",
    ];
    args.extend_from_slice(extra);
    env.admin(&args).ok()
}

/// The numbers after `KEY=` on the lines of `log` that hold `marker`.
pub(crate) fn logged_numbers(log: &str, marker: &str, key: &str) -> Vec<u64> {
    let key = format!("{key}=");
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split(&key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

pub(crate) fn wait_done(env: &Env, audit: &str) -> Value {
    let out = env.admin(&["job", "wait", audit, "--timeout", "60s"]);
    assert!(out.code == 0 || out.code == 1, "job wait: {out:?}");
    audit_status(env, audit)
}

#[test]
fn audit_every_difference_kind_nested_and_with_the_master_offline() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let rm = env.start_relay("rm", &hq);
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    let base = env.root().to_path_buf();
    let dp = [("hello", "2.10"), ("zsh", "5.9")];
    let m = make_root(&base, "m", &dp);
    let c1 = make_root(&base, "c1", &dp);
    // c2 differs in every way, under a nested relay.
    let c2 = make_root(&base, "c2", &[("hello", "2.9"), ("vim", "9.0")]);
    std::fs::write(c2.join("etc/app/a.conf"), "a = 2\n").unwrap();
    std::fs::set_permissions(
        c2.join("etc/app/b.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(c2.join("etc/app/c.conf")).unwrap();
    std::fs::write(c2.join("etc/app/d.conf"), "d\n").unwrap();
    // c3's file is a symlink out of its root.
    let c3 = make_root(&base, "c3", &dp);
    let outside = base.join("outside.conf");
    std::fs::write(&outside, "secret\n").unwrap();
    std::fs::remove_file(c3.join("etc/app/a.conf")).unwrap();
    std::os::unix::fs::symlink(&outside, c3.join("etc/app/a.conf")).unwrap();
    start_rooted(&mut env, "m", &rm, &m);
    start_rooted(&mut env, "c1", &r1, &c1);
    start_rooted(&mut env, "c2", &r2, &c2);
    start_rooted(&mut env, "c3", &r1, &c3);
    env.wait_clients(4);

    // Bad input: one line naming the culprit, exit 2, nothing launched.
    let jobs_before = env.admin(&["job", "list", "--json"]).ok().json();
    for (args, culprit) in [
        (
            vec![
                "audit",
                "create",
                "--snapshot",
                "nope",
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
            ],
            "unknown snapshot nope",
        ),
        (
            vec![
                "audit",
                "create",
                "--master",
                "ghost",
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
            ],
            "unknown client ghost",
        ),
        (vec!["audit", "status", "999"], "unknown audit 999"),
        (
            vec![
                "snapshot", "create", "--client", "ghost", "--name", "x", "--files", "/etc/*",
            ],
            "unknown client ghost",
        ),
    ] {
        let out = env.admin(&args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(culprit), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(
        env.admin(&["job", "list", "--json"]).ok().json(),
        jobs_before
    );

    // A glob matching nothing on the master fails the snapshot, clearly.
    let out = env.admin(&[
        "snapshot",
        "create",
        "--client",
        "m",
        "--name",
        "empty",
        "--files",
        "/etc/none/*",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("/etc/none/*") && out.stderr.contains("matches nothing"),
        "{}",
        out.stderr
    );

    // Snapshot of m: objects recorded, content in HQ's depot.
    let snap = snapshot_base(&env, "m", &["--dpkg", "--json"]).json();
    assert_eq!(snap["done"], true, "{snap}");
    assert_eq!(snap["files"], 3, "{snap}");
    let depot = env.hq_dir.join("depot");
    for f in ["a", "b", "c"] {
        let h = ChunkHash::of(format!("{f} = 1\n").as_bytes());
        assert!(depot_has(&depot, &h), "{f}.conf's content is in the depot");
    }

    // The master goes offline; the snapshot still serves.
    env.kill_agent("m");
    let audit = env
        .admin(&[
            "audit",
            "create",
            "--snapshot",
            "base",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--dpkg",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let st = wait_done(&env, &audit);
    assert_eq!(st["master"], "snapshot:base", "{st}");
    assert_eq!(st["done"], true, "{st}");
    let t = &st["totals"];
    assert_eq!(
        (
            t["compliant"].as_u64(),
            t["non_compliant"].as_u64(),
            t["error"].as_u64(),
            t["pending"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(0)),
        "{st}"
    );
    let cl = by_client(&st);
    assert_eq!(cl["c1"]["state"], "compliant");
    assert_eq!(cl["c2"]["state"], "non_compliant");
    assert_eq!(cl["c2"]["relay"], "r2", "nested relay");
    let mut got = kinds(&cl["c2"]);
    got.sort();
    let want: Vec<(String, String)> = [
        ("dpkg:hello", "version"),
        ("dpkg:vim", "extra"),
        ("dpkg:zsh", "missing"),
        ("file:/etc/app/a.conf", "content"),
        ("file:/etc/app/b.conf", "mode"),
        ("file:/etc/app/c.conf", "missing"),
        ("file:/etc/app/d.conf", "extra"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{st}");
    let hello = cl["c2"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["object"] == "dpkg:hello")
        .unwrap()
        .clone();
    assert_eq!(
        (hello["master"].as_str(), hello["target"].as_str()),
        (Some("2.10"), Some("2.9"))
    );
    // The escape is refused and reported, never followed.
    assert_eq!(cl["c3"]["state"], "error");
    let reason = cl["c3"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("/etc/app/a.conf") && reason.contains("escapes the root"),
        "{reason}"
    );
    // Per relay.
    let relays: BTreeMap<String, Value> = st["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relay"].as_str().unwrap().to_string(),
                r["totals"].clone(),
            )
        })
        .collect();
    assert_eq!(relays["r2"]["non_compliant"], 1);
    assert_eq!(relays["r1"]["compliant"], 1);
    // The table names the differing client and its differences.
    let table = env.admin(&["audit", "status", &audit]).ok().stdout;
    assert!(
        table.contains("c2") && table.contains("dpkg:hello") && table.contains("mode"),
        "{table}"
    );
    assert!(
        !table.contains("c1 "),
        "compliant clients are not listed: {table}"
    );

    // A live master: snapshotted implicitly, then audited against.
    let live = env
        .admin(&[
            "audit",
            "create",
            "--master",
            "c1",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r2",
            "--files",
            "/etc/app/*.conf",
            "--json",
        ])
        .ok()
        .json();
    let live_id = live["audit"].as_str().unwrap().to_string();
    let st = wait_done(&env, &live_id);
    assert_eq!(st["master"], "c1", "{st}");
    let cl = by_client(&st);
    assert_eq!(cl.len(), 1, "only r2's client: {st}");
    let mut got = kinds(&cl["c2"]);
    got.sort();
    assert_eq!(got.len(), 4, "files only (no --dpkg): {st}");
}

/// Whether HQ's depot holds a blob, read from its directory layout
/// (`DEPOT/xx/HEX`) without opening the store: opening clears its temp
/// files, under HQ's feet.
fn depot_has(dir: &Path, h: &ChunkHash) -> bool {
    let hex = h.to_hex();
    dir.join(&hex[..2]).join(&hex).is_file()
}

/// Blobs in HQ's depot, counted from its directory layout (see `depot_has`).
fn depot_blobs(dir: &Path) -> usize {
    let Ok(fans) = std::fs::read_dir(dir) else {
        return 0;
    };
    fans.filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 2 && e.path().is_dir())
        .map(|e| {
            std::fs::read_dir(e.path())
                .map(|d| {
                    d.filter_map(|f| f.ok())
                        .filter(|f| f.path().is_file())
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn snapshot_cut_mid_upload_fails_and_its_rerun_resumes() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let base = env.root().to_path_buf();
    let m = make_root(&base, "m", &[]);
    let big = noise(48 * 1024 * 1024, 7);
    std::fs::write(m.join("etc/app/big.bin"), &big).unwrap();
    start_rooted(&mut env, "m", &r1, &m);
    env.wait_clients(1);
    let out = env
        .admin(&[
            "snapshot",
            "create",
            "--client",
            "m",
            "--name",
            "big",
            "--files",
            "/etc/app/*",
            "--wait",
            "0s",
            "--json",
        ])
        .ok()
        .json();
    let job = out["job"].as_str().unwrap().to_string();
    let depot = env.hq_dir.join("depot");
    // Cut the master once part of the content reached HQ.
    wait_until("part of the upload at hq", DEADLINE, || {
        depot_blobs(&depot) > 0
    });
    env.kill_agent("m");
    let before = depot_blobs(&depot);
    // Back again: the interrupted attempt is reported failed, never rerun by itself.
    start_rooted(&mut env, "m", &r1, &m);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    let reason = st["clients"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!reason.is_empty(), "{st}");
    // Not recorded: auditing against it is refused.
    let out = env.admin(&[
        "audit",
        "create",
        "--snapshot",
        "big",
        "--dest",
        "all-lower-clients",
        "--relay",
        "r1",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    let rerun = env
        .admin(&["job", "rerun", &job, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(rerun["targets"], 1);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    // Every chunk is there once; the rerun sent only what was lacking.
    let total = {
        let tmp = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(tmp.path()).unwrap();
        let (_, chunks, _) = relaytree::pkg::chunk_file(&m.join("etc/app/big.bin"), &s).unwrap();
        let mut all: Vec<_> = chunks.iter().map(|c| c.hash).collect();
        for f in ["a", "b", "c"] {
            all.push(ChunkHash::of(format!("{f} = 1\n").as_bytes()));
        }
        all.sort();
        all.dedup();
        all.len()
    };
    assert_eq!(depot_blobs(&depot), total);
    let log = std::fs::read_to_string(env.logs().join("m.1.err")).unwrap_or_default();
    let sent = logged_numbers(&log, "snapshot uploaded", "bytes_sent");
    assert_eq!(sent.len(), 1, "{log}");
    assert!(
        before > 0 && sent[0] < big.len() as u64,
        "resumed: sent {} of {}",
        sent[0],
        big.len()
    );
    let v = env
        .admin(&[
            "audit",
            "create",
            "--snapshot",
            "big",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--json",
        ])
        .ok()
        .json();
    let st = wait_done(&env, v["audit"].as_str().unwrap());
    assert_eq!(st["totals"]["compliant"], 1, "{st}");
}
