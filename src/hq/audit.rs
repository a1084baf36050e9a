//! Snapshots and audits at HQ: a snapshot job goes to the master at its home
//! relay; its result (objects, and file layouts whose chunks the master's
//! agent pushed into the depot) is recorded in `snapshots`. An audit is an
//! ordinary job whose signed action carries the hash of the snapshot's
//! object list, put into the depot as one blob that relays and agents fetch
//! like a package's; its leaves carry each target's differences, which
//! `audit status` reads.
//!
//! Owns the `snapshots` table (name → [`SnapshotRecord`]). Never imports
//! `relay` or `agent`; the comparison itself is `proto::audit::compare`,
//! run on each agent.

use super::jobs::JobRecord;
use super::{HqError, HqState};
use crate::proto::audit::{
    self, AuditOutcome, AuditSpec, Object, ObjectId, Selection, SnapshotFile, SnapshotSpec,
};
use crate::proto::{
    Action, AuditClient, AuditMaster, AuditRelayTotals, AuditStatusView, AuditTotals,
    DifferenceView, JobId, LeafState, LeafUpdate, NodeName, SnapshotView,
};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// How long a snapshot job may wait to be delivered when not told.
const SNAPSHOT_EXPIRY_MS: u64 = 5 * 60 * 1000;

/// A snapshot as HQ keeps it: everything a sync needs without the master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its name.
    pub name: String,
    /// The master it was taken from.
    pub client: NodeName,
    /// The snapshot job.
    pub job: JobId,
    /// When it was recorded, unix ms.
    pub at_ms: u64,
    /// What was asked for.
    pub select: Selection,
    /// The master's objects.
    pub objects: Vec<Object>,
    /// Each file object's chunks (all in the depot).
    pub files: Vec<SnapshotFile>,
}

/// A snapshot by name (what `hq sync` rebuilds files from).
pub(crate) fn snapshot(st: &HqState, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
    st.snapshots.get(name.as_bytes())
}

fn check_name(name: &str) -> Result<(), HqError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(HqError::Refused(format!(
            "bad snapshot name {name:?}: use letters, digits, - _ . @ (at most 128)"
        )))
    }
}

fn check_globs(files: &[String]) -> Result<(), HqError> {
    for g in files {
        audit::check_glob(g).map_err(HqError::Refused)?;
    }
    Ok(())
}

fn home_of(st: &HqState, client: &NodeName) -> Result<NodeName, HqError> {
    st.clients
        .get(&Name(client.clone()))?
        .map(|c| c.relay)
        .ok_or_else(|| HqError::Refused(format!("unknown client {client}")))
}

/// Records a snapshot leaf's upload once it succeeded (from ingest, under
/// the write lock): checks every chunk is in the depot first.
pub(crate) fn ingest(st: &HqState, u: &LeafUpdate) -> Result<(), StoreError> {
    let Some(AuditOutcome::Snapshot(up)) = &u.audit else {
        return Ok(());
    };
    if u.state != LeafState::Succeeded {
        return Ok(());
    }
    let Some(job) = st.jobs.get(&JobKey(u.job))? else {
        return Ok(());
    };
    let Action::Snapshot(spec) = &job.action else {
        warn!(job = %u.job, "snapshot upload for a job that is no snapshot; dropped");
        return Ok(());
    };
    if spec.name != up.name {
        warn!(job = %u.job, "snapshot upload under another name; dropped");
        return Ok(());
    }
    let hashes: Vec<_> = up
        .files
        .iter()
        .flat_map(|f| f.chunks.iter().map(|c| c.hash))
        .collect();
    let lacking = st.depot.missing(&hashes);
    if !lacking.is_empty() {
        warn!(job = %u.job, lacking = lacking.len(), "snapshot reported without its chunks; not recorded");
        return Ok(());
    }
    let rec = SnapshotRecord {
        name: up.name.clone(),
        client: u.client.clone(),
        job: u.job,
        at_ms: u.at_ms,
        select: spec.select.clone(),
        objects: up.objects.clone(),
        files: up.files.clone(),
    };
    info!(snapshot = %rec.name, client = %rec.client, objects = rec.objects.len(), "snapshot recorded");
    st.snapshots.put(rec.name.as_bytes(), &rec)
}

/// Waits until `job` is done or `wait` passed; true if done.
async fn wait_done(st: &HqState, job: JobId, wait: Duration) -> Result<bool, HqError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = st.changed.subscribe();
    loop {
        changed.borrow_and_update();
        if super::view::is_job_done(st, job)? {
            st.store.durable().await?;
            return Ok(true);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
            r = changed.changed() => if r.is_err() { return Ok(false) },
        }
    }
}

fn view_of(
    st: &HqState,
    name: &str,
    client: &NodeName,
    job: JobId,
) -> Result<SnapshotView, HqError> {
    let rec = snapshot(st, name)?.filter(|r| r.job == job);
    Ok(SnapshotView {
        snapshot: name.to_string(),
        client: client.clone(),
        job,
        done: rec.is_some(),
        objects: rec.as_ref().map_or(0, |r| r.objects.len() as u64),
        files: rec.as_ref().map_or(0, |r| r.files.len() as u64),
    })
}

/// Why a finished snapshot job recorded nothing.
fn failure(st: &HqState, job: JobId, client: &NodeName) -> Result<String, HqError> {
    let leaf = st.leaves.get(&JobClient(job, client.clone()))?;
    Ok(match leaf {
        Some(l) => format!(
            "{}{}",
            l.state.as_str(),
            l.reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        None => "no result".into(),
    })
}

/// `hq snapshot create`: sends the snapshot job to the master and waits up
/// to `wait` for it. A failed snapshot is an error naming why (a glob that
/// matched nothing, a cut upload: `job rerun` resumes it).
pub(crate) async fn create_snapshot(
    st: &HqState,
    client: &NodeName,
    name: &str,
    select: Selection,
    expires_ms: Option<u64>,
    wait: Duration,
) -> Result<SnapshotView, HqError> {
    check_name(name)?;
    check_globs(&select.files)?;
    let home = home_of(st, client)?;
    if snapshot(st, name)?.is_some() {
        return Err(HqError::Refused(format!("snapshot {name} exists already")));
    }
    let spec = SnapshotSpec {
        name: name.to_string(),
        select,
    };
    let job = super::jobs::create_for_client(
        st,
        client,
        &home,
        Action::Snapshot(spec),
        Some(expires_ms.unwrap_or(SNAPSHOT_EXPIRY_MS)),
    )
    .await?;
    info!(%job, snapshot = name, %client, "snapshot ordered");
    if wait_done(st, job, wait).await? {
        let v = view_of(st, name, client, job)?;
        if !v.done {
            return Err(HqError::Refused(format!(
                "snapshot {name} of {client} failed (job {job}): {}",
                failure(st, job, client)?
            )));
        }
        return Ok(v);
    }
    view_of(st, name, client, job)
}

/// The objects of `rec` an audit selecting `select` compares.
fn objects_for(rec: &SnapshotRecord, select: &Selection) -> Vec<Object> {
    rec.objects
        .iter()
        .filter(|o| match &o.id {
            ObjectId::Package(_) => select.packages,
            ObjectId::Dpkg(_) => select.dpkg,
            ObjectId::File(p) => select.files.iter().any(|g| audit::glob_match(g, p)),
        })
        .cloned()
        .collect()
}

/// `hq audit create`: validates everything first (nothing is launched on
/// bad input), snapshots a live master, then creates the audit job.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_audit(
    st: &HqState,
    master: AuditMaster,
    dest: Vec<NodeName>,
    files: Option<Vec<String>>,
    no_packages: bool,
    dpkg: bool,
    expires_ms: Option<u64>,
    wait: Duration,
) -> Result<(JobId, String), HqError> {
    if dest.is_empty() {
        return Err(HqError::Refused("no destination relay given".into()));
    }
    for d in &dest {
        if !st.relays.contains(&Name(d.clone()))? {
            return Err(HqError::Refused(format!("unknown relay {d}")));
        }
    }
    if let Some(f) = &files {
        check_globs(f)?;
    }
    let (label, rec) = match master {
        AuditMaster::Snapshot(name) => {
            let rec = snapshot(st, &name)?
                .ok_or_else(|| HqError::Refused(format!("unknown snapshot {name}")))?;
            if dpkg && !rec.select.dpkg {
                return Err(HqError::Refused(format!(
                    "snapshot {name} was taken without --dpkg"
                )));
            }
            if !no_packages && !rec.select.packages {
                return Err(HqError::Refused(format!(
                    "snapshot {name} was taken without packages: give --no-packages"
                )));
            }
            (format!("snapshot:{name}"), rec)
        }
        AuditMaster::Client(client) => {
            home_of(st, &client)?;
            let name = format!("{client}.audit.{}", crate::proto::now_ms());
            let select = Selection {
                files: files.clone().unwrap_or_default(),
                packages: !no_packages,
                dpkg,
            };
            let v = create_snapshot(st, &client, &name, select, expires_ms, wait).await?;
            if !v.done {
                return Err(HqError::Refused(format!(
                    "master {client} did not finish its snapshot in time (job {}); nothing audited",
                    v.job
                )));
            }
            let rec = snapshot(st, &name)?
                .ok_or_else(|| HqError::Refused(format!("snapshot {name} vanished")))?;
            (client.to_string(), rec)
        }
    };
    let select = Selection {
        files: files.unwrap_or_else(|| rec.select.files.clone()),
        packages: !no_packages,
        dpkg,
    };
    let spec = AuditSpec {
        master: label,
        snapshot: rec.name.clone(),
        objects: objects_for(&rec, &select),
        select,
        objects_ref: None,
    };
    let spec = by_reference(st, spec, &rec.name).await?;
    let job = super::jobs::create(st, dest, Action::Audit(spec), expires_ms).await?;
    Ok((job, rec.name))
}

/// Moves an audit's objects out of its order: their list goes into the
/// depot as one blob (durably, before any order names it), and the order
/// carries only its hash. Relays fetch it once each and agents once per
/// process, like a package's blobs, instead of every assignment carrying
/// it. An empty list stays inline (there is nothing to fetch).
async fn by_reference(st: &HqState, spec: AuditSpec, name: &str) -> Result<AuditSpec, HqError> {
    if spec.objects.is_empty() {
        return Ok(spec);
    }
    let count = spec.objects.len();
    let (spec, blob) = spec.by_reference().map_err(|e| {
        HqError::Refused(format!(
            "snapshot {name} holds {count} objects: {e}: narrow --files"
        ))
    })?;
    let Some(r) = spec.objects_ref else {
        return Ok(spec);
    };
    let depot = st.depot.clone();
    tokio::task::spawn_blocking(move || depot.put(&r.hash, &blob))
        .await
        .map_err(|e| HqError::Refused(format!("depot task: {e}")))?
        .map_err(|e| HqError::Refused(format!("cannot store the object list in the depot: {e}")))?;
    info!(snapshot = name, objects = count, bytes = r.bytes, list = %r.hash.short(), "audit object list in the depot");
    Ok(spec)
}

/// How one leaf of an audit reads.
fn client_of(client: NodeName, l: LeafRecord) -> AuditClient {
    let (state, differences, reason) = match (l.state, l.audit) {
        (LeafState::Succeeded, Some(AuditOutcome::Differences(d))) if !d.is_empty() => (
            "non_compliant",
            d.into_iter()
                .map(|d| DifferenceView {
                    object: d.object.to_string(),
                    kind: d.kind.as_str().into(),
                    master: d.master,
                    target: d.target,
                })
                .collect(),
            None,
        ),
        (LeafState::Succeeded, _) => ("compliant", vec![], None),
        (s, _) if s.is_final() => (
            "error",
            vec![],
            Some(l.reason.unwrap_or_else(|| s.as_str().to_string())),
        ),
        _ => ("pending", vec![], None),
    };
    AuditClient {
        client,
        relay: l.relay,
        state: state.into(),
        differences,
        reason,
    }
}

fn add(t: &mut AuditTotals, state: &str) {
    match state {
        "compliant" => t.compliant += 1,
        "non_compliant" => t.non_compliant += 1,
        "error" => t.error += 1,
        _ => t.pending += 1,
    }
}

/// `hq audit status`.
pub(crate) fn status(st: &HqState, audit: JobId) -> Result<AuditStatusView, HqError> {
    let rec: JobRecord = st
        .jobs
        .get(&JobKey(audit))?
        .ok_or_else(|| HqError::Refused(format!("unknown audit {audit}")))?;
    let Action::Audit(spec) = &rec.action else {
        return Err(HqError::Refused(format!(
            "unknown audit {audit}: job {audit} is not an audit"
        )));
    };
    let mut totals = AuditTotals::default();
    let mut per_relay: BTreeMap<NodeName, AuditTotals> = BTreeMap::new();
    let mut clients = Vec::new();
    for (client, l) in super::jobs::load_leaves(st, audit)? {
        let c = client_of(client, l);
        add(&mut totals, &c.state);
        add(per_relay.entry(c.relay.clone()).or_default(), &c.state);
        clients.push(c);
    }
    Ok(AuditStatusView {
        audit,
        master: spec.master.clone(),
        done: rec.awaiting.is_empty() && totals.pending == 0,
        totals,
        relays: per_relay
            .into_iter()
            .map(|(relay, totals)| AuditRelayTotals { relay, totals })
            .collect(),
        clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::audit::{DiffKind, Difference};
    use crate::proto::Attempt;

    fn leaf(state: LeafState, audit: Option<AuditOutcome>) -> LeafRecord {
        LeafRecord {
            state,
            audit,
            reason: None,
            ..LeafRecord::pending(NodeName::new("r1").unwrap(), Attempt(1), 0)
        }
    }

    #[test]
    fn leaf_states_read_as_audit_states() {
        let d = Difference {
            object: ObjectId::Package("tool".into()),
            kind: DiffKind::Missing,
            master: Some("1.0".into()),
            target: None,
        };
        let c = |l| client_of(NodeName::new("c1").unwrap(), l).state;
        assert_eq!(c(leaf(LeafState::Succeeded, None)), "compliant");
        assert_eq!(
            c(leaf(
                LeafState::Succeeded,
                Some(AuditOutcome::Differences(vec![d]))
            )),
            "non_compliant"
        );
        assert_eq!(c(leaf(LeafState::Failed, None)), "error");
        assert_eq!(c(leaf(LeafState::Expired, None)), "error");
        assert_eq!(c(leaf(LeafState::Delivered, None)), "pending");
        assert_eq!(c(leaf(LeafState::Pending, None)), "pending");
    }
}
