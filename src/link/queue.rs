//! The parent's side of downward delivery shared by HQ and relays: what is
//! queued for a child (until it acknowledges), and sending fresh entries to
//! children connected now.

use super::{send_soon, SessionTx};
use crate::proto::{Msg, NodeName};
use crate::store::{keys, StoreError, Table};
use std::collections::HashMap;
use std::sync::Mutex;

/// A `Forget` to send: (child, client, new home).
pub type ForgetTo = (NodeName, NodeName, NodeName);

/// The `Forget`s queued for `child` (table: child ++ 0 ++ client -> new home).
pub fn queued_forgets(q: &Table, child: &NodeName) -> Result<Vec<Msg>, StoreError> {
    let prefix = keys::name_prefix(child);
    let mut out = Vec::new();
    for r in q.scan::<NodeName>(&prefix) {
        let (k, moved_to) = r?;
        if let Some(client) = std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|s| NodeName::new(s).ok())
        {
            out.push(Msg::Forget { client, moved_to });
        }
    }
    Ok(out)
}

/// Sends freshly queued `Forget`s to the children connected now; the others
/// get them from the queue when they connect.
pub fn send_forgets(children: &Mutex<HashMap<NodeName, SessionTx>>, forgets: Vec<ForgetTo>) {
    let children = children.lock().unwrap_or_else(|p| p.into_inner());
    for (child, client, moved_to) in forgets {
        if let Some(tx) = children.get(&child) {
            send_soon(tx, Msg::Forget { client, moved_to });
        }
    }
}
