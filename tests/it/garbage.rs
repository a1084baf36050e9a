//! Garbage on the HQ and relay ports closes that one connection, before and
//! after `Hello`, well within the handshake timeout and for the reason the
//! server logs; the servers keep serving everyone else.

use crate::harness::*;
use relaytree::proto::{codec, Hello, Msg, Role, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

/// Well under the servers' 10 s handshake timeout: a connection closed in
/// time was closed for its garbage, not for its silence.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Writes `bytes` on a plain TCP connection and expects the server to close it.
fn plain(addr: &str, what: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    // The server may close before it has read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{addr}: connection with {what} still open after {CLOSE_WITHIN:?}")
            }
            Err(_) => return, // reset
        }
    }
}

/// Opens a TLS session with `identity` to a server of role `server`.
pub async fn tls_connect(
    addr: &str,
    identity: &Path,
    server: Role,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    relaytree::tls::Identity,
) {
    let id = relaytree::tls::Identity::load(identity).unwrap();
    let connector = tokio_rustls::TlsConnector::from(id.client_config(server, None).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("{addr}: TLS handshake: {e}"));
    (s, id)
}

/// One length-prefixed frame holding `msg`.
pub fn frame(msg: &Msg) -> Vec<u8> {
    let body = codec::encode(msg).unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

pub fn hello_of(id: &relaytree::tls::Identity) -> Msg {
    Msg::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: id.me().name.clone(),
        role: id.me().role,
        purpose: Default::default(),
        hq_now_ms: None,
        about: None,
        idle_timeout_ms: None,
    })
}

/// Reads one frame.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Msg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await?;
    codec::decode(&body).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Where a server logs, and what it logged so far.
struct Log<'a>(&'a dyn Fn() -> String);

impl Log<'_> {
    fn count(&self, reason: &str) -> usize {
        (self.0)().matches(reason).count()
    }
}

/// Completes TLS with `identity` (the server must have role `server`);
/// with `hello`, exchanges `Hello`s first; then sends `bytes` and expects
/// the server to close the session within [`CLOSE_WITHIN`], logging `reason`.
#[allow(clippy::too_many_arguments)]
async fn tls(
    addr: &str,
    identity: &Path,
    server: Role,
    hello: bool,
    what: &str,
    bytes: &[u8],
    log: &Log<'_>,
    reason: &str,
) {
    let before = log.count(reason);
    let (mut s, id) = tls_connect(addr, identity, server).await;
    if hello {
        s.write_all(&frame(&hello_of(&id))).await.unwrap();
        s.flush().await.unwrap();
        let theirs = tokio::time::timeout(CLOSE_WITHIN, read_frame(&mut s))
            .await
            .expect("the server's hello")
            .unwrap();
        assert!(matches!(theirs, Msg::Hello(_)), "{theirs:?}");
    }
    let _ = s.write_all(bytes).await;
    let _ = s.flush().await;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(CLOSE_WITHIN, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // heartbeats, a Bye
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{addr}: TLS session with {what} still open after {CLOSE_WITHIN:?}"
    );
    let end = std::time::Instant::now() + CLOSE_WITHIN;
    while log.count(reason) <= before {
        assert!(
            std::time::Instant::now() < end,
            "{addr}: {what}: {reason:?} never logged:\n{}",
            (log.0)()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every kind of plain-TCP garbage against `addr`.
fn plain_garbage(addr: &str) {
    plain(
        addr,
        "random bytes",
        &noise(64 * 1024, 0x9e37_79b9_7f4a_7c15),
    );
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend(noise(1024, 7));
    plain(addr, "a huge length prefix", &huge);
    plain(
        addr,
        "an HTTP request",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    // A truncated TLS ClientHello, then a TLS-less close from our side.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    half_close_and_drain(s, "a truncated ClientHello");
    // Connect and close without a byte.
    drop(TcpStream::connect(addr).unwrap());
    half_close_and_drain(TcpStream::connect(addr).unwrap(), "nothing");
}

/// Closes our side without TLS close_notify; the server must close too.
fn half_close_and_drain(mut s: TcpStream, what: &str) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection with {what} then EOF still open after {CLOSE_WITHIN:?}")
            }
            Err(_) => return,
        }
    }
}

/// Garbage inside authenticated TLS sessions, before and after `Hello`,
/// each with the reason the server must log.
async fn tls_garbage(addr: &str, identity: &Path, server: Role, log: &Log<'_>) {
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend(noise(64, 3));
    let mut junk = 200u32.to_be_bytes().to_vec();
    junk.extend(noise(200, 11));
    // 9 MiB: one frame over the 8 MiB limit.
    let over = (9u32 * 1024 * 1024).to_be_bytes().to_vec();
    const TOO_BIG: &str = "frame size too big";
    const UNDECODABLE: &str = "undecodable message (200 bytes)";
    for (hello, what, bytes, reason) in [
        (false, "a huge length prefix", &huge, TOO_BIG),
        (false, "an undecodable frame", &junk, UNDECODABLE),
        (false, "an oversized frame", &over, TOO_BIG),
        (true, "garbage after hello", &junk, UNDECODABLE),
        (true, "a huge length after hello", &huge, TOO_BIG),
        (true, "an oversized frame after hello", &over, TOO_BIG),
    ] {
        tls(addr, identity, server, hello, what, bytes, log, reason).await;
    }
}

#[test]
fn garbage_on_each_port_leaves_servers_serving() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    // Never runs as a relay: only used to open TLS sessions to r1 (after
    // Hello it is a child relay of r1, with no clients).
    let intruder = env.issue("relay", "rg");

    // A connection that says nothing stays open meanwhile.
    let idle_hq = TcpStream::connect(&hq).unwrap();
    let idle_relay = TcpStream::connect(&r1).unwrap();

    for addr in [&hq, &r1] {
        plain_garbage(addr);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hq_log = || env.hq.as_ref().unwrap().proc.stderr_text();
    let r1_log = || env.relays["r1"].proc.stderr_text();
    rt.block_on(async {
        tls_garbage(&hq, &env.hq_dir.join("admin"), Role::Hq, &Log(&hq_log)).await;
        tls_garbage(&r1, &intruder, Role::Relay, &Log(&r1_log)).await;
    });

    assert!(
        env.hq.as_mut().unwrap().proc.try_wait().is_none(),
        "hq died"
    );
    assert!(
        env.relays.get_mut("r1").unwrap().proc.try_wait().is_none(),
        "r1 died"
    );
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1"], "succeeded"));
    assert_eq!(env.run_counts(&job), each(&["c1"], 1));
    assert_eq!(env.tree()["clients"], 1, "garbage registered a client");
    drop((idle_hq, idle_relay));
}

/// A message sent right behind `Hello`, before the server's `Hello` came
/// back, must be answered: nothing obliges a peer to wait.
#[test]
fn message_pipelined_after_hello_is_answered() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let admin = env.hq_dir.join("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut s, id) = tls_connect(&hq, &admin, Role::Hq).await;
        let mut bytes = frame(&hello_of(&id));
        bytes.extend(frame(&Msg::AdminReq {
            id: 1,
            req: relaytree::proto::AdminRequest::List,
        }));
        s.write_all(&bytes).await.unwrap();
        s.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match read_frame(&mut s).await.unwrap() {
                    Msg::AdminResp { id, resp } => return (id, resp),
                    _ => continue,
                }
            }
        })
        .await
        .expect("no answer within 3 s to a request pipelined behind Hello");
        assert_eq!(answer.0, 1);
        assert!(answer.1.is_ok(), "{answer:?}");
    });
}
