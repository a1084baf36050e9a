//! Packages through the tree: added to HQ's depot, pulled by relays (once per
//! relay, only new chunks for a new version), installed and removed by jobs,
//! a damaged relay cache repaired, a cut transfer resumed, bad input refused.

use crate::harness::*;
use crate::proxy::Proxy;
use relaytree::pkg::ChunkHash;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SIZE: usize = 4 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), so chunks do not dedupe.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A package tree: a big data file, a setup script that records the install
/// in `marker`, a nested file.
fn make_package(root: &Path, name: &str, payload: &[u8], marker: &Path) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("payload.bin"), payload).unwrap();
    std::fs::write(dir.join("etc/tool.conf"), "level = 3\n").unwrap();
    let script = format!(
        "#!/bin/sh\nset -e\ntest -f etc/tool.conf\necho \"$RELAYTREE_CLIENT $RELAYTREE_PACKAGE_VERSION\" >> {}\n",
        marker.display()
    );
    std::fs::write(dir.join("setup.sh"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("setup.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn add(env: &Env, dir: &Path, name: &str, version: &str, install: &str) -> Value {
    env.admin(&[
        "package",
        "add",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--version",
        version,
        "--install",
        install,
        "--remove",
        "true",
        "--json",
    ])
    .ok()
    .json()
}

fn install_job(env: &Env, relays: &[&str], what: &str) -> String {
    package_job(env, relays, "--install", what)
}

fn remove_job(env: &Env, relays: &[&str], name: &str) -> String {
    package_job(env, relays, "--remove", name)
}

/// `job create` for every client under `relays` with `flag` (`--install`
/// or `--remove`) `what`; its id.
fn package_job(env: &Env, relays: &[&str], flag: &str, what: &str) -> String {
    let mut args = vec!["job", "create", "--dest", "all-lower-clients", "--json"];
    for r in relays {
        args.extend(["--relay", r]);
    }
    args.extend([flag, what]);
    job_id(&env.admin(&args).ok().json())
}

fn pkg_status(env: &Env) -> Value {
    env.admin(&["package", "status", "--json"]).ok().json()
}

fn egress(status: &Value) -> Vec<(String, u64)> {
    status["hq_egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect()
}

fn relay_pkg<'a>(status: &'a Value, relay: &str, name: &str) -> Option<&'a Value> {
    status["relays"]
        .as_array()?
        .iter()
        .find(|r| r["relay"] == relay)?["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn wait_present(env: &Env, relay: &str, name: &str) -> Value {
    wait_for(&format!("{name} present at {relay}"), DEADLINE, || {
        let st = pkg_status(env);
        (relay_pkg(&st, relay, name)?["state"] == "present").then_some(st)
    })
}

fn installed(env: &Env, client: &str) -> Vec<(String, String)> {
    let v = env.admin(&["client", "show", client, "--json"]).ok().json();
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn marker_lines(marker: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// HQ <- r1 <- r2; c1 c2 under r1, c3 c4 under r2. Version 1 reaches every
/// client and HQ sends its bytes once (to r1); version 2, changed by 1%, moves
/// only its new chunks; a failing install leaves the earlier one in place;
/// remove empties the inventory.
#[test]
fn install_through_a_nested_relay_once_per_relay_then_only_new_chunks() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    for c in ["c1", "c2"] {
        env.start_agent(c, &r1);
    }
    for c in ["c3", "c4"] {
        env.start_agent(c, &r2);
    }
    env.wait_clients(4);
    let marker = env.root().join("installs.txt");
    let mut payload = noise(SIZE, 7);
    let dir = make_package(env.root(), "v1", &payload, &marker);
    let p1 = add(&env, &dir, "tool", "1", "./setup.sh");
    assert_eq!(p1["version"], "1", "{p1}");

    let job = install_job(&env, &["r1"], "tool@1");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(states(&st), all(&["c1", "c2", "c3", "c4"], "succeeded"));
    assert_eq!(
        marker_lines(&marker),
        ["c1 1", "c2 1", "c3 1", "c4 1"].map(String::from).to_vec()
    );
    for c in ["c1", "c3"] {
        assert_eq!(
            installed(&env, c),
            vec![("tool".to_string(), "1".to_string())]
        );
    }
    // HQ sent the package once, to r1 only; r2 and the agents were served below.
    let s1 = pkg_status(&env);
    let e1 = egress(&s1);
    assert_eq!(e1.len(), 1, "{s1}");
    assert_eq!(e1[0].0, "r1");
    let sent1 = e1[0].1;
    assert!(
        sent1 >= SIZE as u64 && sent1 < SIZE as u64 + SIZE as u64 / 10,
        "hq sent {sent1} bytes for a {SIZE}-byte package"
    );

    // Version 2: 1% of the payload changed in the middle.
    let mid = SIZE / 2;
    for b in &mut payload[mid..mid + SIZE / 100] {
        *b = b.wrapping_add(1);
    }
    let dir2 = make_package(env.root(), "v2", &payload, &marker);
    add(&env, &dir2, "tool", "2", "./setup.sh");
    let job2 = install_job(&env, &["r1"], "tool");
    let (code, st) = env.wait_job(&job2);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    let sent2 = egress(&pkg_status(&env))[0].1 - sent1;
    assert!(
        sent2 < SIZE as u64 / 10,
        "version 2 (1% changed) cost hq {sent2} bytes, {}% of the package",
        sent2 * 100 / SIZE as u64
    );
    assert_eq!(
        installed(&env, "c4"),
        vec![("tool".to_string(), "2".to_string())]
    );

    // A failing install: the leaf fails with the reason, version 2 stays.
    let dir3 = make_package(env.root(), "v3", &payload, &marker);
    add(&env, &dir3, "tool", "3", "exit 3");
    let job3 = install_job(&env, &["r2"], "tool@3");
    let (code, st) = env.wait_job(&job3);
    assert_eq!(code, 1, "{st}");
    assert_eq!(states(&st), all(&["c3", "c4"], "failed"));
    assert_eq!(
        installed(&env, "c3"),
        vec![("tool".to_string(), "2".to_string())]
    );

    // Remove.
    let (code, st) = env.wait_job(&remove_job(&env, &["r2"], "tool"));
    assert_eq!(code, 0, "{st}");
    assert!(installed(&env, "c3").is_empty());
    assert_eq!(
        installed(&env, "c1"),
        vec![("tool".to_string(), "2".to_string())]
    );
    // Removing it again: a no-op on every leaf, that succeeds and says so.
    let again = remove_job(&env, &["r2"], "tool");
    let (code, st) = env.wait_job(&again);
    assert_eq!(code, 0, "remove of a package not installed succeeds: {st}");
    let o = env
        .admin(&["job", "output", &again, "c3", "--json"])
        .ok()
        .json();
    assert_eq!(
        o["stdout"], "package tool is not installed: nothing to remove\n",
        "{o}"
    );
    assert_eq!(o["exit_code"], 0, "{o}");

    // A complete sync of the nested relay is served by r1's cache: HQ sends
    // nothing more, r2 receives the whole package again.
    let before = egress(&pkg_status(&env))[0].1;
    let fetched = |st: &Value| {
        st["relays"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["relay"] == "r2")
            .map(|r| r["fetched_bytes"].as_u64().unwrap())
            .unwrap()
    };
    let r2_before = fetched(&pkg_status(&env));
    env.admin(&[
        "package",
        "sync",
        "--relay",
        "r2",
        "--package",
        "tool@2",
        "--complete",
    ])
    .ok();
    let st = wait_for("r2's complete sync answered", DEADLINE, || {
        let st = pkg_status(&env);
        (fetched(&st) > r2_before && relay_pkg(&st, "r2", "tool")?["state"] == "present")
            .then_some(st)
    });
    assert!(fetched(&st) - r2_before >= SIZE as u64, "{st}");
    assert_eq!(
        egress(&st)[0].1,
        before,
        "hq sent bytes for r2's sync: {st}"
    );
}

/// Every blob file under a relay's cache, by address.
fn cache_files(env: &Env, relay: &str) -> Vec<(ChunkHash, PathBuf)> {
    let mut out = Vec::new();
    let root = env.relay_data(relay).join("cache");
    for shard in std::fs::read_dir(&root).unwrap().flatten() {
        if !shard.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if let Ok(h) = f.file_name().to_string_lossy().parse::<ChunkHash>() {
                out.push((h, f.path()));
            }
        }
    }
    out
}

/// A differential sync fills r1's cache; a blob damaged on disk is repaired
/// by `--complete`, which fetches everything again.
#[test]
fn complete_sync_repairs_a_damaged_relay_cache() {
    let mut env = Env::new();
    let hq = env.start_hq();
    env.start_relay("r1", &hq);
    wait_until("r1 known", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let marker = env.root().join("m.txt");
    let dir = make_package(env.root(), "p", &noise(SIZE / 2, 3), &marker);
    add(&env, &dir, "tool", "1", "./setup.sh");
    env.admin(&["package", "sync", "--relay", "r1"]).ok();
    wait_present(&env, "r1", "tool");
    let files = cache_files(&env, "r1");
    assert!(files.len() > 3, "{files:?}");
    let (hash, path) = files[files.len() / 2].clone();
    std::fs::write(&path, b"damaged").unwrap();

    env.admin(&["package", "sync", "--relay", "r1", "--complete"])
        .ok();
    wait_until("the damaged blob repaired", DEADLINE, || {
        std::fs::read(&path).is_ok_and(|b| ChunkHash::of(&b) == hash)
    });
    let st = wait_present(&env, "r1", "tool");
    for (h, p) in cache_files(&env, "r1") {
        assert_eq!(
            ChunkHash::of(&std::fs::read(&p).unwrap()),
            h,
            "{}",
            p.display()
        );
    }
    assert!(st["relays"][0]["last_sync_ms"].as_u64().is_some(), "{st}");
}

/// r1 reaches HQ through a slow proxy; the link is cut while the package
/// moves; after it is back r1 fetches only what it still lacks.
#[test]
fn a_transfer_cut_halfway_resumes_with_what_is_missing() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let proxy = Proxy::start(&hq);
    env.start_relay("r1", &proxy.addr());
    wait_until("r1 known", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let marker = env.root().join("m.txt");
    let size = 8 * 1024 * 1024;
    let dir = make_package(env.root(), "big", &noise(size, 11), &marker);
    add(&env, &dir, "big", "1", "./setup.sh");
    proxy.delay(Duration::from_millis(30));
    env.admin(&["package", "sync", "--relay", "r1"]).ok();
    wait_until("a part of the package at r1", DEADLINE, || {
        cache_files(&env, "r1").len() >= 20
    });
    proxy.cut();
    let had = cache_files(&env, "r1").len();
    std::thread::sleep(Duration::from_millis(300)); // the link stays down a while
    proxy.restore();
    let st = wait_present(&env, "r1", "big");
    let all = cache_files(&env, "r1").len();
    assert!(had < all, "the cut came too late: {had} of {all} blobs");
    // Received in all, before and after the cut: the package about once
    // (plus the blob that was in flight), not once and then again.
    let fetched = st["relays"][0]["fetched_bytes"].as_u64().unwrap();
    let size = size as u64;
    assert!(
        fetched >= size && fetched < size + size / 4,
        "r1 received {fetched} bytes for a {size}-byte package cut halfway"
    );
    let sent = egress(&st)[0].1;
    assert!(sent < size + size / 4, "hq sent {sent} bytes: {st}");
    assert!(env.log_text().contains("resuming"), "no resume logged");
}

/// Bad input: a missing path, an unknown package, an unknown relay.
#[test]
fn bad_package_input_is_refused_clearly() {
    let mut env = Env::new();
    let hq = env.start_hq();
    env.start_relay("r1", &hq);
    let missing = env.root().join("no-such-dir");
    let out = env.admin(&[
        "package",
        "add",
        missing.to_str().unwrap(),
        "--name",
        "x",
        "--version",
        "1",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no-such-dir"), "{out:?}");
    let out = env.admin(&[
        "job",
        "create",
        "--dest",
        "all-lower-clients",
        "--relay",
        "r1",
        "--install",
        "nothing@1",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("nothing"), "{out:?}");
    let out = env.admin(&["package", "sync", "--relay", "r9"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("r9"), "{out:?}");
}

/// A blob damaged in a relay's cache is caught when served (its hash does not
/// match), fetched again from the parent, and the install succeeds; a chunk
/// missing from HQ's depot fails only the leaves of that install, naming it.
#[test]
fn damaged_cache_is_healed_and_a_missing_chunk_fails_only_its_leaves() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let marker = env.root().join("m.txt");
    let dir = make_package(env.root(), "p", &noise(SIZE / 4, 5), &marker);
    add(&env, &dir, "tool", "1", "./setup.sh");
    env.admin(&["package", "sync", "--relay", "r1"]).ok();
    wait_present(&env, "r1", "tool");
    let files = cache_files(&env, "r1");
    let big = files
        .iter()
        .max_by_key(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .clone();
    std::fs::write(&big.1, b"damaged on disk").unwrap();
    let job = install_job(&env, &["r1"], "tool@1");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}\n{}", env.log_text());
    assert_eq!(ChunkHash::of(&std::fs::read(&big.1).unwrap()), big.0);

    // Version 2 with a chunk that then vanishes from HQ's depot.
    let dir2 = make_package(env.root(), "p2", &noise(SIZE / 4, 6), &marker);
    let p2 = add(&env, &dir2, "tool", "2", "./setup.sh");
    let depot = env.hq_dir.join("depot");
    let manifest: ChunkHash = p2["manifest"].as_str().unwrap().parse().unwrap();
    let mut victim = None;
    for shard in std::fs::read_dir(&depot).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            let known = cache_files(&env, "r1")
                .iter()
                .any(|(h, _)| h.to_string() == name);
            if !known && name != manifest.to_string() && name.len() == 64 {
                victim = Some((name, f.path()));
            }
        }
    }
    let (victim, path) = victim.expect("a chunk only version 2 has");
    std::fs::remove_file(path).unwrap();
    let job = install_job(&env, &["r1"], "tool@2");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    let leaf = &leaves(&st)["c1"];
    assert_eq!(leaf["state"], "failed", "{st}");
    let reason = leaf["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&victim[..12]),
        "reason does not name the chunk: {reason}"
    );
    assert_eq!(
        installed(&env, "c1"),
        vec![("tool".to_string(), "1".to_string())]
    );
}

/// Entries that would escape the unpacking directory never get into the
/// depot: a symlink out of the tree is refused by `package add`, and a
/// hand-made manifest with `../` uploaded straight to HQ is refused there
/// (agents check again before unpacking: see `pkg::stage`).
#[test]
fn path_escapes_are_refused_before_they_reach_the_depot() {
    use relaytree::cli::client::{AdminClient, Target};
    use relaytree::pkg::{ChunkRef, Entry, EntryKind, Manifest};
    use relaytree::proto::{AdminRequest, AdminResponse};

    let mut env = Env::new();
    env.start_hq();
    let dir = env.root().join("evil");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ok.txt"), "fine").unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", dir.join("passwd")).unwrap();
    let out = env.admin(&[
        "package",
        "add",
        dir.to_str().unwrap(),
        "--name",
        "evil",
        "--version",
        "1",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("passwd"), "{out:?}");

    let data = b"owned".to_vec();
    let chunk = ChunkHash::of(&data);
    let m = Manifest {
        name: "evil".into(),
        version: "2".into(),
        install: None,
        remove: None,
        entries: vec![Entry {
            path: "../../outside".into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: data.len() as u64,
                chunks: vec![ChunkRef {
                    hash: chunk,
                    len: data.len() as u32,
                }],
            },
        }],
    };
    let body = m.encode();
    let id = ChunkHash::of(&body);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let t = Target {
            hq: None,
            identity: None,
            data_dir: Some(env.hq_dir.clone()),
        };
        let mut c = AdminClient::connect(&t).await.unwrap();
        for (hash, bytes) in [(chunk, &data), (id, &body)] {
            let r = c
                .request(AdminRequest::PackageUpload {
                    hash,
                    offset: 0,
                    total: bytes.len() as u64,
                    data: bytes.clone(),
                })
                .await
                .unwrap();
            assert_eq!(r, AdminResponse::Uploaded { complete: true });
        }
        c.request(AdminRequest::PackageAdd {
            manifest: id,
            bundle: false,
        })
        .await
        .expect_err("an escaping manifest was added")
    });
    assert!(err.to_string().contains("../../outside"), "{err}");
    let list = env.admin(&["package", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().map(|l| l.len()), Some(0), "{list}");
}
