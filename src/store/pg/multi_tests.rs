//! Two stores on one database, as two HQs use it: change notices sent only
//! on commit and never to their sender, the duty fence, and a transaction
//! that lost its connection never reported committed.

use super::notify::Notice;
use super::tests::{server, CA};
use crate::store::{Store, StoreError};
use std::time::Duration;
use tokio::sync::broadcast::Receiver;

/// The next notice within a generous deadline, skipping the listener
/// probes' and the "re-read" that each listener says once it is up.
async fn next(rx: &mut Receiver<Notice>) -> Notice {
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no notice within 30 s")
            .expect("notice channel closed");
        if !is_noise(&n) {
            return n;
        }
    }
}

fn is_noise(n: &Notice) -> bool {
    match n {
        Notice::Lost => true,
        Notice::Wrote { tree } => tree == "probe",
        Notice::Put { .. } => false,
    }
}

/// Waits until `to`'s listener hears a commit of `from`'s: each store's
/// listener connects on a thread of its own, on no schedule of the test's.
async fn until_heard(from: &Store, to: &mut Receiver<Notice>) {
    let probe = from.table("probe").unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < end, "a listener never came up");
        probe.put(b"p", &1u32).unwrap();
        from.durable().await.unwrap();
        let wait = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(n)) = tokio::time::timeout_at(wait, to.recv()).await {
            if n == (Notice::Wrote {
                tree: "probe".into(),
            }) {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_commit_is_announced_to_the_other_stores_only() {
    let Some(pg) = server() else { return };
    let url = pg.url("postgres");
    let a = Store::connect(&url, CA).unwrap();
    let b = Store::connect(&url, CA).unwrap();
    a.announce_keys("down");
    let mut at_a = a.notices().unwrap();
    let mut at_b = b.notices().unwrap();
    // The listeners are up once each hears the other's commit.
    let (down, leaves) = (a.table("down").unwrap(), a.table("leaves").unwrap());
    until_heard(&b, &mut at_a).await;
    until_heard(&a, &mut at_b).await;
    down.put(b"r1\0\x01k", &7u32).unwrap();
    leaves.put(b"k1", &1u32).unwrap();
    leaves.put(b"k2", &1u32).unwrap();
    a.durable().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut at_b).await);
    }
    got.sort_by_key(|n| format!("{n:?}"));
    // Sent with the commit: what a notice names is there to read.
    assert_eq!(
        b.table("down").unwrap().get::<u32>(b"r1\0\x01k").unwrap(),
        Some(7)
    );
    assert_eq!(
        got,
        vec![
            Notice::Put {
                tree: "down".into(),
                key: b"r1\0\x01k".to_vec()
            },
            Notice::Wrote {
                tree: "down".into()
            },
            Notice::Wrote {
                tree: "leaves".into()
            },
        ]
    );
    // a hears nothing of its own commit (only b's probes, if any).
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), at_a.recv()).await {
        assert!(is_noise(&n), "a heard {n:?}");
    }
    // A change rolled back announces nothing.
    let r: Result<(), StoreError> = a.atomically(&[&down], |w| {
        w.put(&down, b"r1\0\x01x", &1u32)?;
        Err(StoreError::Pg("refused".into()).into())
    });
    assert!(r.is_err());
    leaves.put(b"k3", &1u32).unwrap();
    a.durable().await.unwrap();
    assert_eq!(
        next(&mut at_b).await,
        Notice::Wrote {
            tree: "leaves".into()
        }
    );
}

#[tokio::test]
async fn only_the_holder_of_a_duty_commits_a_fenced_change() {
    let Some(pg) = server() else { return };
    let url = pg.url("postgres");
    let a = Store::connect(&url, CA).unwrap();
    let b = Store::connect(&url, CA).unwrap();
    let (ta, tb) = (a.table("occ").unwrap(), b.table("occ").unwrap());
    assert!(a.holds_duty("repeats"));
    let fenced = |s: &Store, t: &crate::store::Table, k: &'static [u8]| {
        s.atomically(&[t], |w| {
            s.fence("repeats")?;
            w.put(t, k, &1u32)?;
            Ok(())
        })
    };
    fenced(&a, &ta, b"a1").unwrap();
    let e = fenced(&b, &tb, b"b1").unwrap_err();
    assert!(matches!(e, StoreError::NotDuty(_)), "{e}");
    a.durable().await.unwrap();
    b.durable().await.unwrap();
    assert!(ta.contains(b"a1").unwrap());
    assert!(!ta.contains(b"b1").unwrap(), "b committed without the duty");
    // b fences (and so takes the duty) once a's connection is gone.
    drop(ta);
    a.close().await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while fenced(&b, &tb, b"b2").is_err() {
        assert!(std::time::Instant::now() < end, "the duty never passed on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.durable().await.unwrap();
    assert!(tb.contains(b"b2").unwrap());
    assert!(b.holds_duty("repeats"));
}

#[tokio::test]
async fn writes_cut_off_by_a_database_restart_are_never_reported_committed() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let pg = std::cell::RefCell::new(pg);
    let t = s.table("t").unwrap();
    // Inside a savepoint the open transaction is not committed by the
    // idle timer: the restart cuts it off with a write in it.
    let r = s.atomically(&[&t], |w| {
        w.put(&t, b"before", &1u32)?;
        assert_eq!(w.get::<u32>(&t, b"before")?, Some(1));
        pg.borrow_mut().restart().map_err(StoreError::Pg)?;
        // The first request after the loss fails; later ones reconnect.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while t.get::<u32>(b"x").is_err() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
        }
        w.put(&t, b"after", &1u32)?;
        Ok(())
    });
    assert!(r.is_err(), "the savepoint survived its connection");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.durable()).await {
            Ok(r) => break r,
            Err(_) => assert!(std::time::Instant::now() < end, "durable never answered"),
        }
    };
    assert!(r.is_err(), "a lost write was reported durable");
    let n: usize = pg
        .borrow()
        .psql("postgres", "SELECT count(*) FROM entries WHERE tree = 't'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, 0, "the write landed after all");
}
