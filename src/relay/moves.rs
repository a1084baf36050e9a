//! Clients that move: an agent registers under another relay. The branch it
//! left forgets it (so no leaf is counted twice), and its leaves here that
//! were never delivered are canceled with the reason. A `Forget` for a child
//! is queued in the down queue, so a child that is down now gets it when it
//! comes back. A revoked client is forgotten the same way.

use super::{DirEntry, RelayState};
use crate::proto::{now_ms, Event, JobId, LeafState, Msg, NodeName};
use crate::store::keys::{JobClient, Name, NameJob, NamePrefix};
use crate::store::StoreError;
use tracing::info;

/// A `Forget` queued for a child: (child, message), to send once durable.
pub(crate) type ForgetTo = (NodeName, Msg);

/// `client` now lives under `moved_to`, reached through `via_now` (a child,
/// or this relay itself). Given its previous directory entry, decides who
/// forgets it: this relay (its home leaves), or the child it was under (a
/// queued `Forget`). Returns events to send up and a `Forget` to send down.
pub(crate) fn moved(
    st: &RelayState,
    client: &NodeName,
    old: Option<&DirEntry>,
    via_now: &NodeName,
    moved_to: &NodeName,
) -> Result<(Vec<Event>, Option<ForgetTo>), StoreError> {
    let Some(old) = old else {
        return Ok((vec![], None));
    };
    if old.via == *via_now {
        return Ok((vec![], None));
    }
    info!(%client, from = %old.home, to = %moved_to, "client moved");
    if old.via == st.me {
        let why = format!("client moved to relay {moved_to} before delivery");
        return Ok((cancel_undelivered(st, client, why)?, None));
    }
    Ok((vec![], Some(queue_forget(st, &old.via, client, moved_to)?)))
}

/// Queues a `Forget` of `client` for child `via` (not yet durable).
fn queue_forget(
    st: &RelayState,
    via: &NodeName,
    client: &NodeName,
    moved_to: &NodeName,
) -> Result<(NodeName, Msg), StoreError> {
    let m = Msg::Forget {
        client: client.clone(),
        moved_to: moved_to.clone(),
    };
    st.down.put(via, &m)?;
    Ok((via.clone(), m))
}

/// A `Forget` from the parent naming `moved_to` as the client's new home is
/// stale when that home is this relay or lies below it: the parent's
/// branch (or an old parent's, after a failover) saw this subtree arrive
/// elsewhere, not the client leave it.
pub(crate) fn moved_here(st: &RelayState, moved_to: &NodeName) -> Result<bool, StoreError> {
    Ok(*moved_to == st.me || st.dir_relays.contains(&Name(moved_to.clone()))?)
}

/// A `Forget` from the parent: drop `client` from this subtree.
pub(crate) fn forget(
    st: &RelayState,
    client: &NodeName,
    moved_to: &NodeName,
) -> Result<(Vec<Event>, Option<ForgetTo>), StoreError> {
    let k = Name(client.clone());
    let old = st.dir_clients.get(&k)?;
    st.dir_clients.remove(&k)?;
    match old {
        None => Ok((vec![], None)),
        Some(o) if o.via == st.me => {
            let why = format!("client moved to relay {moved_to} before delivery");
            Ok((cancel_undelivered(st, client, why)?, None))
        }
        Some(o) => Ok((vec![], Some(queue_forget(st, &o.via, client, moved_to)?))),
    }
}

/// A revoked client leaves the directory: no new job targets it, and its
/// home leaves not yet delivered here are canceled (its own relay does this
/// when it is a child's: every relay gets the deny list).
pub(crate) fn revoked(st: &RelayState, client: &NodeName) -> Result<(), StoreError> {
    let k = Name(client.clone());
    let Some(old) = st.dir_clients.get(&k)? else {
        return Ok(());
    };
    st.dir_clients.remove(&k)?;
    if old.via == st.me {
        cancel_undelivered(st, client, format!("client {client} was revoked"))?;
    }
    info!(%client, "revoked client forgotten");
    Ok(())
}

/// Cancels the home leaves of `client` still pending here; queues their
/// events itself (returns none).
fn cancel_undelivered(
    st: &RelayState,
    client: &NodeName,
    why: String,
) -> Result<Vec<Event>, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let now = now_ms();
    let mut events = Vec::new();
    let mut writes = Vec::new();
    let jobs: Vec<JobId> = st
        .client_leaves
        .scan_prefix(&NamePrefix(client.clone()))
        .filter_map(|r| r.ok())
        .map(|(NameJob(_, job), _)| job)
        .collect();
    for job in jobs {
        let lk = JobClient(job, client.clone());
        let Some(leaf) = st.leaves.get(&lk)? else {
            continue;
        };
        if leaf.state != LeafState::Pending {
            continue;
        }
        let (rec, ev) = super::close_here(
            st,
            job,
            client,
            &leaf,
            LeafState::Canceled,
            why.clone(),
            now,
        );
        writes.push((lk, rec));
        events.push(ev);
    }
    // Events before states: a crash keeps a prefix of the writes.
    st.outbox.push(&events)?;
    st.leaves
        .put_many(writes.iter().map(|(k, v)| (k.clone(), v)))?;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn a_forget_naming_this_subtree_as_the_new_home_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let st = RelayState::open(
            n("r3"),
            Store::open(dir.path()).unwrap(),
            crate::relay::cache::for_tests(dir.path()),
        )
        .unwrap();
        st.dir_relays.put(&Name(n("r4")), &n("r4")).unwrap();
        st.dir_relays.put(&Name(n("r5")), &n("r4")).unwrap();
        for (to, here) in [("r3", true), ("r4", true), ("r5", true), ("r9", false)] {
            assert_eq!(moved_here(&st, &n(to)).unwrap(), here, "{to}");
        }
    }
}
