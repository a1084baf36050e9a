//! Tests for the tls module: CA and node certificates on disk, loading
//! identities, and real handshakes over loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::verify::check_admitted;
use super::*;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

/// A CA in `tmp/ca` and nodes hq, r1 (relay), a1 (agent), ad1 (admin).
struct Install {
    tmp: TempDir,
    ca: Ca,
}

impl Install {
    fn new(trust_domain: &str) -> Install {
        let tmp = TempDir::new().unwrap();
        let ca = Ca::create(trust_domain).unwrap();
        ca.save(&tmp.path().join("ca")).unwrap();
        for (role, n) in [
            (Role::Hq, "hq"),
            (Role::Relay, "r1"),
            (Role::Relay, "r2"),
            (Role::Agent, "a1"),
            (Role::Admin, "ad1"),
        ] {
            ca.issue(role, &name(n), &tmp.path().join(n)).unwrap();
        }
        Install { tmp, ca }
    }
    fn dir(&self, n: &str) -> PathBuf {
        self.tmp.path().join(n)
    }
    fn id(&self, n: &str) -> Identity {
        Identity::load(&self.dir(n)).unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs one handshake. Returns what the server's `accept` said and what the
/// client saw from `connect` plus its first read (the server writes "ok"
/// once it has admitted the client).
async fn handshake(
    server: &Identity,
    admit: &[Role],
    client: &Identity,
    expect_role: Role,
    expect_name: Option<&NodeName>,
) -> (Result<PeerIdentity, TlsError>, Result<PeerIdentity, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config(admit).unwrap());
    let admit = admit.to_vec();
    let td = server.me().trust_domain.clone();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut tls, peer) = accept(&acceptor, tcp, &admit, &td).await?;
        tls.write_all(b"ok").await.map_err(TlsError::Handshake)?;
        tls.flush().await.map_err(TlsError::Handshake)?;
        // Wait for the client to close so that "ok" is not lost to a reset.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok(peer)
    });

    let connector = TlsConnector::from(client.client_config(expect_role, expect_name).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let cli = async {
        let (mut tls, peer) = connect(&connector, tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("first read: {e}"))?;
        assert_eq!(&buf, b"ok");
        let _ = tls.shutdown().await;
        Ok(peer)
    };
    let cli: Result<PeerIdentity, String> = cli.await;
    let srv = srv.await.unwrap();
    (srv, cli)
}

#[test]
fn issue_writes_files_with_modes_and_loads() {
    let inst = Install::new("example.org");
    assert_eq!(mode(&inst.dir("ca").join("ca.key")), 0o600);
    assert_eq!(mode(&inst.dir("ca").join("ca.crt")), 0o644);
    assert_eq!(mode(&inst.dir("r1").join("node.key")), 0o600);
    assert_eq!(mode(&inst.dir("r1").join("node.crt")), 0o644);
    assert_eq!(mode(&inst.dir("r1").join("ca.crt")), 0o644);
    let r1 = inst.id("r1");
    assert_eq!(
        r1.me(),
        &PeerIdentity {
            role: Role::Relay,
            name: name("r1"),
            trust_domain: "example.org".into()
        }
    );
    assert_eq!(inst.id("a1").me().role, Role::Agent);
    assert_eq!(inst.id("ad1").me().role, Role::Admin);
    assert_eq!(inst.id("hq").me().role, Role::Hq);
}

#[test]
fn ca_save_load_round_trip() {
    let inst = Install::new("example.org");
    let ca = Ca::load(&inst.dir("ca")).unwrap();
    assert_eq!(ca.trust_domain(), "example.org");
    assert_eq!(ca.cert_der(), inst.ca.cert_der());
    ca.issue(Role::Agent, &name("a2"), &inst.dir("a2")).unwrap();
    assert_eq!(inst.id("a2").me().name, name("a2"));
}

#[test]
fn ca_load_refuses_open_key() {
    let inst = Install::new("example.org");
    let key = inst.dir("ca").join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Ca::load(&inst.dir("ca")).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn ca_create_validates_trust_domain() {
    for bad in ["", "Example.org", "a_b", "a/b", ".a", "a.", "a..b", "-a"] {
        assert!(
            matches!(Ca::create(bad), Err(TlsError::InvalidTrustDomain(_))),
            "{bad:?} accepted"
        );
    }
    assert!(Ca::create("relaytree.example-1.org").is_ok());
}

#[test]
fn issue_overwrites_open_key_with_0600() {
    let inst = Install::new("example.org");
    let key = inst.dir("r1").join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    inst.ca
        .issue(Role::Relay, &name("r1"), &inst.dir("r1"))
        .unwrap();
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn load_refuses_key_readable_by_others() {
    let inst = Install::new("example.org");
    let key = inst.dir("r1").join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Identity::load(&inst.dir("r1")).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("0644"), "{err}");
}

#[test]
fn load_names_missing_file() {
    let inst = Install::new("example.org");
    let crt = inst.dir("r1").join("node.crt");
    std::fs::remove_file(&crt).unwrap();
    let err = Identity::load(&inst.dir("r1")).unwrap_err().to_string();
    assert!(err.starts_with("cannot read "), "{err}");
    assert!(err.contains(&crt.display().to_string()), "{err}");
}

#[test]
fn load_refuses_mismatched_key_and_foreign_ca() {
    let inst = Install::new("example.org");
    // r1's certificate with a1's key.
    std::fs::copy(
        inst.dir("a1").join("node.key"),
        inst.dir("r1").join("node.key"),
    )
    .unwrap();
    let err = Identity::load(&inst.dir("r1")).unwrap_err().to_string();
    assert!(
        err.contains("node.key") && err.contains("does not match"),
        "{err}"
    );

    // r2's certificate under a foreign CA of the same trust domain.
    let other = Install::new("example.org");
    std::fs::copy(
        other.dir("r2").join("ca.crt"),
        inst.dir("r2").join("ca.crt"),
    )
    .unwrap();
    let err = Identity::load(&inst.dir("r2")).unwrap_err().to_string();
    assert!(
        err.contains("node.crt") && err.contains("not valid under"),
        "{err}"
    );
}

#[test]
fn load_refuses_garbage() {
    let inst = Install::new("example.org");
    std::fs::write(inst.dir("r1").join("node.crt"), "not pem\n").unwrap();
    let err = Identity::load(&inst.dir("r1")).unwrap_err().to_string();
    assert!(
        err.contains("node.crt") && err.contains("no PEM certificate"),
        "{err}"
    );
}

fn self_signed_with(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.self_signed(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

#[test]
fn identity_from_cert_needs_exactly_one_spiffe_id() {
    let none = self_signed_with(vec![SanType::DnsName(
        Ia5String::try_from("r1.example.org").unwrap(),
    )]);
    let err = identity_from_cert(&none).unwrap_err();
    assert!(matches!(err, TlsError::NoSpiffeId), "{err}");
    assert_eq!(err.to_string(), "certificate has no spiffe:// URI SAN");

    let no_san = self_signed_with(vec![]);
    assert!(matches!(
        identity_from_cert(&no_san),
        Err(TlsError::NoSpiffeId)
    ));

    let two = self_signed_with(vec![
        uri("spiffe://example.org/relay/r1"),
        uri("SPIFFE://example.org/admin/x"),
    ]);
    let err = identity_from_cert(&two).unwrap_err();
    assert_eq!(err.to_string(), "certificate has 2 spiffe:// URI SANs");

    let one = self_signed_with(vec![
        uri("https://example.org/"),
        uri("spiffe://example.org/agent/a-1.x"),
    ]);
    assert_eq!(
        identity_from_cert(&one).unwrap(),
        PeerIdentity {
            role: Role::Agent,
            name: name("a-1.x"),
            trust_domain: "example.org".into()
        }
    );

    for bad in [
        "spiffe://example.org/wizard/x",
        "spiffe://example.org/relay/X",
        "spiffe://example.org/relay",
        "spiffe://example.org/relay/r1/extra",
        "spiffe://Example.org/relay/r1",
        "spiffe:///relay/r1",
    ] {
        let der = self_signed_with(vec![uri(bad)]);
        assert!(
            matches!(identity_from_cert(&der), Err(TlsError::BadSpiffeId { .. })),
            "{bad} accepted"
        );
    }
    assert!(matches!(
        identity_from_cert(b"junk"),
        Err(TlsError::BadCertificate(_))
    ));
}

#[test]
fn admission_messages() {
    let peer = PeerIdentity {
        role: Role::Agent,
        name: name("a1"),
        trust_domain: "example.org".into(),
    };
    let err = check_admitted(&peer, &[Role::Relay, Role::Admin], "example.org").unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer role agent is not admitted here (expected relay or admin)"
    );
    let err = check_admitted(&peer, &[Role::Agent], "other.org").unwrap_err();
    assert!(
        err.to_string().starts_with("trust domain mismatch"),
        "{err}"
    );
    check_admitted(&peer, &[Role::Relay, Role::Agent], "example.org").unwrap();
}

#[tokio::test]
async fn relay_admitted_by_hq() {
    let inst = Install::new("example.org");
    let (hq, r1) = (inst.id("hq"), inst.id("r1"));
    let (srv, cli) = handshake(
        &hq,
        &[Role::Relay, Role::Admin],
        &r1,
        Role::Hq,
        Some(&name("hq")),
    )
    .await;
    assert_eq!(srv.unwrap(), r1.me().clone());
    assert_eq!(cli.unwrap(), hq.me().clone());
}

#[tokio::test]
async fn agent_refused_by_hq() {
    let inst = Install::new("example.org");
    let (hq, a1) = (inst.id("hq"), inst.id("a1"));
    let (srv, cli) = handshake(&hq, &[Role::Relay, Role::Admin], &a1, Role::Hq, None).await;
    let err = srv.unwrap_err();
    assert!(matches!(err, TlsError::Refused(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "peer role agent is not admitted here (expected relay or admin)"
    );
    // TLS 1.3: the refusal reaches the client on its first read.
    let cli = cli.unwrap_err();
    assert!(cli.starts_with("first read"), "{cli}");
}

#[tokio::test]
async fn foreign_ca_refused() {
    let inst = Install::new("example.org");
    let other = Install::new("example.org");
    let hq = inst.id("hq");
    // A relay certificate from a foreign CA (same trust domain, same CA subject),
    // dialing with our CA as its roots so that it accepts our server: the
    // server must refuse it on the chain.
    let mut foreign = other.id("r1");
    foreign.roots = hq.roots.clone();
    let (srv, cli) = handshake(&hq, &[Role::Relay, Role::Admin], &foreign, Role::Hq, None).await;
    let err = srv.unwrap_err();
    assert!(matches!(err, TlsError::Handshake(_)), "{err:?}");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    let cli = cli.unwrap_err();
    assert!(cli.starts_with("first read"), "{cli}");

    // And a dialer refuses a server from the foreign CA.
    let (srv, cli) = handshake(
        &other.id("r1"),
        &[Role::Relay],
        &inst.id("r2"),
        Role::Relay,
        None,
    )
    .await;
    let cli = cli.unwrap_err();
    assert!(cli.contains("invalid peer certificate"), "{cli}");
    assert!(srv.is_err());
}

#[tokio::test]
async fn dialer_refuses_wrong_role_or_name() {
    let inst = Install::new("example.org");
    let (a1, r1, r2) = (inst.id("a1"), inst.id("r1"), inst.id("r2"));
    // An agent's certificate cannot act as a relay.
    let (srv, cli) = handshake(&a1, &[Role::Relay, Role::Agent], &r2, Role::Relay, None).await;
    let err = cli.unwrap_err();
    assert!(
        err.contains("server role agent is not the expected relay"),
        "{err}"
    );
    assert!(srv.is_err());

    let (_, cli) = handshake(
        &r1,
        &[Role::Relay, Role::Agent],
        &r2,
        Role::Relay,
        Some(&name("r9")),
    )
    .await;
    let err = cli.unwrap_err();
    assert!(
        err.contains("server name r1 is not the expected r9"),
        "{err}"
    );

    // The right role and name are accepted.
    let (srv, cli) = handshake(
        &r1,
        &[Role::Relay, Role::Agent],
        &a1,
        Role::Relay,
        Some(&name("r1")),
    )
    .await;
    assert_eq!(srv.unwrap(), a1.me().clone());
    assert_eq!(cli.unwrap().name, name("r1"));
}
