//! A certificate acts only in its own role.

use crate::garbage::{frame, hello_of, tls_connect};
use crate::harness::*;
use relaytree::proto::Role;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn agent_certificate_cannot_serve_as_relay() {
    let mut env = Env::new();
    let hq = env.start_hq();
    for (role, name) in [("agent", "c1"), ("admin", "ops")] {
        let id = env.issue(role, name);
        let mut cmd = Command::new(RELAY);
        cmd.args(["serve", "--identity"])
            .arg(&id)
            .arg("--data-dir")
            .arg(env.root().join("data").join(name))
            .args(["--listen", "127.0.0.1:0", "--parent", &hq]);
        let mut p = Proc::spawn(&format!("relay-as-{name}"), cmd, &env.logs());
        let st = p.wait_exit(DEADLINE);
        let err = p.stderr_text();
        assert!(
            !st.success(),
            "relay serve with an {role} identity: {st}\n{err}"
        );
        assert!(
            err.contains(role),
            "relay serve with an {role} identity should name the role: {err}"
        );
    }
    let tree = env.tree();
    assert_eq!(
        tree["relays"].as_array().map(|r| r.len()),
        Some(0),
        "{tree}"
    );

    // Nor can a relay certificate serve as an agent.
    let id = env.issue("relay", "r9");
    let out = Out::of(run(Command::new(AGENT)
        .args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("data").join("r9"))
        .args(["--relay", &hq])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("relay"), "{out:?}");
}

#[test]
fn agent_dialing_hq_directly_is_refused() {
    let mut env = Env::new();
    let hq = env.start_hq();
    env.start_agent("c1", &hq);
    // Wait for HQ to refuse it at least twice (the agent keeps redialing).
    let log = env.hq.as_ref().unwrap().proc.stderr.clone();
    wait_until("hq to refuse the agent twice", DEADLINE, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("refused")
            .count()
            >= 2
    });
    let tree = env.tree();
    assert_eq!(tree["clients"], 0, "{tree}");
    assert_eq!(
        tree["relays"].as_array().map(|r| r.len()),
        Some(0),
        "{tree}"
    );

    // The agent above refuses HQ itself (wrong server role). HQ must refuse
    // an agent certificate on its own too: a client that accepts HQ's role
    // and presents the agent certificate gets nowhere.
    let id = env.id_dir("c1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut s, me) = tls_connect(&hq, &id, Role::Hq).await;
        let _ = s.write_all(&frame(&hello_of(&me))).await;
        let _ = s.flush().await;
        let mut buf = [0u8; 1024];
        let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("hq kept an agent's session open");
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "hq answered an agent: {:?}",
            r.map(|n| buf[..n].to_vec())
        );
    });
    wait_until(
        "hq to log a refusal naming the agent role",
        DEADLINE,
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("refused") && l.contains("role agent"))
        },
    );
    let tree = env.tree();
    assert_eq!(tree["clients"], 0, "{tree}");
    assert_eq!(
        tree["relays"].as_array().map(|r| r.len()),
        Some(0),
        "{tree}"
    );
}

#[test]
fn only_admin_certificates_run_admin_commands() {
    let mut env = Env::new();
    env.start_hq();
    for (role, name) in [("agent", "c1"), ("relay", "r1")] {
        let id = env.issue(role, name);
        let out = env.admin(&["job", "list", "--json", "--identity", id.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(role),
            "should name the role {role}: {out:?}"
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    }
}

/// A relay that cannot serve with the identity it was given must say so
/// before it announces an address (scripts wait for "listening on").
#[test]
fn relay_with_wrong_role_announces_nothing() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let id = env.issue("agent", "c1");
    let data = env.root().join("data").join("c1");
    let out = Out::of(run(Command::new(RELAY)
        .args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--parent", &hq])));
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stdout, "",
        "announced an address it will not serve: {out:?}"
    );
    assert!(!data.join("listen.addr").exists(), "wrote listen.addr");
}
