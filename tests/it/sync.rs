//! `hq sync` with real processes: unique collections (3 targets in 2
//! collections: 2 packages, 2 jobs, 1 batch), the batch's rollup, wait,
//! rerun and cancel; a path escape refused at write time; the re-audit
//! deciding a leaf's success (a package that installs but fixes nothing
//! fails it); `--remove-extra`; bundles excluded; dpkg matched and
//! unmatched; bad input refused with nothing launched.

use crate::audit::{
    audit_status, by_client, kinds, make_root, snapshot_base, start_rooted, wait_done,
};
use crate::harness::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn files_under(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn new_audit(env: &Env, relay: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "audit",
        "create",
        "--snapshot",
        "base",
        "--dest",
        "all-lower-clients",
        "--relay",
        relay,
    ];
    args.extend(extra);
    env.admin(&args).ok().stdout.trim().to_string()
}

fn sync(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["sync"];
    a.extend(args);
    a.push("--json");
    env.admin(&a).ok().json()
}

fn jobs_of(v: &Value) -> Vec<(Vec<String>, Vec<String>)> {
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let strs = |k: &str| -> Vec<String> {
                j[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            (strs("clients"), strs("objects"))
        })
        .collect()
}

fn skipped(v: &Value, key: &str) -> Vec<(String, Vec<String>)> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["object"].as_str().unwrap().to_string(),
                u["clients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn strs(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    v.iter()
        .map(|(o, c)| (o.to_string(), c.iter().map(|c| c.to_string()).collect()))
        .collect()
}

fn id(v: &Value) -> String {
    v.as_u64()
        .map(|n| n.to_string())
        .or_else(|| v.as_str().map(String::from))
        .unwrap_or_else(|| panic!("no id: {v}"))
}

#[test]
fn unique_collections_one_batch_rerun_and_the_reaudit() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let rm = env.start_relay("rm", &hq);
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    let base = env.root().to_path_buf();
    let m = make_root(&base, "m", &[]);
    let c1 = make_root(&base, "c1", &[]);
    let c2 = make_root(&base, "c2", &[]);
    let c3 = make_root(&base, "c3", &[]);
    let c4 = make_root(&base, "c4", &[]);
    // c1 and c2 (under a nested relay) differ alike; c3 otherwise; c4 not.
    std::fs::write(c1.join("etc/app/a.conf"), "a = 2\n").unwrap();
    std::fs::write(c2.join("etc/app/a.conf"), "a = 2\n").unwrap();
    let b3 = c3.join("etc/app/b.conf");
    std::fs::set_permissions(&b3, std::fs::Permissions::from_mode(0o600)).unwrap();
    start_rooted(&mut env, "m", &rm, &m);
    start_rooted(&mut env, "c1", &r1, &c1);
    start_rooted(&mut env, "c2", &r2, &c2);
    start_rooted(&mut env, "c3", &r1, &c3);
    start_rooted(&mut env, "c4", &r1, &c4);
    env.wait_clients(5);
    snapshot_base(&env, "m", &["--no-packages"]);
    let audit = new_audit(&env, "r1", &["--no-packages"]);
    let st = wait_done(&env, &audit);
    assert_eq!(st["totals"]["non_compliant"], 3, "{st}");

    // Between the audit and the sync, c3's b.conf becomes a symlink out of
    // its root: the write is refused, nothing outside is touched.
    let outside = base.join("outside.conf");
    std::fs::write(&outside, "keep\n").unwrap();
    std::fs::remove_file(&b3).unwrap();
    std::os::unix::fs::symlink(&outside, &b3).unwrap();

    // A dry run plans and launches nothing.
    let jobs_before = env.admin(&["job", "list", "--json"]).ok().json();
    let plan = sync(&env, &[&audit, "--dry-run"]);
    assert_eq!(plan["batch"], Value::Null, "{plan}");
    let want = vec![
        (
            vec!["c1".to_string(), "c2".to_string()],
            vec!["file:/etc/app/a.conf".to_string()],
        ),
        (
            vec!["c3".to_string()],
            vec!["file:/etc/app/b.conf".to_string()],
        ),
    ];
    assert_eq!(jobs_of(&plan), want, "{plan}");
    assert_eq!(
        env.admin(&["job", "list", "--json"]).ok().json(),
        jobs_before
    );

    // The sync: 2 collections, 2 packages built from chunks already in the
    // depot (only their 2 manifests are new there), 2 jobs, 1 batch.
    let depot = env.hq_dir.join("depot");
    let blobs_before = files_under(&depot);
    let v = sync(&env, &[&audit]);
    assert_eq!(jobs_of(&v), want, "{v}");
    let packages: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["package"].as_str().unwrap())
        .collect();
    assert_eq!(packages.len(), 2);
    assert_ne!(packages[0], packages[1]);
    assert_eq!(
        files_under(&depot),
        blobs_before + 2,
        "two manifests, no content"
    );
    let batch = id(&v["batch"]);
    let children: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| id(&j["job"]))
        .collect();

    // The batch waits for all, and rolls them up.
    let (_, s) = env.wait_job(&batch);
    assert_eq!(s["done"], true, "{s}");
    assert_eq!(s["totals"]["succeeded"], 2, "{s}");
    assert_eq!(s["totals"]["failed"], 1, "{s}");
    let listed: Vec<String> = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| id(&j["job"]))
        .collect();
    assert_eq!(listed, children, "{s}");
    let l = leaves(&s);
    assert_eq!(id(&l["c3"]["job"]), children[1], "{s}");
    let reason = l["c3"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("/etc/app/b.conf") && reason.contains("escapes the root"),
        "{reason}"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep\n");
    for c in [&c1, &c2] {
        assert_eq!(
            std::fs::read_to_string(c.join("etc/app/a.conf")).unwrap(),
            "a = 1\n"
        );
    }
    let list = env.admin(&["job", "list", "--json"]).ok().json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|j| id(&j["job"]) == batch
                && j["action"].as_str().unwrap().starts_with("batch of 2 jobs")),
        "{list}"
    );
    let st = audit_status(&env, &audit);
    let cl = by_client(&st);
    assert_eq!(cl["c1"]["state"], "compliant", "{st}");
    assert_eq!(cl["c2"]["state"], "compliant", "{st}");
    assert_eq!(cl["c3"]["state"], "non_compliant", "{st}");

    // c3 put right (a plain file again, still 0600): a rerun of the batch's
    // failed leaves writes it, and the re-audit passes.
    std::fs::remove_file(&b3).unwrap();
    std::fs::write(&b3, "b = 1\n").unwrap();
    std::fs::set_permissions(&b3, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = env
        .admin(&["job", "rerun", &batch, "--failed", "--json"])
        .ok()
        .json();
    assert_eq!(r["targets"], 1, "{r}");
    let (code, s) = env.wait_job(&batch);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["totals"]["succeeded"], 3, "{s}");
    assert_eq!(mode(&b3), 0o644);
    let st = audit_status(&env, &audit);
    assert_eq!(st["totals"]["compliant"], 4, "{st}");
    assert_eq!(st["totals"]["non_compliant"], 0, "{st}");
}

fn pkg_dir(base: &Path, name: &str) -> String {
    let d = base.join("pkgsrc").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("README"), format!("{name}\n")).unwrap();
    d.to_str().unwrap().to_string()
}

fn add(env: &Env, base: &Path, name: &str, version: &str, install: &str, extra: &[&str]) {
    let dir = pkg_dir(base, name);
    let mut a = vec![
        "package",
        "add",
        &dir,
        "--name",
        name,
        "--version",
        version,
        "--install",
        install,
        "--remove",
        "true",
    ];
    a.extend(extra);
    env.admin(&a).ok();
}

fn install(env: &Env, relay: &str, what: &str) {
    let out = env
        .admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            relay,
            "--install",
            what,
            "--json",
        ])
        .ok()
        .json();
    let (code, s) = env.wait_job(&job_id(&out));
    assert_eq!(code, 0, "{s}");
}

fn packages_of(env: &Env, client: &str) -> Vec<String> {
    let v = env.admin(&["client", "show", client, "--json"]).ok().json();
    let mut p: Vec<String> = v["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|p| {
            format!(
                "{}@{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    p.sort();
    p
}

#[test]
fn packages_dpkg_bundles_extras_cancel_and_bad_input() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let rm = env.start_relay("rm", &hq);
    let r1 = env.start_relay("r1", &hq);
    let base = env.root().to_path_buf();
    let m = make_root(
        &base,
        "m",
        &[("hello", "2.10"), ("curl", "7.88"), ("vim", "9.0")],
    );
    let c1 = make_root(&base, "c1", &[]);
    let c2 = make_root(&base, "c2", &[("curl", "7.88")]);
    std::fs::write(c1.join("etc/app/d.conf"), "extra\n").unwrap();
    start_rooted(&mut env, "m", &rm, &m);
    start_rooted(&mut env, "c1", &r1, &c1);
    start_rooted(&mut env, "c2", &r1, &c2);
    env.wait_clients(3);
    add(&env, &base, "tool", "1.0", "true", &[]);
    add(&env, &base, "sp1", "1", "true", &["--bundle"]);
    add(&env, &base, "old", "1", "true", &[]);
    // hello@2.10 registers itself in the dpkg database under the root.
    add(
        &env,
        &base,
        "hello",
        "2.10",
        "printf 'Package: hello\\nStatus: install ok installed\\nVersion: 2.10\\nArchitecture: amd64\\nMaintainer: x\\nDescription: x\\n\\n' >> \"$RELAYTREE_ROOT/var/lib/dpkg/status\"",
        &[],
    );
    // fakecurl exits 0 and fixes nothing.
    add(&env, &base, "fakecurl", "1", "true", &[]);
    install(&env, "rm", "tool@1.0");
    install(&env, "rm", "sp1@1");
    install(&env, "r1", "old@1");
    snapshot_base(&env, "m", &["--dpkg"]);
    let audit = new_audit(&env, "r1", &["--dpkg"]);
    let st = wait_done(&env, &audit);
    assert_eq!(st["totals"]["non_compliant"], 2, "{st}");

    // The plan: same-name-and-version dpkg matched, others unmatched,
    // bundles out, extras kept: both targets in one collection.
    let plan = sync(&env, &[&audit, "--dry-run"]);
    assert_eq!(
        jobs_of(&plan),
        vec![(
            vec!["c1".to_string(), "c2".to_string()],
            vec!["package:tool".to_string(), "dpkg:hello".to_string()]
        )],
        "{plan}"
    );
    assert_eq!(
        skipped(&plan, "unmatched"),
        strs(&[("dpkg:curl", &["c1"]), ("dpkg:vim", &["c1", "c2"])]),
        "{plan}"
    );
    assert_eq!(
        skipped(&plan, "excluded"),
        strs(&[("package:sp1", &["c1", "c2"])]),
        "{plan}"
    );

    // Bad input: one line, exit 2, nothing launched.
    let jobs_before = env.admin(&["job", "list", "--json"]).ok().json();
    for (args, culprit) in [
        (vec!["sync", "999"], "unknown audit 999".to_string()),
        (
            vec!["sync", &audit, "--client", "ghost"],
            format!("client ghost was not a target of audit {audit}"),
        ),
        (
            vec!["sync", &audit, "--match", "dpkg:curl=nope@1"],
            "no package nope@1 in the depot".to_string(),
        ),
        (
            vec!["sync", &audit, "--object", "pkg:x"],
            "bad object".to_string(),
        ),
    ] {
        let out = env.admin(&args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(&culprit), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(
        env.admin(&["job", "list", "--json"]).ok().json(),
        jobs_before
    );

    // The sync: --remove-extra, curl matched to a package that fixes
    // nothing. c2 comes in line; c1's re-audit still finds dpkg:curl.
    let v = sync(
        &env,
        &[&audit, "--remove-extra", "--match", "dpkg:curl=fakecurl@1"],
    );
    assert_eq!(
        jobs_of(&v),
        vec![
            (
                vec!["c1".to_string()],
                vec![
                    "package:tool".to_string(),
                    "dpkg:curl".to_string(),
                    "dpkg:hello".to_string(),
                    "package:old".to_string(),
                    "file:/etc/app/d.conf".to_string()
                ]
            ),
            (
                vec!["c2".to_string()],
                vec![
                    "package:tool".to_string(),
                    "dpkg:hello".to_string(),
                    "package:old".to_string()
                ]
            ),
        ],
        "{v}"
    );
    assert_eq!(
        skipped(&v, "unmatched"),
        strs(&[("dpkg:vim", &["c1", "c2"])]),
        "{v}"
    );
    let batch = id(&v["batch"]);
    let (code, s) = env.wait_job(&batch);
    assert_eq!(code, 1, "{s}");
    let l = leaves(&s);
    assert_eq!(l["c2"]["state"], "succeeded", "{s}");
    assert_eq!(l["c1"]["state"], "failed", "{s}");
    let reason = l["c1"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("still differs") && reason.contains("dpkg:curl"),
        "{reason}"
    );
    // Real effects: the dpkg database, the inventory, the extra file.
    let status = std::fs::read_to_string(c2.join("var/lib/dpkg/status")).unwrap();
    assert_eq!(status.matches("Package: hello").count(), 1, "{status}");
    assert!(!c1.join("etc/app/d.conf").exists());
    wait_until(
        "inventories reported",
        std::time::Duration::from_secs(30),
        || {
            packages_of(&env, "c2") == ["hello@2.10", "tool@1.0"]
                && packages_of(&env, "c1") == ["fakecurl@1", "hello@2.10", "tool@1.0"]
        },
    );
    // The audit shows what is left on c2: what the sync skipped.
    let st = audit_status(&env, &audit);
    let cl = by_client(&st);
    let mut left = kinds(&cl["c2"]);
    left.sort();
    assert_eq!(
        left,
        vec![
            ("dpkg:vim".to_string(), "missing".to_string()),
            ("package:sp1".to_string(), "missing".to_string())
        ],
        "{st}"
    );

    // Cancel: a batch to an agent that is offline, canceled whole.
    env.kill_agent("c2");
    let v = sync(
        &env,
        &[
            &audit,
            "--client",
            "c2",
            "--object",
            "package:sp1",
            "--include-bundles",
        ],
    );
    assert_eq!(
        jobs_of(&v),
        vec![(vec!["c2".to_string()], vec!["package:sp1".to_string()])],
        "{v}"
    );
    let batch = id(&v["batch"]);
    assert_eq!(env.status(&batch)["done"], false);
    let c = env.admin(&["job", "cancel", &batch, "--json"]).ok().json();
    assert_eq!(c["canceled"], 1, "{c}");
    let (_, s) = env.wait_job(&batch);
    assert_eq!(s["state"], "canceled", "{s}");
    assert_eq!(s["totals"]["canceled"], 1, "{s}");
    assert_eq!(s["jobs"][0]["state"], "canceled", "{s}");

    // An audit not finished (c2 is offline) cannot be synced.
    let pending = new_audit(&env, "r1", &["--dpkg"]);
    let out = env.admin(&["sync", &pending]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("audit {pending} is not finished")),
        "{}",
        out.stderr
    );
}
