//! The deny list as HQ pushes it down: kept on disk (so a restarted relay
//! refuses revoked nodes before its parent is back), applied to the listener
//! (which closes every open session of a revoked name), passed on to child
//! relays, and sent to each child relay when it connects. A revoked client
//! leaves the directory.

use super::RelayState;
use crate::link::send_soon;
use crate::proto::{now_ms, Msg, NodeName};
use crate::store::keys::Name;
use crate::store::StoreError;

/// The stored list.
pub(crate) fn stored(st: &RelayState) -> Result<Vec<NodeName>, StoreError> {
    let mut out = Vec::new();
    for r in st.denied.scan() {
        let (Name(n), _) = r?;
        out.push(n);
    }
    Ok(out)
}

/// Replaces the stored list (not yet durable).
pub(crate) fn store(st: &RelayState, names: &[NodeName]) -> Result<(), StoreError> {
    for old in stored(st)? {
        if !names.contains(&old) {
            st.denied.remove(&Name(old.clone()))?;
        }
    }
    let now = now_ms();
    for n in names {
        if !st.denied.contains(&Name(n.clone()))? {
            st.denied.put(&Name(n.clone()), &now)?;
        }
        super::moves::revoked(st, n)?;
    }
    Ok(())
}

/// Applies a durable list: the listener refuses these names (and closes
/// their open sessions), and child relays get the list.
pub(crate) fn apply(st: &RelayState, names: Vec<NodeName>) {
    st.deny.replace(names.clone());
    let children = st.children.lock().unwrap_or_else(|p| p.into_inner());
    for (child, tx) in children.iter() {
        if !st.deny.contains(child) && is_child_relay(st, child) {
            send_soon(
                tx,
                Msg::Deny {
                    names: names.clone(),
                },
            );
        }
    }
}

/// Whether `name` is a relay directly below this one.
pub(crate) fn is_child_relay(st: &RelayState, name: &NodeName) -> bool {
    matches!(st.dir_relays.get(&Name(name.clone())), Ok(Some(via)) if via == *name)
}
