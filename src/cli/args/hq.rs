//! `hq`'s command line: the CA and certificates, tokens, the dashboard,
//! snapshots, audits and syncs, and every `hq` subcommand but `job`.

use super::*;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
        #[arg(long, default_value_t = crate::cli::setup::DEFAULT_DAYS,
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
