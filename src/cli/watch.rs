//! Watching a job: `job wait --progress` (a live line drawn with
//! indicatif on stderr) and `job status --watch` (a redrawn status). Both
//! ask HQ for counts with `AdminRequest::Progress`, a long poll answered
//! from HQ's in-memory counters. Holds no state beyond one command.

use super::client::{AdminClient, CliError};
use super::render;
use crate::proto::{AdminRequest, AdminResponse, JobId, JobProgress};
use std::io::IsTerminal;
use std::time::Duration;
use tokio::time::Instant;

/// How long HQ may hold a progress request waiting for a change.
const POLL: Duration = Duration::from_millis(1000);
/// Progress requests are this far apart at least (a busy job changes all the time).
const MIN_GAP: Duration = Duration::from_millis(200);
/// Relays named on the progress line, at most (those lagging most).
const LAG_RELAYS: usize = 3;

/// The progress line: "412/1000 done, 3 failed · lag r2 400, r1 188".
pub fn progress_line(p: &JobProgress) -> String {
    let t = &p.totals;
    let total = t.total();
    let not_ok = t.total() - t.open() - t.succeeded;
    let mut line = format!("{}/{} done", total - t.open(), total);
    if not_ok > 0 {
        line += &format!(", {}", render::count(not_ok, "failed", "failed"));
        let parts: Vec<String> = [
            ("timed out", t.timed_out),
            ("expired", t.expired),
            ("canceled", t.canceled),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(w, n)| format!("{n} {w}"))
        .collect();
        if !parts.is_empty() {
            line += &format!(" ({})", parts.join(", "));
        }
    }
    let mut lag: Vec<(u64, &str)> = p
        .relays
        .iter()
        .filter(|r| r.totals.open() > 0)
        .map(|r| (r.totals.open(), r.relay.as_str()))
        .collect();
    lag.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    if !lag.is_empty() {
        let shown: Vec<String> = lag
            .iter()
            .take(LAG_RELAYS)
            .map(|(n, r)| format!("{r} {n}"))
            .collect();
        line += &format!(" · not final: {}", shown.join(", "));
        if lag.len() > LAG_RELAYS {
            line += &format!(" (+{} relays)", lag.len() - LAG_RELAYS);
        }
    }
    if !p.awaiting.is_empty() {
        line += &format!(
            " · awaiting targets from {}",
            p.awaiting
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(why) = paused(p) {
        line += &format!(" · paused: {why}");
    }
    line
}

/// Why the job is paused, if it is (and not over).
fn paused(p: &JobProgress) -> Option<&str> {
    (p.state == "paused").then(|| p.pause_reason.as_deref().unwrap_or("no reason given"))
}

/// The one line `job wait` prints on stderr when the job it waits for is
/// paused (it keeps waiting: a resume lets it finish).
pub fn paused_notice(job: JobId, why: &str) -> String {
    format!("job {job} is paused ({why}); still waiting: `hq job resume {job}` lets it go on")
}

/// Asks HQ for the counts, waiting up to [`POLL`] for a change.
async fn poll(c: &mut AdminClient, job: JobId) -> Result<JobProgress, CliError> {
    match c
        .request(AdminRequest::Progress {
            job,
            wait_ms: POLL.as_millis() as u64,
        })
        .await?
    {
        AdminResponse::Progress(p) => Ok(p),
        other => Err(super::unexpected(other)),
    }
}

/// `job wait`: follows the job until it is done or `deadline`. With
/// `draw` and stdout on a terminal, draws the line on stderr (indicatif
/// itself draws nothing when stderr is not one); otherwise draws nothing
/// but says once on stderr when the job is paused, and why (again if it is
/// paused anew for another reason). The caller then asks for the final
/// status as usual.
pub async fn follow_until_done(
    c: &mut AdminClient,
    job: JobId,
    deadline: Instant,
    draw: bool,
) -> Result<(), CliError> {
    let bar = if draw && std::io::stdout().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .map_err(|e| CliError::Other(e.to_string()))?
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Some(bar)
    } else {
        None
    };
    let mut told: Option<String> = None;
    let r = async {
        loop {
            let asked = Instant::now();
            let p = poll(c, job).await?;
            match &bar {
                Some(bar) => {
                    bar.set_length(p.totals.total());
                    bar.set_position(p.totals.total() - p.totals.open());
                    bar.set_message(progress_line(&p));
                }
                None => match paused(&p) {
                    Some(why) if told.as_deref() != Some(why) => {
                        eprintln!("{}", paused_notice(job, why));
                        told = Some(why.to_string());
                    }
                    Some(_) => {}
                    None => told = None,
                },
            }
            if p.done || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep_until((asked + MIN_GAP).min(deadline)).await;
        }
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    r
}

/// `job status --watch`: on a terminal, clears the screen and redraws the
/// status at each change until the job is done; otherwise prints the
/// status once per change of the counts (and once at the end).
pub async fn watch_status(
    c: &mut AdminClient,
    job: JobId,
    req: impl Fn() -> AdminRequest,
    listing: &render::Listing,
) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<crate::proto::Totals> = None;
    loop {
        let asked = Instant::now();
        let p = poll(c, job).await?;
        if last.as_ref() != Some(&p.totals) || p.done {
            let s = match c.request(req()).await? {
                AdminResponse::Status(s) => s,
                other => return Err(super::unexpected(other)),
            };
            let text = render::status(&s, listing);
            if tty {
                // Home, clear screen, then the status.
                out!("\x1b[H\x1b[2J{text}");
            } else {
                out!("{text}");
                if !s.done {
                    outln!();
                }
            }
            {
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            if s.done {
                return Ok(());
            }
            last = Some(p.totals);
        }
        tokio::time::sleep_until(asked + MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, NodeName, RelayTotals, Totals};

    fn p(relays: &[(&str, u64, u64, u64)]) -> JobProgress {
        // (relay, pending, succeeded, failed)
        let mut totals = Totals::default();
        let relays = relays
            .iter()
            .map(|(r, pe, ok, f)| {
                let t = Totals {
                    pending: *pe,
                    succeeded: *ok,
                    failed: *f,
                    ..Default::default()
                };
                totals.pending += pe;
                totals.succeeded += ok;
                totals.failed += f;
                RelayTotals {
                    relay: NodeName::new(*r).unwrap(),
                    totals: t,
                }
            })
            .collect();
        JobProgress {
            job: JobId(1),
            attempt: Attempt(1),
            done: false,
            totals,
            relays,
            awaiting: vec![],
            created_at_ms: 0,
            state: "active".into(),
            pause_reason: None,
        }
    }

    #[test]
    fn progress_lines() {
        let table = [
            (p(&[]), "0/0 done"),
            (p(&[("r1", 0, 5, 0)]), "5/5 done"),
            (
                p(&[("r1", 2, 5, 1), ("r2", 400, 0, 0)]),
                "6/408 done, 1 failed · not final: r2 400, r1 2",
            ),
            (
                p(&[
                    ("a", 1, 0, 0),
                    ("b", 2, 0, 0),
                    ("c", 3, 0, 0),
                    ("d", 4, 0, 2),
                ]),
                "2/12 done, 2 failed · not final: d 4, c 3, b 2 (+1 relays)",
            ),
        ];
        for (prog, want) in table {
            assert_eq!(progress_line(&prog), want);
        }
        let mut held = p(&[("r1", 3, 1, 2)]);
        held.state = "paused".into();
        held.pause_reason = Some("2 failures of 6 leaves, past --max-failures 1".into());
        assert_eq!(
            progress_line(&held),
            "3/6 done, 2 failed · not final: r1 3 · paused: 2 failures of 6 leaves, past --max-failures 1"
        );
    }
}
