//! The dashboard's audit and batch sections: an audit's differences per
//! differing client with its sync button, and a batch's child jobs.
//!
//! Pure markup from answers HQ already gave (maud escapes every value);
//! never asks HQ anything. The button posts to `/jobs/ID/sync`, checked for
//! the session's CSRF token like every action.

use crate::proto::{AuditStatusView, JobStatus};
use maud::{html, Markup};

/// The sync button of an audit's page.
pub fn sync_button(job: crate::proto::JobId, csrf: &str) -> Markup {
    html! {
        form.action method="post" action={ "/jobs/" (job) "/sync" } data-confirm="Sync every differing target with the master?" {
            input type="hidden" name="csrf" value=(csrf);
            button #sync type="submit" { "Sync" }
        }
    }
}

/// An audit's differences, per differing client.
pub fn differences(a: &AuditStatusView) -> Markup {
    let t = &a.totals;
    html! {
        p {
            "against " code { (a.master) } ": "
            (t.compliant) " compliant, " (t.non_compliant) " non-compliant, "
            (t.error) " error, " (t.pending) " pending"
        }
        @if a.clients.iter().all(|c| c.state == "compliant" || c.state == "pending") {
            p.empty { "No difference." }
        } @else {
            table.differences {
                thead { tr { th { "client" } th { "relay" } th { "state" } th { "object" } th { "kind" } th { "master" } th { "target" } } }
                tbody {
                    @for c in a.clients.iter().filter(|c| c.state != "compliant" && c.state != "pending") {
                        @if c.differences.is_empty() {
                            tr id={ "diff-" (c.client.as_str()) } data-state=(c.state) {
                                td { (c.client.as_str()) } td { (c.relay.as_str()) } td { (c.state) }
                                td colspan="4" { @if let Some(r) = &c.reason { (r) } }
                            }
                        }
                        @for (i, d) in c.differences.iter().enumerate() {
                            tr id={ "diff-" (c.client.as_str()) "-" (i) } data-state=(c.state) {
                                td { (c.client.as_str()) } td { (c.relay.as_str()) } td { (c.state) }
                                td { code { (d.object) } } td { (d.kind) }
                                td { @if let Some(m) = &d.master { (m) } }
                                td { @if let Some(t) = &d.target { (t) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A batch's child jobs, each linking to its page.
pub fn children(s: &JobStatus) -> Markup {
    html! {
        table.children {
            thead { tr { th { "job" } th { "state" } th { "leaves" } th { "ok" } th { "failed" } th { "action" } } }
            tbody {
                @for j in &s.jobs {
                    tr id={ "child-" (j.job) } data-state=(j.state) {
                        td { a href={ "/jobs/" (j.job) } { (j.job) } }
                        td { (j.state) }
                        td.num { (j.totals.total()) }
                        td.num { (j.totals.succeeded) }
                        td.num { (j.totals.failed + j.totals.timed_out) }
                        td { code { (j.action) } }
                    }
                }
            }
        }
    }
}
