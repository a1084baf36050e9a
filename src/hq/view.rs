//! Answers built from HQ's own store: job status (filtered), progress
//! counts, the job list, the tree. Reads only; never writes.

use super::counters::JobCounts;
use super::jobs::JobRecord;
use super::{HqError, HqState, RelayRecord};
use crate::proto::{
    Action, ClientStatus, JobId, JobProgress, JobStatus, JobSummary, LeafState, NodeName,
    RelayTotals, RelayView, Totals, TreeView,
};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, JobPrefix, Name};
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
        Action::Install(i) => format!("install {}@{}", i.name, i.version),
        Action::Remove(r) => format!("remove {}", r.name),
        Action::Audit(a) => format!("audit against {}", a.master),
        Action::Snapshot(s) => format!("snapshot {}", s.name),
        Action::Sync(s) => format!("sync {} (audit {})", s.package.name, s.audit),
        Action::Batch(b) if b.label.is_empty() => format!("batch of {} jobs", b.jobs.len()),
        Action::Batch(b) => format!("batch of {} jobs: {}", b.jobs.len(), b.label),
    }
}

fn job_record(st: &HqState, job: JobId) -> Result<JobRecord, HqError> {
    st.jobs
        .get(&JobKey(job))?
        .ok_or_else(|| super::retention::missing(st, job))
}

/// A canceled job is done; otherwise done when every destination reported
/// its targets and no leaf is open.
pub(crate) fn is_done(rec: &JobRecord, totals: &Totals) -> bool {
    rec.canceled_at_ms.is_some() || (rec.awaiting.is_empty() && totals.open() == 0)
}

/// The job's state for `job status --json`: `active`, `paused` (while
/// paused and not over), `canceled` or `done`.
pub(crate) fn job_state(canceled: bool, done: bool, paused: bool) -> &'static str {
    match (canceled, done, paused) {
        (true, _, _) => "canceled",
        (false, true, _) => "done",
        (false, false, true) => "paused",
        (false, false, false) => "active",
    }
}

/// Leaves per state of a job, from the in-memory counters (counted from the
/// store the first time).
pub(crate) fn totals(st: &HqState, job: JobId) -> Result<Totals, HqError> {
    Ok(counts(st, job)?.totals)
}

/// Leaves per state of a job, in all and per home relay, from the
/// in-memory counters (counted from the store the first time).
pub(crate) fn counts(st: &HqState, job: JobId) -> Result<JobCounts, HqError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    counts_held(st, job)
}

/// [`counts`] for a caller that holds HQ's write lock.
pub(crate) fn counts_held(st: &HqState, job: JobId) -> Result<JobCounts, HqError> {
    st.counters.get_or_count(job, || {
        let mut t = JobCounts::default();
        for r in st.leaves.scan_prefix(&JobPrefix(job)) {
            let l = r?.1;
            t.add(l.state, &l.relay);
        }
        Ok(t)
    })
}

/// Whether every leaf of the job's latest attempt is final, cheaply.
pub(crate) fn is_job_done(st: &HqState, job: JobId) -> Result<bool, HqError> {
    let rec = job_record(st, job)?;
    if let Some(b) = super::batch::children(&rec) {
        return super::batch::is_done(st, &rec, b);
    }
    Ok(is_done(&rec, &totals(st, job)?))
}

/// Which leaves `job status` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Only these states (empty: all).
    pub states: Vec<LeafState>,
    /// Only leaves whose home is this relay.
    pub relay: Option<NodeName>,
    /// At most this many leaves of each state.
    pub limit: Option<u64>,
}

impl Filter {
    /// Whether a leaf in `state` at `relay` matches.
    pub fn matches(&self, state: LeafState, relay: &NodeName) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && self.relay.as_ref().is_none_or(|r| r == relay)
    }
}

/// One job in full (every leaf).
pub(crate) fn status(st: &HqState, job: JobId) -> Result<JobStatus, HqError> {
    status_of(st, job, &Filter::default(), None)
}

/// One job: totals of every leaf; per relay (only the filter's relay, if
/// any); the leaves that match, at most `limit` of each state and, with
/// `page`, at most that many in all (`next` then names the last one given,
/// where [`status_after`] goes on).
pub(crate) fn status_of(
    st: &HqState,
    job: JobId,
    f: &Filter,
    page: Option<u64>,
) -> Result<JobStatus, HqError> {
    let rec = job_record(st, job)?;
    if let Some(b) = super::batch::children(&rec) {
        let b = b.clone();
        return super::batch::status(st, rec, &b, f);
    }
    let page = page.map(|p| p.max(1));
    let mut totals = Totals::default();
    let mut per_relay: BTreeMap<NodeName, Totals> = BTreeMap::new();
    let mut clients = Vec::new();
    let mut next = None;
    let mut shown = Totals::default();
    let mut matched = 0;
    let mut last_change_ms = rec.created_at_ms;
    for r in st.leaves.scan_prefix(&JobPrefix(job)) {
        let (JobClient(_, client), l) = r?;
        totals.add(l.state);
        last_change_ms = last_change_ms.max(l.at_ms);
        if f.relay.as_ref().is_none_or(|r| *r == l.relay) {
            per_relay.entry(l.relay.clone()).or_default().add(l.state);
        }
        if !f.matches(l.state, &l.relay) {
            continue;
        }
        matched += 1;
        if f.limit.is_some_and(|n| shown.get(l.state) >= n) {
            continue;
        }
        if page.is_some_and(|p| clients.len() as u64 >= p) {
            if next.is_none() {
                next = clients.last().map(|c: &ClientStatus| c.client.clone());
            }
            continue;
        }
        shown.add(l.state);
        clients.push(client_status(client, l));
    }
    let relays = per_relay
        .into_iter()
        .map(|(relay, totals)| RelayTotals { relay, totals })
        .collect();
    let mut s = header(rec, job, totals, relays, last_change_ms);
    s.clients = clients;
    s.matched = matched;
    s.next = next;
    Ok(s)
}

/// A page after the first: at most `page` leaves that match `f` (its
/// per-state limit aside) of clients after `after`, in client order, and
/// `next` if more follow. Reads only those leaves; totals, per relay and
/// `matched` are left empty (the first page has them).
pub(crate) fn status_after(
    st: &HqState,
    job: JobId,
    f: &Filter,
    after: &NodeName,
    page: u64,
) -> Result<JobStatus, HqError> {
    let rec = job_record(st, job)?;
    let mut clients: Vec<ClientStatus> = Vec::new();
    let mut next = None;
    for r in st.leaves.range_from(&JobClient(job, after.clone())) {
        let (JobClient(j, client), l) = r?;
        if j != job {
            break;
        }
        if client == *after || !f.matches(l.state, &l.relay) {
            continue;
        }
        if clients.len() as u64 >= page.max(1) {
            next = clients.last().map(|c| c.client.clone());
            break;
        }
        clients.push(client_status(client, l));
    }
    let created = rec.created_at_ms;
    let mut s = header(rec, job, Totals::default(), Vec::new(), created);
    s.clients = clients;
    s.next = next;
    Ok(s)
}

/// A status with the job record's fields and no leaves.
fn header(
    rec: JobRecord,
    job: JobId,
    totals: Totals,
    relays: Vec<RelayTotals>,
    last_change_ms: u64,
) -> JobStatus {
    let done = is_done(&rec, &totals);
    JobStatus {
        job,
        attempt: rec.attempt,
        done,
        state: super::rollout::state_of(&rec, done).into(),
        pause_reason: rec.rollout.paused.clone().filter(|_| !done),
        policy: Some(rec.rollout.policy.clone()).filter(|p| p.is_gated()),
        relays,
        totals,
        clients: Vec::new(),
        action: describe(&rec.action),
        dest: rec.dest,
        awaiting: rec.awaiting,
        created_at_ms: rec.created_at_ms,
        expires_at_ms: rec.expires_at_ms,
        last_change_ms,
        matched: 0,
        next: None,
        jobs: vec![],
    }
}

/// A job's counts from memory: no leaf is read (after the first time).
pub(crate) fn progress(st: &HqState, job: JobId) -> Result<JobProgress, HqError> {
    let rec = job_record(st, job)?;
    if let Some(b) = super::batch::children(&rec) {
        return super::batch::progress(st, &rec, b);
    }
    let c = counts(st, job)?;
    let done = is_done(&rec, &c.totals);
    Ok(JobProgress {
        job,
        attempt: rec.attempt,
        done,
        state: super::rollout::state_of(&rec, done).into(),
        pause_reason: rec.rollout.paused.clone().filter(|_| !done),
        relays: c
            .relays
            .into_iter()
            .map(|(relay, totals)| RelayTotals { relay, totals })
            .collect(),
        totals: c.totals,
        awaiting: rec.awaiting,
        created_at_ms: rec.created_at_ms,
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
        // Outputs are read with `hq job output`: a status stays small.
        output: None,
        job: None,
    }
}

/// Every job in brief.
pub(crate) fn list(st: &HqState) -> Result<Vec<JobSummary>, HqError> {
    let mut out = Vec::new();
    for r in st.jobs.scan() {
        let (_, rec) = r?;
        out.push(summary_of(st, &rec)?);
    }
    Ok(out)
}

fn summary_of(st: &HqState, rec: &JobRecord) -> Result<JobSummary, HqError> {
    let (totals, done) = match super::batch::children(rec) {
        Some(b) => (
            super::batch::totals(st, b)?,
            super::batch::is_done(st, rec, b)?,
        ),
        None => {
            let t = totals(st, rec.job)?;
            let done = is_done(rec, &t);
            (t, done)
        }
    };
    Ok(JobSummary {
        job: rec.job,
        attempt: rec.attempt,
        done,
        state: super::rollout::state_of(rec, done).into(),
        repeat: super::repeat::link(st, rec.repeat),
        action: describe(&rec.action),
        dest: rec.dest.clone(),
        totals,
        created_at_ms: rec.created_at_ms,
    })
}

/// One job in brief.
pub(crate) fn summary(st: &HqState, job: JobId) -> Result<JobSummary, HqError> {
    summary_of(st, &job_record(st, job)?)
}

/// How long a relay that went down (or that HQ has not seen since HQ
/// restarted) is shown as `reconnecting` before `disconnected`.
pub(crate) const GRACE_MS: u64 = 30_000;

/// A relay's state for `hq tree`, from its own session, the sessions above
/// it, and how long ago that last changed (or HQ started).
pub(crate) fn relay_state(connected: bool, path_down: bool, quiet_ms: u64) -> &'static str {
    match (connected, path_down) {
        (true, false) => "connected",
        _ if quiet_ms < GRACE_MS => "reconnecting",
        (true, true) => "unreachable",
        (false, _) => "disconnected",
    }
}

/// The tree as HQ knows it.
pub(crate) fn tree(st: &HqState) -> Result<TreeView, HqError> {
    // (clients, online) per home relay.
    let mut per_relay: BTreeMap<NodeName, (u64, u64)> = BTreeMap::new();
    let (mut total, mut online) = (0, 0);
    for r in st.clients.scan() {
        let (_, c) = r?;
        let e = per_relay.entry(c.relay).or_default();
        e.0 += 1;
        e.1 += c.online as u64;
        total += 1;
        online += c.online as u64;
    }
    let mut recs: BTreeMap<NodeName, RelayRecord> = BTreeMap::new();
    for r in st.relays.scan() {
        let (k, rec) = r?;
        let Name(name) = k;
        recs.insert(name, rec);
    }
    let now = crate::proto::now_ms();
    let mut relays = Vec::new();
    for (name, rec) in &recs {
        let path_down = crate::rules::ancestors(name, |r| recs.get(r).map(|x| x.parent.clone()))
            .iter()
            .any(|a| recs.get(a).is_some_and(|x| !x.connected));
        let state = relay_state(
            rec.connected,
            path_down,
            now.saturating_sub(rec.last_seen_ms.max(st.started_at_ms)),
        );
        let (clients, up) = per_relay.get(name).copied().unwrap_or_default();
        relays.push(RelayView {
            clients,
            online: up,
            offline: clients - up,
            relay: name.clone(),
            parent: rec.parent.clone(),
            connected: rec.connected && !path_down,
            last_seen_ms: rec.last_seen_ms,
            state: state.into(),
        });
    }
    Ok(TreeView {
        hq: st.me.clone(),
        relays,
        clients: total,
        online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states() {
        assert_eq!(job_state(false, false, false), "active");
        assert_eq!(job_state(false, false, true), "paused");
        assert_eq!(job_state(false, true, false), "done");
        assert_eq!(job_state(false, true, true), "done");
        assert_eq!(job_state(true, true, false), "canceled");
        assert_eq!(job_state(true, false, true), "canceled");
    }

    #[test]
    fn relay_states() {
        assert_eq!(relay_state(true, false, 0), "connected");
        assert_eq!(relay_state(true, false, 10 * GRACE_MS), "connected");
        assert_eq!(relay_state(false, false, 1_000), "reconnecting");
        assert_eq!(relay_state(false, false, GRACE_MS), "disconnected");
        assert_eq!(relay_state(true, true, 1_000), "reconnecting");
        assert_eq!(relay_state(true, true, GRACE_MS), "unreachable");
        assert_eq!(relay_state(false, true, GRACE_MS), "disconnected");
    }
}
