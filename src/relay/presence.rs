//! Home clients coming online and going offline, and what they say of
//! themselves (labels, version): written into the outbox as the sessions
//! come and go, so that they reach HQ as events, never by polling; the
//! outbox pump coalesces them per batch (`rules::coalesce`). Also keeps the
//! labels of every client of the subtree (`dir_about`) as the presence
//! events of child relays pass through, so a snapshot can be narrowed by
//! labels here. Never decides who is a target.

use super::RelayState;
use crate::proto::{now_ms, About, Event, NodeName, Presence};
use crate::store::keys::Name;
use crate::store::StoreError;

/// Most changes one presence event carries.
const CHUNK: usize = 1000;

/// A home agent's session became its current one: keep what it says of
/// itself and report it online (not yet durable).
pub(crate) fn online(st: &RelayState, client: &NodeName, about: About) -> Result<(), StoreError> {
    keep_about(st, client, &about)?;
    st.outbox.push(&[Event::Presence {
        relay: st.me.clone(),
        changes: vec![Presence {
            client: client.clone(),
            online: true,
            at_ms: now_ms(),
            about: Some(about),
        }],
    }])?;
    Ok(())
}

/// A home agent's current session ended: report it offline.
pub(crate) fn offline(st: &RelayState, client: &NodeName) -> Result<(), StoreError> {
    st.outbox.push(&[Event::Presence {
        relay: st.me.clone(),
        changes: vec![Presence {
            client: client.clone(),
            online: false,
            at_ms: now_ms(),
            about: None,
        }],
    }])?;
    Ok(())
}

/// At start-up, before any session: every home client offline.
pub(crate) fn all_offline(st: &RelayState) -> Result<(), StoreError> {
    let now = now_ms();
    let mut home = Vec::new();
    for r in st.dir_clients.scan() {
        let (Name(c), e) = r?;
        if e.via == st.me {
            home.push(c);
        }
    }
    let events: Vec<Event> = home
        .chunks(CHUNK)
        .map(|chunk| Event::Presence {
            relay: st.me.clone(),
            changes: chunk
                .iter()
                .map(|c| Presence {
                    client: c.clone(),
                    online: false,
                    at_ms: now,
                    about: None,
                })
                .collect(),
        })
        .collect();
    if !events.is_empty() {
        st.outbox.push(&events)?;
    }
    Ok(())
}

/// A child relay's (confined) presence changes: keep the labels of the
/// clients that came online.
pub(crate) fn learn(st: &RelayState, changes: &[Presence]) -> Result<(), StoreError> {
    for p in changes {
        if let Some(a) = &p.about {
            keep_about(st, &p.client, a)?;
        }
    }
    Ok(())
}

fn keep_about(st: &RelayState, client: &NodeName, about: &About) -> Result<(), StoreError> {
    let k = Name(client.clone());
    if st.dir_about.get(&k)?.as_ref() != Some(about) {
        st.dir_about.put(&k, about)?;
    }
    Ok(())
}

/// The labels of a client of the subtree, as it last came online (none
/// known: no labels).
pub(crate) fn labels_of(
    st: &RelayState,
    client: &NodeName,
) -> Result<crate::proto::Labels, StoreError> {
    Ok(st
        .dir_about
        .get(&Name(client.clone()))?
        .map(|a| a.labels)
        .unwrap_or_default())
}
