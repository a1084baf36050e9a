//! How answers are shown: readable tables by default, JSON with `--json`.

use crate::proto::{JobStatus, JobSummary, LeafState, Totals, TreeView};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

/// "3 succeeded, 1 failed" (non-zero counts only).
pub fn totals_line(t: &Totals) -> String {
    let parts: Vec<String> = LeafState::ALL
        .iter()
        .filter(|s| t.get(**s) > 0)
        .map(|s| format!("{} {}", t.get(*s), s.as_str()))
        .collect();
    if parts.is_empty() {
        "no leaves yet".into()
    } else {
        parts.join(", ")
    }
}

pub(crate) fn ago(ms: u64) -> String {
    let now = crate::proto::now_ms();
    if ms == 0 {
        return "never".into();
    }
    let secs = now.saturating_sub(ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}

/// One job in full. `all_clients` lists every leaf; otherwise only those not succeeded.
/// A job's state for people: canceled, done or in progress.
fn human_state(done: bool, state: &str) -> &'static str {
    match (state, done) {
        ("canceled", _) => "canceled",
        (_, true) => "done",
        _ => "in progress",
    }
}

/// What `hq job cancel` did, for people.
pub fn canceled(r: &crate::proto::CancelResult) -> String {
    format!("job {} canceled: {} leaves canceled\n", r.job, r.canceled)
}

pub fn status(s: &JobStatus, all_clients: bool) -> String {
    let mut out = format!(
        "job {}  attempt {}  {}  {}\n",
        s.job,
        s.attempt,
        human_state(s.done, &s.state),
        s.action
    );
    out += &format!(
        "dest: {}    leaves: {}  ({})\n",
        s.dest
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        s.totals.total(),
        totals_line(&s.totals)
    );
    if !s.awaiting.is_empty() {
        out += &format!(
            "awaiting target sets from: {}\n",
            s.awaiting
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut rt = table(&[
        "relay",
        "total",
        "succeeded",
        "failed",
        "timed out",
        "open",
        "other",
    ]);
    for r in &s.relays {
        let t = &r.totals;
        rt.add_row(vec![
            r.relay.to_string(),
            t.total().to_string(),
            t.succeeded.to_string(),
            t.failed.to_string(),
            t.timed_out.to_string(),
            t.open().to_string(),
            (t.expired + t.canceled).to_string(),
        ]);
    }
    out += &format!("{rt}\n");
    let shown: Vec<_> = s
        .clients
        .iter()
        .filter(|c| all_clients || c.state != LeafState::Succeeded)
        .collect();
    if !shown.is_empty() {
        let mut ct = table(&["client", "relay", "attempt", "state", "exit", "reason"]);
        for c in &shown {
            ct.add_row(vec![
                c.client.to_string(),
                c.relay.to_string(),
                c.attempt.to_string(),
                c.state.as_str().to_string(),
                c.exit_code.map(|e| e.to_string()).unwrap_or_default(),
                c.reason.clone().unwrap_or_default(),
            ]);
        }
        out += &format!("{ct}\n");
    }
    if !all_clients && shown.len() < s.clients.len() {
        out += &format!(
            "({} succeeded leaves not listed; --clients lists all)\n",
            s.clients.len() - shown.len()
        );
    }
    out
}

/// All jobs in brief.
pub fn list(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let mut t = table(&["job", "attempt", "state", "leaves", "action", "dest"]);
    for j in jobs {
        t.add_row(vec![
            j.job.to_string(),
            j.attempt.to_string(),
            human_state(j.done, &j.state).to_string(),
            totals_line(&j.totals),
            j.action.clone(),
            j.dest
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    format!("{t}\n")
}

/// The tree.
pub fn tree(v: &TreeView) -> String {
    let mut t = table(&["relay", "parent", "state", "since", "clients"]);
    for r in &v.relays {
        t.add_row(vec![
            r.relay.to_string(),
            r.parent.to_string(),
            r.state.clone(),
            ago(r.last_seen_ms),
            r.clients.to_string(),
        ]);
    }
    format!(
        "hq {}: {} relays, {} clients\n{t}\n",
        v.hq,
        v.relays.len(),
        v.clients
    )
}
