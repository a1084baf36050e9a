//! `hq sync`: validates (nothing is launched on bad input), reads the
//! audit's differences and its snapshot, asks [`plan::plan`] for the unique
//! collections, builds one package per collection from the snapshot's file
//! layouts (chunks already in the depot: nothing new is uploaded), creates
//! one job per collection to exactly its clients, and one batch of them.
//! Also applies a sync leaf's success to the audit's leaf of that client
//! (its synced differences are gone).
//!
//! The decision is `plan.rs`'s; this file only reads, builds and writes.
//! Never imports `relay` or `agent`.

pub(crate) mod plan;

use super::audit::SnapshotRecord;
use super::{HqError, HqState};
use crate::pkg::{Entry, EntryKind, Manifest};
use crate::proto::audit::{AuditOutcome, ObjectId, ObjectValue};
use crate::proto::sync::{Expect, SkippedView, SyncJobView, SyncRequest, SyncSpec, SyncView};
use crate::proto::{Action, InstallSpec, JobId, LeafState, LeafUpdate, NodeName, PackageInfo};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::StoreError;
use plan::{Change, Collection};
use std::collections::{BTreeMap, BTreeSet};
use tracing::info;

fn refused(msg: String) -> HqError {
    HqError::Refused(msg)
}

/// The audit's record and snapshot, checked: an audit, finished.
fn finished_audit(st: &HqState, audit: JobId) -> Result<SnapshotRecord, HqError> {
    let rec = st
        .jobs
        .get(&JobKey(audit))?
        .ok_or_else(|| refused(format!("unknown audit {audit}")))?;
    let Action::Audit(spec) = &rec.action else {
        return Err(refused(format!(
            "unknown audit {audit}: job {audit} is not an audit"
        )));
    };
    let status = super::audit::status(st, audit)?;
    if !status.done {
        return Err(refused(format!(
            "audit {audit} is not finished ({} of its targets pending): wait for it (hq job wait {audit})",
            status.totals.pending
        )));
    }
    super::audit::snapshot(st, &spec.snapshot)?.ok_or_else(|| {
        refused(format!(
            "snapshot {} of audit {audit} is gone",
            spec.snapshot
        ))
    })
}

/// The plan and what it needs to be launched.
struct Planned {
    plan: plan::Plan,
    snap: SnapshotRecord,
    catalog: BTreeMap<(String, String), PackageInfo>,
    homes: BTreeMap<NodeName, NodeName>,
}

fn make_plan(st: &HqState, req: &SyncRequest) -> Result<Planned, HqError> {
    let snap = finished_audit(st, req.audit)?;
    let leaves = super::jobs::load_leaves(st, req.audit)?;
    let homes: BTreeMap<NodeName, NodeName> = leaves
        .iter()
        .map(|(c, l)| (c.clone(), l.relay.clone()))
        .collect();
    for c in &req.clients {
        if !homes.contains_key(c) {
            return Err(refused(format!(
                "client {c} was not a target of audit {}",
                req.audit
            )));
        }
    }
    let catalog: BTreeMap<(String, String), PackageInfo> = super::packages::list(st)?
        .into_iter()
        .map(|p| ((p.name.clone(), p.version.clone()), p))
        .collect();
    let mut matches = BTreeMap::new();
    for m in &req.matches {
        let key = (m.package.clone(), m.version.clone());
        if !catalog.contains_key(&key) {
            return Err(refused(format!(
                "--match dpkg:{}={}@{}: no package {}@{} in the depot (see `hq package list`)",
                m.dpkg, m.package, m.version, m.package, m.version
            )));
        }
        matches.insert(m.dpkg.clone(), key);
    }
    let master_versions: BTreeMap<ObjectId, String> = snap
        .objects
        .iter()
        .filter_map(|o| match &o.value {
            ObjectValue::Version(v) => Some((o.id.clone(), v.clone())),
            ObjectValue::File { .. } => None,
        })
        .collect();
    let master_files: BTreeSet<String> = snap.files.iter().map(|f| f.path.clone()).collect();
    let bundles: BTreeMap<(String, String), bool> =
        catalog.iter().map(|(k, p)| (k.clone(), p.bundle)).collect();
    let diffs: Vec<(NodeName, Vec<crate::proto::audit::Difference>)> = leaves
        .into_iter()
        .filter(|(c, _)| req.clients.is_empty() || req.clients.contains(c))
        .filter_map(|(c, l)| match (l.state, l.audit) {
            (LeafState::Succeeded, Some(AuditOutcome::Differences(d))) => Some((c, d)),
            _ => None,
        })
        .collect();
    let inputs = plan::Inputs {
        targets: diffs
            .iter()
            .map(|(c, d)| (c.clone(), d.as_slice()))
            .collect(),
        master_versions: &master_versions,
        master_files: &master_files,
        catalog: &bundles,
    };
    let opts = plan::Options {
        objects: req.objects.clone(),
        remove_extra: req.remove_extra,
        include_bundles: req.include_bundles,
        matches,
    };
    Ok(Planned {
        plan: plan::plan(&inputs, &opts),
        snap,
        catalog,
        homes,
    })
}

fn install_of(p: &PackageInfo) -> InstallSpec {
    InstallSpec {
        name: p.name.clone(),
        version: p.version.clone(),
        manifest: p.manifest,
        size: p.size,
        timeout_ms: None,
    }
}

fn label(p: &PackageInfo) -> String {
    format!("{}@{}", p.name, p.version)
}

/// The collection's package: the master's files it writes, from the
/// snapshot's layouts (their chunks are in the depot already).
fn manifest_of(name: String, version: String, c: &Collection, snap: &SnapshotRecord) -> Manifest {
    let modes: BTreeMap<&ObjectId, u32> = snap
        .objects
        .iter()
        .filter_map(|o| match &o.value {
            ObjectValue::File { mode, .. } => Some((&o.id, *mode)),
            ObjectValue::Version(_) => None,
        })
        .collect();
    let entries = c
        .changes
        .iter()
        .filter_map(|ch| match ch {
            Change::Write { path } => snap.files.iter().find(|f| f.path == *path),
            _ => None,
        })
        .map(|f| Entry {
            path: f.path.trim_start_matches('/').to_string(),
            kind: EntryKind::File {
                // The package keeps plain permission bits; the agent sets
                // the master's full mode (from the expectation) itself.
                mode: modes
                    .get(&ObjectId::File(f.path.clone()))
                    .map_or(0o644, |m| m & 0o777),
                size: f.size,
                chunks: f.chunks.clone(),
            },
        })
        .collect();
    Manifest {
        name,
        version,
        install: None,
        remove: None,
        entries,
    }
}

/// What the synced objects must read afterwards.
fn expect_of(c: &Collection, snap: &SnapshotRecord) -> Vec<Expect> {
    let master: BTreeMap<&ObjectId, &ObjectValue> =
        snap.objects.iter().map(|o| (&o.id, &o.value)).collect();
    c.changes
        .iter()
        .map(|ch| {
            let object = ch.object();
            let value = match ch {
                Change::Install { .. } | Change::Write { .. } => {
                    master.get(&object).map(|v| (*v).clone())
                }
                Change::Remove { .. } | Change::Delete { .. } => None,
            };
            Expect { object, value }
        })
        .collect()
}

fn skipped(m: BTreeMap<ObjectId, Vec<NodeName>>) -> Vec<SkippedView> {
    m.into_iter()
        .map(|(o, clients)| SkippedView {
            object: o.to_string(),
            clients,
        })
        .collect()
}

/// `hq sync`.
pub(crate) async fn sync(st: &HqState, req: SyncRequest) -> Result<SyncView, HqError> {
    let Planned {
        plan,
        snap,
        catalog,
        homes,
    } = make_plan(st, &req)?;
    let installs_of = |c: &Collection| -> Vec<&PackageInfo> {
        c.changes
            .iter()
            .filter_map(|ch| match ch {
                Change::Install { name, version, .. } => {
                    catalog.get(&(name.clone(), version.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let mut view = SyncView {
        batch: None,
        jobs: plan
            .collections
            .iter()
            .map(|c| SyncJobView {
                job: None,
                clients: c.clients.clone(),
                objects: c.changes.iter().map(|ch| ch.object().to_string()).collect(),
                package: None,
                installs: installs_of(c).into_iter().map(label).collect(),
            })
            .collect(),
        unmatched: skipped(plan.unmatched.clone()),
        excluded: skipped(plan.excluded.clone()),
        dry_run: req.dry_run,
    };
    if req.dry_run || plan.collections.is_empty() {
        return Ok(view);
    }
    let id = st.store.next_id("sync")?;
    let mut jobs = Vec::new();
    let mut dest = BTreeSet::new();
    for (k, c) in plan.collections.iter().enumerate() {
        let m = manifest_of(
            format!("sync-{}-{}", req.audit, k + 1),
            format!("s{id}"),
            c,
            &snap,
        );
        let depot = st.depot.clone();
        let mid = tokio::task::spawn_blocking(move || depot.put_manifest(&m))
            .await
            .map_err(|e| refused(format!("store task: {e}")))?
            .map_err(|e| refused(format!("cannot build the sync package: {e}")))?;
        let pkg = super::packages::add(st, mid, false).await?;
        let spec = SyncSpec {
            audit: req.audit,
            package: install_of(&pkg),
            installs: installs_of(c).into_iter().map(install_of).collect(),
            removes: c
                .changes
                .iter()
                .filter_map(|ch| match ch {
                    Change::Remove { name } => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            deletes: c
                .changes
                .iter()
                .filter_map(|ch| match ch {
                    Change::Delete { path } => Some(path.clone()),
                    _ => None,
                })
                .collect(),
            expect: expect_of(c, &snap),
        };
        let targets: Vec<(NodeName, NodeName)> = c
            .clients
            .iter()
            .map(|client| {
                // The client's home now (it may have moved since the audit).
                let home = match st.clients.get(&Name(client.clone())) {
                    Ok(Some(r)) => r.relay,
                    _ => homes.get(client).cloned().unwrap_or_else(|| st.me.clone()),
                };
                (client.clone(), home)
            })
            .collect();
        dest.extend(targets.iter().map(|(_, h)| h.clone()));
        let job = super::jobs::create_for_clients(st, &targets, Action::Sync(spec), None).await?;
        view.jobs[k].job = Some(job);
        view.jobs[k].package = Some(label(&pkg));
        jobs.push(job);
    }
    let batch = super::batch::create(
        st,
        jobs,
        dest.into_iter().collect(),
        format!("sync of audit {}", req.audit),
    )
    .await?;
    info!(audit = %req.audit, %batch, collections = view.jobs.len(), "sync launched");
    view.batch = Some(batch);
    Ok(view)
}

/// A sync leaf that succeeded (the agent audited itself again and found the
/// synced objects in line): the audit's leaf of that client loses those
/// differences, so `audit status` shows it compliant once none is left.
/// Called from ingest under the write lock; returns the audit leaf to write.
pub(crate) fn ingest(
    st: &HqState,
    u: &LeafUpdate,
    lookup: impl FnOnce(&JobClient) -> Result<Option<LeafRecord>, StoreError>,
) -> Result<Option<(JobClient, LeafRecord)>, StoreError> {
    if u.state != LeafState::Succeeded || u.audit != Some(AuditOutcome::Synced) {
        return Ok(None);
    }
    let Some(job) = st.jobs.get(&JobKey(u.job))? else {
        return Ok(None);
    };
    let Action::Sync(spec) = &job.action else {
        return Ok(None);
    };
    let k = JobClient(spec.audit, u.client.clone());
    let Some(mut leaf) = lookup(&k)? else {
        return Ok(None);
    };
    let Some(AuditOutcome::Differences(d)) = &leaf.audit else {
        return Ok(None);
    };
    let synced: BTreeSet<&ObjectId> = spec.expect.iter().map(|e| &e.object).collect();
    let left: Vec<_> = d
        .iter()
        .filter(|d| !synced.contains(&d.object))
        .cloned()
        .collect();
    info!(audit = %spec.audit, client = %u.client, left = left.len(), "sync applied to the audit");
    leaf.audit = (!left.is_empty()).then_some(AuditOutcome::Differences(left));
    Ok(Some((k, leaf)))
}
