//! Pure rollout decisions: may this leaf start now (at a relay), and what HQ
//! does about a job's failures and canaries. Plain functions over a
//! [`Policy`], counts and a clock, table-tested; no I/O, no store.
//!
//! The rules, as every relay and HQ apply them:
//! - A leaf starts only when the job is not paused, the start time has come,
//!   the clock is inside the daily window, the relay's in-flight leaves of
//!   the job are under the batch, and (unless it is a canary) HQ has said
//!   the canaries succeeded.
//! - Near its failure threshold a relay keeps fewer leaves in flight
//!   ([`failure_room`]): a leaf handed to an agent starts a while later
//!   (its receipt and start are made durable first), so every leaf in
//!   flight when the breaker trips may still start after it. The relay
//!   keeps only as many in flight as, at the failure rate it has seen, could
//!   fail without going more than one past what it has left.
//! - Circuit breaker: a job pauses when its failures since the last resume
//!   exceed the threshold: a count N of the whole job, or P% of the whole
//!   job's targets. A relay counts only its own home leaves, and stops
//!   starting leaves at once (without waiting for HQ) when its own failures
//!   exceed N, or P% of its own targets. HQ pauses the whole job on the same
//!   per-relay rule as well as on the job's totals, so a relay's local stop
//!   is always followed by HQ's pause: the two never disagree for long.

use crate::proto::{Limit, NodeName, Policy};

/// What the operator or HQ said about a job, as a relay holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Paused (by hand, by the breaker, by a failed canary).
    pub paused: bool,
    /// HQ said the canaries succeeded (or the operator resumed).
    pub canary_open: bool,
}

/// A relay's counts of its home leaves of one job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Home leaves of the job here.
    pub targets: u64,
    /// Sent to their agent and not final.
    pub in_flight: u64,
    /// Failed or timed out since the last resume.
    pub failed: u64,
    /// Final (any way) since the relay counted the job: with `failed`, the
    /// failure rate seen here.
    pub ended: u64,
}

/// Why a leaf may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The job is paused.
    Paused,
    /// This relay's failures passed its share of the threshold.
    Failures,
    /// Before `--at`.
    NotYet,
    /// Outside `--window`.
    OutsideWindow,
    /// Waiting for the canaries.
    Canary,
    /// The batch is full.
    BatchFull,
    /// Near the failure threshold: no more in flight for now.
    NearFailures,
}

/// Whether failures `failed` exceed `limit` among `targets` ("past N").
pub fn past_threshold(limit: Option<Limit>, failed: u64, targets: u64) -> bool {
    match limit {
        None => false,
        Some(Limit::Count(n)) => failed > n,
        // failed / targets > p / 100, without rounding.
        Some(Limit::Percent(p)) => failed * 100 > u64::from(p) * targets,
    }
}

/// The failures a relay may see before its local breaker stops it (its
/// share of `limit`: past it, it stops).
pub fn allowance(limit: Limit, targets: u64) -> u64 {
    match limit {
        Limit::Count(n) => n,
        Limit::Percent(p) => u64::from(p) * targets / 100,
    }
}

/// Whether one more leaf may be in flight under `limit`: the leaves in
/// flight and this one, at the failure rate seen here, cautious while few
/// ended ((failed + 1) / (ended + 1)), are expected to fail at most once
/// more than the failures left before the stop. Far from the threshold
/// this is no limit; at the start it lets `allowance + 1` run until the
/// first results come; at the allowance (the next failure stops the
/// relay), with 5% failing, about 20.
pub fn failure_room(limit: Limit, c: Counts) -> bool {
    let left = allowance(limit, c.targets).saturating_sub(c.failed) + 1;
    (c.in_flight + 1).saturating_mul(c.failed + 1) <= left.saturating_mul(c.ended + 1)
}

/// May a leaf of a job under `p` start at a relay now? `canary`: the leaf's
/// client is one of the job's canaries. `now_ms` is HQ's time as the relay
/// estimates it (UTC).
pub fn may_start(
    p: &Policy,
    ctl: Control,
    c: Counts,
    canary: bool,
    now_ms: u64,
) -> Result<(), Hold> {
    if ctl.paused {
        return Err(Hold::Paused);
    }
    if past_threshold(p.max_failures, c.failed, c.targets) {
        return Err(Hold::Failures);
    }
    if p.start_at_ms.is_some_and(|at| now_ms < at) {
        return Err(Hold::NotYet);
    }
    if p.window.is_some_and(|w| !w.contains(now_ms)) {
        return Err(Hold::OutsideWindow);
    }
    if !p.canary.is_empty() && !ctl.canary_open && !canary {
        return Err(Hold::Canary);
    }
    if p.max_failures.is_some_and(|l| !failure_room(l, c)) {
        return Err(Hold::NearFailures);
    }
    if let Some(b) = p.batch {
        // A percentage of at least one leaf: `--batch 10%` of 5 targets is 1.
        if c.in_flight >= b.of(c.targets).max(1) {
            return Err(Hold::BatchFull);
        }
    }
    Ok(())
}

/// A canary's latest state as HQ sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryState {
    /// Not yet final (or not yet targeted).
    Open,
    /// Succeeded.
    Succeeded,
    /// Final, not succeeded (failed, timed out, expired, canceled).
    Failed,
}

/// What HQ does about a job after its counts changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Keep,
    /// Pause the job everywhere, with this reason.
    Pause(String),
    /// The canaries all succeeded: let the rest start.
    OpenCanary,
}

/// HQ's decision for an active (not paused) job: `failed` and `targets` of
/// the whole job and per home relay (failures since the last resume);
/// `canaries` with their states (empty when canaries are open or none).
pub fn hq_verdict(
    p: &Policy,
    failed: u64,
    targets: u64,
    per_relay: &[(NodeName, u64, u64)],
    canaries: &[(NodeName, CanaryState)],
) -> Verdict {
    if let Some((c, _)) = canaries.iter().find(|(_, s)| *s == CanaryState::Failed) {
        return Verdict::Pause(format!("canary {c} did not succeed"));
    }
    if past_threshold(p.max_failures, failed, targets) {
        return Verdict::Pause(format!(
            "{failed} failures of {targets} leaves, past --max-failures {}",
            p.max_failures.map(|l| l.to_string()).unwrap_or_default()
        ));
    }
    if let Some(Limit::Percent(pct)) = p.max_failures {
        for (relay, f, t) in per_relay {
            if past_threshold(p.max_failures, *f, *t) {
                return Verdict::Pause(format!(
                    "{f} failures of {t} leaves at relay {relay}, past --max-failures {pct}%"
                ));
            }
        }
    }
    if !canaries.is_empty() && canaries.iter().all(|(_, s)| *s == CanaryState::Succeeded) {
        return Verdict::OpenCanary;
    }
    Verdict::Keep
}

/// HQ's pick of `n` canaries among the candidate clients (sorted by name,
/// spread over their home relays: one per relay in turn), so that a canary
/// set covers as many relays as it can.
pub fn pick_canaries(mut candidates: Vec<(NodeName, NodeName)>, n: usize) -> Vec<NodeName> {
    candidates.sort();
    let mut by_relay: std::collections::BTreeMap<NodeName, std::collections::VecDeque<NodeName>> =
        Default::default();
    for (client, relay) in candidates {
        by_relay.entry(relay).or_default().push_back(client);
    }
    let mut out = Vec::new();
    while out.len() < n {
        let mut any = false;
        for q in by_relay.values_mut() {
            if out.len() == n {
                break;
            }
            if let Some(c) = q.pop_front() {
                out.push(c);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Window;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    const DAY: u64 = 86_400_000;
    /// 12:00 UTC on some day.
    const NOON: u64 = 100 * DAY + 12 * 3_600_000;

    #[test]
    fn may_start_table() {
        let open = Control {
            paused: false,
            canary_open: false,
        };
        let counts = |in_flight, failed| Counts {
            targets: 100,
            in_flight,
            failed,
            ended: 1000,
        };
        let batch = |l| Policy {
            batch: Some(l),
            ..Policy::default()
        };
        let fails = |l| Policy {
            max_failures: Some(l),
            ..Policy::default()
        };
        let at = Policy {
            start_at_ms: Some(NOON + 1),
            ..Policy::default()
        };
        let window = |s| Policy {
            window: Some(Window::parse(s).unwrap()),
            ..Policy::default()
        };
        let canary = Policy {
            canary: vec![n("c1")],
            ..Policy::default()
        };
        let paused = Control {
            paused: true,
            ..open
        };
        let opened = Control {
            canary_open: true,
            ..open
        };
        use Hold::*;
        type Row = (
            &'static str,
            Policy,
            Control,
            Counts,
            bool,
            u64,
            Result<(), Hold>,
        );
        let table: Vec<Row> = vec![
            (
                "no policy",
                Policy::default(),
                open,
                counts(1000, 1000),
                false,
                NOON,
                Ok(()),
            ),
            (
                "paused",
                Policy::default(),
                paused,
                counts(0, 0),
                false,
                NOON,
                Err(Paused),
            ),
            (
                "batch room",
                batch(Limit::Count(2)),
                open,
                counts(1, 0),
                false,
                NOON,
                Ok(()),
            ),
            (
                "batch full",
                batch(Limit::Count(2)),
                open,
                counts(2, 0),
                false,
                NOON,
                Err(BatchFull),
            ),
            (
                "batch 10% room",
                batch(Limit::Percent(10)),
                open,
                counts(9, 0),
                false,
                NOON,
                Ok(()),
            ),
            (
                "batch 10% full",
                batch(Limit::Percent(10)),
                open,
                counts(10, 0),
                false,
                NOON,
                Err(BatchFull),
            ),
            (
                "batch 1% of few",
                batch(Limit::Percent(1)),
                open,
                Counts {
                    targets: 3,
                    in_flight: 0,
                    failed: 0,
                    ended: 0,
                },
                false,
                NOON,
                Ok(()),
            ),
            (
                "failures at N",
                fails(Limit::Count(3)),
                open,
                counts(0, 3),
                false,
                NOON,
                Ok(()),
            ),
            (
                "failures past N",
                fails(Limit::Count(3)),
                open,
                counts(0, 4),
                false,
                NOON,
                Err(Failures),
            ),
            (
                "failures 0 allows none",
                fails(Limit::Count(0)),
                open,
                counts(0, 1),
                false,
                NOON,
                Err(Failures),
            ),
            (
                "failures at 5%",
                fails(Limit::Percent(5)),
                open,
                counts(0, 5),
                false,
                NOON,
                Ok(()),
            ),
            (
                "failures past 5%",
                fails(Limit::Percent(5)),
                open,
                counts(0, 6),
                false,
                NOON,
                Err(Failures),
            ),
            (
                "before --at",
                at.clone(),
                open,
                counts(0, 0),
                false,
                NOON,
                Err(NotYet),
            ),
            ("at --at", at, open, counts(0, 0), false, NOON + 1, Ok(())),
            (
                "inside window",
                window("11:00-13:00"),
                open,
                counts(0, 0),
                false,
                NOON,
                Ok(()),
            ),
            (
                "outside window",
                window("13:00-14:00"),
                open,
                counts(0, 0),
                false,
                NOON,
                Err(OutsideWindow),
            ),
            (
                "wrapping window",
                window("23:00-12:01"),
                open,
                counts(0, 0),
                false,
                NOON,
                Ok(()),
            ),
            (
                "canary leaf",
                canary.clone(),
                open,
                counts(0, 0),
                true,
                NOON,
                Ok(()),
            ),
            (
                "non-canary waits",
                canary.clone(),
                open,
                counts(0, 0),
                false,
                NOON,
                Err(Canary),
            ),
            (
                "canaries passed",
                canary.clone(),
                opened,
                counts(0, 0),
                false,
                NOON,
                Ok(()),
            ),
            (
                "paused canary",
                canary,
                paused,
                counts(0, 0),
                true,
                NOON,
                Err(Paused),
            ),
        ];
        for (name, p, ctl, c, is_canary, now, want) in table {
            assert_eq!(may_start(&p, ctl, c, is_canary, now), want, "{name}");
        }
    }

    #[test]
    fn fewer_in_flight_near_the_failure_threshold() {
        let c = |in_flight, failed, ended| Counts {
            targets: 1000,
            in_flight,
            failed,
            ended,
        };
        let five_pct = Limit::Percent(1); // 10 of 1000 allowed here; 5% fail
                                          // (limit, counts, room for one more)
        let table = [
            // Nothing ended yet: allowance + 1 in flight.
            (five_pct, c(10, 0, 0), true),
            (five_pct, c(11, 0, 0), false),
            // 1 failure in 100 ended: far from it, no limit worth the name.
            (five_pct, c(500, 1, 100), true),
            // Two failures left at 5% failing: about 40.
            (five_pct, c(38, 9, 199), true),
            (five_pct, c(40, 9, 199), false),
            // At the allowance (the next failure stops it): about 20.
            (five_pct, c(19, 10, 219), true),
            (five_pct, c(20, 10, 219), false),
            // --max-failures 0: one at a time until results come.
            (Limit::Count(0), c(0, 0, 0), true),
            (Limit::Count(0), c(1, 0, 0), false),
            (Limit::Count(0), c(3, 0, 4), true),
            (Limit::Count(0), c(5, 0, 4), false),
        ];
        for (i, (l, counts, want)) in table.into_iter().enumerate() {
            assert_eq!(failure_room(l, counts), want, "row {i}: {counts:?}");
        }
        assert_eq!(allowance(Limit::Percent(1), 1000), 10);
        assert_eq!(allowance(Limit::Percent(10), 5), 0);
        assert_eq!(allowance(Limit::Count(3), 5), 3);
    }

    #[test]
    fn hq_verdict_table() {
        use CanaryState::*;
        let p = |l| Policy {
            max_failures: Some(l),
            ..Policy::default()
        };
        type Relays = Vec<(NodeName, u64, u64)>;
        type Row = (
            &'static str,
            Policy,
            u64,
            u64,
            Relays,
            Vec<(NodeName, CanaryState)>,
            &'static str,
        );
        let table: Vec<Row> = vec![
            (
                "no policy",
                Policy::default(),
                50,
                100,
                vec![],
                vec![],
                "keep",
            ),
            (
                "at the count",
                p(Limit::Count(2)),
                2,
                100,
                vec![],
                vec![],
                "keep",
            ),
            (
                "past the count",
                p(Limit::Count(2)),
                3,
                100,
                vec![],
                vec![],
                "pause",
            ),
            (
                "past 1% of the job",
                p(Limit::Percent(1)),
                2,
                100,
                vec![],
                vec![],
                "pause",
            ),
            (
                "one relay past its 10%",
                p(Limit::Percent(10)),
                3,
                100,
                vec![(n("r1"), 0, 80), (n("r2"), 3, 20)],
                vec![],
                "pause",
            ),
            (
                "relays within 10%",
                p(Limit::Percent(10)),
                3,
                100,
                vec![(n("r1"), 1, 80), (n("r2"), 2, 20)],
                vec![],
                "keep",
            ),
            (
                "canaries running",
                Policy::default(),
                0,
                10,
                vec![],
                vec![(n("c1"), Succeeded), (n("c2"), Open)],
                "keep",
            ),
            (
                "canaries passed",
                Policy::default(),
                0,
                10,
                vec![],
                vec![(n("c1"), Succeeded), (n("c2"), Succeeded)],
                "open",
            ),
            (
                "a canary failed",
                Policy::default(),
                1,
                10,
                vec![],
                vec![(n("c1"), Failed), (n("c2"), Succeeded)],
                "pause",
            ),
        ];
        for (name, pol, f, t, rel, can, want) in table {
            let got = match hq_verdict(&pol, f, t, &rel, &can) {
                Verdict::Keep => "keep",
                Verdict::Pause(_) => "pause",
                Verdict::OpenCanary => "open",
            };
            assert_eq!(got, want, "{name}");
        }
        match hq_verdict(&Policy::default(), 0, 1, &[], &[(n("c7"), Failed)]) {
            Verdict::Pause(r) => assert!(r.contains("canary c7"), "{r}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn canaries_spread_over_relays() {
        let c = |a: &str, r: &str| (n(a), n(r));
        let cands = vec![
            c("a3", "r1"),
            c("a1", "r1"),
            c("a2", "r1"),
            c("b1", "r2"),
            c("b2", "r2"),
        ];
        assert_eq!(pick_canaries(cands.clone(), 2), vec![n("a1"), n("b1")]);
        assert_eq!(
            pick_canaries(cands.clone(), 3),
            vec![n("a1"), n("a2"), n("b1")]
        );
        assert_eq!(pick_canaries(cands.clone(), 9).len(), 5);
        assert!(pick_canaries(vec![], 3).is_empty());
    }
}
