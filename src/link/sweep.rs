//! Liveness of every session of a process, kept by one sweep: each session
//! has a [`Pulse`] (when it last heard a frame, when it last sent one), filed
//! under the moment it next needs a look (its heartbeat falls due, or its
//! idle timeout runs out). A single thread sleeps until the earliest of those
//! moments, looks only at the sessions due then, queues a heartbeat on a
//! session that sent nothing for the interval, wakes the reader of a session
//! that heard nothing for its idle timeout, and files each one again under
//! its next moment. An idle process wakes once per due session, not once
//! per session per tick.
//!
//! No timer per session and no timer per message: a frame costs an atomic
//! store on each side. Any frame counts as liveness, job traffic included.
//! Silence is counted only while the session's owner waits for a message
//! ([`Pulse::waiting`]): frames the owner has not read yet because it is busy
//! (a flush under load) sit in the socket and must not pass for a dead peer.
//! Knows nothing of messages other than `Heartbeat`, and never does I/O.

use super::session::WeakSessionTx;
use crate::proto::Msg;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// `heard` while the owner is not waiting for a message: not judged.
const BUSY: u64 = u64::MAX;
/// A heartbeat goes this fraction of its interval early (at most
/// [`MAX_SLACK`]), so the peer hears one within the interval even when the
/// sweep is a little late.
const SLACK_PER_BEAT: u32 = 4;
/// The shortest and longest head start of a heartbeat.
const MIN_SLACK: Duration = Duration::from_millis(10);
const MAX_SLACK: Duration = Duration::from_secs(1);
/// Moments are filed rounded up to this many milliseconds, so that sessions
/// due at nearly the same time share one wake-up of the sweep (and their
/// heartbeats one wake-up of the runtime): at most 10 a second, however
/// many sessions; a beat or an expiry is at most this late.
const GRAIN_MS: u64 = 100;
/// The sweep sleeps at most this long with nothing due (a safety net only).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Milliseconds on this process's monotonic clock.
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Starts at 1 so that 0 never means "now".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One session's liveness, shared by its reader, its writer and the sweep.
pub(super) struct Pulse {
    /// When the last frame arrived or the owner began waiting; [`BUSY`]
    /// while the owner is doing something else.
    heard: AtomicU64,
    /// When the writer last wrote a frame out.
    sent: AtomicU64,
    /// Set by the sweep: silent past the idle timeout.
    expired: AtomicBool,
    /// Wakes the reader when `expired` is set.
    wake: Notify,
    /// The reader is gone: nothing judges this session any more, so it
    /// gets no heartbeats either (the peer then times it out).
    dropped: AtomicBool,
    heartbeat_ms: u64,
    idle_ms: u64,
    /// How early a heartbeat goes ([`slack_for`]).
    slack_ms: u64,
    /// Where heartbeats go; does not keep the writer alive.
    beat: WeakSessionTx,
}

impl Pulse {
    /// A session's pulse, registered with the sweep: a heartbeat after
    /// `heartbeat` without sending, expired after `idle` without hearing.
    pub(super) fn start(heartbeat: Duration, idle: Duration, beat: WeakSessionTx) -> Arc<Pulse> {
        let now = now_ms();
        let p = Arc::new(Pulse {
            heard: AtomicU64::new(BUSY),
            sent: AtomicU64::new(now),
            expired: AtomicBool::new(false),
            wake: Notify::new(),
            dropped: AtomicBool::new(false),
            heartbeat_ms: (heartbeat.as_millis() as u64).max(1),
            idle_ms: (idle.as_millis() as u64).max(1),
            slack_ms: slack_for(heartbeat).as_millis() as u64,
            beat,
        });
        let first = p.due(now);
        Sweep::get().file(Arc::downgrade(&p), first);
        p
    }

    /// The owner waits for a message from now on.
    pub(super) fn waiting(&self) {
        self.heard.store(now_ms(), Ordering::Relaxed);
    }

    /// A frame arrived.
    pub(super) fn heard(&self) {
        self.heard.store(now_ms(), Ordering::Relaxed);
    }

    /// The owner took a message and is busy with it: silence is not counted.
    pub(super) fn busy(&self) {
        self.heard.store(BUSY, Ordering::Relaxed);
    }

    /// The writer wrote frames out.
    pub(super) fn sent(&self) {
        self.sent.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once the sweep found the session silent past its idle
    /// timeout while the owner waited, and it still is.
    pub(super) async fn expired(&self) {
        loop {
            let woken = self.wake.notified();
            if self.expired.swap(false, Ordering::AcqRel) {
                // A frame may have arrived since the sweep looked.
                let heard = self.heard.load(Ordering::Relaxed);
                if heard != BUSY && now_ms().saturating_sub(heard) >= self.idle_ms {
                    return;
                }
            }
            woken.await;
        }
    }

    /// The reader is gone.
    pub(super) fn drop_reader(&self) {
        self.dropped.store(true, Ordering::Relaxed);
    }

    fn times(&self, now: u64) -> Times {
        let heard = self.heard.load(Ordering::Relaxed);
        Times {
            heard: (heard != BUSY).then_some(heard),
            sent: self.sent.load(Ordering::Relaxed),
            now,
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            heartbeat_ms: self.heartbeat_ms,
            idle_ms: self.idle_ms,
            slack_ms: self.slack_ms,
        }
    }

    /// When the sweep must look at this session next, seen from `now`.
    fn due(&self, now: u64) -> u64 {
        next_due(self.times(now), self.rules())
    }

    /// One look by the sweep at `now`: beats and wakes as the verdict says;
    /// the moment to look again.
    fn look(&self, now: u64) -> u64 {
        let v = verdict(self.times(now), self.rules());
        if v.expired && !self.expired.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        if v.beat {
            if let Some(tx) = self.beat.upgrade() {
                // A full queue is traffic that will go out anyway.
                if tx.try_send(Msg::Heartbeat).is_ok() {
                    // Counted from now, so that a writer slow to run gets
                    // one heartbeat, not one per look.
                    self.sent();
                }
            }
        }
        // Never again at once: a session whose heartbeat could not be queued
        // or whose reader has not yet ended is looked at a slack later.
        self.due(now).max(now + self.slack_ms.max(GRAIN_MS))
    }
}

/// What the sweep sees of one session.
#[derive(Clone, Copy, Debug)]
struct Times {
    /// When it last heard a frame or began waiting; `None` while busy.
    heard: Option<u64>,
    /// When it last sent a frame.
    sent: u64,
    now: u64,
}

/// One session's timers, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Rules {
    heartbeat_ms: u64,
    idle_ms: u64,
    /// How early a heartbeat may go.
    slack_ms: u64,
}

/// What the sweep does to one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    /// Queue a heartbeat.
    beat: bool,
    /// Silent past the idle timeout while waiting: end it.
    expired: bool,
}

/// A heartbeat goes out when the session sent nothing for a whole interval
/// but the slack (so the peer hears something at least every `heartbeat`,
/// as it expects); a session expires when it heard nothing for `idle` while
/// its owner waited.
fn verdict(t: Times, r: Rules) -> Verdict {
    let quiet = t.now.saturating_sub(t.sent);
    Verdict {
        beat: quiet + r.slack_ms >= r.heartbeat_ms,
        expired: t
            .heard
            .is_some_and(|h| t.now.saturating_sub(h) >= r.idle_ms),
    }
}

/// The next moment a session needs a look: its heartbeat falls due, or
/// (while its owner waits) its idle timeout runs out; whichever is first.
/// A busy owner's session is looked at again when its heartbeat falls due,
/// which is before any idle timeout could run out from the moment it waits.
fn next_due(t: Times, r: Rules) -> u64 {
    let beat = (t.sent + r.heartbeat_ms).saturating_sub(r.slack_ms);
    let idle = t.heard.map_or(u64::MAX, |h| h.saturating_add(r.idle_ms));
    beat.min(idle)
}

/// How early a heartbeat goes for sessions with this interval.
fn slack_for(heartbeat: Duration) -> Duration {
    (heartbeat / SLACK_PER_BEAT).clamp(MIN_SLACK, MAX_SLACK)
}

/// Every live session of the process, filed under the moment (rounded up to
/// [`GRAIN_MS`]) it next needs a look.
type Schedule = BTreeMap<u64, Vec<Weak<Pulse>>>;

/// The process's one sweep (a thread of its own: it needs no runtime, so a
/// runtime that ends takes no other session's heartbeats with it).
struct Sweep {
    due: Mutex<Schedule>,
    /// A session was filed earlier than the sweep planned to wake.
    sooner: Condvar,
}

/// `ms` rounded up to a multiple of [`GRAIN_MS`].
fn grain(ms: u64) -> u64 {
    ms.div_ceil(GRAIN_MS).saturating_mul(GRAIN_MS)
}

impl Sweep {
    fn get() -> &'static Sweep {
        static SWEEP: OnceLock<&'static Sweep> = OnceLock::new();
        SWEEP.get_or_init(|| {
            let s: &'static Sweep = Box::leak(Box::new(Sweep {
                due: Mutex::new(BTreeMap::new()),
                sooner: Condvar::new(),
            }));
            let spawned = std::thread::Builder::new()
                .name("session-sweep".into())
                .spawn(move || s.run());
            if let Err(e) = spawned {
                // Without it sessions still work; they just never time out
                // or beat. Say so loudly rather than fail every session.
                tracing::error!(error = %e, "cannot start the session sweep thread");
            }
            s
        })
    }

    /// Files a new session under `at`.
    fn file(&self, p: Weak<Pulse>, at: u64) {
        let at = grain(at);
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let sooner = due.first_key_value().is_none_or(|(first, _)| at < *first);
        due.entry(at).or_default().push(p);
        if sooner {
            self.sooner.notify_one();
        }
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = now_ms();
            let sleep = match due.first_key_value() {
                Some((first, _)) if *first <= now => Duration::ZERO,
                Some((first, _)) => Duration::from_millis(first - now).min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            if !sleep.is_zero() {
                due = match self.sooner.wait_timeout(due, sleep) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
                continue;
            }
            look_at_due(&mut due, now);
        }
    }
}

/// Looks at every session due by `now` and files each live one again;
/// how many it looked at.
fn look_at_due(due: &mut Schedule, now: u64) -> usize {
    let mut looked = 0;
    while let Some(entry) = due.first_entry() {
        if *entry.key() > now {
            break;
        }
        for w in entry.remove() {
            let Some(p) = w.upgrade() else { continue };
            if p.dropped.load(Ordering::Relaxed) {
                continue;
            }
            // Always later than `now`: the loop ends.
            let next = grain(p.look(now));
            looked += 1;
            due.entry(next).or_default().push(w);
        }
    }
    looked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::SessionTx;

    const RULES: Rules = Rules {
        heartbeat_ms: 1000,
        idle_ms: 3000,
        slack_ms: 250,
    };

    #[test]
    fn heartbeats_go_only_on_sessions_that_sent_nothing_for_an_interval() {
        // heartbeat 1000 ms, idle 3000 ms, 250 ms early.
        let v =
            |heard: Option<u64>, sent: u64, now: u64| verdict(Times { heard, sent, now }, RULES);
        let no = Verdict {
            beat: false,
            expired: false,
        };
        let beat = Verdict {
            beat: true,
            expired: false,
        };
        let dead = |beat| Verdict {
            beat,
            expired: true,
        };
        let table = [
            // (heard, sent, now) -> what the sweep does
            ((Some(10_000), 10_000, 10_000), no),
            // Sent 0.5 s ago: nothing yet, whatever was heard.
            ((Some(10_000), 9_500, 10_000), no),
            ((None, 9_500, 10_000), no),
            // Within the slack of a whole interval: beat now.
            ((Some(10_000), 9_250, 10_000), beat),
            ((Some(10_000), 5_000, 10_000), beat),
            // Heard nothing for the idle timeout while waiting: expired.
            ((Some(7_000), 9_900, 10_000), dead(false)),
            ((Some(6_000), 5_000, 10_000), dead(true)),
            // Just under the idle timeout: alive.
            ((Some(7_001), 9_900, 10_000), no),
            // Busy (the owner is not reading): never expired, still beats.
            ((None, 0, 10_000), beat),
            // A clock that went backwards (never on a monotonic clock) is quiet.
            ((Some(11_000), 12_000, 10_000), no),
        ];
        for ((heard, sent, now), want) in table {
            assert_eq!(
                v(heard, sent, now),
                want,
                "heard {heard:?} sent {sent} now {now}"
            );
        }
    }

    #[test]
    fn a_session_is_next_looked_at_when_its_beat_or_its_idle_timeout_falls_due() {
        let due = |heard: Option<u64>, sent: u64| {
            next_due(
                Times {
                    heard,
                    sent,
                    now: 0,
                },
                RULES,
            )
        };
        let table = [
            // (heard, sent) -> next look
            // Waiting since 10 s, sent at 10 s: the beat (10 + 1 - 0.25).
            ((Some(10_000), 10_000), 10_750),
            // Heard long ago: the idle timeout comes first.
            ((Some(7_000), 9_900), 10_000),
            // Busy: only the beat.
            ((None, 10_000), 10_750),
            // A beat overdue (queue full): at once; `look` adds a slack.
            ((Some(20_000), 0), 750),
        ];
        for ((heard, sent), want) in table {
            assert_eq!(due(heard, sent), want, "heard {heard:?} sent {sent}");
        }
    }

    #[test]
    fn a_heartbeat_goes_a_little_early_within_bounds() {
        assert_eq!(
            slack_for(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(slack_for(Duration::from_secs(30)), MAX_SLACK);
        assert_eq!(slack_for(Duration::from_millis(1)), MIN_SLACK);
        assert_eq!(grain(1), GRAIN_MS);
        assert_eq!(grain(GRAIN_MS), GRAIN_MS);
        assert_eq!(grain(0), 0);
    }

    /// The sweep looks only at sessions that are due: 1,000 sessions that
    /// heard and sent just now, one due; one look touches one of them.
    #[test]
    fn a_look_touches_only_the_sessions_due() {
        let (tx, mut rx) = SessionTx::channel(4);
        let now = 1_000_000;
        let pulse = |sent: u64| {
            Arc::new(Pulse {
                heard: AtomicU64::new(now),
                sent: AtomicU64::new(sent),
                expired: AtomicBool::new(false),
                wake: Notify::new(),
                dropped: AtomicBool::new(false),
                heartbeat_ms: 60_000,
                idle_ms: 180_000,
                slack_ms: 1_000,
                beat: tx.downgrade(),
            })
        };
        let quiet: Vec<_> = (0..1000).map(|_| pulse(now)).collect();
        let silent = pulse(now - 60_000);
        let mut due = Schedule::new();
        for p in &quiet {
            due.entry(grain(p.due(now)))
                .or_default()
                .push(Arc::downgrade(p));
        }
        due.entry(grain(silent.due(now)))
            .or_default()
            .push(Arc::downgrade(&silent));
        assert_eq!(look_at_due(&mut due, now), 1);
        assert_eq!(rx.try_recv().ok(), Some(Msg::Heartbeat));
        assert!(rx.try_recv().is_err(), "more than one heartbeat");
        // Everyone is filed again, all in the future.
        let filed: usize = due.values().map(Vec::len).sum();
        assert_eq!(filed, 1001);
        assert!(due.keys().all(|k| *k > now));
    }

    /// A session that is read from but never written to gets heartbeats from
    /// the sweep, and one whose owner waits in silence expires; one whose
    /// owner is busy does not.
    #[tokio::test]
    async fn the_sweep_beats_and_expires() {
        let (tx, mut rx) = SessionTx::channel(4);
        let p = Pulse::start(
            Duration::from_millis(100),
            Duration::from_millis(300),
            tx.downgrade(),
        );
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.unwrap(), Some(Msg::Heartbeat));
        // Busy for longer than the idle timeout: not expired.
        p.busy();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!p.expired.load(Ordering::Relaxed));
        // Expired, then a frame: not expired after all.
        p.waiting();
        p.expired.store(true, Ordering::Relaxed);
        p.wake.notify_one();
        let early = tokio::time::timeout(Duration::from_millis(50), p.expired()).await;
        assert!(early.is_err(), "a session that just heard a frame expired");
        p.waiting();
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), p.expired())
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // Once the reader is gone the sweep forgets the session.
        p.drop_reader();
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(400)).await;
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(rx.try_recv().is_err(), "heartbeats after the reader went");
        drop(tx);
    }
}
