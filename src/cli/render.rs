//! How answers are shown: readable tables by default, JSON with `--json`.

use crate::proto::{JobStatus, JobSummary, LeafOutputView, LeafState, Totals, TreeView};
use comfy_table::{presets::ASCII_BORDERS_ONLY_CONDENSED, presets::UTF8_BORDERS_ONLY, Table};
use std::io::IsTerminal;

/// A table: box-drawing borders on a terminal, plain ASCII when stdout is
/// a pipe or a file (what `grep`, `awk` and old terminals expect).
pub(crate) fn table(header: &[&str]) -> Table {
    table_for(header, std::io::stdout().is_terminal())
}

/// [`table`] for a given kind of output.
pub(crate) fn table_for(header: &[&str], terminal: bool) -> Table {
    let mut t = Table::new();
    if terminal {
        t.load_preset(UTF8_BORDERS_ONLY);
    } else {
        t.load_preset(ASCII_BORDERS_ONLY_CONDENSED)
            .force_no_tty()
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    }
    t.set_header(header.to_vec());
    t
}

/// "1 leaf", "3 leaves": a count and the noun that agrees with it.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "1s 250ms", "2m 5s": a span of milliseconds (to the second past a minute).
pub fn span(ms: u64) -> String {
    let ms = if ms >= 60_000 { ms / 1000 * 1000 } else { ms };
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
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

/// Leaves listed per state by default.
pub const DEFAULT_LIMIT: u64 = 20;

/// Which leaves a status lists: these states (in this order), at most
/// `limit` of each; `relay` says the status was narrowed to one relay.
#[derive(Clone, Debug)]
pub struct Listing {
    /// States whose leaves are listed.
    pub states: Vec<LeafState>,
    /// Leaves per state, at most.
    pub limit: u64,
    /// The status was asked for one relay only.
    pub relay: bool,
}

impl Listing {
    /// `--state` as given, or every state but succeeded (`all`: every state).
    pub fn new(states: &[LeafState], all: bool, limit: Option<u64>, relay: bool) -> Listing {
        let states = if !states.is_empty() {
            LeafState::ALL
                .into_iter()
                .filter(|s| states.contains(s))
                .collect()
        } else {
            LeafState::ALL
                .into_iter()
                .filter(|s| all || *s != LeafState::Succeeded)
                .collect()
        };
        Listing {
            states,
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            relay,
        }
    }
}

/// One job: a header with the elapsed time, the totals, a table per relay,
/// then the first leaves of each state asked for, with a count of the rest.
pub fn status(s: &JobStatus, l: &Listing) -> String {
    let now = crate::proto::now_ms();
    let elapsed = if s.done {
        s.last_change_ms.max(s.created_at_ms) - s.created_at_ms
    } else {
        now.saturating_sub(s.created_at_ms)
    };
    let mut out = format!(
        "job {}  attempt {}  {}  {}  {}\n",
        s.job,
        s.attempt,
        human_state(s.done, &s.state),
        if s.done {
            format!("took {}", span(elapsed))
        } else {
            format!("elapsed {}", span(elapsed))
        },
        s.action
    );
    out += &format!(
        "dest: {}    {}  ({})\n",
        s.dest
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        count(s.totals.total(), "leaf", "leaves"),
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
    if !s.jobs.is_empty() {
        let mut jt = table(&["job", "state", "leaves", "totals", "action"]);
        for j in &s.jobs {
            jt.add_row(vec![
                j.job.to_string(),
                human_state(j.done, &j.state).to_string(),
                j.totals.total().to_string(),
                totals_line(&j.totals),
                j.action.clone(),
            ]);
        }
        out += &format!("{jt}\n");
    }
    let mut shown = Totals::default();
    let mut rows: Vec<_> = s
        .clients
        .iter()
        .filter(|c| l.states.contains(&c.state))
        .filter(|c| {
            let keep = shown.get(c.state) < l.limit;
            if keep {
                shown.add(c.state);
            }
            keep
        })
        .collect();
    rows.sort_by_key(|c| LeafState::ALL.iter().position(|s| *s == c.state));
    if !rows.is_empty() {
        let mut ct = table(&["client", "relay", "attempt", "state", "exit", "reason"]);
        for c in &rows {
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
    // The rest of each state asked for: the relay's (or the job's) count
    // of that state, less what is listed.
    let pool = match (l.relay, s.relays.as_slice()) {
        (true, [one]) => one.totals.clone(),
        (true, _) => Totals::default(),
        (false, _) => s.totals.clone(),
    };
    let rest: Vec<String> = l
        .states
        .iter()
        .filter_map(|st| {
            let more = pool.get(*st).saturating_sub(shown.get(*st));
            (more > 0).then(|| format!("{more} {}", st.as_str()))
        })
        .collect();
    if !rest.is_empty() {
        out += &format!(
            "not listed: {} (--state STATE --limit N lists them; --json lists all)\n",
            rest.join(", ")
        );
    }
    out
}

/// What `hq job rerun` says: "job 1 attempt 2: 2 leaves targeted".
pub fn rerun(r: &crate::proto::RerunResult) -> String {
    if r.targets == 0 {
        return format!(
            "job {} attempt {}: no failed leaves, nothing to rerun\n",
            r.job, r.attempt
        );
    }
    format!(
        "job {} attempt {}: {} targeted\n",
        r.job,
        r.attempt,
        count(r.targets, "leaf", "leaves")
    )
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
        "hq {}: {}, {}\n{t}\n",
        v.hq,
        count(v.relays.len() as u64, "relay", "relays"),
        count(v.clients, "client", "clients")
    )
}

/// A unix-ms time as RFC 3339 (UTC, to the millisecond).
pub fn at(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// `hq job output`: the attempt, exit code and timings, then stdout and
/// stderr apart, each under its own heading.
pub fn output(o: &LeafOutputView) -> String {
    let mut out = format!(
        "job {} client {} (relay {})  attempt {}: {}",
        o.job,
        o.client,
        o.relay,
        o.attempt,
        o.state.as_str()
    );
    if let Some(c) = o.exit_code {
        out += &format!(", exit code {c}");
    }
    out += "\n";
    if let Some(r) = &o.reason {
        out += &format!("reason:   {r}\n");
    }
    if (o.latest_attempt, o.latest_state) != (o.attempt, o.state) {
        out += &format!(
            "now:      attempt {} is {}\n",
            o.latest_attempt,
            o.latest_state.as_str()
        );
    }
    if let Some(s) = o.started_at_ms {
        out += &format!("started:  {}\n", at(s));
    }
    if let Some(f) = o.finished_at_ms {
        out += &format!("finished: {}\n", at(f));
    }
    if let Some(d) = o.duration_ms {
        out += &format!(
            "duration: {}\n",
            humantime::format_duration(std::time::Duration::from_millis(d))
        );
    }
    let stream = |name: &str, text: &str, total: u64| {
        let kept = text.len() as u64;
        let head = if total > kept {
            format!("--- {name} (last {kept} of {total} bytes) ---\n")
        } else {
            format!("--- {name} ({}) ---\n", count(total, "byte", "bytes"))
        };
        let mut s = head + text;
        if !text.is_empty() && !text.ends_with('\n') {
            s += "\n";
        }
        s
    };
    if let Some(mixed) = &o.output {
        out += &stream(
            "stdout and stderr mixed (the agent is too old to keep them apart)",
            mixed,
            mixed.len() as u64,
        );
    } else {
        out += &stream("stdout", &o.stdout, o.stdout_bytes);
        out += &stream("stderr", &o.stderr, o.stderr_bytes);
    }
    out
}
