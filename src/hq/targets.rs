//! Jobs to named clients (`--dest clients --client NAME ...`): each client
//! is looked up at its current home relay (HQ's `clients`), narrowed by the
//! destination's labels and exclusions as HQ last heard them, and the job
//! goes to each home with one signed order per home naming its clients (in
//! chunks, as a rerun's), the filter inside. The home relay applies the
//! filter again with the labels it holds now and closes the clients it no
//! longer admits as `canceled` ("skipped: ...", `relay/narrow.rs`), so
//! every leaf HQ made is accounted for. An unknown name refuses the whole
//! job: nothing is created. Also checks a filter's exclusions for any
//! destination.

use super::repeat::RepeatRecord;
use super::{HqError, HqState};
use crate::proto::{Action, JobId, NodeName, PolicyRequest, TargetFilter};
use crate::store::keys::Name;
use std::collections::BTreeSet;

/// Refuses an exclusion naming no client HQ knows (a typo would leave the
/// machine the operator meant to spare among the targets).
pub(crate) fn check_excluded(st: &HqState, filter: &TargetFilter) -> Result<(), HqError> {
    for c in &filter.exclude {
        if !st.clients.contains(&Name(c.clone()))? && !st.deny.contains(c) {
            return Err(HqError::Refused(format!(
                "--exclude {c}: no client of that name has registered (see hq client list)"
            )));
        }
    }
    Ok(())
}

/// The named clients with their current homes, narrowed by `filter`. An
/// unknown or revoked name, or nothing left, is an error.
pub(crate) fn resolve(
    st: &HqState,
    names: &[NodeName],
    filter: &TargetFilter,
) -> Result<Vec<(NodeName, NodeName)>, HqError> {
    if names.is_empty() {
        return Err(HqError::Refused("no client given (--client NAME)".into()));
    }
    check_excluded(st, filter)?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for c in names {
        if !seen.insert(c) {
            continue;
        }
        if st.deny.contains(c) {
            return Err(HqError::Refused(format!("--client {c}: it was revoked")));
        }
        let Some(rec) = st.clients.get(&Name(c.clone()))? else {
            return Err(HqError::Refused(format!(
                "--client {c}: unknown client (no client of that name has registered; see hq client list)"
            )));
        };
        if filter.admits(c, &rec.about.labels) {
            out.push((c.clone(), rec.relay));
        }
    }
    if out.is_empty() {
        return Err(HqError::Refused(
            "no named client is left once --label and --exclude are applied".into(),
        ));
    }
    Ok(out)
}

/// `hq job create --dest clients` (or one occurrence of such a recurring
/// job), with its rollout rules.
pub(crate) async fn create_named(
    st: &HqState,
    names: Vec<NodeName>,
    filter: TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
    policy: &PolicyRequest,
    occurrence: Option<(&RepeatRecord, u64)>,
) -> Result<JobId, HqError> {
    super::jobs::check_action(st, &action)?;
    let targets = resolve(st, &names, &filter)?;
    super::jobs::create_for_clients_with(
        st, &targets, &filter, action, expires_ms, policy, occurrence,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::{ClientRecord, RelayRecord};
    use crate::proto::{Msg, Order, Presence, Scope};
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn named_clients_go_to_their_homes_narrowed_and_unknown_names_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        // hq <- r1, hq <- r2 <- r3; c1 at r1, c3 at r3, c4 at r3.
        for (r, p) in [("r1", "hq"), ("r2", "hq"), ("r3", "r2")] {
            let rec = RelayRecord {
                parent: n(p),
                connected: true,
                last_seen_ms: 0,
            };
            st.relays.put(&Name(n(r)), &rec).unwrap();
        }
        for (c, r, role) in [("c1", "r1", "web"), ("c3", "r3", "web"), ("c4", "r3", "db")] {
            let rec = ClientRecord {
                relay: n(r),
                since_ms: 0,
                online: false,
                seen_ms: 0,
                about: Default::default(),
            };
            st.clients.put(&Name(n(c)), &rec).unwrap();
            let about = crate::proto::About {
                labels: crate::proto::labels::parse_labels(&[format!("role={role}")]).unwrap(),
                version: Some("1".into()),
            };
            let p = Presence {
                client: n(c),
                online: true,
                at_ms: 5,
                about: Some(about),
            };
            super::super::clients::ingest_presence(&st, &n(r), &[p]).unwrap();
        }
        let names = vec![n("c1"), n("c3"), n("c4")];
        // An unknown name: refused, nothing created.
        let mut bad = names.clone();
        bad.push(n("nobody"));
        let e = create_named(
            &st,
            bad,
            Default::default(),
            Action::Ping,
            None,
            &Default::default(),
            None,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--client nobody"), "{e}");
        let exclude_typo = TargetFilter {
            labels: Default::default(),
            exclude: vec![n("c9")],
        };
        let e = create_named(
            &st,
            names.clone(),
            exclude_typo,
            Action::Ping,
            None,
            &Default::default(),
            None,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("--exclude c9"), "{e}");
        assert_eq!(st.jobs.len(), 0);
        // role=web, without c1: only c3, at r3 through r2.
        let f = TargetFilter {
            labels: crate::proto::labels::parse_labels(&["role=web"]).unwrap(),
            exclude: vec![n("c1")],
        };
        let job = create_named(&st, names, f, Action::Ping, None, &Default::default(), None)
            .await
            .unwrap();
        let leaves = super::super::jobs::load_leaves(&st, job).unwrap();
        assert_eq!(leaves.len(), 1);
        assert_eq!((&leaves[0].0, &leaves[0].1.relay), (&n("c3"), &n("r3")));
        let queued = st.down.queued(&n("r2")).unwrap();
        let Some(Msg::Assign(a)) = queued.first() else {
            panic!("{queued:?}")
        };
        assert_eq!(a.scope, Scope::Targets(vec![n("c3")]));
        let o: Order = rmp_serde::from_slice(&a.orders[0].body).unwrap();
        assert_eq!((o.relay, o.targets), (Some(n("r3")), Some(vec![n("c3")])));
        assert!(st.down.queued(&n("r1")).unwrap().is_empty());
        // Nothing left after the filter: refused.
        let f = TargetFilter {
            labels: crate::proto::labels::parse_labels(&["role=none"]).unwrap(),
            exclude: vec![],
        };
        let e = create_named(
            &st,
            vec![n("c1")],
            f,
            Action::Ping,
            None,
            &Default::default(),
            None,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("no named client is left"), "{e}");
    }
}
