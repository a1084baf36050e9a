//! `hq cert revoke NAME`: only a name HQ knows, made durable, then refused
//! at HQ's listener (which closes every open session of that name: tree,
//! admin, transfer) and pushed down the tree. A revoked client leaves the
//! directory and its open leaves become final (`canceled`, with the reason).
//! Never closes a session itself: the accept loop in `link` does.

use super::sessions::load_deny_list;
use super::{HqError, HqState};
use crate::proto::{now_ms, JobId, LeafState, Msg, NodeName};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, Name};
use crate::store::StoreError;
use tracing::warn;

/// Whether HQ knows `name`: a relay or client it recorded, a node that had a
/// session with it (admins included), or a name already revoked. Anything
/// else is most likely a typo, which would block that name for good.
fn known(st: &HqState, name: &NodeName) -> Result<bool, StoreError> {
    let k = Name(name.clone());
    Ok(st.seen.contains(&k)?
        || st.relays.contains(&k)?
        || st.clients.contains(&k)?
        || st.denied.contains(&k)?
        || st.issued.contains(&k)?)
}

/// `hq cert revoke NAME`: durable, refused at HQ's listener at once (which
/// closes every session of that name), pushed down the tree. A revoked
/// client leaves the directory and its open leaves become `canceled`.
pub(crate) async fn revoke(
    st: &HqState,
    name: NodeName,
    force: bool,
) -> Result<Vec<NodeName>, HqError> {
    if name == st.me {
        return Err(HqError::Refused("hq cannot revoke itself".into()));
    }
    if !force && !known(st, &name)? {
        return Err(HqError::Refused(format!(
            "unknown node {name}: no relay, client or session of that name was ever seen by hq \
             (check the spelling; --force revokes an identity that was never used)"
        )));
    }
    {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        st.denied.put(&Name(name.clone()), &now_ms())?;
        if st.clients.get(&Name(name.clone()))?.is_some() {
            st.clients.remove(&Name(name.clone()))?;
            cancel_open_leaves(st, &name)?;
        }
    }
    st.store.durable().await?;
    warn!(%name, "node revoked");
    spread_deny_list(st)
}

/// Re-reads the deny list from the store and sends it to every relay
/// connected here (after a revocation, here or on another HQ).
pub(crate) fn spread_deny_list(st: &HqState) -> Result<Vec<NodeName>, HqError> {
    load_deny_list(st)?;
    st.bump();
    let names = st.deny.names();
    let children: Vec<NodeName> = st
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let deny = Msg::Deny {
        names: names.clone(),
    };
    crate::link::queue::send_now(
        &st.children,
        children.into_iter().map(|c| (c, deny.clone())).collect(),
    );
    Ok(names)
}

/// Every leaf of revoked `client` not yet final becomes `canceled` (under
/// HQ's write lock; not yet durable).
fn cancel_open_leaves(st: &HqState, client: &NodeName) -> Result<(), StoreError> {
    let now = now_ms();
    let jobs: Vec<JobId> = st
        .jobs
        .scan()
        .filter_map(|r| r.ok())
        .map(|(k, _)| k.0)
        .collect();
    for job in jobs {
        let k = JobClient(job, client.clone());
        let Some(leaf) = st.leaves.get(&k)? else {
            continue;
        };
        if leaf.state.is_final() {
            continue;
        }
        let rec = LeafRecord {
            state: LeafState::Canceled,
            reason: Some(format!("client {client} was revoked")),
            exit_code: None,
            at_ms: now,
            ..leaf.clone()
        };
        st.leaves.put(&k, &rec)?;
        st.counters.moved(
            job,
            Some((leaf.state, &leaf.relay)),
            (rec.state, &rec.relay),
        );
    }
    Ok(())
}
