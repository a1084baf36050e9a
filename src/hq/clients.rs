//! Clients as HQ knows them from their home relays' events: presence
//! (online or offline, since when), labels and agent version, and the
//! `hq client list` answer built from them. HQ never polls a client or a
//! relay for this: relays report changes, batched in their outboxes.
//! Decides nothing about jobs.

use super::{ClientRecord, HqError, HqState};
use crate::proto::{ClientEntry, Labels, NodeName, Presence, Role, TargetFilter};
use crate::store::keys::Name;
use crate::store::StoreError;

/// `online` or `offline`, as the client's home last reported.
pub(crate) fn state_of(c: &ClientRecord) -> &'static str {
    if c.online {
        "online"
    } else {
        "offline"
    }
}

/// When the client was last seen: now while it is online, else when it
/// went offline (0: never reported).
pub(crate) fn last_seen(c: &ClientRecord, now: u64) -> u64 {
    if c.online {
        now
    } else {
        c.seen_ms
    }
}

/// Applies a home relay's (confined) presence changes: the latest per
/// client wins; a change from a relay that is no longer the client's home,
/// or older than the one recorded, changes nothing. Not yet durable.
pub(crate) fn ingest_presence(
    st: &HqState,
    relay: &NodeName,
    changes: &[Presence],
) -> Result<(), StoreError> {
    for p in changes {
        let k = Name(p.client.clone());
        let Some(mut c) = st.clients.get(&k)? else {
            continue;
        };
        if c.relay != *relay || p.at_ms < c.seen_ms {
            continue;
        }
        c.online = p.online;
        c.seen_ms = p.at_ms;
        if let Some(a) = &p.about {
            c.about = a.clone();
        }
        st.clients.put(&k, &c)?;
    }
    Ok(())
}

/// Which clients `hq client list` shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientQuery {
    /// Only clients whose home is this relay.
    pub relay: Option<NodeName>,
    /// Only clients carrying every one of these labels.
    pub labels: Labels,
    /// Only clients in this state.
    pub state: Option<String>,
}

/// `hq client list`: every client matching `q`, by name. Revoked clients
/// (from the deny list) show with no relay and no labels, so a relay or
/// label filter leaves them out.
pub(crate) fn list(st: &HqState, q: &ClientQuery) -> Result<Vec<ClientEntry>, HqError> {
    let state = q.state.as_deref();
    if let Some(s) = state {
        if !matches!(s, "online" | "offline" | "revoked") {
            return Err(HqError::Refused(format!(
                "unknown client state {s:?}: online, offline or revoked"
            )));
        }
    }
    if let Some(r) = &q.relay {
        if !st.relays.contains(&Name(r.clone()))? {
            return Err(HqError::Refused(format!("unknown relay {r}")));
        }
    }
    let filter = TargetFilter {
        labels: q.labels.clone(),
        exclude: vec![],
    };
    let now = crate::proto::now_ms();
    let mut out = Vec::new();
    if state != Some("revoked") {
        for r in st.clients.scan() {
            let (Name(client), c) = r?;
            if q.relay.as_ref().is_some_and(|x| *x != c.relay)
                || state.is_some_and(|s| s != state_of(&c))
                || !filter.admits(&client, &c.about.labels)
            {
                continue;
            }
            out.push(ClientEntry {
                state: state_of(&c).into(),
                last_seen_ms: last_seen(&c, now),
                since_ms: c.seen_ms,
                client,
                relay: Some(c.relay),
                labels: c.about.labels,
                version: c.about.version,
            });
        }
    }
    if matches!(state, None | Some("revoked")) && q.relay.is_none() && q.labels.is_empty() {
        for r in st.denied.scan() {
            let (Name(client), at_ms) = r?;
            // Agents never have a session with HQ itself: a revoked name
            // that is no relay and never an admin is taken for a client.
            let role = st.seen.get(&Name(client.clone()))?;
            if matches!(role, Some(Role::Admin | Role::Relay | Role::Hq))
                || st.relays.contains(&Name(client.clone()))?
            {
                continue;
            }
            out.push(ClientEntry {
                client,
                relay: None,
                state: "revoked".into(),
                last_seen_ms: 0,
                labels: Labels::new(),
                version: None,
                since_ms: at_ms,
            });
        }
        out.sort_by(|a, b| a.client.cmp(&b.client));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::RelayRecord;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn p(c: &str, online: bool, at_ms: u64, role: Option<&str>) -> Presence {
        Presence {
            client: n(c),
            online,
            at_ms,
            about: role.map(|r| crate::proto::About {
                labels: crate::proto::labels::parse_labels(&[format!("role={r}")]).unwrap(),
                version: Some("9".into()),
            }),
        }
    }

    #[test]
    fn presence_from_the_home_in_order_decides_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        for r in ["r1", "r2"] {
            let rec = RelayRecord {
                parent: n("hq"),
                connected: true,
                last_seen_ms: 0,
            };
            st.relays.put(&Name(n(r)), &rec).unwrap();
        }
        for (c, r) in [("c1", "r1"), ("c2", "r1"), ("c3", "r2")] {
            let rec = ClientRecord {
                relay: n(r),
                since_ms: 0,
                online: false,
                seen_ms: 0,
                about: Default::default(),
            };
            st.clients.put(&Name(n(c)), &rec).unwrap();
        }
        let r1 = [
            p("c1", true, 10, Some("web")),
            p("c2", true, 10, Some("db")),
            // Older than what is recorded: ignored.
            p("c1", false, 5, None),
        ];
        ingest_presence(&st, &n("r1"), &r1).unwrap();
        // r1 is not c3's home: ignored.
        ingest_presence(&st, &n("r1"), &[p("c3", true, 20, Some("web"))]).unwrap();
        ingest_presence(&st, &n("r1"), &[p("c2", false, 30, None)]).unwrap();
        let q = |relay: Option<&str>, labels: &[&str], state: Option<&str>| ClientQuery {
            relay: relay.map(n),
            labels: crate::proto::labels::parse_labels(labels).unwrap(),
            state: state.map(Into::into),
        };
        let names = |q: ClientQuery| -> Vec<(String, String)> {
            list(&st, &q)
                .unwrap()
                .into_iter()
                .map(|c| (c.client.to_string(), c.state))
                .collect()
        };
        let table = [
            (
                q(None, &[], None),
                vec![("c1", "online"), ("c2", "offline"), ("c3", "offline")],
            ),
            (q(None, &[], Some("online")), vec![("c1", "online")]),
            (q(None, &["role=db"], None), vec![("c2", "offline")]),
            (q(Some("r2"), &[], None), vec![("c3", "offline")]),
            (q(Some("r1"), &["role=web"], Some("offline")), vec![]),
        ];
        for (query, want) in table {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(names(query.clone()), want, "{query:?}");
        }
        let all = list(&st, &q(None, &[], None)).unwrap();
        // Offline: last seen when it went; labels kept from when it was online.
        assert_eq!(all[1].last_seen_ms, 30);
        assert_eq!(all[1].labels.get("role").map(String::as_str), Some("db"));
        assert!(all[0].last_seen_ms > 30, "online: seen now");
        assert!(list(&st, &q(Some("r9"), &[], None)).is_err());
        assert!(list(&st, &q(None, &[], Some("asleep"))).is_err());
    }
}
