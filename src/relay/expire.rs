//! Expiry of home leaves: once an attempt's expiry passes, its home leaves
//! still pending become `expired` ("not delivered before the job's
//! expiry"), and so do its delivered or running leaves whose agent stays
//! disconnected for a grace after the expiry ("agent lost"). A leaf whose
//! agent is connected is left to finish. A relay that was down past an
//! expiry does the same when it comes back, after giving its agents the
//! grace to reconnect.
//!
//! The sweep reads an index keyed by due time (`due ++ job ++ attempt`, in
//! the `expiry` tree), so a tick reads only the attempts that are due. An
//! attempt leaves the index once every home leaf of it is final; while a
//! connected agent still runs one, its entry moves a recheck period on.
//!
//! Owns the `expiry` tree. Must not deliver, route or change anything but
//! home leaves of due attempts.

use super::RelayState;
use crate::proto::{now_ms, Attempt, JobId, LeafState, NodeName};
use crate::store::keys::{DueJobAttempt, JobAttempt, JobPrefix, NameJob};
use crate::store::{StoreError, Tree};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

/// How often to look.
const PERIOD: Duration = Duration::from_millis(250);

/// At most this many due attempts per tick (the write lock is held meanwhile).
const PER_TICK: usize = 1024;

/// The index of attempts by due time.
pub(crate) fn table(st: &RelayState) -> Result<Tree<DueJobAttempt, ()>, StoreError> {
    st.store.tree(super::trees::EXPIRY)
}

/// Index key: due ++ job ++ attempt (big-endian: byte order is time order).
pub(crate) fn index_key(due_ms: u64, job: JobId, attempt: Attempt) -> DueJobAttempt {
    DueJobAttempt(due_ms, job, attempt)
}

/// Indexes a new attempt (before its record is written: an attempt on disk
/// is always indexed until it is swept).
pub(crate) fn index(
    st: &RelayState,
    job: JobId,
    attempt: Attempt,
    expires_at_ms: Option<u64>,
) -> Result<(), StoreError> {
    if let Some(e) = expires_at_ms {
        table(st)?.put(&index_key(e, job, attempt), &())?;
    }
    Ok(())
}

/// Fills an empty index from the attempts not yet swept (a database from
/// before the index existed). Returns how many were indexed.
pub(crate) fn rebuild(st: &RelayState) -> Result<usize, StoreError> {
    let t = table(st)?;
    if !t.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    for r in st.attempts.scan() {
        let (JobAttempt(job, attempt), rec) = r?;
        if let (false, Some(e)) = (rec.swept, rec.expires_at_ms) {
            t.put(&index_key(e, job, attempt), &())?;
            n += 1;
        }
    }
    Ok(n)
}

/// When the sweeper first saw each agent disconnected while it held an open
/// leaf of a due attempt, and when it last saw it so (cleared when it is
/// seen connected). Such an agent is looked at every recheck period: a
/// longer gap means the watch broke off (it may have been back meanwhile),
/// so the watch starts over.
#[derive(Default)]
pub(crate) struct Gone(HashMap<NodeName, (u64, u64)>);

impl Gone {
    /// The longest gap between two looks that keeps a watch going.
    fn gap(recheck_ms: u64) -> u64 {
        2 * recheck_ms + PERIOD.as_millis() as u64
    }

    /// `client` is connected now.
    fn connected(&mut self, client: &NodeName) {
        self.0.remove(client);
    }

    /// `client` is disconnected at `now`: since when, as far as seen.
    fn disconnected(&mut self, client: &NodeName, now: u64, recheck_ms: u64) -> u64 {
        let e = self.0.entry(client.clone()).or_insert((now, now));
        if now.saturating_sub(e.1) > Self::gap(recheck_ms) {
            *e = (now, now);
        } else {
            e.1 = now;
        }
        e.0
    }

    /// Drops watches that broke off (keeps the map to agents watched now).
    fn prune(&mut self, now: u64, recheck_ms: u64) {
        self.0
            .retain(|_, (_, seen)| now.saturating_sub(*seen) <= Self::gap(recheck_ms));
    }
}

/// What becomes of one home leaf of an attempt past its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Final already: nothing to do.
    Final,
    /// Becomes `expired` with this reason.
    Expire(String),
    /// Stays open for now (its agent is connected, or within the grace).
    Open,
}

/// Decides a due leaf's fate. `gone_since` is when its agent was first seen
/// disconnected (none while connected).
pub(crate) fn fate(state: LeafState, gone_since: Option<u64>, now: u64, grace_ms: u64) -> Fate {
    match state {
        s if s.is_final() => Fate::Final,
        LeafState::Pending => Fate::Expire("not delivered before the job's expiry".into()),
        _ => match gone_since {
            Some(t) if now.saturating_sub(t) >= grace_ms => Fate::Expire(format!(
                "agent lost: disconnected since {}, past the job's expiry",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t))
            )),
            _ => Fate::Open,
        },
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Index entries read from the store: only due ones are.
    pub scanned: usize,
    /// Leaves that became `expired`.
    pub expired: usize,
}

/// Sweeps until `shutdown`. `grace` is how long an agent holding a due leaf
/// may stay disconnected before its leaf is lost (the relay's idle timeout).
pub(crate) async fn run(st: Arc<RelayState>, grace: Duration, shutdown: CancellationToken) {
    match rebuild(&st) {
        Ok(0) => {}
        Ok(n) => info!(attempts = n, "expiry index rebuilt"),
        Err(e) => warn!(error = %e, "cannot rebuild the expiry index"),
    }
    let grace_ms = grace.as_millis() as u64;
    let mut gone = Gone::default();
    loop {
        match sweep(&st, now_ms(), grace_ms, &mut gone) {
            Ok(s) if s.scanned == 0 => {}
            Ok(s) => {
                if let Err(e) = st.store.durable().await {
                    warn!(error = %e, "cannot persist expiries");
                }
                if s.expired > 0 {
                    info!(leaves = s.expired, "expired leaves");
                }
            }
            Err(e) => warn!(error = %e, "expiry sweep failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// How long after a look an attempt that still has open leaves is looked at again.
fn recheck_ms(grace_ms: u64) -> u64 {
    (grace_ms / 4).clamp(250, 5_000)
}

/// Expires what is due at `now` (not yet durable).
pub(crate) fn sweep(
    st: &RelayState,
    now: u64,
    grace_ms: u64,
    gone: &mut Gone,
) -> Result<Swept, StoreError> {
    let idx = table(st)?;
    let recheck = recheck_ms(grace_ms);
    gone.prune(now, recheck);
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let mut out = Swept::default();
    // Keys below (now + 1) ++ 0...: every entry due at `now`, and nothing
    // past it is read. `scanned` counts what the store iterator yielded.
    let due: Vec<DueJobAttempt> = idx
        .range(
            &index_key(0, JobId(0), Attempt(0)),
            &index_key(now.saturating_add(1), JobId(0), Attempt(0)),
        )
        .take(PER_TICK)
        .inspect(|_| out.scanned += 1)
        .filter_map(|r| match r {
            Ok((k, ())) => (k.0 <= now).then_some(Ok(k)),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    if due.is_empty() {
        // Nothing due (an idle relay, every tick): no copy of the children.
        return Ok(out);
    }
    let connected: std::collections::HashSet<NodeName> = st
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    for k in due {
        let DueJobAttempt(_, job, attempt) = k;
        let _span = info_span!("expire", %job, %attempt).entered();
        let ak = JobAttempt(job, attempt);
        let Some(mut rec) = st.attempts.get(&ak)? else {
            // Purged since.
            idx.remove(&k)?;
            continue;
        };
        let mut events = Vec::new();
        let mut writes = Vec::new();
        let mut open = false;
        for r in st.leaves.scan_prefix(&JobPrefix(job)) {
            let (lk, leaf) = r?;
            if leaf.attempt != attempt {
                continue;
            }
            let client = lk.1.clone();
            let since = if leaf.state.is_final() || leaf.state == LeafState::Pending {
                None
            } else if connected.contains(&client) {
                gone.connected(&client);
                None
            } else {
                Some(gone.disconnected(&client, now, recheck))
            };
            match fate(leaf.state, since, now, grace_ms) {
                Fate::Final => {}
                Fate::Open => open = true,
                Fate::Expire(reason) => {
                    if leaf.state != LeafState::Pending {
                        warn!(%client, %reason, "leaf lost with its agent");
                    }
                    let (new, ev) =
                        super::close_here(st, job, &client, &leaf, LeafState::Expired, reason, now);
                    writes.push((lk, client, new));
                    events.push(ev);
                }
            }
        }
        out.expired += writes.len();
        // Events first: a crash keeps a prefix of the writes.
        st.outbox.push(&events)?;
        for (lk, client, new) in &writes {
            st.leaves.put(lk, new)?;
            st.client_leaves.remove(&NameJob(client.clone(), job))?;
        }
        if open {
            // The new entry before the old one goes: a crash leaves two, never none.
            idx.put(&index_key(now + recheck, job, attempt), &())?;
            idx.remove(&k)?;
        } else {
            idx.remove(&k)?;
            rec.swept = true;
            st.attempts.put(&ak, &rec)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::AttemptRecord;
    use super::*;
    use crate::proto::{Action, Assignment, Scope};
    use crate::relay::DirEntry;
    use crate::rules::LeafRecord;
    use crate::store::keys::{JobClient, Name};
    use crate::store::Store;

    fn relay(dir: &std::path::Path, clients: &[&str]) -> RelayState {
        let me = NodeName::new("r1").unwrap();
        let st = RelayState::open(
            me.clone(),
            Store::open(dir).unwrap(),
            crate::relay::cache::for_tests(dir),
        )
        .unwrap();
        let home = DirEntry {
            home: me.clone(),
            via: me,
        };
        for c in clients {
            st.dir_clients
                .put(&Name(NodeName::new(*c).unwrap()), &home)
                .unwrap();
        }
        st
    }

    fn assign(st: &RelayState, job: u64, expires_at_ms: Option<u64>) {
        let a = Assignment {
            job: JobId(job),
            attempt: Attempt(1),
            action: Action::Ping,
            expires_at_ms,
            scope: Scope::AllLowerOf(vec![st.me.clone()]),
            orders: vec![],
            placement: None,
            hq_now_ms: None,
            policy: None,
        };
        crate::relay::assign::apply(st, &a).unwrap();
    }

    fn set(st: &RelayState, job: u64, client: &str, state: LeafState) {
        let k = JobClient(JobId(job), NodeName::new(client).unwrap());
        let mut l: LeafRecord = st.leaves.get(&k).unwrap().unwrap();
        l.state = state;
        st.leaves.put(&k, &l).unwrap();
    }

    fn state(st: &RelayState, job: u64, client: &str) -> (LeafState, Option<String>) {
        let k = JobClient(JobId(job), NodeName::new(client).unwrap());
        let l: LeafRecord = st.leaves.get(&k).unwrap().unwrap();
        (l.state, l.reason)
    }

    #[test]
    fn fates() {
        let g = 1_000;
        use LeafState::*;
        let cases: &[(LeafState, Option<u64>, u64, bool, bool)] = &[
            // state, gone since, now, expires, stays open
            (Pending, None, 10, true, false),
            (Succeeded, None, 10, false, false),
            (Expired, Some(0), 10_000, false, false),
            (Delivered, None, 10_000, false, true),
            (Running, None, 10_000, false, true),
            (Running, Some(5_000), 5_999, false, true),
            (Running, Some(5_000), 6_000, true, false),
            (Delivered, Some(5_000), 60_000, true, false),
        ];
        for &(s, since, now, expires, open) in cases {
            let f = fate(s, since, now, g);
            assert_eq!(
                matches!(f, Fate::Expire(_)),
                expires,
                "{s:?} {since:?} {now}"
            );
            assert_eq!(f == Fate::Open, open, "{s:?} {since:?} {now}");
        }
        let Fate::Expire(r) = fate(Running, Some(0), 2_000, g) else {
            panic!()
        };
        assert_eq!(
            r,
            "agent lost: disconnected since 1970-01-01T00:00:00Z, past the job's expiry"
        );
    }

    #[test]
    fn a_watch_on_a_gone_agent_starts_over_after_a_gap() {
        let c = NodeName::new("c1").unwrap();
        let mut g = Gone::default();
        let r = 1_000; // gap: 2 s 250 ms
        assert_eq!(g.disconnected(&c, 0, r), 0);
        assert_eq!(g.disconnected(&c, 2_000, r), 0);
        assert_eq!(g.disconnected(&c, 4_250, r), 0);
        // Not looked at for longer than the gap: it may have been back.
        assert_eq!(g.disconnected(&c, 6_501, r), 6_501);
        g.connected(&c);
        assert_eq!(g.disconnected(&c, 7_000, r), 7_000);
        g.prune(9_251, r);
        assert_eq!(g.0.len(), 0);
    }

    #[test]
    fn index_keys_sort_by_due_time_and_read_back() {
        use crate::store::keys::KeyCodec;
        let k = index_key(7, JobId(3), Attempt(2)).encode();
        assert_eq!(
            DueJobAttempt::decode(&k),
            Some(DueJobAttempt(7, JobId(3), Attempt(2)))
        );
        assert!(
            index_key(255, JobId(9), Attempt(9)).encode()
                < index_key(256, JobId(1), Attempt(1)).encode()
        );
        assert_eq!(DueJobAttempt::decode(b"short"), None);
    }

    #[tokio::test]
    async fn pending_leaves_expire_once_and_lost_ones_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path(), &["c1", "c2", "c3"]);
        assign(&st, 1, Some(1_000));
        // c2 got it before the expiry and its agent is gone; c3's is connected.
        set(&st, 1, "c2", LeafState::Delivered);
        set(&st, 1, "c3", LeafState::Running);
        let (tx, _rx) = crate::link::SessionTx::channel(1);
        st.children
            .lock()
            .unwrap()
            .insert(NodeName::new("c3").unwrap(), tx);
        let mut gone = Gone::default();
        let g = 500;
        assert_eq!(sweep(&st, 999, g, &mut gone).unwrap(), Swept::default());
        let s = sweep(&st, 1_000, g, &mut gone).unwrap();
        assert_eq!((s.scanned, s.expired), (1, 1));
        assert_eq!(state(&st, 1, "c1").0, LeafState::Expired);
        assert_eq!(state(&st, 1, "c2").0, LeafState::Delivered);
        // Rechecked later: c2's agent stayed away for the grace, c3's is connected.
        let s = sweep(&st, 1_600, g, &mut gone).unwrap();
        assert_eq!((s.scanned, s.expired), (1, 1));
        let (s2, why) = state(&st, 1, "c2");
        assert_eq!(s2, LeafState::Expired);
        assert!(why.unwrap().starts_with("agent lost: disconnected since"));
        assert_eq!(state(&st, 1, "c3").0, LeafState::Running);
        // c3 finishes: the attempt leaves the index at its next look.
        set(&st, 1, "c3", LeafState::Succeeded);
        assert_eq!(sweep(&st, 60_000, g, &mut gone).unwrap().scanned, 1);
        assert!(table(&st).unwrap().is_empty());
        assert_eq!(sweep(&st, 120_000, g, &mut gone).unwrap(), Swept::default());
        assert_eq!(state(&st, 1, "c3").0, LeafState::Succeeded);
        let rec: AttemptRecord = st
            .attempts
            .get(&JobAttempt(JobId(1), Attempt(1)))
            .unwrap()
            .unwrap();
        assert!(rec.swept);
    }

    #[tokio::test]
    async fn a_tick_with_nothing_due_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path(), &["c1"]);
        for job in 1..=300 {
            assign(&st, job, Some(1_000_000 + job));
        }
        assign(&st, 999, None); // no expiry: never indexed
        assert_eq!(table(&st).unwrap().len(), 300);
        let mut gone = Gone::default();
        assert_eq!(
            sweep(&st, 1_000_000, 100, &mut gone).unwrap(),
            Swept::default()
        );
        // Exactly the due ones, oldest first.
        let s = sweep(&st, 1_000_010, 100, &mut gone).unwrap();
        assert_eq!((s.scanned, s.expired), (10, 10));
        assert_eq!(table(&st).unwrap().len(), 290);
        assert_eq!(state(&st, 10, "c1").0, LeafState::Expired);
        assert_eq!(state(&st, 11, "c1").0, LeafState::Pending);
    }

    #[tokio::test]
    async fn an_index_lost_with_an_old_database_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let st = relay(dir.path(), &["c1"]);
        assign(&st, 1, Some(1_000));
        assign(&st, 2, Some(2_000));
        let t = table(&st).unwrap();
        for k in [
            index_key(1_000, JobId(1), Attempt(1)),
            index_key(2_000, JobId(2), Attempt(1)),
        ] {
            t.remove(&k).unwrap();
        }
        assert_eq!(rebuild(&st).unwrap(), 2);
        assert_eq!(rebuild(&st).unwrap(), 0);
        let s = sweep(&st, 5_000, 100, &mut Gone::default()).unwrap();
        assert_eq!(s.expired, 2);
    }
}
