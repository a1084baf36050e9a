//! A destination's filter (labels, exclusions) applied at this relay, with
//! the labels it holds of its clients now: the snapshot of an original
//! attempt narrowed to what the order admits, and the named clients of a
//! `--dest clients` job that the filter no longer admits here closed as
//! `canceled` with the reason. Reads the store; writes nothing itself.

use super::{DirEntry, RelayState};
use crate::proto::{now_ms, Assignment, Event, LeafState, LeafUpdate, NodeName};
use crate::store::keys::Name;
use crate::store::StoreError;
use tracing::info;

/// The clients of a snapshot that the original order's filter admits
/// (labels as each last came online, exclusions); all of them without one.
pub(super) fn narrowed(
    st: &RelayState,
    a: &Assignment,
    all: Vec<(NodeName, DirEntry)>,
) -> Result<Vec<(NodeName, DirEntry)>, StoreError> {
    let Some(filter) = a
        .orders
        .iter()
        .find(|o| o.relay.is_none())
        .map(|o| o.filter())
        .filter(|f| !f.is_empty())
    else {
        return Ok(all);
    };
    let mut out = Vec::with_capacity(all.len());
    for (c, e) in all {
        let labels = if filter.labels.is_empty() {
            Default::default()
        } else {
            super::presence::labels_of(st, &c)?
        };
        if filter.admits(&c, &labels) {
            out.push((c, e));
        }
    }
    info!(job = %a.job, targets = out.len(), "snapshot narrowed by the order's filter");
    Ok(out)
}

/// Named targets with their directory entries, less this relay's home
/// clients that the filter of its own order (`relay` = this relay) refuses
/// with the labels it holds now: those are accounted for as `canceled`
/// events ("skipped at its home relay: ..."), with no leaf kept here. HQ
/// matched the labels it last heard; the home relay has the fresher ones.
#[allow(clippy::type_complexity)]
pub(super) fn skip_refused(
    st: &RelayState,
    a: &Assignment,
    list: &[NodeName],
) -> Result<(Vec<(NodeName, Option<DirEntry>)>, Vec<Event>), StoreError> {
    let filter = a
        .orders
        .iter()
        .find(|o| o.relay.as_ref() == Some(&st.me))
        .map(|o| o.filter())
        .filter(|f| !f.is_empty());
    let now = now_ms();
    let mut kept = Vec::with_capacity(list.len());
    let mut skipped = Vec::new();
    for c in list {
        let e = st.dir_clients.get(&Name(c.clone()))?;
        if let (Some(f), Some(entry)) = (&filter, &e) {
            if entry.via == st.me {
                if let Some(why) = f.refuses(c, &super::presence::labels_of(st, c)?) {
                    skipped.push(Event::Leaf(LeafUpdate {
                        job: a.job,
                        attempt: a.attempt,
                        client: c.clone(),
                        relay: st.me.clone(),
                        state: LeafState::Canceled,
                        exit_code: None,
                        reason: Some(format!("skipped at its home relay {}: {why}", st.me)),
                        output: None,
                        at_ms: now,
                        out: None,
                        audit: None,
                    }));
                    continue;
                }
            }
        }
        kept.push((c.clone(), e));
    }
    Ok((kept, skipped))
}
