//! Enrollment and renewal with real processes: tokens from `hq token
//! create`, `relay enroll` and `agent enroll` through the tree to HQ, every
//! refusal (used, expired, wrong-role token; wrong CA hash; name in use;
//! revoked name; a CSR for another name), renewal without a restart; and
//! `--config` files with their precedence, completions.

use crate::harness::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `hq token create --role ROLE [EXTRA] --json`: (token, ca_hash).
fn token(env: &Env, role: &str, extra: &[&str]) -> (String, String, Value) {
    let mut a = vec!["token", "create", "--role", role, "--json"];
    a.extend_from_slice(extra);
    let v = env.admin(&a).ok().json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["ca_hash"].as_str().unwrap().to_string(),
        v,
    )
}

/// `relay|agent enroll --parent|--relay ADDR ...` into ids/NAME.
fn enroll(
    env: &Env,
    bin: &str,
    addr: &str,
    tok: &str,
    hash: &str,
    name: &str,
    extra: &[&str],
) -> Out {
    enroll_into(bin, addr, tok, hash, name, &env.id_dir(name), extra)
}

/// `relay|agent enroll --parent|--relay ADDR ... --name NAME --out OUT`.
fn enroll_into(
    bin: &str,
    addr: &str,
    tok: &str,
    hash: &str,
    name: &str,
    out: &Path,
    extra: &[&str],
) -> Out {
    let flag = if bin == RELAY { "--parent" } else { "--relay" };
    let mut cmd = Command::new(bin);
    cmd.args([
        "enroll",
        flag,
        addr,
        "--token",
        tok,
        "--ca-hash",
        hash,
        "--name",
        name,
        "--out",
    ])
    .arg(out)
    .args(extra);
    Out::of(run(&mut cmd))
}

fn hq_log(env: &Env) -> String {
    env.hq.as_ref().unwrap().proc.stderr_text()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// notAfter of a node.crt, unix seconds.
fn not_after(dir: &Path) -> i64 {
    let pem = std::fs::read(dir.join("node.crt")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    x.validity().not_after.timestamp()
}

/// Starts HQ with extra flags (e.g. a short certificate validity).
fn start_hq_with(env: &mut Env, extra: &[&str]) -> String {
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(env.store_args())
        .args(extra);
    let mut proc = Proc::spawn("hq", cmd, &env.logs());
    let addr = proc.wait_listening().unwrap();
    env.hq = Some(Server {
        proc,
        addr: addr.clone(),
    });
    addr
}

#[test]
fn relays_and_agents_enroll_through_the_tree_then_serve_a_job() {
    let mut env = Env::new();
    let hq = env.start_hq();
    // r1 under HQ, r2 under r1: each enrolls through its own parent.
    let (t, hash, v) = token(&env, "relay", &["--uses", "2", "--ttl", "10m"]);
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{v}");
    assert!(v["expires_ms"].as_u64().unwrap() > 0, "{v}");
    enroll(&env, RELAY, &hq, &t, &hash, "r1", &[]).ok();
    let r1 = env.start_relay("r1", &hq);
    enroll(&env, RELAY, &r1, &t, &hash, "r2", &[]).ok();
    let r2 = env.start_relay("r2", &r1);
    let (ta, _, _) = token(&env, "agent", &["--uses", "2"]);
    let out = enroll(&env, AGENT, &r2, &ta, &hash, "a1", &[]).ok();
    assert!(out.stdout.contains("enrolled agent a1"), "{out:?}");
    enroll(&env, AGENT, &r1, &ta, &hash, "a2", &[]).ok();
    for n in ["r1", "r2", "a1", "a2"] {
        let d = env.id_dir(n);
        assert_eq!(mode(&d.join("node.key")), 0o600, "{n}");
        for f in ["ca.crt", "node.crt", "sign.pub"] {
            assert!(d.join(f).is_file(), "{n}/{f}");
        }
        assert_eq!(
            std::fs::read(d.join("ca.crt")).unwrap(),
            std::fs::read(env.hq_dir.join("ca/ca.crt")).unwrap()
        );
        // About 90 days by default.
        let days = (not_after(&d) - chrono_now()) / 86_400;
        assert!((88..=90).contains(&days), "{n}: {days} days");
    }
    env.start_agent("a1", &r2);
    env.start_agent("a2", &r1);
    env.wait_clients(2);
    let job = env.create_job(&["r1"], &[], &env.job_script(""));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job), each(&["a1", "a2"], 1));
    let log = hq_log(&env);
    for n in ["r1", "r2", "a1", "a2"] {
        assert!(
            log.lines()
                .any(|l| l.contains("node enrolled") && l.contains(&format!("name={n}"))),
            "no enrollment of {n} in hq's log"
        );
    }
    assert!(log.contains("enrollment token created"), "{log}");
    // HQ keeps tokens hashed: the token's text is nowhere in its files
    // (nor in its database, when HQ runs on PostgreSQL).
    if let Some(pg) = &env.pg {
        let holding = |text: &str| {
            let q = format!(
                "SELECT count(*) FROM entries WHERE position(convert_to('{text}', 'UTF8') IN key) > 0 \
                 OR position(convert_to('{text}', 'UTF8') IN value) > 0"
            );
            pg.psql("relaytree", &q).unwrap().trim().to_string()
        };
        assert_eq!(holding(&t), "0", "token in clear in the database");
        // The same search finds what is there: the agents' names.
        assert_ne!(holding("a1"), "0");
        return;
    }
    let db = std::fs::read_dir(env.hq_dir.join("db")).unwrap();
    for f in db.flatten() {
        let bytes = std::fs::read(f.path()).unwrap_or_default();
        assert!(
            !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
            "token in clear in {}",
            f.path().display()
        );
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A refused enrollment: exit 2, `why` on stderr, nothing written, and a
/// line at HQ naming the node.
fn refused(env: &Env, out: Out, name: &str, why: &str, at_hq: bool) {
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(why), "{why:?} not in {:?}", out.stderr);
    assert!(
        !env.id_dir(name).join("node.key").exists(),
        "{name}: key written"
    );
    if at_hq {
        wait_until(
            &format!("hq to log the refusal of {name}"),
            DEADLINE,
            || {
                hq_log(env).lines().any(|l| {
                    l.contains("enrollment refused")
                        && l.contains(&format!("name={name}"))
                        && l.contains(why)
                })
            },
        );
    }
}

#[test]
fn every_refusal_is_clear_and_logged() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let (ta, hash, _) = token(&env, "agent", &[]);
    enroll(&env, AGENT, &r1, &ta, &hash, "a1", &[]).ok();
    // Used: one use only.
    let out = enroll(&env, AGENT, &r1, &ta, &hash, "a2", &[]);
    refused(&env, out, "a2", "enrollment token already used", true);
    // Expired.
    let (tx, _, v) = token(&env, "agent", &["--ttl", "1s"]);
    let exp = v["expires_ms"].as_u64().unwrap() as i64;
    wait_until("the token to expire", DEADLINE, || {
        chrono_now() * 1000 > exp + 200
    });
    let out = enroll(&env, AGENT, &r1, &tx, &hash, "a3", &[]);
    refused(&env, out, "a3", "enrollment token expired", true);
    // Wrong role: a relay token for an agent.
    let (tr, _, _) = token(&env, "relay", &["--uses", "5"]);
    let out = enroll(&env, AGENT, &r1, &tr, &hash, "a4", &[]);
    refused(
        &env,
        out,
        "a4",
        "enrollment token is for relays, not agents",
        true,
    );
    // Unknown token.
    let out = enroll(&env, AGENT, &r1, "00ff", &hash, "a4", &[]);
    refused(&env, out, "a4", "unknown enrollment token", true);
    // Name in use: a relay's name, and a name enrolled before.
    let (ta, _, _) = token(&env, "agent", &["--uses", "9"]);
    let again = env.root().join("again-r1");
    let out = enroll_into(AGENT, &r1, &ta, &hash, "r1", &again, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("name r1 is already in use"), "{out:?}");
    let before = std::fs::read(env.id_dir("a1").join("node.crt")).unwrap();
    // An identity already in OUT is never replaced.
    let out = enroll(&env, AGENT, &r1, &ta, &hash, "a1", &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("already holds an identity"), "{out:?}");
    let again = env.root().join("again");
    let out = enroll_into(AGENT, &r1, &ta, &hash, "a1", &again, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("name a1 is already in use"), "{out:?}");
    assert_eq!(
        std::fs::read(env.id_dir("a1").join("node.crt")).unwrap(),
        before
    );
    // Revoked name.
    enroll(&env, AGENT, &r1, &ta, &hash, "a5", &[]).ok();
    env.admin(&["cert", "revoke", "a5"]).ok();
    std::fs::remove_dir_all(env.id_dir("a5")).unwrap();
    let out = enroll(&env, AGENT, &r1, &ta, &hash, "a5", &[]);
    refused(&env, out, "a5", "name a5 is revoked", true);
    // A CSR for another name than the one asked.
    let out = enroll(&env, AGENT, &r1, &ta, &hash, "a6", &["--csr-name", "a7"]);
    refused(&env, out, "a6", "the certificate signing request names spiffe://relaytree.local/agent/a7, not spiffe://relaytree.local/agent/a6", true);
    // Wrong CA hash: refused by the enrolling side before the token leaves
    // it; the listener it dialed (HQ here) logs the failed handshake.
    let bad = format!("sha256:{}", "0".repeat(64));
    let out = enroll(&env, RELAY, &hq, &tr, &bad, "r9", &[]);
    refused(&env, out, "r9", "wrong CA hash", false);
    wait_until("hq to log the refused handshake", DEADLINE, || {
        hq_log(&env)
            .lines()
            .any(|l| l.contains("session refused") && l.contains("handshake"))
    });
    // A malformed hash is a usage error.
    let out = enroll(&env, RELAY, &hq, &tr, "sha256:zz", "r9", &[]);
    refused(&env, out, "r9", "invalid CA hash", false);
    // Agents enroll through a relay, not at HQ.
    let out = enroll(&env, AGENT, &hq, &ta, &hash, "a8", &[]);
    assert_eq!(out.code, 2, "{out:?}");
    // An admin's token is not a thing.
    let out = env.admin(&["token", "create", "--role", "admin"]);
    assert_eq!(out.code, 2, "{out:?}");
    // After all that, the tree still works: a1 serves a job.
    env.start_agent("a1", &r1);
    env.wait_clients(1);
    let job = env.create_ping(&["r1"]);
    assert_eq!(env.wait_job(&job).0, 0);
}

#[test]
fn certificates_renew_without_a_restart() {
    let mut env = Env::new();
    // Certificates of 12 s: renewed after about 8 s.
    let hq = start_hq_with(&mut env, &["--cert-validity", "12s"]);
    let (tr, hash, _) = token(&env, "relay", &[]);
    enroll(&env, RELAY, &hq, &tr, &hash, "r1", &[]).ok();
    let r1 = env.start_relay("r1", &hq);
    let (ta, _, _) = token(&env, "agent", &[]);
    enroll(&env, AGENT, &r1, &ta, &hash, "a1", &[]).ok();
    let a1 = env.id_dir("a1");
    let first = std::fs::read(a1.join("node.crt")).unwrap();
    let first_end = not_after(&a1);
    let key = std::fs::read(a1.join("node.key")).unwrap();
    let r1_end = not_after(&env.id_dir("r1"));
    env.start_agent("a1", &r1);
    env.wait_clients(1);
    wait_until("a1's certificate to be renewed", DEADLINE, || {
        std::fs::read(a1.join("node.crt")).unwrap() != first
    });
    assert!(not_after(&a1) > first_end, "the new notAfter is later");
    assert_eq!(std::fs::read(a1.join("node.key")).unwrap(), key, "same key");
    assert_eq!(mode(&a1.join("node.key")), 0o600);
    wait_until("r1's certificate to be renewed", DEADLINE, || {
        not_after(&env.id_dir("r1")) > r1_end
    });
    // Nobody restarted.
    assert!(env.agents.get_mut("a1").unwrap().try_wait().is_none());
    assert!(env.relays.get_mut("r1").unwrap().proc.try_wait().is_none());
    // Once the first certificates expired, new connections must use the
    // renewed ones: restart the relay (from its renewed files) and the
    // agent, still running, reconnects with its renewed certificate.
    wait_until("a1's first certificate to expire", DEADLINE, || {
        chrono_now() > first_end + 1
    });
    let addr = env.kill_relay("r1");
    env.start_relay_on("r1", &hq, &addr);
    let job = env.create_ping(&["r1"]);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert!(env.agents.get_mut("a1").unwrap().try_wait().is_none());
    let log = hq_log(&env);
    for n in ["a1", "r1"] {
        assert!(
            log.lines()
                .any(|l| l.contains("certificate renewed") && l.contains(&format!("name={n}"))),
            "no renewal of {n} in hq's log"
        );
    }
}

/// `hq serve` with a config file, a variable and a flag; returns the address
/// it announced or its exit code and stderr.
fn serve_with(
    env: &Env,
    cfg: &Path,
    var: Option<&str>,
    flag: Option<&str>,
) -> Result<String, (i32, String)> {
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .env_remove("RELAYTREE_LISTEN");
    if let Some(v) = var {
        cmd.env("RELAYTREE_LISTEN", v);
    }
    if let Some(f) = flag {
        cmd.args(["--listen", f]);
    }
    let mut p = Proc::spawn("hq-config", cmd, &env.logs());
    match p.wait_listening() {
        Ok(a) => Ok(a),
        Err(_) => {
            let st = p.wait_exit(DEADLINE);
            Err((st.code().unwrap_or(-1), p.stderr_text()))
        }
    }
}

#[test]
fn config_file_then_environment_then_flags() {
    let env = Env::new();
    let cfg: PathBuf = env.root().join("hq.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.2:0\"\nretention = \"7d\"\nheartbeat = \"2s\"\n",
            env.hq_dir.display().to_string()
        ),
    )
    .unwrap();
    let host = |a: &str| a.rsplit_once(':').unwrap().0.to_string();
    assert_eq!(
        host(&serve_with(&env, &cfg, None, None).unwrap()),
        "127.0.0.2"
    );
    assert_eq!(
        host(&serve_with(&env, &cfg, Some("127.0.0.3:0"), None).unwrap()),
        "127.0.0.3"
    );
    assert_eq!(
        host(&serve_with(&env, &cfg, Some("127.0.0.3:0"), Some("127.0.0.4:0")).unwrap()),
        "127.0.0.4"
    );
    // A misspelt key: exit 2, the key and the file named.
    std::fs::write(
        &cfg,
        "data_dir = \"/x\"\nlisten = \"127.0.0.1:0\"\nretension = \"7d\"\n",
    )
    .unwrap();
    let (code, err) = serve_with(&env, &cfg, None, None).unwrap_err();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown key \"retension\"") && err.contains("hq.toml"),
        "{err}"
    );
    // A bad value: the key and the file named.
    std::fs::write(
        &cfg,
        "data_dir = \"/x\"\nlisten = \"127.0.0.1:0\"\nheartbeat = \"soon\"\n",
    )
    .unwrap();
    let (code, err) = serve_with(&env, &cfg, None, None).unwrap_err();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("key \"heartbeat\"") && err.contains("hq.toml"),
        "{err}"
    );
    // A file that is not there.
    let (code, err) = serve_with(&env, &env.root().join("nope.toml"), None, None).unwrap_err();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn completions_for_every_binary() {
    for (bin, shell) in [(HQ, "bash"), (RELAY, "zsh"), (AGENT, "fish")] {
        let out = Out::of(run(Command::new(bin).args(["completions", shell]))).ok();
        assert!(
            out.stdout.contains("serve"),
            "{bin} {shell}: {}",
            out.stdout
        );
    }
}

/// Without a certificate a peer may send one enrollment request and
/// nothing else; a burst of requests is rate-limited per listener.
#[test]
fn anonymous_peers_get_one_enrollment_request_only() {
    use futures::{SinkExt, StreamExt};
    use relaytree::proto::{CertRequest, Hello, Msg, MsgCodec, NodeName, Role};
    use relaytree::tls::enroll::{parse_ca_hash, EnrollTls};
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let (_, hash, _) = token(&env, "agent", &[]);
    let pin = parse_ca_hash(&hash).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let open = || async {
            let tls = EnrollTls::new(pin, &[Role::Relay]).unwrap();
            let tcp = tokio::net::TcpStream::connect(&r1).await.unwrap();
            let (s, _) = relaytree::tls::connect(&tls.connector, tcp).await.unwrap();
            tokio_util::codec::Framed::new(s, MsgCodec::with_max_frame(1 << 20))
        };
        // A hello (a session) without a certificate: refused, closed.
        let mut f = open().await;
        f.send(&Msg::Hello(Hello {
            version: relaytree::proto::PROTOCOL_VERSION,
            name: NodeName::new("a1").unwrap(),
            role: Role::Agent,
            purpose: Default::default(),
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        }))
        .await
        .unwrap();
        match f.next().await {
            Some(Ok(Msg::Bye { reason })) => {
                assert!(reason.contains("only an enrollment"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(f.next().await, None | Some(Err(_))),
            "closed after the refusal"
        );
        // A renewal (no token) anonymously: the same.
        let mut f = open().await;
        let req = CertRequest {
            name: NodeName::new("a1").unwrap(),
            role: Role::Agent,
            csr_pem: String::new(),
            token: None,
        };
        f.send(&Msg::CertRequest { id: 1, req }).await.unwrap();
        assert!(matches!(f.next().await, Some(Ok(Msg::Bye { .. }))));
        // A frame over the small anonymous limit: closed without an answer.
        let mut f = open().await;
        let req = CertRequest {
            name: NodeName::new("a1").unwrap(),
            role: Role::Agent,
            csr_pem: "x".repeat(64 * 1024),
            token: Some("t".into()),
        };
        let _ = f.send(&Msg::CertRequest { id: 1, req }).await;
        assert!(!matches!(f.next().await, Some(Ok(Msg::CertReply { .. }))));
        // A burst: past the listener's allowance, refused as too many.
        let mut limited = 0;
        for i in 0..40 {
            let tls = EnrollTls::new(pin, &[Role::Relay]).unwrap();
            let r = relaytree::link::certs::enroll(
                &r1,
                &tls,
                |_| {
                    Ok(CertRequest {
                        name: NodeName::new(format!("b{i}")).unwrap(),
                        role: Role::Agent,
                        csr_pem: String::new(),
                        token: Some("bogus".into()),
                    })
                },
                DEADLINE,
            )
            .await;
            match r {
                Err(relaytree::link::LinkError::Refused(why)) if why.contains("too many") => {
                    limited += 1
                }
                Err(relaytree::link::LinkError::Refused(why)) => {
                    assert!(why.contains("unknown enrollment token"), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(limited >= 10, "only {limited} of 40 rate-limited");
    });
    // The relay serves on.
    assert!(env.relays.get_mut("r1").unwrap().proc.try_wait().is_none());
}
