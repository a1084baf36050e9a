//! HQ's clock as this node estimates it. HQ puts its clock in every `Hello`
//! it sends; a relay measures the offset from its parent's `Hello` and puts
//! its own clock plus that offset in the `Hello`s it sends its children; an
//! agent judges order times by its clock plus the offset it measured. So no
//! node's own clock decides whether an order has expired.
//!
//! The measured offset is never ahead of the true one (the stamp is made
//! before it is received), so the estimate lags HQ by the transit time of the
//! `Hello`s along the chain. Holds no I/O beyond reading the local clock.

use crate::proto::now_ms;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Stands for "no offset measured yet".
const UNKNOWN: i64 = i64::MIN;

/// This node's offset to HQ's clock, shared by its sessions.
#[derive(Clone, Debug)]
pub struct HqClock(Arc<AtomicI64>);

impl Default for HqClock {
    /// Not measured yet: `Hello`s carry no HQ time until it is.
    fn default() -> Self {
        HqClock(Arc::new(AtomicI64::new(UNKNOWN)))
    }
}

impl HqClock {
    /// HQ's own clock (offset zero).
    pub fn hq() -> HqClock {
        HqClock(Arc::new(AtomicI64::new(0)))
    }

    /// Records the offset measured from a parent's `Hello`.
    pub fn set_offset(&self, offset_ms: i64) {
        self.0.store(offset_ms, Ordering::SeqCst);
    }

    /// HQ's clock minus this node's, if measured.
    pub fn offset(&self) -> Option<i64> {
        Some(self.0.load(Ordering::SeqCst)).filter(|o| *o != UNKNOWN)
    }

    /// HQ's time now, as this node estimates it.
    pub fn now(&self) -> Option<u64> {
        self.offset().map(|o| shift(now_ms(), o))
    }
}

/// `local` unix ms moved by `offset_ms`, clamped at zero.
pub fn shift(local: u64, offset_ms: i64) -> u64 {
    i64::try_from(local)
        .unwrap_or(i64::MAX)
        .saturating_add(offset_ms)
        .max(0) as u64
}

/// The offset a `Hello` stamped `hq_now` shows when it arrives at `local`.
pub fn offset(hq_now: u64, local: u64) -> i64 {
    let h = i64::try_from(hq_now).unwrap_or(i64::MAX);
    let l = i64::try_from(local).unwrap_or(i64::MAX);
    h.saturating_sub(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_shift_both_ways_and_clamp() {
        let cases = [
            // (hq stamp, local arrival, later local, HQ time then)
            (10_000, 10_000, 10_500, 10_500),
            (10_000, 7_200_000, 7_200_500, 10_500), // local clock 2h ahead
            (7_200_000, 10_000, 10_500, 7_200_500), // local clock 2h behind
            (0, 5_000, 4_000, 0),                   // clamped at zero
        ];
        for (stamp, arrival, later, want) in cases {
            assert_eq!(
                shift(later, offset(stamp, arrival)),
                want,
                "{stamp} {arrival}"
            );
        }
        let c = HqClock::default();
        assert_eq!(c.now(), None);
        c.set_offset(-1_000);
        assert_eq!(c.offset(), Some(-1_000));
        assert_eq!(HqClock::hq().offset(), Some(0));
    }
}
