//! Change notices between processes sharing one database (several HQs):
//! what a committed transaction announces (built here, sent by the store
//! thread in the same transaction, so PostgreSQL delivers them only once it
//! commits, and drops them if it does not), and the listener that receives
//! other processes' notices on a connection of its own and hands them on.
//!
//! Must not decide what a notice means to a role: it says which trees a
//! commit wrote, and for trees registered with [`Announce::keys_of`], which
//! keys it put.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

/// The one LISTEN/NOTIFY channel.
pub(super) const CHANNEL: &str = "relaytree";

/// PostgreSQL refuses payloads of 8,000 bytes or more; a key too long to
/// name is announced as a change of its tree (the receiver re-reads).
const MAX_PAYLOAD: usize = 7_000;

/// Notices a subscriber may fall behind by before it is told [`Notice::Lost`].
const BACKLOG: usize = 16_384;

/// What another process committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// It put `key` into `tree` (a tree registered with [`Announce::keys_of`]).
    Put {
        /// The tree.
        tree: String,
        /// The stored key bytes.
        key: Vec<u8>,
    },
    /// It wrote (put or removed) something in `tree`.
    Wrote {
        /// The tree.
        tree: String,
    },
    /// Notices may have been missed (the listener reconnected, or this
    /// subscriber fell behind): re-read whatever is derived from the store.
    Lost,
}

/// This process's side of the notices: who it is and what it announces.
pub(crate) struct Announce {
    /// Names this process in its payloads, so it skips its own.
    origin: u64,
    /// Trees whose put keys are announced one by one.
    keyed: Mutex<BTreeSet<&'static str>>,
    tx: broadcast::Sender<Notice>,
}

impl Announce {
    pub(super) fn new() -> Announce {
        Announce {
            origin: rand::random::<u64>() | 1,
            keyed: Default::default(),
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    /// Announces every key put into `tree` from now on.
    pub(super) fn keys_of(&self, tree: &'static str) {
        self.keyed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tree);
    }

    fn is_keyed(&self, tree: &str) -> bool {
        self.keyed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(tree)
    }

    /// Notices other processes commit, from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }

    /// The payloads announcing a write of `key` in `tree` (`put`: a put,
    /// not a removal), added to `out` (a set: PostgreSQL would fold equal
    /// notices of one transaction anyway).
    pub(super) fn note(&self, out: &mut BTreeSet<String>, tree: &str, key: &[u8], put: bool) {
        if !is_name(tree) {
            return;
        }
        out.insert(format!("{:x} w {tree}", self.origin));
        if put && self.is_keyed(tree) && key.len() * 2 < MAX_PAYLOAD {
            out.insert(format!("{:x} p {tree} {}", self.origin, hex(key)));
        }
    }

    /// The statement that sends `payloads` (safe to inline: tree names and
    /// hex only), to run just before COMMIT in the same transaction.
    pub(super) fn statement<'a>(payloads: impl Iterator<Item = &'a String>) -> Option<String> {
        let list: Vec<String> = payloads.map(|p| format!("'{p}'")).collect();
        if list.is_empty() {
            return None;
        }
        Some(format!(
            "SELECT pg_notify('{CHANNEL}', p) FROM unnest(ARRAY[{}]::text[]) p",
            list.join(",")
        ))
    }

    /// What `payload` says, unless this process sent it or it is not ours.
    fn parse(&self, payload: &str) -> Option<Notice> {
        let mut parts = payload.split(' ');
        let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
        if origin == self.origin {
            return None;
        }
        let kind = parts.next()?;
        let tree = parts.next().filter(|t| is_name(t))?.to_string();
        match (kind, parts.next()) {
            ("w", None) => Some(Notice::Wrote { tree }),
            ("p", Some(key)) => Some(Notice::Put {
                tree,
                key: unhex(key)?,
            }),
            _ => None,
        }
    }

    /// Tells this process's subscribers [`Notice::Lost`]: writes of its own
    /// were refused, so what it derived from them must be re-read.
    pub(super) fn lost_here(&self) {
        self.hand_on(Notice::Lost);
    }

    fn hand_on(&self, n: Notice) {
        // No subscriber yet: nothing derived from the store to refresh.
        let _ = self.tx.send(n);
    }
}

/// Tree names are identifiers (`[a-z0-9_]`), so payloads need no quoting.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Starts the listener thread ("store-pg-listen"): LISTENs on a connection
/// of its own and hands every other process's notice to the subscribers;
/// reconnects (every second) when the connection is lost, and then says
/// [`Notice::Lost`]. Stops when `announce` is the last reference left.
pub(super) fn listen(url: String, announce: std::sync::Arc<Announce>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("store-pg-listen".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("cannot start the PostgreSQL listener");
                return;
            };
            rt.block_on(listen_loop(url, announce));
        })
        .map(|_| ())
}

async fn listen_loop(url: String, announce: std::sync::Arc<Announce>) {
    // Held only weakly between connections, so that the thread ends with the store.
    let weak = std::sync::Arc::downgrade(&announce);
    drop(announce);
    loop {
        let Some(a) = weak.upgrade() else { return };
        match listen_once(&url, &a).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "PostgreSQL listener: connection lost"),
        }
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection's life: LISTEN, then notices until it ends or the store
/// is dropped (checked every few seconds).
async fn listen_once(url: &str, a: &std::sync::Arc<Announce>) -> Result<(), String> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("relaytree-hq-listen");
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(|e| format!("{e}"))?;
    let (got, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if got.send(Some(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = got.send(None);
                    tracing::warn!(error = %e, "PostgreSQL listener connection failed");
                    return;
                }
                None => {
                    let _ = got.send(None);
                    return;
                }
            }
        }
    });
    let r = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| format!("{e}"))?;
        // Whatever was committed while nobody listened is unknown: after a
        // reconnect, and on the first connection too, since a subscriber
        // may have read the store before this LISTEN took effect.
        a.hand_on(Notice::Lost);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Some(p))) => {
                    if let Some(n) = a.parse(&p) {
                        a.hand_on(n);
                    }
                }
                Ok(Some(None)) | Ok(None) => return Err("connection ended".to_string()),
                Err(_) => {
                    if std::sync::Arc::strong_count(a) <= 1 {
                        // The store is gone: stop listening.
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_trees_and_keys_and_others_read_them_back() {
        let a = Announce::new();
        let b = Announce::new();
        a.keys_of("down");
        let mut out = BTreeSet::new();
        a.note(&mut out, "down", &[0x72, 0x31, 0, 1, 0xff], true);
        a.note(&mut out, "down", b"gone", false);
        a.note(&mut out, "leaves", b"k1", true);
        a.note(&mut out, "leaves", b"k2", true);
        a.note(&mut out, "Bad'Tree", b"k", true);
        let mut got: Vec<Notice> = out.iter().filter_map(|p| b.parse(p)).collect();
        got.sort_by_key(|n| format!("{n:?}"));
        assert_eq!(
            got,
            vec![
                Notice::Put {
                    tree: "down".into(),
                    key: vec![0x72, 0x31, 0, 1, 0xff]
                },
                Notice::Wrote {
                    tree: "down".into()
                },
                Notice::Wrote {
                    tree: "leaves".into()
                },
            ]
        );
        // Its own notices are skipped; junk is ignored.
        assert!(out.iter().all(|p| a.parse(p).is_none()));
        for junk in ["", "zz w t", "1 w", "1 p t 0", "1 x t", "1 w T"] {
            assert_eq!(b.parse(junk), None, "{junk}");
        }
        let sql = Announce::statement(out.iter()).unwrap();
        assert!(sql.starts_with("SELECT pg_notify('relaytree', p)"), "{sql}");
        assert_eq!(Announce::statement(BTreeSet::new().iter()), None);
    }

    #[test]
    fn a_key_too_long_to_name_is_announced_as_its_tree() {
        let a = Announce::new();
        a.keys_of("down");
        let mut out = BTreeSet::new();
        a.note(&mut out, "down", &vec![7u8; MAX_PAYLOAD], true);
        assert_eq!(out.len(), 1);
        assert!(out.iter().all(|p| p.ends_with(" w down")));
    }
}
