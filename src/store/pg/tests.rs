//! The PostgreSQL backend against a real server (one per test, see
//! `testdb.rs`): the same API as on sled, durable means committed, group
//! commit, savepoints, and what is refused at connect.

use super::testdb::{server_bin, TestPostgres};
use crate::store::{Store, StoreError};

pub(super) const CA: &str = "sha256:aaaa";

/// A fresh server, or `None` (with a note) when PostgreSQL is not installed.
pub(super) fn server() -> Option<TestPostgres> {
    if server_bin().is_none() {
        eprintln!("SKIPPED: no PostgreSQL server installed (/usr/lib/postgresql/*/bin)");
        return None;
    }
    Some(TestPostgres::start().unwrap())
}

fn rows(pg: &TestPostgres, tree: &str) -> usize {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM entries WHERE tree = '{tree}'"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test]
async fn the_table_api_works_and_durable_commits() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    assert!(s.is_postgres());
    let t = s.table("t").unwrap();
    let other = s.table("u").unwrap();
    // More than one page, and keys that sort bytewise (0xff above 0x01).
    for i in 0..600u32 {
        t.put(&i.to_be_bytes(), &i).unwrap();
    }
    t.put(&[0xff, 0xff], &1u32).unwrap();
    other.put(b"k", &"other".to_string()).unwrap();
    assert_eq!(t.get::<u32>(&7u32.to_be_bytes()).unwrap(), Some(7));
    assert!(t.contains(&599u32.to_be_bytes()).unwrap());
    assert_eq!(t.len(), 601);
    let all: Vec<u32> = t.scan(b"").map(|r| r.unwrap().1).collect();
    assert_eq!(all.len(), 601);
    assert_eq!(&all[..3], &[0, 1, 2]);
    assert_eq!(all.last(), Some(&1));
    // A prefix: keys 0x00 0x00 0x01 xx = 256..512.
    let pre: Vec<u32> = t.scan(&[0, 0, 1]).map(|r| r.unwrap().1).collect();
    assert_eq!(pre, (256..512).collect::<Vec<_>>());
    let r: Vec<u32> = t
        .range(&10u32.to_be_bytes(), &13u32.to_be_bytes())
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(r, vec![10, 11, 12]);
    let from: Vec<u32> = t
        .range_from(&598u32.to_be_bytes())
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(from, vec![598, 599, 1]);
    t.remove(&0u32.to_be_bytes()).unwrap();
    assert_eq!(t.get::<u32>(&0u32.to_be_bytes()).unwrap(), None);
    assert_eq!(s.next_id("job").unwrap() + 1, s.next_id("job").unwrap());
    s.durable().await.unwrap();
    // Committed: another connection sees it.
    assert_eq!(rows(&pg, "t"), 600);
    assert_eq!(rows(&pg, "u"), 1);
    assert!(s.table("empty").unwrap().is_empty());
    // The bytes are sled's: a MessagePack u32 7 is one byte, 0x07.
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT encode(value, 'hex') FROM entries WHERE tree = 't' AND key = '\\x00000007'"
        )
        .unwrap()
        .trim(),
        "07"
    );
}

#[tokio::test]
async fn many_keys_are_read_in_one_round_trip_and_scans_in_few() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let t = s.table("t").unwrap();
    for i in 0..5000u32 {
        t.put(&i.to_be_bytes(), &i).unwrap();
    }
    // Not committed yet: the open transaction's writes are seen.
    let keys: Vec<Vec<u8>> = [7u32, 9_999, 4_999, 7, 0]
        .iter()
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    let before = s.reads();
    let got: Vec<Option<u32>> = t.get_many(&keys).unwrap();
    assert_eq!(got, vec![Some(7), None, Some(4_999), Some(7), Some(0)]);
    assert_eq!(s.reads() - before, 1, "one statement for five keys");
    assert!(t.get_many::<u32>(&[]).unwrap().is_empty());
    // A scan of 5,000 entries: pages grow, so a few round trips, not 20.
    let before = s.reads();
    let all: Vec<u32> = t.scan(b"").map(|r| r.unwrap().1).collect();
    assert_eq!(all, (0..5000).collect::<Vec<_>>());
    let scans = s.reads() - before;
    assert!(scans <= 6, "round trips for 5,000 entries: {scans}");
}

#[tokio::test]
async fn writes_wait_for_whoever_must_see_them_and_go_out_together() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let t = s.table("t").unwrap();
    let stats = match &s.backend {
        super::super::Backend::Pg(p) => p.stats.clone(),
        _ => unreachable!(),
    };
    let statements = || {
        stats
            .write_statements
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = statements();
    for i in 0..1000u32 {
        t.put(&i.to_be_bytes(), &i).unwrap();
        if i % 100 == 99 {
            // Writes trickling in, as an ingest makes them: the store
            // thread finds the queue empty ten times.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    s.durable().await.unwrap();
    let sent = statements() - before;
    assert_eq!(rows(&pg, "t"), 1000);
    // One statement (a few if the machine is so slow that the idle commit
    // comes first); sent as they came, at least ten.
    assert!(sent <= 5, "1,000 writes went out in {sent} statements");
    // A read sees the writes before it.
    t.put(b"x", &1u32).unwrap();
    assert_eq!(t.get::<u32>(b"x").unwrap(), Some(1));
}

#[tokio::test]
async fn concurrent_writers_share_commits() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let t = s.table("t").unwrap();
    let before = s.commits();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let (s, t) = (s.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            t.put(&i.to_be_bytes(), &i).unwrap();
            s.durable().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let commits = s.commits() - before;
    assert!((1..200).contains(&commits), "commits: {commits}");
    assert_eq!(rows(&pg, "t"), 200);
}

#[tokio::test]
async fn atomic_changes_land_whole_or_not_at_all() {
    let Some(pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let (a, b) = (s.table("a").unwrap(), s.table("b").unwrap());
    a.put(b"old", &1u32).unwrap();
    s.atomically(&[&a, &b], |w| {
        w.put(&a, b"k", &"one".to_string())?;
        w.put(&b, b"k", &2u32)?;
        w.remove(&a, b"old")?;
        assert_eq!(w.get::<String>(&a, b"k")?, Some("one".into()));
        Ok(())
    })
    .unwrap();
    let r: Result<(), _> = s.atomically(&[&a, &b], |w| {
        w.put(&a, b"x", &1u32)?;
        w.put(&b, b"y", &1u32)?;
        Err(StoreError::Flush("refused".into()).into())
    });
    assert!(matches!(r, Err(StoreError::Flush(_))));
    let r = s.atomically(&[&a], |w| w.put(&b, b"z", &1u32));
    assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
    s.durable().await.unwrap();
    assert_eq!(a.get::<String>(b"k").unwrap(), Some("one".into()));
    assert!(!a.contains(b"old").unwrap());
    assert!(!a.contains(b"x").unwrap());
    assert!(!b.contains(b"y").unwrap());
    assert!(!b.contains(b"z").unwrap());
    assert_eq!(rows(&pg, "a"), 1);
    assert_eq!(rows(&pg, "b"), 1);
}

#[tokio::test]
async fn bad_urls_newer_schemas_and_other_cas_are_refused() {
    let Some(pg) = server() else { return };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = Store::connect(&format!("postgres://relaytree@127.0.0.1:{closed}/x"), CA)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot use the store at postgres://"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = Store::connect("nonsense://", CA).unwrap_err().to_string();
    assert!(e.contains("not a PostgreSQL URL"), "{e}");

    let url = pg.url("postgres");
    drop(Store::connect(&url, CA).unwrap());
    let e = Store::connect(&url, "sha256:bbbb").unwrap_err().to_string();
    assert!(e.contains("another CA"), "{e}");
    pg.psql(
        "postgres",
        "INSERT INTO schema_version (version) VALUES (99)",
    )
    .unwrap();
    let e = Store::connect(&url, CA).unwrap_err().to_string();
    assert!(
        e.contains("schema version 99, newer than this build"),
        "{e}"
    );
}

#[tokio::test]
async fn a_restarted_database_is_reconnected_and_keeps_what_was_committed() {
    let Some(mut pg) = server() else { return };
    let s = Store::connect(&pg.url("postgres"), CA).unwrap();
    let t = s.table("t").unwrap();
    t.put(b"k", &1u32).unwrap();
    s.durable().await.unwrap();
    pg.restart().unwrap();
    // The first request after the loss may fail; then it reconnects.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match t.get::<u32>(b"k") {
            Ok(v) => {
                assert_eq!(v, Some(1));
                break;
            }
            Err(e) if std::time::Instant::now() < end => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    t.put(b"k2", &2u32).unwrap();
    s.durable().await.unwrap();
    assert_eq!(rows(&pg, "t"), 2);
}

#[tokio::test]
async fn one_store_at_a_time_holds_a_duty_and_it_passes_on_when_that_one_ends() {
    let Some(pg) = server() else { return };
    let url = pg.url("postgres");
    let a = Store::connect(&url, CA).unwrap();
    let b = Store::connect(&url, CA).unwrap();
    assert!(a.holds_duty("retention"));
    assert!(a.holds_duty("retention"), "kept");
    assert!(!b.holds_duty("retention"));
    assert!(b.holds_duty("schedules"), "each duty on its own");
    assert!(!a.holds_duty("schedules"));
    a.close().await.unwrap();
    // a's connection ends with its store thread: the lock goes with it.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !b.holds_duty("retention") {
        assert!(std::time::Instant::now() < end, "duty never passed on");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
