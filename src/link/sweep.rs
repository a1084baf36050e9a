//! Liveness of every session of a process, kept by one sweep: each session
//! has a [`Pulse`] (when it last heard a frame, when it last sent one), and a
//! single thread walks them all a few times per heartbeat interval, queues a
//! heartbeat on a session that sent nothing for the interval, and wakes the
//! reader of a session that heard nothing for its idle timeout.
//!
//! No timer per session and no timer per message: a frame costs an atomic
//! store on each side. Any frame counts as liveness, job traffic included.
//! Silence is counted only while the session's owner waits for a message
//! ([`Pulse::waiting`]): frames the owner has not read yet because it is busy
//! (a flush under load) sit in the socket and must not pass for a dead peer.
//! Knows nothing of messages other than `Heartbeat`, and never does I/O.

use crate::proto::Msg;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// `heard` while the owner is not waiting for a message: not judged.
const BUSY: u64 = u64::MAX;
/// Sweeps per heartbeat interval.
const SWEEPS_PER_BEAT: u32 = 4;
/// The sweep's shortest and longest period.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

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
    /// Where heartbeats go; does not keep the writer alive.
    beat: mpsc::WeakSender<Msg>,
}

impl Pulse {
    /// A session's pulse, registered with the sweep.
    pub(super) fn start(
        heartbeat: Duration,
        idle: Duration,
        beat: mpsc::WeakSender<Msg>,
    ) -> Arc<Pulse> {
        let now = now_ms();
        let p = Arc::new(Pulse {
            heard: AtomicU64::new(BUSY),
            sent: AtomicU64::new(now),
            expired: AtomicBool::new(false),
            wake: Notify::new(),
            dropped: AtomicBool::new(false),
            heartbeat_ms: (heartbeat.as_millis() as u64).max(1),
            idle_ms: (idle.as_millis() as u64).max(1),
            beat,
        });
        Sweep::get().register(&p, heartbeat);
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

    /// One look by the sweep at `now`, `tick` being the sweep's period.
    fn check(&self, now: u64, tick_ms: u64) -> Verdict {
        let heard = self.heard.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        verdict(
            Times {
                heard: (heard != BUSY).then_some(heard),
                sent,
                now,
            },
            self.heartbeat_ms,
            self.idle_ms,
            tick_ms,
        )
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

/// What the sweep does to one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    /// Queue a heartbeat.
    beat: bool,
    /// Silent past the idle timeout while waiting: end it.
    expired: bool,
}

/// A heartbeat goes out when the session would otherwise have sent nothing
/// for a whole interval by the next sweep (so the peer hears something at
/// least every `heartbeat`, as it expects); a session expires when it heard
/// nothing for `idle` while its owner waited.
fn verdict(t: Times, heartbeat_ms: u64, idle_ms: u64, tick_ms: u64) -> Verdict {
    let quiet = t.now.saturating_sub(t.sent);
    Verdict {
        beat: quiet + tick_ms >= heartbeat_ms,
        expired: t.heard.is_some_and(|h| t.now.saturating_sub(h) >= idle_ms),
    }
}

/// The sweep's period for sessions with this heartbeat.
fn tick_for(heartbeat: Duration) -> Duration {
    (heartbeat / SWEEPS_PER_BEAT).clamp(MIN_TICK, MAX_TICK)
}

/// Every live session of the process and the period to walk them at.
struct Registry {
    pulses: Vec<Weak<Pulse>>,
    tick: Duration,
}

/// The process's one sweep (a thread of its own: it needs no runtime, so a
/// runtime that ends takes no other session's heartbeats with it).
struct Sweep {
    reg: Mutex<Registry>,
    changed: Condvar,
}

impl Sweep {
    fn get() -> &'static Sweep {
        static SWEEP: OnceLock<&'static Sweep> = OnceLock::new();
        SWEEP.get_or_init(|| {
            let s: &'static Sweep = Box::leak(Box::new(Sweep {
                reg: Mutex::new(Registry {
                    pulses: Vec::new(),
                    tick: MAX_TICK,
                }),
                changed: Condvar::new(),
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

    fn register(&self, p: &Arc<Pulse>, heartbeat: Duration) {
        let mut reg = self.reg.lock().unwrap_or_else(|e| e.into_inner());
        reg.pulses.push(Arc::downgrade(p));
        let tick = tick_for(heartbeat);
        if tick < reg.tick {
            reg.tick = tick;
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut reg = self.reg.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let tick = reg.tick;
            reg = match self.changed.wait_timeout(reg, tick) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            let now = now_ms();
            let tick_ms = reg.tick.as_millis() as u64;
            let mut shortest: Option<Duration> = None;
            reg.pulses.retain(|w| {
                let Some(p) = w.upgrade() else { return false };
                if p.dropped.load(Ordering::Relaxed) {
                    return false;
                }
                let v = p.check(now, tick_ms);
                if v.expired && !p.expired.swap(true, Ordering::AcqRel) {
                    p.wake.notify_one();
                }
                if v.beat {
                    if let Some(tx) = p.beat.upgrade() {
                        // A full queue is traffic that will go out anyway.
                        if tx.try_send(Msg::Heartbeat).is_ok() {
                            // Counted from now, so that a writer slow to
                            // run gets one heartbeat, not one per sweep.
                            p.sent();
                        }
                    }
                }
                let t = tick_for(Duration::from_millis(p.heartbeat_ms));
                shortest = Some(shortest.map_or(t, |s| s.min(t)));
                true
            });
            reg.tick = shortest.unwrap_or(MAX_TICK);
            let (len, cap) = (reg.pulses.len(), reg.pulses.capacity());
            if cap > 64 && len < cap / 4 {
                reg.pulses.shrink_to(len * 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_only_on_sessions_that_sent_nothing_for_an_interval() {
        // heartbeat 1000 ms, idle 3000 ms, sweeps every 250 ms.
        let v = |heard: Option<u64>, sent: u64, now: u64| {
            verdict(Times { heard, sent, now }, 1000, 3000, 250)
        };
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
            // By the next sweep it would be a whole interval: beat now.
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
    fn the_sweep_runs_a_few_times_per_heartbeat_within_bounds() {
        assert_eq!(
            tick_for(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(tick_for(Duration::from_secs(30)), MAX_TICK);
        assert_eq!(tick_for(Duration::from_millis(1)), MIN_TICK);
    }

    /// A session that is read from but never written to gets heartbeats from
    /// the sweep, and one whose owner waits in silence expires; one whose
    /// owner is busy does not.
    #[tokio::test]
    async fn the_sweep_beats_and_expires() {
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
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
