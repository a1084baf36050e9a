//! A parent that misbehaves on a transfer connection (a tampering or broken
//! relay): wrong bytes, a blob left out, blobs interleaved. The real fetching
//! code, over real TLS, refuses each and stores nothing it cannot verify.

use crate::harness::*;
use relaytree::link::transfer::{self, TransferError};
use relaytree::link::{self, Admission, Dialer, Session, Timing};
use relaytree::pkg::{ChunkHash, ChunkStore, PkgError};
use relaytree::proto::{Hello, Msg, NodeName, Purpose, Role, PROTOCOL_VERSION};
use relaytree::tls::Identity;
use std::sync::Arc;

/// What the fake parent does with a `GetBlobs`.
#[derive(Clone, Copy)]
enum Misdeed {
    WrongBytes,
    LeaveOneOut,
    Interleave,
}

fn hello(name: &str, role: Role, purpose: Purpose) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        name: NodeName::new(name).unwrap(),
        role,
        purpose,
        hq_now_ms: None,
        about: None,
        idle_timeout_ms: None,
    }
}

async fn misbehave(s: Session, how: Misdeed, blobs: Vec<(ChunkHash, Vec<u8>)>) {
    let Session { tx, mut rx, .. } = s;
    while let Ok(Msg::GetBlobs { hashes }) = rx.recv().await {
        let piece = |hash: ChunkHash, offset: usize, total: usize, data: &[u8]| Msg::Blob {
            hash,
            offset: offset as u64,
            total: total as u64,
            data: data.to_vec(),
        };
        let asked: Vec<&(ChunkHash, Vec<u8>)> =
            blobs.iter().filter(|(h, _)| hashes.contains(h)).collect();
        match how {
            Misdeed::WrongBytes => {
                for (h, b) in &asked {
                    let mut bad = b.clone();
                    bad[0] ^= 1;
                    let _ = tx.send(piece(*h, 0, bad.len(), &bad)).await;
                }
            }
            Misdeed::LeaveOneOut => {
                for (h, b) in asked.iter().skip(1) {
                    let _ = tx.send(piece(*h, 0, b.len(), b)).await;
                }
            }
            Misdeed::Interleave => {
                let (a, b) = (asked[0], asked[1]);
                let _ = tx.send(piece(a.0, 0, a.1.len(), &a.1[..2])).await;
                let _ = tx.send(piece(b.0, 0, b.1.len(), &b.1)).await;
            }
        }
        let _ = tx.send(Msg::BlobsDone).await;
    }
}

fn fetch_from_misbehaving_parent(how: Misdeed) -> (TransferError, usize) {
    let env = Env::new();
    let parent = Identity::load(&env.issue("relay", "evil")).unwrap();
    let child = Identity::load(&env.issue("relay", "r2")).unwrap();
    let blobs: Vec<(ChunkHash, Vec<u8>)> = (0..3u8)
        .map(|i| {
            let b = vec![i; 1000 + i as usize];
            (ChunkHash::of(&b), b)
        })
        .collect();
    let hashes: Vec<ChunkHash> = blobs.iter().map(|(h, _)| *h).collect();
    let store = Arc::new(ChunkStore::open(env.root().join("cache")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let err = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let adm = Arc::new(Admission {
            admit: vec![Role::Relay],
            me: hello("evil", Role::Relay, Purpose::Session),
            trust_domain: parent.me().trust_domain.clone(),
            timing: Timing::default(),
            limits: Default::default(),
            denied: Default::default(),
            clock: Default::default(),
        });
        let acceptor =
            tokio_rustls::TlsAcceptor::from(parent.server_config(&[Role::Relay]).unwrap());
        let served = blobs.clone();
        tokio::spawn(link::serve(
            listener,
            acceptor,
            adm,
            stop.clone(),
            move |s| misbehave(s, how, served.clone()),
        ));
        let dialer = Dialer {
            addr: addr.into(),
            connector: tokio_rustls::TlsConnector::from(
                child.client_config(Role::Relay, None).unwrap(),
            ),
            me: hello("r2", Role::Relay, Purpose::Transfer),
            timing: Timing::default(),
            gate: None,
        };
        let mut received = 0;
        tokio::time::timeout(
            DEADLINE,
            transfer::fetch(&dialer, &store, &hashes, &mut received),
        )
        .await
        .expect("fetch did not end")
        .expect_err("a misbehaving parent was believed")
    });
    stop.cancel();
    // Whatever was stored verifies.
    let stored = hashes.iter().filter(|h| store.has(h)).count();
    for h in &hashes {
        if store.has(h) {
            assert_eq!(ChunkHash::of(&store.get(h).unwrap()), *h);
        }
    }
    (err, stored)
}

#[test]
fn wrong_bytes_from_a_parent_are_refused_by_their_hash() {
    let (err, stored) = fetch_from_misbehaving_parent(Misdeed::WrongBytes);
    assert!(
        matches!(err, TransferError::Pkg(PkgError::HashMismatch { .. })),
        "{err}"
    );
    assert_eq!(stored, 0);
}

#[test]
fn a_batch_with_a_blob_left_out_is_an_error_not_a_success() {
    let (err, _) = fetch_from_misbehaving_parent(Misdeed::LeaveOneOut);
    assert!(err.to_string().contains("without sending blob"), "{err}");
}

#[test]
fn interleaved_blobs_are_refused() {
    let (err, stored) = fetch_from_misbehaving_parent(Misdeed::Interleave);
    assert!(
        err.to_string().contains("before the previous blob ended"),
        "{err}"
    );
    assert_eq!(stored, 0);
}
