//! `hq job`'s command line: creating, watching, rerunning, canceling,
//! purging and scheduling jobs, and their rollout policy.

use super::*;
use clap::{ArgGroup, Args, Subcommand};

/// A job's rollout policy on the command line (enforced at every relay).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutArgs {
    /// At most N (or P% of its targets) leaves in flight at each relay at once.
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<String>,
    /// N leaves first (HQ picks them, spread over relays); the rest start
    /// once they all succeed; a failed canary pauses the job.
    #[arg(long, value_name = "N")]
    pub canary: Option<u64>,
    /// Past N failures (or P% of the targets) the job pauses everywhere.
    #[arg(long, value_name = "N|P%")]
    pub max_failures: Option<String>,
    /// Start no leaf before this time (RFC 3339, e.g. 2026-12-01T02:30:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Start leaves only inside this daily window (UTC), e.g. 22:00-04:00.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub window: Option<String>,
    /// A recurring job: a new job at each time of SPEC (as `hq package
    /// schedule`: 'daily 02:30', 'weekly tue', 'monthly 2nd tue +4d 02:30').
    /// Prints the schedule's id and next run.
    #[arg(long, value_name = "SPEC")]
    pub repeat: Option<String>,
    /// Hold the job (paused) until relay NAME's package sync has finished.
    #[arg(long, value_name = "NAME")]
    pub after_sync: Option<String>,
}

/// `hq job` subcommands.
#[derive(Subcommand, Debug)]
// Parsed once per process: the size of `Create` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum JobCmd {
    /// Create a job; prints its id. What it does: a command after --, --ping,
    /// --install N[@V] or --remove N (exactly one).
    #[command(group(
        ArgGroup::new("action")
            .args(["command", "ping", "install", "remove"])
    ))]
    Create {
        /// Destination kind.
        #[arg(long, value_enum)]
        dest: Dest,
        /// Relay whose lower clients are targeted (repeatable; with
        /// --dest all-lower-clients).
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// A client to target, wherever it lives now (repeatable; with
        /// --dest clients).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Only clients carrying this label (repeatable: all must match).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Leave this client out (repeatable).
        #[arg(long = "exclude", value_name = "NAME")]
        exclude: Vec<String>,
        /// Kill the command (or the install/remove command) after this long (e.g. 30s, 5m).
        #[arg(long)]
        timeout: Option<String>,
        /// Leaves not delivered within this long expire (e.g. 1h).
        #[arg(long)]
        expires: Option<String>,
        /// Answer without spawning a process.
        #[arg(long)]
        ping: bool,
        /// Install this package (the newest version when no @VERSION).
        #[arg(long, value_name = "N[@V]")]
        install: Option<PkgSpec>,
        /// Remove this installed package.
        #[arg(long, value_name = "N", value_parser = crate::cli::pkg_args::parse_pkg_name)]
        remove: Option<String>,
        /// How it rolls out.
        #[command(flatten)]
        rollout: RolloutArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// All jobs in brief, or one job: elapsed time, totals, per relay, then
    /// the first leaves of each state asked for, with a count of the rest.
    #[command(after_help = "\
Examples:
  hq job status 7                          totals, per relay, leaves not succeeded
  hq job status 7 --state failed --relay r2
  hq job status 7 --state failed --state timed_out --limit 100
  hq job status 7 --json                   every leaf (the contract's shape)
  hq job status 7 --watch                  redraw until the job is done")]
    Status {
        /// The job.
        job: Option<String>,
        /// List every leaf, not only those that did not succeed.
        #[arg(long)]
        clients: bool,
        /// Only leaves in this state (repeatable): pending, delivered, running,
        /// succeeded, failed, timed_out, expired, canceled.
        #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
        states: Vec<crate::proto::LeafState>,
        /// Only leaves whose home is this relay.
        #[arg(long, value_name = "NAME")]
        relay: Option<String>,
        /// Leaves listed per state, at most (default 20; with --json: all).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Redraw until the job is done (on a terminal; otherwise print a
        /// new status at each change of the counts, and the last at the end).
        #[arg(long, requires = "job")]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every leaf of the latest attempt is final; exit 0 iff all succeeded.
    #[command(after_help = "\
Exit codes: 0 every leaf succeeded, 1 some did not, 2 error, 3 timeout.

Examples:
  hq job wait 7 --timeout 30m
  hq job wait 7 --progress        a live line on a terminal: done/total, failed,
                                  leaves not final per relay")]
    Wait {
        /// The job.
        job: String,
        /// Give up after this long (default 10m); exit 3.
        #[arg(long)]
        timeout: Option<String>,
        /// Draw a live progress line on stderr while waiting (only when
        /// stderr is a terminal; silent otherwise).
        #[arg(long)]
        progress: bool,
        /// Print the final status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute the leaves whose latest result is failed or timed_out
    /// (with --expired: also expired), each at its client's current relay.
    /// One leaf's latest output: stdout and stderr apart (their last 64 KiB
    /// each), exit code, timings and the attempt.
    #[command(after_help = "\
Examples:
  hq job output 7 web-042
  hq job output 7 web-042 --json | jq -r .stderr")]
    Output {
        /// The job.
        job: String,
        /// The client.
        client: String,
        /// Print JSON: {\"stdout\": ..., \"stderr\": ..., \"exit_code\": N, ...}.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute the leaves whose latest result is failed or timed_out.
    Rerun {
        /// The job.
        job: String,
        /// Rerun the failed and timed-out leaves (required).
        #[arg(long, required = true)]
        failed: bool,
        /// Also rerun the leaves that expired (`--failed --expired`).
        #[arg(long)]
        expired: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause a job: no new leaf starts anywhere (running ones finish);
    /// paused leaves stay pending until `resume`.
    Pause {
        /// The job.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused job (also lets the rest start after a failed canary);
    /// failures are counted afresh from here.
    Resume {
        /// The job.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the schedules of recurring jobs (`job create --repeat`): id,
    /// spec, next run, latest jobs.
    Schedules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a recurring job's schedule (its id from `job schedules`): no
    /// more occurrences; the jobs it made stay.
    Unschedule {
        /// The schedule's id.
        schedule: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: no leaf starts any more, running commands are stopped,
    /// every leaf not yet final becomes canceled. A canceled job is done.
    Cancel {
        /// The job.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove finished jobs unchanged for at least DUR, from HQ, relays and
    /// agents; `job status` then says the job was purged.
    Purge {
        /// Age of the latest change (e.g. 30d, 12h; 0s: every finished job).
        #[arg(long = "older-than", value_name = "DUR")]
        older_than: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// All jobs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A leaf state as typed on the command line (`timed-out` also works).
pub fn parse_state(s: &str) -> Result<crate::proto::LeafState, String> {
    let want = s.replace('-', "_");
    crate::proto::LeafState::ALL
        .into_iter()
        .find(|st| st.as_str() == want)
        .ok_or_else(|| {
            format!(
                "unknown state {s:?} (one of {})",
                crate::proto::LeafState::ALL.map(|s| s.as_str()).join(", ")
            )
        })
}
