//! How an audit's object list travels, with real processes: by reference
//! (its hash in HQ's signed order), crossing each relay hop once and fetched
//! once per agent process (counted at HQ's and a relay's byte metrics), and
//! refused by the agent when a relay serves another list than HQ signed
//! (a forged relay played from the test). Not run on PostgreSQL: nothing
//! here is about HQ's store.

use crate::audit::{logged_numbers, make_root, snapshot_base, start_rooted, wait_done};
use crate::forged::listen_as_relay;
use crate::harness::*;
use crate::metrics::{metrics_addr, scrape, SENT};
use crate::security::{assign, final_update, order, placed_under_evil, sign};
use relaytree::link::Session;
use relaytree::pkg::ChunkHash;
use relaytree::proto::audit::{
    AuditOutcome, AuditSpec, DiffKind, Object, ObjectId, ObjectValue, Selection,
};
use relaytree::proto::{Action, LeafState, Msg, Purpose};
use relaytree::tls::{Identity, SigningKey};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Serves the object list on a fake relay's transfer connection: `forged`
/// in place of the real `blob` until `good` is set; counts the requests.
async fn serve_list(
    t: Session,
    blob: Vec<u8>,
    forged: Vec<u8>,
    good: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
) {
    let Session { tx, mut rx, .. } = t;
    while let Ok(Msg::GetBlobs { hashes }) = rx.recv().await {
        asked.fetch_add(1, Ordering::SeqCst);
        for hash in hashes {
            let data = if good.load(Ordering::SeqCst) {
                blob.clone()
            } else {
                forged.clone()
            };
            let total = data.len() as u64;
            let piece = Msg::Blob {
                hash,
                offset: 0,
                total,
                data,
            };
            if tx.send(piece).await.is_err() {
                return;
            }
        }
        if tx.send(Msg::BlobsDone).await.is_err() {
            return;
        }
    }
}

/// A relay that serves another object list than the one HQ signed (real
/// relay certificate, the protocol spoken from the test): the agent
/// refuses it, the leaf fails naming why, nothing is compared. The genuine
/// list is then fetched once and kept: a second audit of it asks nothing,
/// and still compares (a changed file is found).
#[test]
fn an_object_list_other_than_the_signed_one_is_refused_and_the_real_one_fetched_once() {
    let env = Env::new();
    let evil_id = Identity::load(&env.issue("relay", "evil")).unwrap();
    let agent_id = env.issue("agent", "c1");
    let hq_key = SigningKey::load(&env.hq_dir.join("ca")).unwrap();
    let root = make_root(env.root(), "c1", &[]);
    let file = |name: &str, content: &str| Object {
        id: ObjectId::File(format!("/etc/app/{name}.conf")),
        value: ObjectValue::File {
            hash: ChunkHash::of(content.as_bytes()),
            mode: 0o644,
        },
    };
    let objects: Vec<Object> = ["a", "b", "c"]
        .iter()
        .map(|f| file(f, &format!("{f} = 1\n")))
        .collect();
    let spec = AuditSpec {
        master: "snapshot:base".into(),
        snapshot: "base".into(),
        select: Selection {
            files: vec!["/etc/app/*.conf".into()],
            packages: false,
            dpkg: false,
        },
        objects: objects.clone(),
        objects_ref: None,
    };
    let (spec, blob) = spec.by_reference().unwrap();
    assert!(spec.objects.is_empty() && spec.objects_ref.is_some());
    // The same three objects, b.conf's content another: what a lying relay
    // would like c1 compared with.
    let mut other = objects;
    other[1] = file("b", "b = 666\n");
    let forged = rmp_serde::to_vec_named(&other).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, mut sessions) =
        rt.block_on(listen_as_relay(&evil_id, Default::default(), stop.clone()));
    let mut agent = Proc::spawn(
        "c1",
        {
            let mut c = Command::new(AGENT);
            c.args(["serve", "--identity"])
                .arg(&agent_id)
                .arg("--data-dir")
                .arg(env.root().join("data/c1"))
                .args(["--relay", &addr])
                .arg("--root")
                .arg(&root);
            c
        },
        &env.logs(),
    );
    let good = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let audit = Action::Audit(spec);
    rt.block_on(async {
        let mut s = tokio::time::timeout(DEADLINE, sessions.recv())
            .await
            .expect("the agent connects")
            .unwrap();
        assert_eq!(s.purpose, Purpose::Session);
        let (g, a) = (good.clone(), asked.clone());
        tokio::spawn(async move {
            while let Some(t) = sessions.recv().await {
                if t.purpose == Purpose::Transfer {
                    tokio::spawn(serve_list(
                        t,
                        blob.clone(),
                        forged.clone(),
                        g.clone(),
                        a.clone(),
                    ));
                }
            }
        });
        let home = placed_under_evil(&hq_key);
        let send = |job: u64| {
            let signed = sign(&hq_key, &order(job, 1, audit.clone(), None));
            assign(&home, job, 1, audit.clone(), vec![signed])
        };

        // Another list in place of the signed one: refused, nothing compared.
        s.tx.send(send(1)).await.unwrap();
        let u = final_update(&mut s, 1).await;
        assert_eq!(u.state, LeafState::Failed, "{u:?}");
        let reason = u.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("refused: the object list does not match the hash hq signed"),
            "{u:?}"
        );
        assert!(u.audit.is_none(), "{u:?}");

        // The signed list: compared, compliant (no payload at all).
        good.store(true, Ordering::SeqCst);
        s.tx.send(send(2)).await.unwrap();
        let u = final_update(&mut s, 2).await;
        assert_eq!((u.state, &u.audit), (LeafState::Succeeded, &None), "{u:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "one bad fetch, one good");

        // Kept: another audit of the same list asks nothing, and compares.
        std::fs::write(root.join("etc/app/b.conf"), "b = 2\n").unwrap();
        s.tx.send(send(3)).await.unwrap();
        let u = final_update(&mut s, 3).await;
        assert_eq!(u.state, LeafState::Succeeded, "{u:?}");
        match &u.audit {
            Some(AuditOutcome::Differences(d)) => {
                let got: Vec<_> = d.iter().map(|d| (d.object.to_string(), d.kind)).collect();
                assert_eq!(
                    got,
                    [("file:/etc/app/b.conf".to_string(), DiffKind::Content)]
                );
            }
            other => panic!("job 3: {other:?}"),
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "the list was fetched again"
        );
    });
    stop.cancel();
    agent.kill();
    let log = agent.stderr_text();
    assert!(log.contains("object list here"), "{log}");
}

/// A file of `n` lines, the same in every root.
fn add_files(root: &Path, n: usize) {
    for i in 0..n {
        std::fs::write(
            root.join(format!("etc/app/x{i:03}.conf")),
            format!("x = {i}\n"),
        )
        .unwrap();
    }
}

/// The `bytes=` figure of HQ's "audit object list in the depot" lines.
fn list_bytes(log: &str) -> Vec<u64> {
    logged_numbers(log, "audit object list in the depot", "bytes")
}

/// Two audits of 4 clients under nested relays against one list of ~100
/// objects: the list leaves HQ once (to r1), crosses r1 → r2 once, and each
/// agent fetches it once; HQ sends r1 only small assignments besides.
#[test]
fn the_object_list_crosses_each_hop_once() {
    let mut env = Env::new();
    let metrics = ["--metrics", "127.0.0.1:0"];
    let hq = env.start_hq_with("127.0.0.1:0", &metrics);
    let hq_m = metrics_addr(&env.hq.as_ref().unwrap().proc);
    let r1 = env.start_relay_with("r1", &hq, &metrics);
    let r1_m = metrics_addr(&env.relays["r1"].proc);
    let r2 = env.start_relay("r2", &r1);
    let base = env.root().to_path_buf();
    for (name, relay) in [("a1", &r1), ("a2", &r1), ("a3", &r2), ("a4", &r2)] {
        let root = make_root(&base, name, &[]);
        add_files(&root, 100);
        start_rooted(&mut env, name, relay, &root);
    }
    env.wait_clients(4);
    snapshot_base(&env, "a1", &["--json"]);
    let sent = |addr: &str, child: &str| scrape(addr).value(SENT, &[("child", child)]) as u64;
    let (hq_before, r1_before) = (sent(&hq_m, "r1"), sent(&r1_m, "r2"));
    let agents_before = sent(&r1_m, "agents");
    for _ in 0..2 {
        let v = env
            .admin(&[
                "audit",
                "create",
                "--snapshot",
                "base",
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
                "--no-packages",
                "--json",
            ])
            .ok()
            .json();
        let st = wait_done(&env, v["audit"].as_str().unwrap());
        assert_eq!(st["totals"]["compliant"], 4, "{st}");
    }
    let hq_log = env.hq.as_ref().unwrap().proc.stderr_text();
    let lists = list_bytes(&hq_log);
    assert_eq!(lists.len(), 2, "{hq_log}");
    let list = lists[0];
    assert!(list > 8000, "a list of ~100 objects: {list} bytes");
    // Blob bytes HQ served: the list once, to r1.
    let status = env.admin(&["package", "status", "--json"]).ok().json();
    assert_eq!(
        status["hq_egress"],
        serde_json::json!([["r1", list]]),
        "{status}"
    );
    // Everything HQ sent r1 (sessions and transfers) in both audits: the
    // list once and two small assignments; r1 to r2 likewise.
    let hq_sent = sent(&hq_m, "r1") - hq_before;
    let r1_sent = sent(&r1_m, "r2") - r1_before;
    assert!(
        list <= hq_sent && hq_sent < list + 4096,
        "hq sent r1 {hq_sent} bytes for a list of {list}"
    );
    assert!(
        list <= r1_sent && r1_sent < list + 4096,
        "r1 sent r2 {r1_sent} bytes for a list of {list}"
    );
    // Each agent fetched it once, for both audits: r1 sent its two agents
    // the list twice in all, besides small assignments.
    let agents_sent = sent(&r1_m, "agents") - agents_before;
    assert!(
        2 * list <= agents_sent && agents_sent < 2 * list + 8192,
        "r1 sent its 2 agents {agents_sent} bytes for a list of {list}"
    );
    for name in ["a1", "a2", "a3", "a4"] {
        let log = env.agents[name].stderr_text();
        let fetched = logged_numbers(&log, "object list here", "fetched_bytes");
        assert_eq!(fetched, [list], "{name}: {log}");
    }
}
