//! Several HQs on one database: what this HQ does when another one commits
//! (the store's notices; PostgreSQL only, nothing on sled). Work another HQ
//! queued for a relay whose session is here goes out on that session at
//! once; what this HQ derives from the store in memory (per-job counters,
//! the change signal `job wait` and the dashboard wait on, the deny list)
//! is refreshed.
//!
//! Writes nothing: the store is the one truth, this only re-reads it. The
//! sessions (each relay's with the HQ it dialled), uploads (one admin
//! session's pieces) and dashboard logins (one HQ's dashboard) stay per HQ.

use super::HqState;
use crate::proto::{Msg, NodeName};
use crate::store::pg::notify::Notice;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

/// The down queue's tree: every key put into it is announced, so the HQ
/// holding the child's session sends the message.
const DOWN: &str = "down";

/// Trees whose change may finish a job or move its counts.
const JOB_TREES: &[&str] = &["leaves", "jobs", "clients", "relays", "after_sync"];

/// Announces this HQ's down-queue puts to the others, then follows theirs
/// until HQ stops. Returns at once on sled.
pub(crate) async fn run(st: Arc<HqState>) {
    st.store.announce_keys(DOWN);
    let Some(mut rx) = st.store.notices() else {
        return;
    };
    loop {
        let n = match rx.recv().await {
            Ok(n) => n,
            Err(RecvError::Lagged(missed)) => {
                warn!(missed, "fell behind other HQs' notices; re-reading");
                Notice::Lost
            }
            Err(RecvError::Closed) => return,
        };
        if let Err(e) = apply(&st, n) {
            warn!(error = %e, "cannot follow another HQ's change");
        }
    }
}

/// Acts on one notice.
fn apply(st: &HqState, n: Notice) -> Result<(), super::HqError> {
    match n {
        Notice::Put { tree, key } if tree == DOWN => {
            let Some(child) = child_of(&key) else {
                return Ok(());
            };
            if !is_here(st, &child) {
                return Ok(());
            }
            // Gone already (acknowledged through this HQ): nothing to send.
            if let Some(msg) = st.down.table().get::<Msg>(&key)? {
                crate::link::queue::send_now(&st.children, vec![(child, msg)]);
            }
        }
        Notice::Put { .. } => {}
        Notice::Wrote { tree } if tree == "denied" => {
            super::revoke::spread_deny_list(st)?;
        }
        Notice::Wrote { tree } if JOB_TREES.contains(&tree.as_str()) => {
            st.counters.clear();
            st.bump();
        }
        Notice::Wrote { .. } => {}
        Notice::Lost => {
            st.counters.clear();
            super::revoke::spread_deny_list(st)?;
            let here: Vec<NodeName> = st
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            for child in here {
                let msgs = st.down.queued(&child)?;
                crate::link::queue::send_now(
                    &st.children,
                    msgs.into_iter().map(|m| (child.clone(), m)).collect(),
                );
            }
        }
    }
    Ok(())
}

/// Whether `child`'s session is with this HQ.
fn is_here(st: &HqState, child: &NodeName) -> bool {
    st.children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(child)
}

/// The child a down-queue key is for (its name, up to the first 0 byte).
fn child_of(key: &[u8]) -> Option<NodeName> {
    let end = key.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&key[..end]).ok()?;
    NodeName::new(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::name_prefix;

    #[test]
    fn a_down_queue_key_names_its_child() {
        let r1 = NodeName::new("r1").unwrap();
        let mut k = name_prefix(&r1);
        k.extend_from_slice(&[1, 0, 0, 7]);
        assert_eq!(child_of(&k), Some(r1));
        assert_eq!(child_of(b"no-separator"), None);
        assert_eq!(child_of(&[0xff, 0xfe, 0]), None);
    }
}
