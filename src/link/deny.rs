//! The revoked nodes a listener refuses, shared between the accept loop and
//! the role that keeps the list (HQ decides; relays receive it from above).
//! A change wakes every session of a newly revoked name, so that the accept
//! loop closes it whatever it is (tree, admin or transfer).

use crate::proto::NodeName;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Names refused at the handshake, and closed when revoked later.
#[derive(Clone, Debug)]
pub struct DenyList(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    names: RwLock<BTreeSet<NodeName>>,
    changed: watch::Sender<u64>,
}

impl Default for DenyList {
    fn default() -> Self {
        DenyList(Arc::new(Inner {
            names: Default::default(),
            changed: watch::channel(0).0,
        }))
    }
}

impl DenyList {
    /// Whether `name` is revoked.
    pub fn contains(&self, name: &NodeName) -> bool {
        self.0
            .names
            .read()
            .map(|s| s.contains(name))
            .unwrap_or(true)
    }
    /// Replaces the whole list; sessions are woken only when it changed.
    pub fn replace(&self, names: impl IntoIterator<Item = NodeName>) {
        let new: BTreeSet<NodeName> = names.into_iter().collect();
        let changed = match self.0.names.write() {
            Ok(mut s) if *s != new => {
                *s = new;
                true
            }
            _ => false,
        };
        if changed {
            self.0.changed.send_modify(|n| *n += 1);
        }
    }
    /// The list now.
    pub fn names(&self) -> Vec<NodeName> {
        self.0
            .names
            .read()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
    /// Resolves once `name` is on the list.
    pub async fn revoked(&self, name: &NodeName) {
        let mut rx = self.0.changed.subscribe();
        loop {
            if self.contains(name) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_wakes_the_waiting_sessions_of_that_name_only() {
        let d = DenyList::default();
        let (a, b) = (NodeName::new("a").unwrap(), NodeName::new("b").unwrap());
        let wait_a = tokio::spawn({
            let d = d.clone();
            async move { d.revoked(&a).await }
        });
        let d2 = d.clone();
        let b2 = b.clone();
        let wait_b = tokio::spawn(async move { d2.revoked(&b2).await });
        tokio::task::yield_now().await;
        d.replace([b]);
        tokio::time::timeout(std::time::Duration::from_secs(5), wait_b)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!wait_a.is_finished());
        wait_a.abort();
    }
}
