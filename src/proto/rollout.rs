//! A job's rollout policy as it travels with the job (`--batch`, `--canary`,
//! `--max-failures`, `--at`, `--window`) and the parsing of its command-line
//! forms. Data and parsing only: what the policy allows at a given moment is
//! decided in `crate::rollout`; nothing here does I/O.

use super::ids::NodeName;
use serde::{Deserialize, Serialize};

/// A count, or a percentage of the targets it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Exactly this many.
    Count(u64),
    /// This percentage (0-100) of the targets.
    Percent(u8),
}

impl Limit {
    /// Parses `N` or `P%` for `flag`; `min` is the smallest count allowed.
    pub fn parse(flag: &str, s: &str, min: u64) -> Result<Limit, String> {
        let bad = || format!("{flag}: expected a count N or a percentage P% (got {s:?})");
        if let Some(p) = s.strip_suffix('%') {
            let p: u64 = p.trim().parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(format!("{flag}: {p}% is more than 100%"));
            }
            if p < min {
                return Err(format!("{flag}: must be at least {min}% (got {p}%)"));
            }
            return Ok(Limit::Percent(p as u8));
        }
        let n: u64 = s.trim().parse().map_err(|_| bad())?;
        if n < min {
            return Err(format!("{flag}: must be at least {min} (got {n})"));
        }
        Ok(Limit::Count(n))
    }

    /// The count it stands for among `targets` (a percentage rounded up, so
    /// `10%` of 5 is 1; `0%` is 0).
    pub fn of(self, targets: u64) -> u64 {
        match self {
            Limit::Count(n) => n,
            Limit::Percent(p) => (targets * u64::from(p)).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A daily window in UTC, minutes after midnight; `start > end` wraps past
/// midnight (`22:00-04:00`). `start == end` is refused when parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First minute inside.
    pub start_min: u16,
    /// First minute outside.
    pub end_min: u16,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = |why: &str| format!("--window: {why} (expected HH:MM-HH:MM in UTC, got {s:?})");
        let (a, b) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
        let hm = |t: &str| -> Result<u16, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
            let h: u16 = h.parse().map_err(|_| bad("bad hour"))?;
            let m: u16 = m.parse().map_err(|_| bad("bad minute"))?;
            if h > 23 || m > 59 || t.trim().len() != 5 {
                return Err(bad("not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let w = Window {
            start_min: hm(a)?,
            end_min: hm(b)?,
        };
        if w.start_min == w.end_min {
            return Err(bad("empty window"));
        }
        Ok(w)
    }

    /// Whether the UTC time `now_ms` lies inside.
    pub fn contains(&self, now_ms: u64) -> bool {
        let m = ((now_ms / 60_000) % (24 * 60)) as u16;
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, e) = (self.start_min, self.end_min);
        write!(f, "{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
    }
}

/// How a job rolls out: carried by every assignment of the job and
/// enforced at every relay. The default lets every leaf start at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// At most this many of a relay's home leaves of the job in flight
    /// (sent, delivered or running) at once; a percentage is of that
    /// relay's targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Limit>,
    /// The canary clients HQ picked (`--canary N`): only they start until
    /// HQ says they all succeeded (a `Resume`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary: Vec<NodeName>,
    /// Past this many failures the job pauses (a percentage is of the
    /// targets: of the whole job at HQ, of its own at each relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Limit>,
    /// No leaf starts before this time, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// Leaves start only inside this daily window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

impl Policy {
    /// Whether it restricts anything (a job without one is never gated).
    pub fn is_gated(&self) -> bool {
        *self != Policy::default()
    }
}

/// What the operator asks for: `--canary N` asks HQ for N canaries (they
/// are picked when the job is made); `--repeat` and `--after-sync` are HQ's
/// alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRequest {
    /// As [`Policy::batch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Limit>,
    /// How many canaries HQ picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u64>,
    /// As [`Policy::max_failures`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Limit>,
    /// As [`Policy::start_at_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// As [`Policy::window`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Make it a recurring job on this schedule (`hq package schedule`'s
    /// grammar): each occurrence is a new job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<String>,
    /// Hold the job (paused) until this relay's package sync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_sync: Option<NodeName>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_resolve() {
        let ok = [
            ("3", 1, Limit::Count(3)),
            ("10%", 1, Limit::Percent(10)),
            ("0", 0, Limit::Count(0)),
            ("100%", 0, Limit::Percent(100)),
        ];
        for (s, min, want) in ok {
            assert_eq!(Limit::parse("--x", s, min), Ok(want), "{s}");
        }
        for (s, min, why) in [
            ("0", 1, "at least 1"),
            ("0%", 1, "at least 1%"),
            ("150%", 0, "more than 100%"),
            ("x", 0, "expected a count"),
            ("-1", 0, "expected a count"),
            ("", 0, "expected a count"),
        ] {
            let e = Limit::parse("--x", s, min).unwrap_err();
            assert!(e.contains(why) && e.starts_with("--x"), "{s}: {e}");
        }
        assert_eq!(Limit::Percent(10).of(5), 1);
        assert_eq!(Limit::Percent(10).of(100), 10);
        assert_eq!(Limit::Percent(10).of(101), 11);
        assert_eq!(Limit::Percent(0).of(100), 0);
        assert_eq!(Limit::Count(7).of(2), 7);
    }

    #[test]
    fn windows_parse_and_wrap() {
        let w = Window::parse("02:00-04:30").unwrap();
        assert_eq!((w.start_min, w.end_min), (120, 270));
        assert_eq!(w.to_string(), "02:00-04:30");
        let at = |h: u64, m: u64| (3 * 86_400 + h * 3600 + m * 60) * 1000;
        assert!(!w.contains(at(1, 59)));
        assert!(w.contains(at(2, 0)));
        assert!(w.contains(at(4, 29)));
        assert!(!w.contains(at(4, 30)));
        let night = Window::parse("22:00-04:00").unwrap();
        assert!(night.contains(at(23, 0)) && night.contains(at(0, 0)) && night.contains(at(3, 59)));
        assert!(!night.contains(at(4, 0)) && !night.contains(at(12, 0)));
        for bad in [
            "",
            "02:00",
            "2-4",
            "25:00-01:00",
            "02:60-03:00",
            "02:00-02:00",
            "2:00-03:00",
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.starts_with("--window"), "{bad}: {e}");
        }
    }
}
