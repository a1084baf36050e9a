//! The revoked nodes a listener refuses, shared between the accept loop and
//! the role that keeps the list (HQ decides; relays receive it from above).

use crate::proto::NodeName;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// Names refused at the handshake.
#[derive(Clone, Default, Debug)]
pub struct DenyList(Arc<RwLock<BTreeSet<NodeName>>>);

impl DenyList {
    /// Whether `name` is revoked.
    pub fn contains(&self, name: &NodeName) -> bool {
        self.0.read().map(|s| s.contains(name)).unwrap_or(true)
    }
    /// Replaces the whole list.
    pub fn replace(&self, names: impl IntoIterator<Item = NodeName>) {
        if let Ok(mut s) = self.0.write() {
            *s = names.into_iter().collect();
        }
    }
    /// The list now.
    pub fn names(&self) -> Vec<NodeName> {
        self.0
            .read()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}
