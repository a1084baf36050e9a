//! Relay caches as HQ sees them: sync orders (now, or by each relay's
//! schedule; a due sync waits while a package is being added), their
//! delivery down the tree until answered, the relays' cache reports and the
//! clients' inventories, and the per-relay status built from them.
//!
//! Never reads blobs: the catalog and the depot are `packages.rs`'s.

use super::packages::{cache_key, find, newest, pkg_key, refused};
use super::{HqError, HqState};
use crate::pkg::schedule::{next_for_relay, Schedule};
use crate::proto::{
    now_ms, CacheReport, CacheState, ClientView, InventoryReport, Msg, NodeName, PackageInfo,
    PackageRef, PackageStatusView, RelayCache, RelayPackage, RelaySchedule, SyncOrder,
};
use crate::store::keys::{self, Name};
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{info, warn};

/// Orders a sync of `packages` (default: the newest of each) at `relays`.
pub(crate) async fn sync(
    st: &HqState,
    relays: Vec<NodeName>,
    name: Option<String>,
    version: Option<String>,
    complete: bool,
) -> Result<(u64, Vec<PackageRef>), HqError> {
    if relays.is_empty() {
        return Err(refused("name at least one relay (--relay R)"));
    }
    for r in &relays {
        if st.relays.get(&Name(r.clone()))?.is_none() {
            return Err(refused(format!(
                "relay {r} is not known to hq (see `hq tree`)"
            )));
        }
    }
    let packages: Vec<PackageRef> = match &name {
        Some(n) => vec![find(st, n, version.as_deref())?],
        None => newest(st)?.into_values().collect(),
    }
    .into_iter()
    .map(|p| PackageRef {
        name: p.name,
        version: p.version,
        manifest: p.manifest,
    })
    .collect();
    if packages.is_empty() {
        return Err(refused("the depot holds no package yet (hq package add)"));
    }
    let id = st.store.next_id("sync")?;
    for relay in &relays {
        let order = SyncOrder {
            id,
            relay: relay.clone(),
            packages: packages.clone(),
            complete,
        };
        st.syncs.put(&sync_key(id, relay), &order)?;
        for p in &packages {
            let k = cache_key(relay, &p.name, &p.version);
            let mut rep = st.caches.get::<CacheReport>(&k)?.unwrap_or(CacheReport {
                relay: relay.clone(),
                package: p.clone(),
                state: CacheState::Syncing,
                reason: None,
                sync_id: Some(id),
                fetched_bytes: 0,
                at_ms: now_ms(),
            });
            rep.state = CacheState::Syncing;
            rep.sync_id = Some(id);
            st.caches.put(&k, &rep)?;
        }
    }
    st.store.durable().await?;
    for relay in &relays {
        send_sync(st, relay, id)?;
    }
    Ok((id, packages))
}

fn sync_key(id: u64, relay: &NodeName) -> Vec<u8> {
    let mut k = keys::seq(id).to_vec();
    k.extend_from_slice(relay.as_str().as_bytes());
    k
}

/// Sends one pending sync towards its relay, if the way there is up.
fn send_sync(st: &HqState, relay: &NodeName, id: u64) -> Result<(), HqError> {
    let Some(order) = st.syncs.get::<SyncOrder>(&sync_key(id, relay))? else {
        return Ok(());
    };
    let Ok(top) = super::jobs::top_child(st, relay) else {
        return Ok(());
    };
    if let Some(tx) = st
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&top)
    {
        crate::link::send_soon(tx, Msg::Sync(order));
    }
    Ok(())
}

/// Re-sends every sync still unanswered (a relay came back).
pub(crate) fn resend_syncs(st: &HqState) -> Result<(), HqError> {
    let pending: Vec<SyncOrder> = st
        .syncs
        .scan::<SyncOrder>(b"")
        .filter_map(|r| r.ok().map(|(_, o)| o))
        .collect();
    for o in pending {
        send_sync(st, &o.relay, o.id)?;
    }
    Ok(())
}

/// A relay reported its cache (inside an events batch; not yet durable).
pub(crate) fn ingest_cache(st: &HqState, c: &CacheReport) -> Result<(), StoreError> {
    let k = cache_key(&c.relay, &c.package.name, &c.package.version);
    let mut rep = c.clone();
    if let Some(old) = st.caches.get::<CacheReport>(&k)? {
        if old.at_ms == c.at_ms && old.state == c.state && old.sync_id == c.sync_id {
            // The same report again (a re-sent batch): nothing new.
            return Ok(());
        }
        if old.at_ms > c.at_ms {
            // A straggler older than what is recorded.
            return Ok(());
        }
        rep.fetched_bytes += old.fetched_bytes;
    }
    st.caches.put(&k, &rep)?;
    if let (Some(id), CacheState::Present | CacheState::Failed) = (c.sync_id, c.state) {
        // The sync is answered once every package in it is: each answer
        // takes its package off the stored order (reports of other syncs or
        // of prefetches for the same package do not count, nor hide it).
        let sk = sync_key(id, &c.relay);
        if let Some(mut order) = st.syncs.get::<SyncOrder>(&sk)? {
            order
                .packages
                .retain(|p| !(p.name == c.package.name && p.version == c.package.version));
            if order.packages.is_empty() {
                st.syncs.remove(&sk)?;
            } else {
                st.syncs.put(&sk, &order)?;
            }
        }
    }
    Ok(())
}

/// A client reported its inventory (inside an events batch).
pub(crate) fn ingest_inventory(st: &HqState, i: &InventoryReport) -> Result<(), StoreError> {
    let k = Name(i.client.clone());
    if let Some(old) = st.inventory.get(&k)? {
        if old.at_ms > i.at_ms {
            return Ok(());
        }
    }
    st.inventory.put(&k, i)
}

/// One client.
pub(crate) fn client(st: &HqState, name: &NodeName) -> Result<ClientView, HqError> {
    let Some(c) = st.clients.get(&Name(name.clone()))? else {
        return Err(refused(format!(
            "no client {name} has registered with any relay (a client's name is the one in its certificate)"
        )));
    };
    let inv = st.inventory.get(&Name(name.clone()))?;
    Ok(ClientView {
        name: name.clone(),
        relay: c.relay,
        since_ms: c.since_ms,
        packages: inv.as_ref().map(|i| i.packages.clone()).unwrap_or_default(),
        inventory_at_ms: inv.map(|i| i.at_ms),
    })
}

fn schedule_of(st: &HqState, relay: &NodeName) -> Result<RelaySchedule, HqError> {
    Ok(st
        .schedules
        .get(&Name(relay.clone()))?
        .unwrap_or(RelaySchedule {
            relay: relay.clone(),
            spec: None,
            stagger_ms: 0,
            next_ms: None,
            last_ms: None,
        }))
}

/// Sets or clears a relay's schedule.
pub(crate) async fn set_schedule(
    st: &HqState,
    relay: NodeName,
    spec: Option<String>,
    stagger_ms: u64,
) -> Result<RelaySchedule, HqError> {
    if st.relays.get(&Name(relay.clone()))?.is_none() {
        return Err(refused(format!(
            "relay {relay} is not known to hq (see `hq tree`)"
        )));
    }
    let mut s = schedule_of(st, &relay)?;
    match spec {
        None => {
            s.spec = None;
            s.next_ms = None;
        }
        Some(text) => {
            let parsed: Schedule = text.parse().map_err(|e| refused(format!("{e}")))?;
            s.spec = Some(parsed.to_string());
            s.stagger_ms = stagger_ms;
            s.next_ms = next_for_relay(&parsed, relay.as_str(), stagger_ms, now_ms());
        }
    }
    st.schedules.put(&Name(relay.clone()), &s)?;
    st.store.durable().await?;
    Ok(s)
}

/// Runs due scheduled syncs until HQ stops; a sync that comes due while a
/// package is being added waits until the add is finished.
pub(crate) async fn run_schedules(st: std::sync::Arc<HqState>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        // With several HQs on one database, one of them orders the syncs.
        if !st.store.holds_duty("schedules") {
            continue;
        }
        if let Err(e) = tick(&st).await {
            warn!(error = %e, "scheduled sync");
        }
    }
}

/// One look at the schedules: orders the syncs that are due, unless a
/// package is being added (then they wait for the next look).
async fn tick(st: &HqState) -> Result<bool, HqError> {
    if st.uploads.adding.load(Ordering::SeqCst) > 0 {
        return Ok(false);
    }
    due_syncs(st).await?;
    Ok(true)
}

async fn due_syncs(st: &HqState) -> Result<(), HqError> {
    let now = now_ms();
    let due: Vec<RelaySchedule> = st
        .schedules
        .scan()
        .filter_map(|r| r.ok().map(|(_, s)| s))
        .filter(|s| s.next_ms.is_some_and(|n| n <= now))
        .collect();
    if due.is_empty() {
        // Nothing written: no flush for an idle HQ every second.
        return Ok(());
    }
    for mut s in due {
        let Some(parsed) = s.spec.as_deref().and_then(|t| t.parse::<Schedule>().ok()) else {
            continue;
        };
        if !newest(st)?.is_empty() {
            info!(relay = %s.relay, "scheduled package sync");
            sync(st, vec![s.relay.clone()], None, None, false).await?;
        }
        s.last_ms = Some(now);
        s.next_ms = next_for_relay(&parsed, s.relay.as_str(), s.stagger_ms, now);
        st.schedules.put(&Name(s.relay.clone()), &s)?;
    }
    st.store.durable().await?;
    Ok(())
}

/// Per relay: each package present, outdated, missing, syncing or failed.
pub(crate) fn status(st: &HqState, only: Option<&NodeName>) -> Result<PackageStatusView, HqError> {
    let newest = newest(st)?;
    let mut relays: Vec<NodeName> = st
        .relays
        .scan()
        .filter_map(|r| r.ok())
        .map(|(k, _)| k.0)
        .collect();
    if let Some(o) = only {
        if !relays.contains(o) {
            return Err(refused(format!(
                "relay {o} is not known to hq (see `hq tree`)"
            )));
        }
        relays.retain(|r| r == o);
    }
    let mut out = Vec::new();
    for relay in relays {
        let reports: Vec<CacheReport> = st
            .caches
            .scan::<CacheReport>(&keys::name_prefix(&relay))
            .filter_map(|r| r.ok().map(|(_, c)| c))
            .collect();
        let mut packages = Vec::new();
        for (name, p) in &newest {
            let mine: Vec<&CacheReport> =
                reports.iter().filter(|r| r.package.name == *name).collect();
            let of_newest = mine.iter().find(|r| r.package.version == p.version);
            let present_versions: Vec<&CacheReport> = mine
                .iter()
                .copied()
                .filter(|r| r.state == CacheState::Present)
                .collect();
            let present = present_versions
                .iter()
                .filter_map(|r| {
                    st.packages
                        .get::<PackageInfo>(&pkg_key(&r.package.name, &r.package.version))
                        .ok()
                        .flatten()
                        .map(|i| (i.added_ms, r.package.version.clone()))
                })
                .max()
                .map(|(_, v)| v);
            let (state, reason, at) = match of_newest {
                Some(r) if r.state == CacheState::Present => ("present", None, Some(r.at_ms)),
                Some(r) if r.state == CacheState::Syncing => ("syncing", None, Some(r.at_ms)),
                Some(r) => ("failed", r.reason.clone(), Some(r.at_ms)),
                None if present.is_some() => ("outdated", None, mine.iter().map(|r| r.at_ms).max()),
                None => ("missing", None, None),
            };
            let state = if state == "failed" && present.is_some() {
                "outdated"
            } else {
                state
            };
            packages.push(RelayPackage {
                name: name.clone(),
                newest: p.version.clone(),
                present,
                state: state.to_string(),
                reason,
                at_ms: at,
            });
        }
        let last_sync_ms = reports
            .iter()
            .filter(|r| r.state == CacheState::Present && r.sync_id.is_some())
            .map(|r| r.at_ms)
            .max();
        out.push(RelayCache {
            schedule: schedule_of(st, &relay)?,
            fetched_bytes: reports.iter().map(|r| r.fetched_bytes).sum(),
            relay,
            last_sync_ms,
            packages,
        });
    }
    Ok(PackageStatusView {
        relays: out,
        hq_egress: st.egress.snapshot(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::ChunkHash;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_due_schedule_orders_a_sync_but_waits_for_a_package_being_added() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        let r1 = n("r1");
        st.relays
            .put(
                &Name(r1.clone()),
                &super::super::RelayRecord {
                    parent: n("hq"),
                    connected: false,
                    last_seen_ms: 0,
                },
            )
            .unwrap();
        let m = ChunkHash::of(b"manifest");
        st.packages
            .put(
                &pkg_key("tool", "1"),
                &PackageInfo {
                    name: "tool".into(),
                    version: "1".into(),
                    manifest: m,
                    files: 1,
                    size: 1,
                    chunks: 1,
                    install: None,
                    remove: None,
                    added_ms: 1,
                    new_bytes: 0,
                    entries: vec![],
                    bundle: false,
                },
            )
            .unwrap();
        let s = set_schedule(
            &st,
            r1.clone(),
            Some("monthly 2nd tue +4d 02:30".into()),
            3_600_000,
        )
        .await
        .unwrap();
        assert_eq!(s.spec.as_deref(), Some("monthly 2nd tue +4d 02:30"));
        assert!(s.next_ms.unwrap() > now_ms());
        // Make it due.
        let mut due = s.clone();
        due.next_ms = Some(now_ms() - 1);
        st.schedules.put(&Name(r1.clone()), &due).unwrap();

        st.uploads.adding.fetch_add(1, Ordering::SeqCst);
        assert!(
            !tick(&st).await.unwrap(),
            "ran while a package was being added"
        );
        assert_eq!(st.syncs.scan::<SyncOrder>(b"").count(), 0);

        st.uploads.adding.fetch_sub(1, Ordering::SeqCst);
        assert!(tick(&st).await.unwrap());
        let orders: Vec<SyncOrder> = st
            .syncs
            .scan::<SyncOrder>(b"")
            .map(|r| r.unwrap().1)
            .collect();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].relay, r1);
        assert_eq!(orders[0].packages[0].manifest, m);
        assert!(!orders[0].complete);
        let after = schedule_of(&st, &r1).unwrap();
        assert!(after.last_ms.is_some());
        assert!(after.next_ms.unwrap() > now_ms(), "{after:?}");
        // Status shows it syncing, with the schedule.
        let view = status(&st, Some(&r1)).unwrap();
        assert_eq!(view.relays[0].packages[0].state, "syncing");
        assert_eq!(view.relays[0].schedule.spec, after.spec);

        // The relay's answer closes the sync and shows it present.
        ingest_cache(
            &st,
            &CacheReport {
                relay: r1.clone(),
                package: orders[0].packages[0].clone(),
                state: CacheState::Present,
                reason: None,
                sync_id: Some(orders[0].id),
                fetched_bytes: 10,
                at_ms: now_ms(),
            },
        )
        .unwrap();
        assert_eq!(st.syncs.scan::<SyncOrder>(b"").count(), 0);
        let view = status(&st, None).unwrap();
        assert_eq!(view.relays[0].packages[0].state, "present");
        assert!(view.relays[0].last_sync_ms.is_some());

        // A newer version in the depot: r1's copy is outdated.
        let mut v2 = st
            .packages
            .get::<PackageInfo>(&pkg_key("tool", "1"))
            .unwrap()
            .unwrap();
        v2.version = "2".into();
        v2.manifest = ChunkHash::of(b"manifest 2");
        v2.added_ms = 2;
        st.packages.put(&pkg_key("tool", "2"), &v2).unwrap();
        let p = &status(&st, None).unwrap().relays[0].packages[0];
        assert_eq!((p.state.as_str(), p.newest.as_str()), ("outdated", "2"));
        assert_eq!(p.present.as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn a_sync_closes_when_each_package_is_answered_and_repeats_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tls::SigningKey::create(dir.path()).unwrap();
        let depot = crate::pkg::ChunkStore::open(dir.path().join("depot")).unwrap();
        let st = HqState::open(n("hq"), Store::open(dir.path()).unwrap(), key, depot).unwrap();
        let r1 = n("r1");
        let pr = |name: &str| PackageRef {
            name: name.into(),
            version: "1".into(),
            manifest: ChunkHash::of(name.as_bytes()),
        };
        let order = SyncOrder {
            id: 7,
            relay: r1.clone(),
            packages: vec![pr("a"), pr("b")],
            complete: false,
        };
        st.syncs.put(&sync_key(7, &r1), &order).unwrap();
        let report = |p: PackageRef, sync_id: Option<u64>, at_ms: u64, bytes: u64| CacheReport {
            relay: r1.clone(),
            package: p,
            state: CacheState::Present,
            reason: None,
            sync_id,
            fetched_bytes: bytes,
            at_ms,
        };
        let a = report(pr("a"), Some(7), 10, 100);
        ingest_cache(&st, &a).unwrap();
        // The same report again (a re-sent batch) counts once.
        ingest_cache(&st, &a).unwrap();
        // A prefetch of `a` reports in between.
        ingest_cache(&st, &report(pr("a"), None, 11, 0)).unwrap();
        assert_eq!(
            st.syncs.scan::<SyncOrder>(b"").count(),
            1,
            "still waiting for b"
        );
        ingest_cache(&st, &report(pr("b"), Some(7), 12, 50)).unwrap();
        assert_eq!(st.syncs.scan::<SyncOrder>(b"").count(), 0, "answered");
        let got = st
            .caches
            .get::<CacheReport>(&cache_key(&r1, "a", "1"))
            .unwrap()
            .unwrap();
        assert_eq!(got.fetched_bytes, 100);
    }
}
