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
    for r in st.leaves.scan::<StateOnly>(b"") {
        let s = r?.1.state;
        if let Some(i) = LeafState::ALL.iter().position(|x| *x == s) {
            out[i].1 += 1;
        }
    }
    Ok(out.to_vec())
}
