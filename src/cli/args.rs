//! The command lines of `hq`, `relay` and `agent` (DESIGN.md section 6).

pub use super::pkg_args::{ClientCmd, PackageCmd, PkgSpec};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Where admin commands find HQ and their identity.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// HQ's HOST:PORT.
    #[arg(long, env = "RELAYTREE_HQ", global = true)]
    pub hq: Option<String>,
    /// Directory with the admin's ca.crt, node.crt, node.key.
    #[arg(long, env = "RELAYTREE_IDENTITY", global = true)]
    pub identity: Option<PathBuf>,
    /// HQ's data directory: defaults --hq (from listen.addr) and --identity (admin/).
    #[arg(long = "data-dir", env = "RELAYTREE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Checks a duration (`30s`, `5m`, `1h30m`, or seconds) and keeps its text,
/// so that a bad one is refused while parsing (naming the flag, or the
/// config file's key).
pub fn duration_text(s: &str) -> Result<String, String> {
    if s.parse::<u64>().is_ok() {
        return Ok(s.to_string());
    }
    humantime::parse_duration(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (expected e.g. 30s, 5m, 2h)"))
}

/// The dashboard of `hq serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct HttpArgs {
    /// Serve the dashboard (and /metrics) on HOST:PORT (port 0 picks one);
    /// prints "http on HOST:PORT". Off loopback it is served with TLS.
    #[arg(long)]
    pub http: Option<String>,
    /// Serve the dashboard as plain HTTP even off loopback.
    #[arg(long = "http-insecure", requires = "http")]
    pub http_insecure: bool,
    /// How long a dashboard session lasts (the cookie's Max-Age).
    #[arg(long = "http-session", default_value = "12h", requires = "http")]
    pub http_session: String,
    /// The base URL login links name (e.g. https://hq.example:8443) when the
    /// bound address is not what browsers reach (0.0.0.0, a proxy).
    #[arg(long = "http-url", requires = "http")]
    pub http_url: Option<String>,
}

/// `hq web` subcommands.
#[derive(Subcommand, Debug)]
pub enum WebCmd {
    /// Print a one-time dashboard login URL (it expires in 5 minutes).
    Login {
        /// Print JSON: {"url": "..."}.
        #[arg(long)]
        json: bool,
    },
}

/// Session timers of a server (defaults: heartbeat 30s, idle timeout 90s).
#[derive(Args, Debug, Clone, Default)]
pub struct TimingArgs {
    /// Send a heartbeat after this long without sending [default: 30s]; sooner
    /// toward a peer whose idle timeout needs it (3 per its idle timeout).
    #[arg(long, value_parser = duration_text)]
    pub heartbeat: Option<String>,
    /// Close a session silent for this long [default: 90s]: a dead peer or a
    /// half-open link is detected within it. The peer is told, and heartbeats
    /// often enough for it.
    #[arg(long, value_parser = duration_text)]
    pub idle_timeout: Option<String>,
}

/// How a server logs (on stderr).
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (job, attempt, client, relay).
    Json,
}

/// Logging options every command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log format on stderr: text or json (RUST_LOG sets the level).
    #[arg(
        long = "log-format",
        value_enum,
        default_value_t = LogFormat::Text,
        env = "RELAYTREE_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
}

const HQ_HELP: &str = "\
Examples:
  hq init --data-dir hq
  hq cert issue --data-dir hq --role relay --name r1 --out ids/r1
  hq serve --data-dir hq --listen 0.0.0.0:7000
  export RELAYTREE_DATA_DIR=hq
  hq job create --dest all-lower-clients --relay r1 --timeout 5m -- apt-get -y upgrade
  hq job wait 1 --progress
  hq job status 1 --state failed --relay r2
  hq job output 1 web-042
  hq job rerun 1 --failed
  hq demo                     a real local tree on loopback, start to finish

Environment:
  RELAYTREE_HQ          HQ's HOST:PORT for admin commands (--hq)
  RELAYTREE_IDENTITY    the admin identity directory (--identity)
  RELAYTREE_DATA_DIR    HQ's data directory: gives both of the above (--data-dir)
  RELAYTREE_LOG_FORMAT  text or json (--log-format)
  RUST_LOG              log level and filter, e.g. warn, info, relaytree::hq=debug
                        (default: info for servers; logs go to stderr)

Exit codes: 0 success, 1 `job wait`: some leaf did not succeed, 2 error
(bad input, HQ unreachable or refusing), 3 `job wait`: timeout.";

const RELAY_HELP: &str = "\
Examples:
  relay serve --identity ids/r1 --data-dir r1 --listen 0.0.0.0:7001 --parent hq.example:7000
  relay serve --identity ids/r2 --data-dir r2 --listen 0.0.0.0:7002 --parent r1.example:7001 \\
      --heartbeat 60s --idle-timeout 180s --log-format json
  relay serve --identity ids/r3 --data-dir r3 --listen 0.0.0.0:7003 \
      --parent r1.example:7001 --parent r2.example:7002      fails over from r1 to r2

Environment:
  RELAYTREE_LOG_FORMAT  text or json (--log-format)
  RUST_LOG              log level and filter, e.g. warn, info, relaytree::relay=debug";

const AGENT_HELP: &str = "\
Examples:
  agent serve --identity ids/c1 --data-dir c1 --relay r1.example:7001
  agent serve --identity ids/c1 --data-dir c1 --relay r1.example:7001 --relay r2.example:7002
  agent runlog --data-dir c1             what it accepted and how far each got
  agent swarm --identities swarm-ids --relay 127.0.0.1:7002 --data-dir swarm

Environment:
  RELAYTREE_LOG_FORMAT  text or json (--log-format)
  RUST_LOG              log level and filter, e.g. warn, info, relaytree::agent=debug

What a command run by the agent sees: no shell (argv as given), its own
process group, stdin closed, and RELAYTREE_JOB, RELAYTREE_ATTEMPT,
RELAYTREE_CLIENT, RELAYTREE_RELAY in its environment; the last 64 KiB of
its stdout and of its stderr are kept apart (`hq job output`).";

/// relaytree headquarters: the CA, the jobs, and the whole picture.
#[derive(Parser, Debug)]
#[command(name = "hq", version, about, after_help = HQ_HELP)]
pub struct HqCli {
    #[command(subcommand)]
    pub cmd: HqCmd,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Roles a certificate can be issued for.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum IssueRole {
    /// A relay manager.
    Relay,
    /// A client.
    Agent,
    /// An operator.
    Admin,
}

/// Roles an enrollment token is for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollRole {
    /// A client.
    Agent,
    /// A relay manager.
    Relay,
}

/// How a node enrolls (`agent enroll`, `relay enroll`).
#[derive(Args, Debug, Clone)]
pub struct EnrollArgs {
    /// The token from `hq token create`.
    #[arg(long)]
    pub token: String,
    /// The CA's hash from `hq token create` (sha256:HEX): the parent's
    /// chain must lead to this CA.
    #[arg(long = "ca-hash", value_name = "sha256:HEX")]
    pub ca_hash: String,
    /// This node's name.
    #[arg(long)]
    pub name: String,
    /// Where to write ca.crt, node.crt, node.key (0600) and sign.pub.
    #[arg(long)]
    pub out: PathBuf,
    /// For tests only: put this name in the certificate signing request
    /// instead of --name (HQ must refuse it).
    #[arg(long = "csr-name", hide = true)]
    pub csr_name: Option<String>,
}

/// `hq token` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a one-time, expiring enrollment token; prints it and the CA's hash.
    Create {
        /// The role a node enrolling with it gets.
        #[arg(long, value_enum)]
        role: EnrollRole,
        /// Valid this long (e.g. 1h, 30m).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Enrollments it allows.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        /// Print JSON: {"token": ..., "ca_hash": ..., "expires_ms": ...}.
        #[arg(long)]
        json: bool,
    },
}

/// Destination kinds.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every client below the named relays (--relay).
    AllLowerClients,
    /// The named clients, wherever they live now (--client).
    Clients,
}

/// Parses `--label KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    crate::proto::labels::parse_label(s)
}

/// `hq snapshot` subcommands.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Record a client's objects and upload its files' content into HQ's depot.
    Create {
        /// The master client.
        #[arg(long)]
        client: String,
        /// The snapshot's name.
        #[arg(long)]
        name: String,
        /// Files to record (absolute globs under the agent's root; repeatable).
        #[arg(long = "files", value_name = "GLOB")]
        files: Vec<String>,
        /// Leave relaytree packages out.
        #[arg(long)]
        no_packages: bool,
        /// Record Debian packages too.
        #[arg(long)]
        dpkg: bool,
        /// Give up waiting after this long (the snapshot goes on; see job status).
        #[arg(long, default_value = "60s")]
        wait: String,
        /// Leaves not delivered within this long expire (default 5m).
        #[arg(long)]
        expires: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `hq sync`'s arguments.
#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// The audit (finished).
    pub audit: String,
    /// Only this target (repeatable; default: every target).
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Only this object: package:NAME, file:/PATH or dpkg:NAME (repeatable).
    #[arg(long = "object", value_name = "OBJECT")]
    pub objects: Vec<String>,
    /// Also remove what a target has and the master lacks.
    #[arg(long)]
    pub remove_extra: bool,
    /// Install bundles too (left out by default).
    #[arg(long)]
    pub include_bundles: bool,
    /// The depot package that provides a Debian package (repeatable).
    #[arg(long = "match", value_name = "dpkg:NAME=PKG@VER")]
    pub matches: Vec<String>,
    /// Print the plan; launch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hq audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Audit clients against a live master (snapshotted first) or a snapshot;
    /// prints the audit's id (a job).
    #[command(group(ArgGroup::new("master_or_snapshot").required(true).args(["master", "snapshot"])))]
    Create {
        /// A live master client.
        #[arg(long)]
        master: Option<String>,
        /// A snapshot taken earlier.
        #[arg(long)]
        snapshot: Option<String>,
        /// Destination kind.
        #[arg(long, value_enum)]
        dest: Dest,
        /// Relay whose lower clients are audited (repeatable).
        #[arg(long = "relay", required = true)]
        relays: Vec<String>,
        /// Files to compare (absolute globs; default: the snapshot's).
        #[arg(long = "files", value_name = "GLOB")]
        files: Vec<String>,
        /// Leave relaytree packages out.
        #[arg(long)]
        no_packages: bool,
        /// Compare Debian packages too.
        #[arg(long)]
        dpkg: bool,
        /// Leaves not delivered within this long expire (e.g. 1h).
        #[arg(long)]
        expires: Option<String>,
        /// How long a live master's snapshot may take.
        #[arg(long, default_value = "60s")]
        wait: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Totals, per relay, then the differing clients with their differences.
    Status {
        /// The audit.
        audit: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `hq` subcommands.
#[derive(Subcommand, Debug)]
pub enum HqCmd {
    /// Create the CA, HQ's identity and an admin identity (DIR/admin).
    Init {
        /// HQ's data directory.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// Trust domain written into every certificate.
        #[arg(long, default_value = "relaytree.local")]
        trust_domain: String,
        /// Also prepare the PostgreSQL database postgres://USER@HOST:PORT/DB
        /// for `hq serve --store`: create its tables and record this CA there.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Print JSON: {"data_dir", "ca", "hq", "admin", "trust_domain"}.
        #[arg(long)]
        json: bool,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// Run HQ.
    Serve {
        /// HQ's data directory.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// Keep HQ's state in PostgreSQL at postgres://USER@HOST:PORT/DB
        /// instead of sled under the data directory (which still holds the
        /// CA, HQ's identity and the package depot). Several HQs from one
        /// `hq init` may share the database.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// HOST:PORT to listen on (port 0 picks one).
        #[arg(long)]
        listen: String,
        /// Purge finished jobs unchanged for this long (e.g. 30d, 12h).
        #[arg(long, default_value = "30d", value_parser = duration_text)]
        retention: String,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one).
        #[arg(long)]
        metrics: Option<String>,
        /// Expiry of a job created without --expires (e.g. 7d, 12h).
        #[arg(long = "order-ttl", default_value = "7d", value_parser = duration_text)]
        order_ttl: String,
        /// For tests only: validity of the certificates HQ signs (default 90d).
        #[arg(long = "cert-validity", hide = true, value_parser = duration_text)]
        cert_validity: Option<String>,
        #[command(flatten)]
        timing: TimingArgs,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Jobs.
    Job {
        #[command(subcommand)]
        cmd: JobCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Packages: the depot, relay caches and their sync schedules.
    Package {
        #[command(subcommand)]
        cmd: PackageCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clients.
    Client {
        #[command(subcommand)]
        cmd: ClientCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The dashboard.
    Web {
        #[command(subcommand)]
        cmd: WebCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Snapshots of a master: its objects and its files' content, in HQ's depot.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Audits of clients against a master or a snapshot.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Bring an audit's targets in line with its master: one package and one
    /// job per unique collection of changes, launched as one batch job.
    Sync {
        #[command(flatten)]
        args: SyncArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Relays, their parents, connected or last seen, clients under each.
    Tree {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print a shell completion script for hq.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages of hq, relay and agent (and their subcommands) into DIR.
    Man {
        /// Output directory (e.g. deploy/man).
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a real local tree on loopback, run a job, rerun its failures, stop.
    Demo {
        /// Keep the demo's files in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// One JSON object per line: {"note": ...} or {"command": "hq ...",
        /// "result": what that command prints with --json}.
        #[arg(long)]
        json: bool,
    },
}

/// `hq cert` subcommands.
#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a certificate: OUT/ca.crt, OUT/node.crt, OUT/node.key.
    Issue {
        /// HQ's data directory (holds the CA).
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// The node's role.
        #[arg(long, value_enum)]
        role: IssueRole,
        /// The node's name (with --count: the prefix).
        #[arg(long)]
        name: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Issue N identities OUT/NAME-00001 ... (agents).
        #[arg(long)]
        count: Option<u32>,
        /// Days the certificates are valid (from a day before now).
        #[arg(long, default_value_t = super::setup::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Replace an identity already in the output directory.
        #[arg(long)]
        force: bool,
        /// Print JSON: {"role", "issued": [{"name", "dir"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node: HQ and every relay refuse it and close its sessions.
    /// A name HQ has never seen is refused unless --force.
    Revoke {
        /// The node's name.
        name: String,
        /// Revoke even a name HQ has never seen (an identity issued but never used).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

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
        #[arg(long, value_name = "N", value_parser = super::pkg_args::parse_pkg_name)]
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

/// relaytree relay manager.
#[derive(Parser, Debug)]
#[command(name = "relay", version, about, after_help = RELAY_HELP)]
pub struct RelayCli {
    #[command(subcommand)]
    pub cmd: RelayCmd,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `relay` subcommands.
#[derive(Subcommand, Debug)]
pub enum RelayCmd {
    /// Run a relay.
    Serve {
        /// Directory with ca.crt, node.crt, node.key.
        #[arg(long)]
        identity: PathBuf,
        /// Where the relay keeps its database.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// HOST:PORT to listen on for agents and child relays (port 0 picks one).
        #[arg(long)]
        listen: String,
        /// The parent's HOST:PORT (HQ or another relay). Repeat it to fail
        /// over: the first is preferred; when the parent is lost the relay
        /// moves to the next, and stays there while it serves.
        #[arg(long, required = true)]
        parent: Vec<String>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one).
        #[arg(long)]
        metrics: Option<String>,
        #[command(flatten)]
        timing: TimingArgs,
        /// Connections still in their TLS handshake or Hello at most
        /// (default 8192); past it, new connections are refused at once.
        #[arg(long = "max-handshakes")]
        max_handshakes: Option<usize>,
    },
    /// Join the tree: make a key here, have HQ sign it through the parent.
    Enroll {
        /// The parent's HOST:PORT (HQ or a relay).
        #[arg(long)]
        parent: String,
        #[command(flatten)]
        enroll: EnrollArgs,
    },
    /// Print a shell completion script for relay.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// relaytree agent.
#[derive(Parser, Debug)]
#[command(name = "agent", version, about, after_help = AGENT_HELP)]
pub struct AgentCli {
    #[command(subcommand)]
    pub cmd: AgentCmd,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `agent` subcommands.
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Run an agent.
    Serve {
        /// Directory with ca.crt, node.crt, node.key.
        #[arg(long)]
        identity: PathBuf,
        /// Where the agent keeps its run log.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// The relay's HOST:PORT. Repeat it to fail over: the first is
        /// preferred; when the relay is lost the agent moves to the next,
        /// and stays there while it serves.
        #[arg(long, required = true)]
        relay: Vec<String>,
        /// Commands run at the same time, at most.
        #[arg(long, default_value_t = 4)]
        max_parallel: usize,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one).
        #[arg(long)]
        metrics: Option<String>,
        /// A command stopped (timeout, cancel, leftover after a crash) gets
        /// SIGTERM, then SIGKILL after this long (default 10s).
        #[arg(long, value_parser = duration_text)]
        kill_grace: Option<String>,
        /// Audit and snapshot paths are taken under this directory.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// A label this agent reports about itself (repeatable); jobs can
        /// target by it (hq job create --label KEY=VALUE).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        timing: TimingArgs,
    },
    /// Join the tree: make a key here, have HQ sign it through the relay.
    Enroll {
        /// The relay's HOST:PORT.
        #[arg(long)]
        relay: String,
        #[command(flatten)]
        enroll: EnrollArgs,
    },
    /// Print a shell completion script for agent.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the run log of a stopped agent or swarm: every attempt it
    /// accepted and how far it got.
    Runlog {
        /// The agent's (or swarm's) data directory.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one real agent per identity under a directory, in one process.
    Swarm {
        /// Directory of identities (`hq cert issue --count N --out DIR`).
        #[arg(long)]
        identities: PathBuf,
        /// The relay's HOST:PORT.
        #[arg(long)]
        relay: String,
        /// Where the swarm keeps its (shared) store.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// For load tests: this fraction (0 to 1) of attempts fails without running.
        #[arg(long, default_value_t = 0.0)]
        fail_fraction: f64,
        /// For load tests: wait this long before carrying out each attempt (e.g. 50ms).
        #[arg(long, value_parser = duration_text)]
        delay: Option<String>,
        /// Commands run at the same time per agent, at most.
        #[arg(long, default_value_t = 1)]
        max_parallel: usize,
        /// Agents of this swarm connecting (TCP, TLS, Hello) at once, at most;
        /// the others wait their turn, as a fleet's machines come up spread out.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        max_dialing: u32,
        /// Serve Prometheus metrics (the swarm's agents counted together) at
        /// http://HOST:PORT/metrics (port 0 picks one).
        #[arg(long)]
        metrics: Option<String>,
        /// A command stopped (timeout, cancel, leftover after a crash) gets
        /// SIGTERM, then SIGKILL after this long (default 10s).
        #[arg(long, value_parser = duration_text)]
        kill_grace: Option<String>,
        /// Audit and snapshot paths are taken under this directory (every
        /// agent of the swarm).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// A label every agent of the swarm reports (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        timing: TimingArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clis_are_consistent() {
        HqCli::command().debug_assert();
        RelayCli::command().debug_assert();
        AgentCli::command().debug_assert();
    }

    #[test]
    fn job_create_takes_the_command_after_dashes() {
        let c = HqCli::try_parse_from([
            "hq",
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--relay",
            "r2",
            "--",
            "echo",
            "--x",
        ])
        .unwrap();
        match c.cmd {
            HqCmd::Job {
                cmd: JobCmd::Create {
                    relays, command, ..
                },
                ..
            } => {
                assert_eq!(relays, vec!["r1", "r2"]);
                assert_eq!(command, vec!["echo", "--x"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            HqCli::try_parse_from(["hq", "job", "create", "--dest", "some", "--relay", "r1"])
                .is_err()
        );
        assert!(HqCli::try_parse_from(["hq", "job", "rerun", "3"]).is_err());
        // Named clients narrowed by labels; a label without '=' is refused.
        let c = HqCli::try_parse_from([
            "hq",
            "job",
            "create",
            "--dest",
            "clients",
            "--client",
            "c1",
            "--client",
            "c2",
            "--label",
            "role=web",
            "--exclude",
            "c2",
            "--ping",
        ])
        .unwrap();
        match c.cmd {
            HqCmd::Job {
                cmd:
                    JobCmd::Create {
                        dest,
                        clients,
                        labels,
                        exclude,
                        ..
                    },
                ..
            } => {
                assert_eq!(dest, Dest::Clients);
                assert_eq!(clients, vec!["c1", "c2"]);
                assert_eq!(labels, vec![("role".to_string(), "web".to_string())]);
                assert_eq!(exclude, vec!["c2"]);
            }
            other => panic!("{other:?}"),
        }
        let e = HqCli::try_parse_from([
            "hq", "job", "create", "--dest", "clients", "--client", "c1", "--label", "role",
            "--ping",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("no '='"), "{e}");
    }

    fn create(extra: &[&str]) -> Result<JobCmd, clap::Error> {
        let mut v = vec![
            "hq",
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
        ];
        v.extend_from_slice(extra);
        HqCli::try_parse_from(v).map(|c| match c.cmd {
            HqCmd::Job { cmd, .. } => cmd,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn job_create_install_or_remove() {
        match create(&["--install", "tool@1.2", "--timeout", "5m"]).unwrap() {
            JobCmd::Create {
                install,
                remove,
                ping,
                command,
                timeout,
                ..
            } => {
                assert_eq!(
                    install,
                    Some(PkgSpec {
                        name: "tool".into(),
                        version: Some("1.2".into())
                    })
                );
                assert_eq!(remove, None);
                assert!(!ping);
                assert!(command.is_empty());
                assert_eq!(timeout.as_deref(), Some("5m"));
            }
            other => panic!("{other:?}"),
        }
        match create(&["--install", "tool"]).unwrap() {
            JobCmd::Create { install, .. } => {
                assert_eq!(install.map(|s| s.version), Some(None))
            }
            other => panic!("{other:?}"),
        }
        match create(&["--remove", "tool"]).unwrap() {
            JobCmd::Create { remove, .. } => assert_eq!(remove.as_deref(), Some("tool")),
            other => panic!("{other:?}"),
        }
        assert!(create(&["--ping"]).is_ok());
        // Bad N@V, and a version on --remove.
        for bad in [
            &["--install", "tool@"][..],
            &["--install", "@1"],
            &["--install", ""],
            &["--remove", "tool@1"],
        ] {
            assert!(create(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn job_create_takes_exactly_one_action() {
        // No action at all is refused after parsing, with a one-line error
        // (see `cli_errors` in the integration tests).
        assert!(create(&[]).is_ok(), "no action parses");
        for two in [
            &["--install", "a", "--remove", "a"][..],
            &["--install", "a", "--ping"],
            &["--remove", "a", "--ping"],
            &["--install", "a", "--", "echo"],
            &["--remove", "a", "--", "echo"],
            &["--ping", "--", "echo"],
        ] {
            let e = create(two).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{two:?}"
            );
        }
    }
}
