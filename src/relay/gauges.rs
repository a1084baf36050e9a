//! The relay's gauges, set before each scrape: its home leaves by state.
//!
//! Reads its `leaves` table (home clients only), decoding the state alone:
//! a scrape costs one pass over the home leaves still kept (purged jobs are
//! gone). Reads only; the metric names live in `crate::metrics`.

use super::RelayState;
use crate::proto::LeafState;
use std::sync::{Arc, Weak};

/// A leaf record, its state alone (the other fields are skipped).
#[derive(serde::Deserialize)]
struct StateOnly {
    state: LeafState,
}

/// Registers the relay's collector; it ends with the relay.
pub(crate) fn register(state: &Arc<RelayState>) {
    let weak: Weak<RelayState> = Arc::downgrade(state);
    crate::metrics::on_scrape(move || {
        let Some(st) = weak.upgrade() else {
            return false;
        };
        match home_leaves(&st) {
            Ok(by_state) => crate::metrics::set_leaves(&by_state),
            Err(e) => tracing::warn!(error = %e, "cannot count leaves for the metrics"),
        }
        true
    });
}

/// Home leaves by state.
pub(crate) fn home_leaves(
    st: &RelayState,
) -> Result<Vec<(&'static str, u64)>, crate::store::StoreError> {
    let mut out = LeafState::ALL.map(|s| (s.as_str(), 0u64));
    // Only the state decoded, through the untyped view: this walks every leaf.
    for r in st.leaves.raw().scan::<StateOnly>(b"") {
        let s = r?.1.state;
        if let Some(i) = LeafState::ALL.iter().position(|x| *x == s) {
            out[i].1 += 1;
        }
    }
    Ok(out.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, JobId, NodeName};
    use crate::rules::LeafRecord;
    use crate::store::{keys, Store};

    fn relay(n: usize) -> (tempfile::TempDir, RelayState) {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeName::new("r1").unwrap();
        let cache = super::super::cache::for_tests(dir.path());
        let st = RelayState::open(me.clone(), Store::open(dir.path()).unwrap(), cache).unwrap();
        let states = [LeafState::Succeeded, LeafState::Failed, LeafState::Pending];
        let recs: Vec<(keys::JobClient, LeafRecord)> = (0..n)
            .map(|i| {
                let client = NodeName::new(format!("c{i}")).unwrap();
                let mut l = LeafRecord::pending(me.clone(), Attempt(1), 0);
                l.state = states[i % 3];
                l.output = Some("x".repeat(200));
                (keys::JobClient(JobId(1 + (i % 7) as u64), client), l)
            })
            .collect();
        st.leaves
            .put_many(recs.iter().map(|(k, v)| (k.clone(), v)))
            .unwrap();
        (dir, st)
    }

    #[test]
    fn home_leaves_are_counted_by_state() {
        let (_d, st) = relay(10);
        let got = home_leaves(&st).unwrap();
        let get = |s: &str| got.iter().find(|(n, _)| *n == s).unwrap().1;
        assert_eq!((get("succeeded"), get("failed"), get("pending")), (4, 3, 3));
        assert_eq!(got.iter().map(|(_, n)| n).sum::<u64>(), 10);
    }

    /// What a scrape costs a relay with many home leaves (prints the figure).
    #[test]
    #[ignore]
    fn a_scrape_over_100k_home_leaves() {
        let (_d, st) = relay(100_000);
        let t = std::time::Instant::now();
        let got = home_leaves(&st).unwrap();
        eprintln!(
            "home leaves by state over 100,000 leaves: {:?}",
            t.elapsed()
        );
        assert_eq!(got.iter().map(|(_, n)| n).sum::<u64>(), 100_000);
    }
}
