//! No one let in: a tampering relay cannot make an agent run anything HQ did
//! not sign; revoked nodes are refused everywhere; a Hello must match the
//! certificate; bad key files and expired certificates are refused; a flood
//! of idle connections does not lock real agents out.

use crate::harness::*;
use relaytree::link::{self, Session, Timing};
use relaytree::proto::{
    Action, Assignment, Attempt, Event, Hello, JobId, LeafState, LeafUpdate, Msg, NodeName, Order,
    Placement, Role, RunSpec, Scope, SignedOrder, SignedPlacement, PROTOCOL_VERSION,
};
use relaytree::tls::{Identity, SigningKey};
use std::process::Command;
use std::time::Duration;

fn n(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn sh(script: &str) -> Action {
    Action::Run(RunSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        timeout_ms: None,
    })
}

pub(crate) fn sign(key: &SigningKey, o: &Order) -> SignedOrder {
    let body = rmp_serde::to_vec_named(o).unwrap();
    SignedOrder {
        sig: key.sign(&body),
        body,
        relay: o.relay.clone(),
    }
}

pub(crate) fn order(
    job: u64,
    attempt: u32,
    action: Action,
    rerun_of: Option<(&str, &[&str])>,
) -> Order {
    Order {
        job: JobId(job),
        attempt: Attempt(attempt),
        action,
        expires_at_ms: None,
        issued_at_ms: relaytree::proto::now_ms(),
        dest: if rerun_of.is_none() {
            vec![n("evil")]
        } else {
            vec![]
        },
        relay: rerun_of.map(|(r, _)| n(r)),
        targets: rerun_of.map(|(_, t)| t.iter().map(|c| n(c)).collect()),
        filter: Default::default(),
    }
}

/// HQ's placement of c1 under `evil` (signed with HQ's key, as HQ does when
/// c1 joins there).
pub(crate) fn placed_under_evil(key: &SigningKey) -> SignedPlacement {
    let body = Placement {
        client: n("c1"),
        chain: vec![n("evil")],
        issued_at_ms: 0,
    }
    .encode()
    .unwrap();
    SignedPlacement {
        sig: key.sign(&body),
        body,
    }
}

pub(crate) fn assign(
    home: &SignedPlacement,
    job: u64,
    attempt: u32,
    action: Action,
    orders: Vec<SignedOrder>,
) -> Msg {
    Msg::Assign(Assignment {
        job: JobId(job),
        attempt: Attempt(attempt),
        action,
        expires_at_ms: None,
        scope: Scope::Targets(vec![n("c1")]),
        orders,
        placement: Some(home.clone()),
        hq_now_ms: None,
        policy: None,
    })
}

/// Reads the agent's messages until `job` reaches a final state; acks every
/// batch like a relay would. Returns the final update.
pub(crate) async fn final_update(s: &mut Session, job: u64) -> LeafUpdate {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let msg = tokio::time::timeout_at(deadline, s.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no final result for job {job}"))
            .expect("agent session");
        if let Msg::Events(evs) = msg {
            let last = evs.last().map(|(q, _)| *q).unwrap_or(0);
            s.tx.send(Msg::Ack { seq: last }).await.unwrap();
            for (_, e) in evs {
                if let Event::Leaf(u) = e {
                    if u.job == JobId(job) && u.state.is_final() {
                        return u;
                    }
                }
            }
        }
    }
}

/// A tampering relay: a real relay certificate, speaking the protocol from
/// the test. It alters a command, widens a rerun, replays attempts and forges
/// a signature; the agent runs none of them and reports each refusal.
#[test]
fn a_tampering_relay_cannot_make_an_agent_run_anything() {
    let env = Env::new();
    let evil_id = Identity::load(&env.issue("relay", "evil")).unwrap();
    let agent_id = env.issue("agent", "c1");
    let hq_key = SigningKey::load(&env.hq_dir.join("ca")).unwrap();
    let other_key = SigningKey::create(env.root()).unwrap();
    let pwned = env.root().join("pwned");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();

    let (addr, mut sessions) = rt.block_on(crate::forged::listen_as_relay(
        &evil_id,
        Default::default(),
        stop.clone(),
    ));

    let mut agent = Proc::spawn(
        "c1",
        {
            let mut c = Command::new(AGENT);
            c.args(["serve", "--identity"])
                .arg(&agent_id)
                .arg("--data-dir")
                .arg(env.root().join("data/c1"))
                .args(["--relay", &addr]);
            c
        },
        &env.logs(),
    );

    rt.block_on(async {
        let mut s = tokio::time::timeout(DEADLINE, sessions.recv())
            .await
            .expect("the agent connects")
            .unwrap();
        assert_eq!(s.peer.name, n("c1"));
        let script = env.job_script("true");
        let home = placed_under_evil(&hq_key);
        let good = sign(&hq_key, &order(1, 1, sh(&script), None));

        // A genuine order runs.
        s.tx.send(assign(&home, 1, 1, sh(&script), vec![good.clone()]))
            .await
            .unwrap();
        let u = final_update(&mut s, 1).await;
        assert_eq!(u.state, LeafState::Succeeded, "{u:?}");

        // Altered command, signed order for another one.
        let touch = sh(&format!("touch '{}'", pwned.display()));
        let signed_true = sign(&hq_key, &order(2, 1, sh("true"), None));
        s.tx.send(assign(&home, 2, 1, touch.clone(), vec![signed_true]))
            .await
            .unwrap();
        let u = final_update(&mut s, 2).await;
        assert_eq!(u.state, LeafState::Failed);
        assert!(
            u.reason.as_deref().unwrap_or("").contains("refused"),
            "{u:?}"
        );

        // A rerun widened to a client HQ did not target.
        let rerun = sign(
            &hq_key,
            &order(3, 2, touch.clone(), Some(("evil", &["c2"]))),
        );
        s.tx.send(assign(&home, 3, 2, touch.clone(), vec![rerun]))
            .await
            .unwrap();
        let u = final_update(&mut s, 3).await;
        assert!(
            u.reason.as_deref().unwrap_or("").contains("not among"),
            "{u:?}"
        );

        // An old attempt's order replayed as a new attempt.
        s.tx.send(assign(&home, 1, 2, sh(&script), vec![good.clone()]))
            .await
            .unwrap();
        let u = final_update(&mut s, 1).await;
        assert_eq!((u.attempt, u.state), (Attempt(2), LeafState::Failed));
        assert!(
            u.reason.as_deref().unwrap_or("").contains("attempt 1"),
            "{u:?}"
        );

        // A signature by another key.
        let forged = sign(&other_key, &order(4, 1, touch.clone(), None));
        s.tx.send(assign(&home, 4, 1, touch.clone(), vec![forged]))
            .await
            .unwrap();
        let u = final_update(&mut s, 4).await;
        assert!(
            u.reason.as_deref().unwrap_or("").contains("signature"),
            "{u:?}"
        );

        // No order at all.
        s.tx.send(assign(&home, 5, 1, touch.clone(), vec![]))
            .await
            .unwrap();
        let u = final_update(&mut s, 5).await;
        assert!(
            u.reason.as_deref().unwrap_or("").contains("no order"),
            "{u:?}"
        );

        // The genuine attempt replayed verbatim is acknowledged, not rerun:
        // a later genuine job finishing proves the replay was processed.
        s.tx.send(assign(&home, 1, 1, sh(&script), vec![good]))
            .await
            .unwrap();
        let ping = sign(&hq_key, &order(6, 1, Action::Ping, None));
        s.tx.send(assign(&home, 6, 1, Action::Ping, vec![ping]))
            .await
            .unwrap();
        let u = final_update(&mut s, 6).await;
        assert_eq!(u.state, LeafState::Succeeded);
    });
    stop.cancel();
    agent.kill();
    assert!(!pwned.exists(), "a tampered command ran");
    assert_eq!(env.run_counts("1"), each(&["c1"], 1));
    let log = agent.stderr_text();
    assert!(log.contains("assignment refused"), "{log}");
}

#[test]
fn revoked_nodes_are_refused_everywhere_and_others_go_on() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.start_agent("c3", &r2);
    env.wait_clients(3);
    // A job c1 holds open (its command runs long).
    let open = env.create_job(
        &["r1"],
        &[],
        &env.job_script(r#"[ "$RELAYTREE_CLIENT" = c1 ] && exec sleep 20; true"#),
    );
    wait_until("c1 to run, c2 and c3 to finish", DEADLINE, || {
        let s = states(&env.status(&open));
        s.get("c1").map(String::as_str) == Some("running")
            && s.get("c2").map(String::as_str) == Some("succeeded")
            && s.get("c3").map(String::as_str) == Some("succeeded")
    });

    let out = env.admin(&["cert", "revoke", "c1", "--json"]).ok().json();
    assert_eq!(out["denied"], serde_json::json!(["c1"]), "{out}");
    // c1's open session is closed and its reconnects are refused by r1.
    wait_until("r1 to refuse c1", DEADLINE, || {
        env.log_text().contains("c1 (agent) is revoked")
    });
    // Its open leaf is final, with the reason; the job is done.
    let st = env.status(&open);
    assert_eq!(st["done"], true, "{st}");
    let c1 = &leaves(&st)["c1"];
    assert_eq!(c1["state"], "canceled", "{st}");
    assert!(
        c1["reason"].as_str().unwrap_or("").contains("revoked"),
        "{st}"
    );
    // It is no longer in the directory, nor a target of new jobs.
    assert_eq!(env.tree()["clients"], 2);
    let job = env.create_ping(&["r1"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c2", "c3"], "succeeded"));

    // A nested relay: r1 closes its session and refuses it; HQ shows it down.
    env.admin(&["cert", "revoke", "r2"]).ok();
    wait_until("hq to show r2 disconnected", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["relay"] == "r2" && r["connected"] == false)
    });
    wait_until("r1 to refuse r2", DEADLINE, || {
        env.log_text().contains("r2 (relay) is revoked")
    });
    // Everyone else still works.
    let job = env.create_ping(&["r1"]);
    wait_until("c2 to answer", DEADLINE, || {
        states(&env.status(&job)).get("c2").map(String::as_str) == Some("succeeded")
    });
}

#[test]
fn a_hello_naming_another_node_is_refused() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let c1 = Identity::load(&env.issue("agent", "c1")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let d = link::Dialer {
            addr: r1.clone().into(),
            connector: tokio_rustls::TlsConnector::from(
                c1.client_config(Role::Relay, None).unwrap(),
            ),
            me: Hello {
                version: PROTOCOL_VERSION,
                name: n("c2"),
                role: Role::Agent,
                purpose: Default::default(),
                hq_now_ms: None,
                about: None,
                idle_timeout_ms: None,
            },
            timing: Timing::default(),
            gate: None,
        };
        link::dial_once(&d).await.err()
    });
    assert!(
        err.is_some(),
        "a hello naming c2 with c1's certificate was admitted"
    );
    wait_until("r1 to log the mismatch", DEADLINE, || {
        env.log_text()
            .contains("hello claims agent c2 but the certificate says agent c1")
    });
    // c2 was never registered.
    assert_eq!(env.tree()["clients"], 0);
}

#[test]
fn bad_key_modes_and_expired_certificates_are_refused_at_start() {
    let env = Env::new();
    let id = env.issue("agent", "c1");
    // A key readable by others.
    std::fs::set_permissions(
        id.join("node.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = Out::of(run(Command::new(AGENT)
        .args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("d1"))
        .args(["--relay", "127.0.0.1:1"])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);

    // An expired certificate, properly signed by the CA.
    let ca = relaytree::tls::Ca::load(&env.hq_dir.join("ca")).unwrap();
    let old = env.root().join("old");
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    ca.issue_valid(Role::Agent, &n("c9"), &old, now - 30 * day, now - day)
        .unwrap();
    std::fs::copy(env.hq_dir.join("ca/sign.pub"), old.join("sign.pub")).unwrap();
    let out = Out::of(run(Command::new(AGENT)
        .args(["serve", "--identity"])
        .arg(&old)
        .arg("--data-dir")
        .arg(env.root().join("d2"))
        .args(["--relay", "127.0.0.1:1"])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.to_lowercase().contains("expired"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

/// Idle connections past a relay's cap on pending handshakes (lowered to
/// 64 here with `--max-handshakes`, so that the test reaches it; the default
/// is 8,192): those past the cap are refused at once, those holding a slot
/// are closed at the handshake timeout (10 s), and a real agent then gets in
/// and runs a job although every idle connection is still open on the
/// test's side.
#[test]
fn idle_connections_past_the_handshake_cap_do_not_lock_out_a_real_agent() {
    let cap = 64;
    let total = 600;
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay_with("r1", &hq, &["--max-handshakes", &cap.to_string()]);
    let t = std::time::Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..total)
        .map(|_| std::net::TcpStream::connect(&r1).expect("connect"))
        .collect();
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let closed = |idle: &[std::net::TcpStream]| {
        idle.iter()
            .filter(|s| {
                let mut b = [0u8; 1];
                match std::io::Read::read(&mut &**s, &mut b) {
                    Ok(0) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    Ok(_) => false,
                }
            })
            .count()
    };
    // The cap is reached: every connection past it is refused at once.
    wait_until(
        "the connections past the cap to be refused",
        DEADLINE,
        || closed(&idle) >= total - cap,
    );
    let refused = closed(&idle);
    // Exactly `cap` stay open: the cap closed the others, not a timeout.
    assert_eq!(
        refused,
        total - cap,
        "closed after {:?}, of {total}",
        t.elapsed()
    );
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    eprintln!(
        "{total} idle connections, cap {cap}: {refused} refused at once; \
         the agent ran a job {:?} after they opened",
        t.elapsed()
    );
    drop(idle);
}

/// Opens a session to HQ as the node of identity `dir`, for `purpose`.
async fn session_to_hq(
    hq: &str,
    dir: &std::path::Path,
    purpose: relaytree::proto::Purpose,
) -> Session {
    dial_as(hq, dir, Role::Hq, purpose).await
}

/// One admin request on an open session; `None` once the session is gone.
async fn ask(
    s: &mut Session,
    id: u64,
    req: relaytree::proto::AdminRequest,
) -> Option<Result<relaytree::proto::AdminResponse, String>> {
    link::send(&s.tx, Msg::AdminReq { id, req }).await.ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.rx.recv()).await {
            Ok(Ok(Msg::AdminResp { id: got, resp })) if got == id => return Some(resp),
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return None,
            Err(_) => panic!("no answer and no close within 10 s"),
        }
    }
}

#[test]
fn revocation_closes_open_admin_and_transfer_sessions_and_unknown_names_are_refused() {
    let mut env = Env::new();
    let hq = env.start_hq();
    env.start_relay("r1", &hq);
    let ops = env.issue("admin", "ops");
    let mover = env.issue("relay", "mover");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut admin, mut transfer) = rt.block_on(async {
        let mut admin = session_to_hq(&hq, &ops, Default::default()).await;
        assert!(matches!(
            ask(&mut admin, 1, relaytree::proto::AdminRequest::List).await,
            Some(Ok(_))
        ));
        let transfer = session_to_hq(&hq, &mover, relaytree::proto::Purpose::Transfer).await;
        (admin, transfer)
    });

    // A typo is refused (exit 2) and blocks nobody.
    let out = env.admin(&["cert", "revoke", "opps"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown node opps"), "{}", out.stderr);

    // An identity issued but never used is revoked with --force.
    env.issue("agent", "unused");
    assert_eq!(env.admin(&["cert", "revoke", "unused"]).code, 2);
    env.admin(&["cert", "revoke", "unused", "--force"]).ok();
    for name in ["ops", "mover"] {
        let out = env.admin(&["cert", "revoke", name, "--json"]).ok().json();
        assert!(
            out["denied"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n != "opps"),
            "{out}"
        );
    }
    rt.block_on(async {
        // The admin's next request fails: its session is closed.
        let job = relaytree::proto::AdminRequest::CreateJob {
            dest: vec![n("r1")],
            action: Action::Ping,
            expires_ms: None,
            policy: Default::default(),
            clients: vec![],
            filter: Default::default(),
        };
        assert!(
            ask(&mut admin, 2, job).await.is_none(),
            "a revoked admin was answered"
        );
        // The transfer session is closed too.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while transfer.rx.recv().await.is_ok() {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the transfer session of a revoked relay stayed open"
        );
    });
    assert_eq!(
        env.admin(&["job", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .map(|a| a.len()),
        Some(0)
    );
}

/// Sends `events` as one batch on a relay's session to HQ and waits for
/// HQ's acknowledgement of the batch (HQ acknowledges what it refused too:
/// refusing is its durable decision).
async fn forge(s: &mut Session, seq: &mut u64, events: Vec<Event>) {
    send_events(s, seq, events).await
}

fn leaf_update(job: &str, attempt: u32, client: &str, home: &str) -> Event {
    Event::Leaf(LeafUpdate {
        job: JobId(job.parse().unwrap()),
        attempt: Attempt(attempt),
        client: n(client),
        relay: n(home),
        state: LeafState::Succeeded,
        exit_code: Some(0),
        reason: None,
        output: None,
        at_ms: relaytree::proto::now_ms(),
        out: None,
        audit: None,
    })
}

fn relay_joined(relay: &str, parent: &str) -> Event {
    Event::RelayJoined {
        relay: n(relay),
        parent: n(parent),
    }
}

fn client_joined(client: &str, relay: &str, at_ms: u64) -> Event {
    Event::ClientJoined {
        client: n(client),
        relay: n(relay),
        at_ms,
    }
}

fn relay_left(relay: &str, parent: &str, at_ms: u64) -> Event {
    Event::RelayLeft {
        relay: n(relay),
        parent: n(parent),
        at_ms,
    }
}

/// HQ's tree still shows `relay` connected under `parent`.
fn assert_parent_unchanged(env: &Env, relay: &str, parent: &str) {
    let tree = env.tree();
    let view = tree["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["relay"] == relay)
        .unwrap()
        .clone();
    assert_eq!(view["parent"], parent, "{tree}");
    assert_eq!(view["connected"], true, "{tree}");
}

/// An inventory claiming `client` (under `relay`) has package evil@1.
fn evil_inventory(client: &str, relay: &str) -> Event {
    Event::Inventory(relaytree::proto::InventoryReport {
        client: n(client),
        relay: n(relay),
        packages: vec![relaytree::proto::Installed {
            name: "evil".into(),
            version: "1".into(),
            manifest: relaytree::pkg::ChunkHash::of(b"evil"),
            at_ms: 1,
        }],
        at_ms: 1,
    })
}

/// HQ <- r1 (the test, with a real relay certificate), HQ <- r2 <- r3;
/// c2 at r2, c3 at r3. r1 forges every kind of event about r2's branch:
/// none takes effect.
#[test]
fn a_relay_cannot_speak_for_another_branch() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r2 = env.start_relay("r2", &hq);
    let r3 = env.start_relay("r3", &r2);
    env.start_agent("c2", &r2);
    env.start_agent("c3", &r3);
    env.wait_clients(2);
    let failing = env.create_job(
        &["r2"],
        &[],
        &env.job_script(r#"[ "$RELAYTREE_CLIENT" = c2 ] && exit 3; true"#),
    );
    let (_, st) = env.wait_job(&failing);
    let mut want = all(&["c3"], "succeeded");
    want.insert("c2".into(), "failed".into());
    assert_eq!(states(&st), want, "{st}");

    let r1 = env.issue("relay", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = rt.block_on(session_to_hq(&hq, &r1, Default::default()));
    let mut seq = 0;
    let refused_before = env.log_text().matches("event refused").count();
    rt.block_on(forge(
        &mut s,
        &mut seq,
        vec![
            // Another branch's failing leaf as succeeded: as its home, as
            // mine, with a high attempt.
            leaf_update(&failing, 1, "c2", "r2"),
            leaf_update(&failing, 1, "c2", "r1"),
            leaf_update(&failing, 7, "c2", "r1"),
            leaf_update(&failing, 7, "c2", "r2"),
            // Re-parent r3 under me.
            relay_joined("r3", "r1"),
            // Put c2 under r3 (another branch's relay).
            client_joined("c2", "r3", relaytree::proto::now_ms()),
            // Report r3 gone.
            relay_left("r3", "r2", 1),
            // An inventory of another branch's client.
            evil_inventory("c2", "r1"),
        ],
    ));
    let st = env.status(&failing);
    assert_eq!(states(&st), want, "{st}");
    assert_eq!(leaves(&st)["c2"]["attempt"], 1, "{st}");
    assert_parent_unchanged(&env, "r3", "r2");
    let c2 = env.admin(&["client", "show", "c2", "--json"]).ok().json();
    assert_eq!(c2["relay"], "r2", "{c2}");
    assert_eq!(c2["packages"], serde_json::json!([]), "{c2}");

    // A job awaiting r3's target set (r3 is down): r1 cannot close it.
    env.kill_relay("r3");
    wait_until("hq to show r3 down", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["relay"] == "r3" && r["connected"] == false)
    });
    let waiting = env.create_ping(&["r3"]);
    rt.block_on(forge(
        &mut s,
        &mut seq,
        vec![Event::Targets {
            job: JobId(waiting.parse().unwrap()),
            attempt: Attempt(1),
            reporter: n("r3"),
            leaves: vec![],
            last: true,
        }],
    ));
    let st = env.status(&waiting);
    assert_eq!(st["awaiting"], serde_json::json!(["r3"]), "{st}");
    assert_eq!(st["done"], false, "{st}");
    // Every forged event was refused, and logged with the sender.
    let log = env.log_text();
    let refused = log.matches("event refused").count() - refused_before;
    assert!(refused >= 9, "{refused} refusals logged:\n{log}");
    assert!(log.contains("from=r1") || log.contains("from: r1"), "{log}");
    drop(s);
}

/// The same one level down: HQ <- r0 <- {r1 (the test, a real relay
/// certificate), r2 <- c2}. r0 checks what r1 says about its sibling r2's
/// branch (HQ cannot: both lie under r0): nothing of it takes effect.
#[test]
fn a_relay_cannot_speak_for_a_sibling_branch() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r0 = env.start_relay("r0", &hq);
    let r2 = env.start_relay("r2", &r0);
    env.start_agent("c2", &r2);
    env.wait_clients(1);
    let failing = env.create_job(&["r2"], &[], &env.job_script("exit 3"));
    let (_, st) = env.wait_job(&failing);
    assert_eq!(states(&st), all(&["c2"], "failed"), "{st}");

    let r1 = env.issue("relay", "r1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = rt.block_on(dial_as(&r0, &r1, Role::Relay, Default::default()));
    let mut seq = 0;
    rt.block_on(forge(
        &mut s,
        &mut seq,
        vec![
            leaf_update(&failing, 1, "c2", "r2"),
            leaf_update(&failing, 1, "c2", "r1"),
            leaf_update(&failing, 2, "c2", "r1"),
            relay_joined("r2", "r1"),
            client_joined("c2", "r2", relaytree::proto::now_ms()),
            relay_left("r2", "r0", relaytree::proto::now_ms()),
            evil_inventory("c2", "r2"),
        ],
    ));
    let st = env.status(&failing);
    assert_eq!(states(&st), all(&["c2"], "failed"), "{st}");
    assert_parent_unchanged(&env, "r2", "r0");
    let c2 = env.admin(&["client", "show", "c2", "--json"]).ok().json();
    assert_eq!(c2["packages"], serde_json::json!([]), "{c2}");
    // r0 still routes r2's branch to r2, and r2 still has c2.
    let job = env.create_ping(&["r2"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c2"], "succeeded"), "{st}");
    // r0 refuses what names r2's branch; what r1 claims as its own home
    // (c2's result "from r1") passes r0 and is refused by HQ, which knows
    // c2's home for that attempt.
    let r0_log = env.relays["r0"].proc.stderr_text();
    assert_eq!(r0_log.matches("event refused").count(), 5, "{r0_log}");
    let hq_log = env.hq.as_ref().unwrap().proc.stderr_text();
    assert_eq!(hq_log.matches("event refused").count(), 2, "{hq_log}");
    drop(s);
}
