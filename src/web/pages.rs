//! The dashboard's HTML, rendered on the server with maud: whole pages and
//! the fragments that server-sent events replace in place (by element id).
//!
//! Pure: turns answers HQ already gave into markup (maud escapes every
//! value); never asks HQ anything and never sees a session id.

use crate::proto::{
    ClientStatus, JobStatus, JobSummary, LeafOutputView, LeafState, RelayView, Totals, TreeView,
};

/// Failed leaves' outputs, by client name.
pub type Outputs = std::collections::BTreeMap<String, LeafOutputView>;
use maud::{html, Markup, DOCTYPE};

/// What `/` shows.
pub struct Home {
    pub tree: TreeView,
    pub jobs: Vec<JobSummary>,
    pub clients: Vec<crate::proto::ClientEntry>,
    pub now_ms: u64,
}

/// How many jobs `/` lists, newest first.
pub const RECENT_JOBS: usize = 25;

fn layout(title: &str, csrf: &str, events: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(csrf);
                title { (title) " · relaytree" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body data-events=(events) {
                header {
                    a.brand href="/" { "relaytree" }
                    span #live .live { "connecting…" }
                    form.logout method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The page shown without a session: no fleet data at all.
pub fn signed_out() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "relaytree: sign in" } link rel="stylesheet" href="/assets/style.css"; }
            body { main {
                h1 { "Not signed in" }
                p { "Run " code { "hq web login" } " and open the link it prints (each link works once)." }
            } }
        }
    }
}

/// A page for an error that shows no fleet data.
pub fn problem(title: &str, detail: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } link rel="stylesheet" href="/assets/style.css"; }
            body { main { h1 { (title) } p { (detail) } p { a href="/" { "back" } } } }
        }
    }
}

/// After a login link: a same-site hop to `/` (so the Strict cookie is sent
/// even when the link was opened from another site).
pub fn signed_in() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; meta http-equiv="refresh" content="0;url=/"; title { "relaytree" } }
            body { p { "Signed in. " a href="/" { "Open the dashboard" } } }
        }
    }
}

/// `/`.
pub fn home(h: &Home, csrf: &str) -> Markup {
    let body = html! {
        section {
            h2 { "Tree " small { "(HQ " (h.tree.hq.as_str()) ")" } }
            div #tree { (tree(&h.tree, h.now_ms)) }
        }
        section {
            h2 { "Recent jobs" }
            div #jobs { (jobs(&h.jobs, h.now_ms)) }
        }
        section {
            h2 { "Clients" }
            input #client-filter type="search" placeholder="filter by client, relay, state or label (role=web)" autocomplete="off";
            div #clients { (clients(&h.clients, h.now_ms)) }
        }
    };
    layout("fleet", csrf, "/events", body)
}

/// The fragments of `/` that live updates replace.
pub fn home_fragments(h: &Home) -> Vec<(&'static str, String)> {
    vec![
        ("tree", tree(&h.tree, h.now_ms).into_string()),
        ("jobs", jobs(&h.jobs, h.now_ms).into_string()),
        ("clients", clients(&h.clients, h.now_ms).into_string()),
    ]
}

/// Relays in tree order (depth first from HQ, by name), with their depth.
/// Relays whose parent is unknown are shown at the top level.
pub fn tree_order(t: &TreeView) -> Vec<(usize, &RelayView)> {
    let known: std::collections::BTreeSet<&str> =
        t.relays.iter().map(|r| r.relay.as_str()).collect();
    let mut roots: Vec<&RelayView> = t
        .relays
        .iter()
        .filter(|r| r.parent == t.hq || !known.contains(r.parent.as_str()))
        .collect();
    roots.sort_by(|a, b| a.relay.cmp(&b.relay));
    let mut out = Vec::new();
    let mut stack: Vec<(usize, &RelayView)> = roots.into_iter().rev().map(|r| (0, r)).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some((d, r)) = stack.pop() {
        if !seen.insert(r.relay.as_str()) {
            continue;
        }
        out.push((d, r));
        let mut kids: Vec<&RelayView> = t
            .relays
            .iter()
            .filter(|c| c.parent == r.relay && c.relay != r.relay)
            .collect();
        kids.sort_by(|a, b| b.relay.cmp(&a.relay));
        stack.extend(kids.into_iter().map(|c| (d + 1, c)));
    }
    // A cycle (never expected) must not hide relays.
    for r in &t.relays {
        if !seen.contains(r.relay.as_str()) {
            out.push((0, r));
        }
    }
    out
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3_599 => format!("{}m ago", s / 60),
        3_600..=86_399 => format!("{}h ago", s / 3_600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn tree(t: &TreeView, now_ms: u64) -> Markup {
    html! {
        @if t.relays.is_empty() {
            p.empty { "No relay has connected yet." }
        } @else {
            table.tree {
                thead { tr {
                    th { "relay" } th { "state" } th { "since" } th { "clients" } th { "online" } th { "offline" }
                } }
                tbody {
                    @for (depth, r) in tree_order(t) {
                        tr id={ "relay-" (r.relay.as_str()) } data-state=(r.state) {
                            td class={ "d" (depth.min(8)) } {
                                @if depth > 0 { span.branch { "└ " } }
                                (r.relay.as_str())
                            }
                            td { span class={ "pill " (r.state) } { (r.state) } }
                            td { (ago(now_ms, r.last_seen_ms)) }
                            td.num { (r.clients) }
                            td.num.online { (r.online) }
                            td.num.offline { (r.offline) }
                        }
                    }
                }
            }
            p.note { (t.clients) " clients in all, " (t.online) " online (counted by home relay)." }
        }
    }
}

fn totals_cells(t: &Totals) -> Markup {
    html! {
        td.num.succeeded { (t.succeeded) }
        td.num.failed { (t.failed + t.timed_out) }
        td.num.open { (t.open()) }
        td.num.other { (t.expired + t.canceled) }
    }
}

fn jobs(list: &[JobSummary], now_ms: u64) -> Markup {
    let mut recent: Vec<&JobSummary> = list.iter().collect();
    recent.sort_by_key(|j| std::cmp::Reverse(j.job));
    recent.truncate(RECENT_JOBS);
    html! {
        @if recent.is_empty() {
            p.empty { "No jobs yet." }
        } @else {
            table.jobs {
                thead { tr {
                    th { "job" } th { "action" } th { "dest" } th { "attempt" } th { "created" }
                    th { "ok" } th { "failed" } th { "open" } th { "expired/canceled" } th { "" }
                } }
                tbody {
                    @for j in recent {
                        tr id={ "job-" (j.job) } {
                            td { a href={ "/jobs/" (j.job) } { (j.job) } }
                            td title=(j.action) { code { (short(&j.action, 90)) } }
                            td { (j.dest.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")) }
                            td.num { (j.attempt.0) }
                            td { (ago(now_ms, j.created_at_ms)) }
                            (totals_cells(&j.totals))
                            td { (job_state(&j.state, j.done)) }
                        }
                    }
                }
            }
        }
    }
}

/// A job's state as a pill: `active`, `paused`, `canceled` or `done` (HQ's word; from
/// `done` alone when HQ gave none).
fn job_state(state: &str, done: bool) -> Markup {
    let word = match state {
        "" if done => "done",
        "" => "active",
        s => s,
    };
    html! { span class={ "pill job-state " (word) } { (word) } }
}

fn clients(list: &[crate::proto::ClientEntry], now_ms: u64) -> Markup {
    html! {
        @if list.is_empty() {
            p.empty { "No client known yet." }
        } @else {
            table.clients {
                thead { tr {
                    th { "client" } th { "home relay" } th { "state" } th { "last seen" } th { "labels" } th { "version" }
                } }
                tbody {
                    @for c in list {
                        @let relay = c.relay.as_ref().map_or("", |r| r.as_str());
                        @let labels = crate::proto::labels::labels_text(&c.labels);
                        tr id={ "client-" (c.client.as_str()) } data-name=(c.client.as_str()) data-relay=(relay)
                            data-state=(c.state) data-labels=(labels) {
                            td { (c.client.as_str()) }
                            td { (relay) }
                            td { span class={ "pill " (c.state) } { (c.state) } }
                            td {
                                @if c.state == "online" { "now" }
                                @else if c.last_seen_ms == 0 { "never" }
                                @else { (ago(now_ms, c.last_seen_ms)) }
                            }
                            td { code { (labels) } }
                            td { (c.version.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// At most `max` characters of `s`, an ellipsis when cut.
pub fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Failed leaves first, then the others still open, then the rest; by name within.
pub fn leaf_rank(s: LeafState) -> u8 {
    match s {
        LeafState::Failed | LeafState::TimedOut => 0,
        LeafState::Expired | LeafState::Canceled => 1,
        LeafState::Running | LeafState::Delivered | LeafState::Pending => 2,
        LeafState::Succeeded => 3,
    }
}

/// The leaves in the order the job page shows them.
pub fn leaf_order(leaves: &[ClientStatus]) -> Vec<&ClientStatus> {
    let mut v: Vec<&ClientStatus> = leaves.iter().collect();
    v.sort_by(|a, b| {
        (leaf_rank(a.state), a.client.as_str()).cmp(&(leaf_rank(b.state), b.client.as_str()))
    });
    v
}

/// Which buttons a job page offers.
pub struct Actions {
    /// HQ answers pause and resume.
    pub pause: bool,
    /// The job is an audit: its differences and a sync button.
    pub audit: Option<crate::proto::AuditStatusView>,
}

/// `/jobs/ID`.
pub fn job(s: &JobStatus, outputs: &Outputs, csrf: &str, actions: &Actions) -> Markup {
    let id = s.job;
    let body = html! {
        h1 { "Job " (id) " " small { code { (s.action) } } }
        div.actions {
            form.action method="post" action={ "/jobs/" (id) "/rerun" } {
                input type="hidden" name="csrf" value=(csrf);
                button #rerun type="submit" { "Rerun failed" }
            }
            @if actions.pause {
                form.action method="post" action={ "/jobs/" (id) "/pause" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button #pause type="submit" { "Pause" }
                }
                form.action method="post" action={ "/jobs/" (id) "/resume" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button #resume type="submit" { "Resume" }
                }
            }
            @if actions.audit.is_some() {
                (super::syncs::sync_button(id, csrf))
            }
            form.action method="post" action={ "/jobs/" (id) "/cancel" } data-confirm="Cancel this job everywhere?" {
                input type="hidden" name="csrf" value=(csrf);
                button #cancel .danger type="submit" { "Cancel" }
            }
            span #flash role="status" {}
        }
        div #summary { (summary(s)) }
        @if let Some(a) = &actions.audit {
            section { h2 { "Differences" } div #differences { (super::syncs::differences(a)) } }
        }
        @if !s.jobs.is_empty() {
            section { h2 { "Jobs of this batch" } div #children { (super::syncs::children(s)) } }
        }
        section { h2 { "Per relay" } div #relays { (per_relay(s)) } }
        section { h2 { "Leaves " small { "(failed first)" } } div #leaves { (leaves(s, outputs)) } }
    };
    layout(
        &format!("job {id}"),
        csrf,
        &format!("/jobs/{id}/events"),
        body,
    )
}

/// The fragments of `/jobs/ID` that live updates replace.
pub fn job_fragments(s: &JobStatus, outputs: &Outputs) -> Vec<(&'static str, String)> {
    vec![
        ("summary", summary(s).into_string()),
        ("relays", per_relay(s).into_string()),
        ("leaves", leaves(s, outputs).into_string()),
        ("children", super::syncs::children(s).into_string()),
    ]
}

fn summary(s: &JobStatus) -> Markup {
    let t = &s.totals;
    html! {
        p {
            "attempt " strong { (s.attempt.0) } " · "
            (job_state(&s.state, s.done))
            @if let Some(why) = &s.pause_reason {
                " " span.pause-reason { "(" (why) ")" }
            }
            " · dest " (s.dest.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "))
            @if !s.awaiting.is_empty() {
                " · awaiting " (s.awaiting.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "))
            }
        }
        p.totals {
            span.succeeded { (t.succeeded) " succeeded" } " · "
            span.failed { (t.failed) " failed" } " · "
            span.failed { (t.timed_out) " timed out" } " · "
            span.open { (t.open()) " open" } " · "
            span.other { (t.expired) " expired" } " · "
            span.other { (t.canceled) " canceled" }
        }
    }
}

fn per_relay(s: &JobStatus) -> Markup {
    html! {
        table {
            thead { tr { th { "relay" } th { "ok" } th { "failed" } th { "open" } th { "expired/canceled" } } }
            tbody {
                @for r in &s.relays {
                    tr { td { (r.relay.as_str()) } (totals_cells(&r.totals)) }
                }
            }
        }
    }
}

fn leaves(s: &JobStatus, outputs: &Outputs) -> Markup {
    html! {
        @if s.clients.is_empty() {
            p.empty { "No leaf reported yet." }
        } @else {
            table.leaves {
                thead { tr { th { "client" } th { "relay" } th { "attempt" } th { "state" } th { "exit" } th { "why" } } }
                tbody {
                    @for l in leaf_order(&s.clients) {
                        tr id={ "leaf-" (l.client.as_str()) } data-state=(l.state.as_str()) {
                            td { (l.client.as_str()) }
                            td { (l.relay.as_str()) }
                            td.num { (l.attempt.0) }
                            td { span class={ "state pill " (l.state.as_str()) } { (l.state.as_str()) } }
                            td.num { @if let Some(c) = l.exit_code { (c) } }
                            td { @if let Some(r) = &l.reason { (r) } }
                        }
                        @if leaf_rank(l.state) == 0 {
                            tr.output id={ "output-" (l.client.as_str()) } {
                                td colspan="6" {
                                    @match outputs.get(l.client.as_str()) {
                                        Some(o) if !o.stdout.is_empty() || !o.stderr.is_empty() => {
                                            @if !o.stdout.is_empty() { div.stream { "stdout" } pre.stdout { (o.stdout) } }
                                            @if !o.stderr.is_empty() { div.stream { "stderr" } pre.stderr { (o.stderr) } }
                                        }
                                        Some(o) if o.output.as_deref().is_some_and(|x| !x.is_empty()) => {
                                            pre { (o.output.as_deref().unwrap_or_default()) }
                                        }
                                        _ => {
                                            @match &l.output {
                                                Some(o) if !o.is_empty() => { pre { (o) } }
                                                _ => { span.empty { "(no output)" } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The live-update payload: `{"ID": "<html>", ...}`.
pub fn fragments_json(f: &[(&'static str, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = f
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, NodeName};

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn relay(name: &str, parent: &str) -> RelayView {
        RelayView {
            relay: n(name),
            parent: n(parent),
            connected: true,
            last_seen_ms: 0,
            state: "connected".into(),
            clients: 0,
            online: 0,
            offline: 0,
        }
    }

    #[test]
    fn the_tree_is_depth_first_by_name() {
        let t = TreeView {
            hq: n("hq"),
            relays: vec![
                relay("r2", "hq"),
                relay("r1b", "r1"),
                relay("r1", "hq"),
                relay("r1a", "r1"),
                relay("orphan", "gone"),
                relay("r1a1", "r1a"),
            ],
            clients: 0,
            online: 0,
        };
        let got: Vec<(usize, &str)> = tree_order(&t)
            .into_iter()
            .map(|(d, r)| (d, r.relay.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "orphan"),
                (0, "r1"),
                (1, "r1a"),
                (2, "r1a1"),
                (1, "r1b"),
                (0, "r2")
            ]
        );
    }

    #[test]
    fn a_cycle_hides_no_relay() {
        let t = TreeView {
            hq: n("hq"),
            relays: vec![relay("a", "b"), relay("b", "a")],
            clients: 0,
            online: 0,
        };
        assert_eq!(tree_order(&t).len(), 2);
    }

    #[test]
    fn failed_leaves_come_first() {
        let leaf = |c: &str, state| ClientStatus {
            client: n(c),
            relay: n("r"),
            attempt: Attempt(1),
            state,
            exit_code: None,
            reason: None,
            output: None,
            job: None,
        };
        let v = vec![
            leaf("a", LeafState::Succeeded),
            leaf("b", LeafState::Running),
            leaf("c", LeafState::TimedOut),
            leaf("d", LeafState::Failed),
            leaf("e", LeafState::Canceled),
        ];
        let got: Vec<&str> = leaf_order(&v).iter().map(|l| l.client.as_str()).collect();
        assert_eq!(got, vec!["c", "d", "e", "b", "a"]);
    }

    #[test]
    fn long_actions_are_cut() {
        assert_eq!(short("abc", 3), "abc");
        assert_eq!(short("abcd", 3), "abc…");
        assert_eq!(short("ééé", 2), "éé…");
    }

    #[test]
    fn ages_read_well() {
        for (ms, want) in [
            (0, "0s ago"),
            (59_999, "59s ago"),
            (60_000, "1m ago"),
            (3_600_000, "1h ago"),
            (86_400_000 * 3, "3d ago"),
        ] {
            assert_eq!(ago(ms, 0), want);
        }
        assert_eq!(ago(0, 10), "0s ago", "a clock behind is not negative");
    }

    #[test]
    fn values_are_escaped() {
        let mut s = JobStatus {
            job: crate::proto::JobId(1),
            attempt: Attempt(1),
            done: false,
            state: "active".into(),
            pause_reason: None,
            policy: None,
            totals: Totals::default(),
            relays: vec![],
            clients: vec![],
            action: "<script>alert(1)</script>".into(),
            dest: vec![],
            awaiting: vec![],
            created_at_ms: 0,
            expires_at_ms: None,
            last_change_ms: 0,
            matched: 0,
            next: None,
            jobs: vec![],
        };
        s.clients.push(ClientStatus {
            client: n("c1"),
            relay: n("r"),
            attempt: Attempt(1),
            state: LeafState::Failed,
            exit_code: Some(1),
            reason: None,
            output: Some("<b>oops</b>".into()),
            job: None,
        });
        let page = job(
            &s,
            &Outputs::new(),
            "tok",
            &Actions {
                pause: false,
                audit: None,
            },
        )
        .into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;b&gt;oops&lt;/b&gt;"));
    }
}
