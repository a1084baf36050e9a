//! Package-sync schedules for relays: the operator's text (`daily 02:30`,
//! `weekly tue`, `monthly 2nd tue +4d 02:30`), its canonical form, the next fire
//! time after an instant, and a per-relay stagger so relays do not all pull at once.
//!
//! This module owns the `croner` and `chrono` crates: calendar arithmetic goes
//! through croner, never through hand-written date code here. It is pure: it
//! must not read the clock, sleep, log, or touch the network or the store. Callers
//! pass "now" in as unix milliseconds (UTC) and act on the instant they get back.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::parser::CronParser;
use croner::Cron;

/// The accepted forms, quoted in every parse error.
const FORMS: &str = "expected 'daily [HH:MM]', 'weekly DAY [HH:MM]' or \
                     'monthly NTH DAY [+Nd] [HH:MM]' (DAY: mon..sun, NTH: 1st..5th, \
                     N: 0..31, times in UTC)";

/// The longest delay after the nth weekday, in days.
pub const MAX_DELAY_DAYS: u8 = 31;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    const ALL: [(Weekday, &'static str, &'static str); 7] = [
        (Weekday::Mon, "mon", "monday"),
        (Weekday::Tue, "tue", "tuesday"),
        (Weekday::Wed, "wed", "wednesday"),
        (Weekday::Thu, "thu", "thursday"),
        (Weekday::Fri, "fri", "friday"),
        (Weekday::Sat, "sat", "saturday"),
        (Weekday::Sun, "sun", "sunday"),
    ];

    /// The short lowercase name used in the canonical text (`tue`).
    pub fn short_name(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// Reads a lowercase short or full day name.
    fn from_word(word: &str) -> Option<Weekday> {
        Weekday::ALL
            .iter()
            .find(|(_, short, full)| word == *short || word == *full)
            .map(|(day, _, _)| *day)
    }

    /// The name croner reads in the day-of-week field (`TUE`).
    fn cron_name(self) -> String {
        self.short_name().to_ascii_uppercase()
    }
}

/// How often a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Every day.
    Daily,
    /// Every week on this day.
    Weekly(Weekday),
    /// Every month on the `nth` (1..=5) `weekday`; months without one are skipped.
    Monthly {
        /// Which occurrence of the weekday in the month, 1..=5.
        nth: u8,
        /// The weekday.
        weekday: Weekday,
    },
}

/// Why the operator's schedule text, or a schedule's parts, were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing but whitespace.
    #[error("empty schedule; {FORMS}")]
    Empty,
    /// The first word is not daily, weekly or monthly.
    #[error("unknown schedule kind '{0}'; {FORMS}")]
    UnknownKind(String),
    /// A weekly or monthly schedule without a day.
    #[error("missing day (mon..sun); {FORMS}")]
    MissingDay,
    /// A word where a day was expected.
    #[error("unknown day '{0}', expected mon|tue|wed|thu|fri|sat|sun or a full name; {FORMS}")]
    BadDay(String),
    /// A monthly schedule without which-occurrence.
    #[error("missing NTH (1st..5th or first..fifth); {FORMS}")]
    MissingNth,
    /// A word where 1st..5th was expected.
    #[error("unknown NTH '{0}', expected 1st|2nd|3rd|4th|5th or first..fifth; {FORMS}")]
    BadNth(String),
    /// A `+Nd` that is malformed or over 31 days.
    #[error("bad delay '{0}', expected +Nd with N in 0..=31; {FORMS}")]
    BadDelay(String),
    /// A `+Nd` on a daily or weekly schedule.
    #[error("a delay (+Nd) is only allowed on monthly schedules; {FORMS}")]
    DelayNotMonthly,
    /// A time that is malformed or out of range.
    #[error("bad time '{0}', expected HH:MM in UTC with HH 00..23 and MM 00..59; {FORMS}")]
    BadTime(String),
    /// Words left over after a complete schedule.
    #[error("unexpected '{0}' after the schedule; {FORMS}")]
    Unexpected(String),
    /// croner refused the pattern built from valid parts (a bug here, not the operator's).
    #[error("internal cron pattern '{pattern}' refused: {reason}")]
    Pattern {
        /// The pattern handed to croner.
        pattern: String,
        /// croner's reason.
        reason: String,
    },
}

/// A package-sync schedule in UTC: when HQ syncs a relay's cache, before stagger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Daily, weekly or monthly, with the day.
    kind: Kind,
    /// Hour of the day, 0..=23, UTC.
    hour: u8,
    /// Minute of the hour, 0..=59.
    minute: u8,
    /// Days added after the nth weekday, 0..=31; always 0 unless monthly.
    delay_days: u8,
    /// The croner pattern for the undelayed fire times.
    cron: Cron,
}

impl Schedule {
    /// Builds a schedule from its parts, checking each range: `hour` 0..=23,
    /// `minute` 0..=59, `nth` 1..=5, and `delay_days` 0..=31 on monthly
    /// schedules (0 otherwise).
    pub fn new(kind: Kind, hour: u8, minute: u8, delay_days: u8) -> Result<Self, ScheduleError> {
        if hour > 23 || minute > 59 {
            return Err(ScheduleError::BadTime(format!("{hour:02}:{minute:02}")));
        }
        let day_field = match kind {
            Kind::Daily | Kind::Weekly(_) if delay_days != 0 => {
                return Err(ScheduleError::DelayNotMonthly)
            }
            Kind::Monthly { nth, .. } if !(1..=5).contains(&nth) => {
                return Err(ScheduleError::BadNth(nth.to_string()))
            }
            _ if delay_days > MAX_DELAY_DAYS => {
                return Err(ScheduleError::BadDelay(format!("+{delay_days}d")))
            }
            Kind::Daily => "*".to_string(),
            Kind::Weekly(day) => day.cron_name(),
            Kind::Monthly { nth, weekday } => format!("{}#{nth}", weekday.cron_name()),
        };
        let pattern = format!("{minute} {hour} * * {day_field}");
        let cron = CronParser::new()
            .parse(&pattern)
            .map_err(|e| ScheduleError::Pattern {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
        Ok(Schedule {
            kind,
            hour,
            minute,
            delay_days,
            cron,
        })
    }

    /// Daily, weekly or monthly, with the day.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The time of day, `(hour, minute)`, in UTC.
    pub fn at(&self) -> (u8, u8) {
        (self.hour, self.minute)
    }

    /// Days added after the nth weekday (0 unless monthly).
    pub fn delay_days(&self) -> u8 {
        self.delay_days
    }

    /// The first time strictly after `after_ms` (unix milliseconds, UTC) at
    /// which this schedule fires, before stagger. `None` only when no such time
    /// is representable (beyond the calendar's range).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = i64::try_from(after_ms).ok()?;
        self.next_after_signed(after)
            .and_then(|t| u64::try_from(t).ok())
    }

    /// [`Self::next_after`] on signed milliseconds, so a stagger may shift the
    /// search start before the epoch.
    fn next_after_signed(&self, after_ms: i64) -> Option<i64> {
        let delay_ms = i64::from(self.delay_days) * DAY_MS;
        // A fire time is base + delay, and base + delay > after exactly when
        // base > after - delay: searching from there also finds last month's
        // occurrence when its delay carries it past `after`.
        let base_after_ms = after_ms.checked_sub(delay_ms)?;
        // Fire times are whole seconds, so "after the millisecond" is "after
        // the second it falls in".
        let start = DateTime::<Utc>::from_timestamp(base_after_ms.div_euclid(1000), 0)?;
        let base = self.cron.find_next_occurrence(&start, false).ok()?;
        base.timestamp().checked_mul(1000)?.checked_add(delay_ms)
    }
}

impl fmt::Display for Schedule {
    /// The canonical text: lowercase, short day names, the time always shown,
    /// `+Nd` only when non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Daily => f.write_str("daily")?,
            Kind::Weekly(day) => write!(f, "weekly {}", day.short_name())?,
            Kind::Monthly { nth, weekday } => {
                let suffix = match nth {
                    1 => "st",
                    2 => "nd",
                    3 => "rd",
                    _ => "th",
                };
                write!(f, "monthly {nth}{suffix} {}", weekday.short_name())?;
                if self.delay_days != 0 {
                    write!(f, " +{}d", self.delay_days)?;
                }
            }
        }
        write!(f, " {:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// Reads `daily [HH:MM]`, `weekly DAY [HH:MM]` or
    /// `monthly NTH DAY [+Nd] [HH:MM]`, case-insensitive, times in UTC
    /// (default 00:00).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let mut words = lower.split_whitespace().peekable();
        let first = words.next().ok_or(ScheduleError::Empty)?;
        let kind = match first {
            "daily" => Kind::Daily,
            "weekly" => Kind::Weekly(parse_day(words.next())?),
            "monthly" => {
                let nth = parse_nth(words.next())?;
                let weekday = parse_day(words.next())?;
                Kind::Monthly { nth, weekday }
            }
            other => return Err(ScheduleError::UnknownKind(other.to_string())),
        };
        let mut delay_days = 0;
        if let Some(word) = words.next_if(|w| w.starts_with('+')) {
            if !matches!(kind, Kind::Monthly { .. }) {
                return Err(ScheduleError::DelayNotMonthly);
            }
            delay_days = parse_delay(word)?;
        }
        let (hour, minute) = match words.next() {
            Some(word) => parse_time(word)?,
            None => (0, 0),
        };
        if let Some(extra) = words.next() {
            return Err(ScheduleError::Unexpected(extra.to_string()));
        }
        Schedule::new(kind, hour, minute, delay_days)
    }
}

fn parse_day(word: Option<&str>) -> Result<Weekday, ScheduleError> {
    let word = word.ok_or(ScheduleError::MissingDay)?;
    Weekday::from_word(word).ok_or_else(|| ScheduleError::BadDay(word.to_string()))
}

fn parse_nth(word: Option<&str>) -> Result<u8, ScheduleError> {
    let word = word.ok_or(ScheduleError::MissingNth)?;
    match word {
        "1st" | "first" => Ok(1),
        "2nd" | "second" => Ok(2),
        "3rd" | "third" => Ok(3),
        "4th" | "fourth" => Ok(4),
        "5th" | "fifth" => Ok(5),
        _ => Err(ScheduleError::BadNth(word.to_string())),
    }
}

fn parse_delay(word: &str) -> Result<u8, ScheduleError> {
    let bad = || ScheduleError::BadDelay(word.to_string());
    let digits = word
        .strip_prefix('+')
        .and_then(|w| w.strip_suffix('d'))
        .ok_or_else(bad)?;
    let days = parse_digits(digits, 2).ok_or_else(bad)?;
    if days > MAX_DELAY_DAYS {
        return Err(bad());
    }
    Ok(days)
}

fn parse_time(word: &str) -> Result<(u8, u8), ScheduleError> {
    let bad = || ScheduleError::BadTime(word.to_string());
    let (h, m) = word.split_once(':').ok_or_else(bad)?;
    let hour = parse_digits(h, 2).ok_or_else(bad)?;
    let minute = parse_digits(m, 2).ok_or_else(bad)?;
    if m.len() != 2 || hour > 23 || minute > 59 {
        return Err(bad());
    }
    Ok((hour, minute))
}

/// One to `max_len` ASCII digits (no sign, no spaces) as a number.
fn parse_digits(s: &str, max_len: usize) -> Option<u8> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A deterministic offset in `[0, window_ms)` for a relay name (0 when the
/// window is 0), so relays spread their pulls over the window. It is the
/// 64-bit FNV-1a hash of the name's bytes modulo the window: stable across
/// builds, releases and machines, so a relay keeps its slot.
pub fn stagger_ms(relay: &str, window_ms: u64) -> u64 {
    if window_ms == 0 {
        return 0;
    }
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = relay
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    hash % window_ms
}

/// An RFC 3339 time (`2026-12-01T02:30:00Z`, `...+02:00`) as unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let t = DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-12-01T02:30:00Z"))?;
    u64::try_from(t.timestamp_millis()).map_err(|_| "before 1970".to_string())
}

/// When relay `relay` should next sync: the schedule's fire times shifted later
/// by the relay's stagger over `window_ms`, the first one strictly after
/// `after_ms`. Keep the window shorter than the schedule's period, or one
/// relay's sync may land after the next undelayed fire time.
pub fn next_for_relay(s: &Schedule, relay: &str, window_ms: u64, after_ms: u64) -> Option<u64> {
    let stagger = i64::try_from(stagger_ms(relay, window_ms)).ok()?;
    let after = i64::try_from(after_ms).ok()?;
    let base = s.next_after_signed(after.checked_sub(stagger)?)?;
    u64::try_from(base.checked_add(stagger)?).ok()
}

#[cfg(test)]
mod rfc3339_tests {
    #[test]
    fn rfc3339_times() {
        assert_eq!(super::parse_rfc3339_ms("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(
            super::parse_rfc3339_ms("1970-01-01T01:00:01+01:00"),
            Ok(1000)
        );
        assert!(super::parse_rfc3339_ms("tomorrow").is_err());
        assert!(super::parse_rfc3339_ms("1960-01-01T00:00:00Z").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Duration, NaiveDate};

    /// Unix milliseconds of a UTC wall-clock time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        let t = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        u64::try_from(t).unwrap()
    }

    fn sched(text: &str) -> Schedule {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn parses_each_form_and_round_trips() {
        use Weekday::*;
        let m = |nth, weekday| Kind::Monthly { nth, weekday };
        // (input, kind, (h, m), delay, canonical)
        type Case = (&'static str, Kind, (u8, u8), u8, &'static str);
        let cases: &[Case] = &[
            ("daily", Kind::Daily, (0, 0), 0, "daily 00:00"),
            ("daily 02:30", Kind::Daily, (2, 30), 0, "daily 02:30"),
            ("  DAILY   7:05 ", Kind::Daily, (7, 5), 0, "daily 07:05"),
            ("daily 23:59", Kind::Daily, (23, 59), 0, "daily 23:59"),
            (
                "weekly tue",
                Kind::Weekly(Tue),
                (0, 0),
                0,
                "weekly tue 00:00",
            ),
            (
                "Weekly Sunday 18:00",
                Kind::Weekly(Sun),
                (18, 0),
                0,
                "weekly sun 18:00",
            ),
            (
                "weekly MON 00:01",
                Kind::Weekly(Mon),
                (0, 1),
                0,
                "weekly mon 00:01",
            ),
            (
                "monthly 1st mon",
                m(1, Mon),
                (0, 0),
                0,
                "monthly 1st mon 00:00",
            ),
            (
                "monthly 2nd tue +4d 02:30",
                m(2, Tue),
                (2, 30),
                4,
                "monthly 2nd tue +4d 02:30",
            ),
            (
                "monthly second tuesday +4d 02:30",
                m(2, Tue),
                (2, 30),
                4,
                "monthly 2nd tue +4d 02:30",
            ),
            (
                "monthly third wed +0d",
                m(3, Wed),
                (0, 0),
                0,
                "monthly 3rd wed 00:00",
            ),
            (
                "MONTHLY Fourth THURSDAY 12:00",
                m(4, Thu),
                (12, 0),
                0,
                "monthly 4th thu 12:00",
            ),
            (
                "monthly 5th fri +31d",
                m(5, Fri),
                (0, 0),
                31,
                "monthly 5th fri +31d 00:00",
            ),
            (
                "monthly fifth saturday +07d 9:00",
                m(5, Sat),
                (9, 0),
                7,
                "monthly 5th sat +7d 09:00",
            ),
        ];
        for (input, kind, at, delay, canonical) in cases {
            let s = sched(input);
            assert_eq!(s.kind(), *kind, "{input:?}");
            assert_eq!(s.at(), *at, "{input:?}");
            assert_eq!(s.delay_days(), *delay, "{input:?}");
            assert_eq!(s.to_string(), *canonical, "{input:?}");
            assert_eq!(sched(canonical), s, "{input:?} round trip");
        }
    }

    #[test]
    fn refuses_bad_text_with_clear_errors() {
        use ScheduleError::*;
        let cases: &[(&str, ScheduleError, &str)] = &[
            ("", Empty, "empty schedule"),
            ("   ", Empty, "empty schedule"),
            (
                "hourly",
                UnknownKind("hourly".into()),
                "unknown schedule kind 'hourly'",
            ),
            ("daily 24:00", BadTime("24:00".into()), "bad time '24:00'"),
            ("daily 12:60", BadTime("12:60".into()), "bad time '12:60'"),
            ("daily 12", BadTime("12".into()), "bad time '12'"),
            ("daily 12:5", BadTime("12:5".into()), "bad time '12:5'"),
            ("daily -1:00", BadTime("-1:00".into()), "bad time"),
            ("daily 123:00", BadTime("123:00".into()), "bad time"),
            ("daily +4d", DelayNotMonthly, "only allowed on monthly"),
            ("weekly tue +1d", DelayNotMonthly, "only allowed on monthly"),
            ("weekly", MissingDay, "missing day"),
            (
                "weekly 02:30",
                BadDay("02:30".into()),
                "unknown day '02:30'",
            ),
            ("weekly tues", BadDay("tues".into()), "unknown day 'tues'"),
            ("monthly", MissingNth, "missing NTH"),
            ("monthly 2nd", MissingDay, "missing day"),
            ("monthly tue", BadNth("tue".into()), "unknown NTH 'tue'"),
            ("monthly 6th tue", BadNth("6th".into()), "unknown NTH '6th'"),
            ("monthly 0th tue", BadNth("0th".into()), "unknown NTH '0th'"),
            (
                "monthly 2nd tue +32d",
                BadDelay("+32d".into()),
                "bad delay '+32d'",
            ),
            (
                "monthly 2nd tue +4",
                BadDelay("+4".into()),
                "bad delay '+4'",
            ),
            (
                "monthly 2nd tue +d",
                BadDelay("+d".into()),
                "bad delay '+d'",
            ),
            ("monthly 2nd tue +-1d", BadDelay("+-1d".into()), "bad delay"),
            (
                "monthly 2nd tue +100d",
                BadDelay("+100d".into()),
                "bad delay",
            ),
            (
                "monthly 2nd tue 02:30 +4d",
                Unexpected("+4d".into()),
                "unexpected '+4d'",
            ),
            (
                "daily 02:30 now",
                Unexpected("now".into()),
                "unexpected 'now'",
            ),
            (
                "daily 02:30 03:30",
                Unexpected("03:30".into()),
                "unexpected '03:30'",
            ),
        ];
        for (input, want, fragment) in cases {
            let err = input.parse::<Schedule>().unwrap_err();
            assert_eq!(&err, want, "{input:?}");
            let text = err.to_string();
            assert!(text.contains(fragment), "{input:?}: {text}");
            assert!(
                text.contains("monthly NTH DAY [+Nd] [HH:MM]"),
                "{input:?}: {text}"
            );
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        }
    }

    #[test]
    fn new_checks_ranges() {
        assert!(Schedule::new(Kind::Daily, 24, 0, 0).is_err());
        assert!(Schedule::new(Kind::Daily, 0, 60, 0).is_err());
        assert_eq!(
            Schedule::new(Kind::Weekly(Weekday::Mon), 0, 0, 1),
            Err(ScheduleError::DelayNotMonthly)
        );
        let m = |nth| Kind::Monthly {
            nth,
            weekday: Weekday::Mon,
        };
        assert!(Schedule::new(m(0), 0, 0, 0).is_err());
        assert!(Schedule::new(m(6), 0, 0, 0).is_err());
        assert!(Schedule::new(m(5), 0, 0, 32).is_err());
        assert!(Schedule::new(m(5), 23, 59, 31).is_ok());
    }

    #[test]
    fn next_after_on_known_dates() {
        // Calendars checked by hand: Nov 2026 starts on a Sunday (2nd Tue = 10th),
        // Dec 2026 on a Tuesday (2nd Tue = 8th), Jan 2027 on a Friday, Jan 2026 on
        // a Thursday (5th Fri = 30th), and Feb..Apr 2026 have four Fridays each
        // (the next 5th Friday is May 29).
        // (schedule, after, expected)
        let cases: &[(&str, u64, u64)] = &[
            // daily, across a year boundary; strictly after.
            (
                "daily 02:30",
                utc(2026, 12, 31, 23, 0),
                utc(2027, 1, 1, 2, 30),
            ),
            (
                "daily 02:30",
                utc(2026, 12, 31, 2, 29),
                utc(2026, 12, 31, 2, 30),
            ),
            (
                "daily 02:30",
                utc(2026, 12, 31, 2, 30),
                utc(2027, 1, 1, 2, 30),
            ),
            ("daily", utc(2028, 2, 28, 12, 0), utc(2028, 2, 29, 0, 0)),
            // weekly, across month and year boundaries.
            (
                "weekly fri 18:00",
                utc(2026, 12, 31, 0, 0),
                utc(2027, 1, 1, 18, 0),
            ),
            (
                "weekly fri 18:00",
                utc(2027, 1, 1, 18, 0),
                utc(2027, 1, 8, 18, 0),
            ),
            (
                "weekly tue",
                utc(2026, 11, 30, 0, 0),
                utc(2026, 12, 1, 0, 0),
            ),
            // The example: second Tuesday plus four days.
            (
                "monthly 2nd tue +4d 02:30",
                utc(2026, 11, 1, 0, 0),
                utc(2026, 11, 14, 2, 30),
            ),
            (
                "monthly 2nd tue +4d 02:30",
                utc(2026, 11, 10, 2, 30),
                utc(2026, 11, 14, 2, 30),
            ),
            (
                "monthly 2nd tue +4d 02:30",
                utc(2026, 11, 14, 2, 30),
                utc(2026, 12, 12, 2, 30),
            ),
            (
                "monthly 2nd tue 02:30",
                utc(2026, 11, 10, 2, 30),
                utc(2026, 12, 8, 2, 30),
            ),
            // Monthly across a year boundary.
            (
                "monthly 1st mon",
                utc(2026, 12, 8, 0, 0),
                utc(2027, 1, 4, 0, 0),
            ),
            // Months without a 5th Friday are skipped.
            (
                "monthly 5th fri",
                utc(2026, 1, 30, 0, 0),
                utc(2026, 5, 29, 0, 0),
            ),
            (
                "monthly 5th fri",
                utc(2026, 2, 1, 0, 0),
                utc(2026, 5, 29, 0, 0),
            ),
            // Last month's occurrence plus its delay comes first: Jan 30 + 31d.
            (
                "monthly 5th fri +31d",
                utc(2026, 2, 1, 0, 0),
                utc(2026, 3, 2, 0, 0),
            ),
            (
                "monthly 5th fri +31d",
                utc(2026, 3, 2, 0, 0),
                utc(2026, 6, 29, 0, 0),
            ),
            // A delay that crosses into the next month: Nov 26 + 10d.
            (
                "monthly 4th thu +10d 08:00",
                utc(2026, 11, 20, 0, 0),
                utc(2026, 12, 6, 8, 0),
            ),
            // ... and into the next year: Dec 16 + 20d.
            (
                "monthly 3rd wed +20d",
                utc(2026, 12, 20, 0, 0),
                utc(2027, 1, 5, 0, 0),
            ),
        ];
        for (text, after, want) in cases {
            assert_eq!(sched(text).next_after(*after), Some(*want), "{text:?}");
        }
    }

    #[test]
    fn next_after_is_strict_to_the_millisecond() {
        let s = sched("daily 02:30");
        let fire = utc(2026, 6, 1, 2, 30);
        assert_eq!(s.next_after(fire - 1), Some(fire));
        assert_eq!(s.next_after(fire), Some(fire + DAY_MS as u64));
        assert_eq!(s.next_after(fire + 500), Some(fire + DAY_MS as u64));
        // Near the epoch, with a delay that moves the search start before it.
        let m = sched("monthly 1st thu +31d");
        // Dec 4 1969 was the first Thursday of its month: + 31d is Jan 4 1970.
        assert_eq!(m.next_after(0), Some(utc(1970, 1, 4, 0, 0)));
    }

    /// The independent oracle: every (nth weekday at HH:MM) + delay, built with
    /// chrono day by day, in order.
    fn monthly_fires(nth: u32, weekday: chrono::Weekday, h: u32, mi: u32, delay: u8) -> Vec<u64> {
        let mut out = Vec::new();
        for year in 2025..=2029 {
            for month in 1..=12 {
                let mut day = NaiveDate::from_ymd_opt(year, month, 1).unwrap();
                let mut seen = 0;
                while day.month() == month {
                    if day.weekday() == weekday {
                        seen += 1;
                        if seen == nth {
                            let at = day.and_hms_opt(h, mi, 0).unwrap()
                                + Duration::days(i64::from(delay));
                            out.push(u64::try_from(at.and_utc().timestamp_millis()).unwrap());
                        }
                    }
                    day = day.succ_opt().unwrap();
                }
            }
        }
        out
    }

    #[test]
    fn monthly_matches_a_day_by_day_oracle() {
        use chrono::Weekday as C;
        let cases: &[(&str, u32, C, u32, u32, u8)] = &[
            ("monthly 2nd tue +4d 02:30", 2, C::Tue, 2, 30, 4),
            ("monthly 5th fri +31d", 5, C::Fri, 0, 0, 31),
            ("monthly 5th sun 23:59", 5, C::Sun, 23, 59, 0),
            ("monthly 1st mon +28d 12:00", 1, C::Mon, 12, 0, 28),
            ("monthly 4th sat +3d", 4, C::Sat, 0, 0, 3),
        ];
        let start = utc(2026, 1, 1, 0, 0);
        let end = utc(2028, 12, 31, 0, 0);
        let step = 5 * DAY_MS as u64 + 3_600_000 + 1;
        for (text, nth, wd, h, mi, delay) in cases {
            let s = sched(text);
            let fires = monthly_fires(*nth, *wd, *h, *mi, *delay);
            let mut after = start;
            while after < end {
                let want = fires.iter().copied().find(|&f| f > after);
                assert_eq!(s.next_after(after), want, "{text:?} after {after}");
                after += step;
            }
        }
    }

    #[test]
    fn stagger_is_stable_and_in_range() {
        // FNV-1a 64 reference values, so a change of hash is caught.
        assert_eq!(stagger_ms("", u64::MAX), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stagger_ms("a", u64::MAX), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stagger_ms("relay-1", 0), 0);
        assert_eq!(stagger_ms("relay-1", 1), 0);
        let window = 3_600_000;
        for i in 0..500 {
            let name = format!("relay-{i}");
            let a = stagger_ms(&name, window);
            assert!(a < window, "{name}: {a}");
            assert_eq!(a, stagger_ms(&name, window), "{name}");
        }
    }

    #[test]
    fn relays_get_different_offsets() {
        let window = 3_600_000;
        let names = [
            "relay-eu-1",
            "relay-eu-2",
            "relay-us-1",
            "relay-ap-1",
            "edge",
        ];
        let mut offsets: Vec<u64> = names.iter().map(|n| stagger_ms(n, window)).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), names.len(), "{offsets:?}");
        // Over many relays the offsets spread across the window.
        let quarter = window / 4;
        let mut buckets = [0u32; 4];
        for i in 0..400 {
            buckets[(stagger_ms(&format!("relay-{i}"), window) / quarter) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b > 50), "{buckets:?}");
    }

    #[test]
    fn next_for_relay_is_the_shifted_fire_time_strictly_after() {
        let s = sched("monthly 2nd tue +4d 02:30");
        let window = 3_600_000;
        let fire = utc(2026, 11, 14, 2, 30);
        let next_fire = utc(2026, 12, 12, 2, 30);
        for relay in ["relay-eu-1", "relay-eu-2", "relay-us-1", "edge"] {
            let st = stagger_ms(relay, window);
            // (after, expected)
            let cases = [
                (utc(2026, 11, 1, 0, 0), fire + st),
                (fire, fire + st),
                (fire + st - 1, fire + st),
                (fire + st, next_fire + st),
                (fire + window, next_fire + st),
            ];
            for (after, want) in cases {
                let got = next_for_relay(&s, relay, window, after);
                assert_eq!(got, Some(want), "{relay} after {after}");
                assert!(want > after);
            }
        }
        // Different relays, different times; a zero window is the plain schedule.
        let a = next_for_relay(&s, "relay-eu-1", window, fire - 1);
        let b = next_for_relay(&s, "relay-eu-2", window, fire - 1);
        assert_ne!(a, b);
        assert_eq!(next_for_relay(&s, "x", 0, fire - 1), Some(fire));
        // A stagger larger than `after` itself still works.
        let d = sched("daily");
        let st = stagger_ms("edge", window);
        assert_eq!(next_for_relay(&d, "edge", window, 0), Some(st));
    }
}
