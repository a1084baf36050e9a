//! Answers built from HQ's own store: job status, the job list, the tree.

use super::jobs::{load_leaves, JobRecord};
use super::{ClientRecord, HqError, HqState, RelayRecord};
use crate::proto::{
    Action, ClientStatus, JobId, JobStatus, JobSummary, NodeName, RelayTotals, RelayView, Totals,
    TreeView,
};
use crate::rules::LeafRecord;
use crate::store::keys;
use std::collections::BTreeMap;

/// A one-line description of an action.
pub(crate) fn describe(a: &Action) -> String {
    match a {
        Action::Ping => "ping".into(),
        Action::Run(r) => r
            .argv
            .iter()
            .map(|s| {
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("'{}'", s.replace('\'', "'\\''"))
                } else {
                    s.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn job_record(st: &HqState, job: JobId) -> Result<JobRecord, HqError> {
    st.jobs
        .get(&keys::job(job))?
        .ok_or_else(|| HqError::Refused(format!("no job {job}")))
}

fn is_done(rec: &JobRecord, totals: &Totals) -> bool {
    rec.awaiting.is_empty() && totals.open() == 0
}

/// One job in full.
pub(crate) fn status(st: &HqState, job: JobId) -> Result<JobStatus, HqError> {
    let rec = job_record(st, job)?;
    let leaves = load_leaves(st, job)?;
    let mut totals = Totals::default();
    let mut per_relay: BTreeMap<NodeName, Totals> = BTreeMap::new();
    let mut clients = Vec::with_capacity(leaves.len());
    for (client, l) in leaves {
        totals.add(l.state);
        per_relay.entry(l.relay.clone()).or_default().add(l.state);
        clients.push(client_status(client, l));
    }
    Ok(JobStatus {
        job,
        attempt: rec.attempt,
        done: is_done(&rec, &totals),
        relays: per_relay
            .into_iter()
            .map(|(relay, totals)| RelayTotals { relay, totals })
            .collect(),
        totals,
        clients,
        action: describe(&rec.action),
        dest: rec.dest,
        awaiting: rec.awaiting,
        created_at_ms: rec.created_at_ms,
        expires_at_ms: rec.expires_at_ms,
    })
}

fn client_status(client: NodeName, l: LeafRecord) -> ClientStatus {
    ClientStatus {
        client,
        relay: l.relay,
        attempt: l.attempt,
        state: l.state,
        exit_code: l.exit_code,
        reason: l.reason,
        output: l.output,
    }
}

/// Every job in brief.
pub(crate) fn list(st: &HqState) -> Result<Vec<JobSummary>, HqError> {
    let mut out = Vec::new();
    for r in st.jobs.scan::<JobRecord>(b"") {
        let (_, rec) = r?;
        let mut totals = Totals::default();
        for r in st.leaves.scan::<LeafRecord>(&keys::job(rec.job)) {
            totals.add(r?.1.state);
        }
        out.push(JobSummary {
            job: rec.job,
            attempt: rec.attempt,
            done: is_done(&rec, &totals),
            action: describe(&rec.action),
            dest: rec.dest.clone(),
            totals,
            created_at_ms: rec.created_at_ms,
        });
    }
    Ok(out)
}

/// The tree as HQ knows it.
pub(crate) fn tree(st: &HqState) -> Result<TreeView, HqError> {
    let mut per_relay: BTreeMap<NodeName, u64> = BTreeMap::new();
    let mut total = 0;
    for r in st.clients.scan::<ClientRecord>(b"") {
        let (_, c) = r?;
        *per_relay.entry(c.relay).or_default() += 1;
        total += 1;
    }
    let mut relays = Vec::new();
    for r in st.relays.scan::<RelayRecord>(b"") {
        let (k, rec) = r?;
        let Some(name) = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| NodeName::new(s).ok())
        else {
            continue;
        };
        relays.push(RelayView {
            clients: per_relay.get(&name).copied().unwrap_or(0),
            relay: name,
            parent: rec.parent,
            connected: rec.connected,
            last_seen_ms: rec.last_seen_ms,
        });
    }
    Ok(TreeView {
        hq: st.me.clone(),
        relays,
        clients: total,
    })
}
