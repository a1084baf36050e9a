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

/// Session timers of a server (defaults: heartbeat 5s, idle timeout 20s).
#[derive(Args, Debug, Clone, Default)]
pub struct TimingArgs {
    /// Send a heartbeat after this long without sending (e.g. 5s).
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// Close a session silent for this long (e.g. 20s); detects half-open links.
    #[arg(long)]
    pub idle_timeout: Option<String>,
}

/// relaytree headquarters: the CA, the jobs, and the whole picture.
#[derive(Parser, Debug)]
#[command(name = "hq", version, about)]
pub struct HqCli {
    #[command(subcommand)]
    pub cmd: HqCmd,
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

/// Destination kinds.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every client below the named relays.
    AllLowerClients,
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
        /// HOST:PORT to listen on (port 0 picks one).
        #[arg(long)]
        listen: String,
        /// Purge finished jobs unchanged for this long (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        retention: String,
        /// Expiry of a job created without --expires (e.g. 7d, 12h).
        #[arg(long = "order-ttl", default_value = "7d")]
        order_ttl: String,
        #[command(flatten)]
        timing: TimingArgs,
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
    /// Relays, their parents, connected or last seen, clients under each.
    Tree {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start a real local tree on loopback, run a job, rerun its failures, stop.
    Demo {
        /// Keep the demo's files in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
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
        /// Replace an identity already in the output directory.
        #[arg(long)]
        force: bool,
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

/// `hq job` subcommands.
#[derive(Subcommand, Debug)]
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
        /// Relay whose lower clients are targeted (repeatable).
        #[arg(long = "relay", required = true)]
        relays: Vec<String>,
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// All jobs in brief, or one job in full.
    Status {
        /// The job.
        job: Option<String>,
        /// List every leaf, not only those that did not succeed.
        #[arg(long)]
        clients: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every leaf of the latest attempt is final; exit 0 iff all succeeded.
    Wait {
        /// The job.
        job: String,
        /// Give up after this long (default 10m); exit 3.
        #[arg(long)]
        timeout: Option<String>,
        /// Print the final status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute the leaves whose latest result is failed or timed_out
    /// (with --expired: also expired), each at its client's current relay.
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

/// relaytree relay manager.
#[derive(Parser, Debug)]
#[command(name = "relay", version, about)]
pub struct RelayCli {
    #[command(subcommand)]
    pub cmd: RelayCmd,
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
        /// The parent's HOST:PORT (HQ or another relay).
        #[arg(long)]
        parent: String,
        #[command(flatten)]
        timing: TimingArgs,
        /// Connections still in their TLS handshake or Hello at most
        /// (default 8192); past it, new connections are refused at once.
        #[arg(long = "max-handshakes")]
        max_handshakes: Option<usize>,
    },
}

/// relaytree agent.
#[derive(Parser, Debug)]
#[command(name = "agent", version, about)]
pub struct AgentCli {
    #[command(subcommand)]
    pub cmd: AgentCmd,
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
        /// The relay's HOST:PORT.
        #[arg(long)]
        relay: String,
        /// Commands run at the same time, at most.
        #[arg(long, default_value_t = 4)]
        max_parallel: usize,
        /// A command stopped (timeout, cancel, leftover after a crash) gets
        /// SIGTERM, then SIGKILL after this long (default 10s).
        #[arg(long)]
        kill_grace: Option<String>,
        /// Audit and snapshot paths are taken under this directory.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[command(flatten)]
        timing: TimingArgs,
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
        #[arg(long)]
        delay: Option<String>,
        /// Commands run at the same time per agent, at most.
        #[arg(long, default_value_t = 1)]
        max_parallel: usize,
        /// Agents of this swarm connecting (TCP, TLS, Hello) at once, at most;
        /// the others wait their turn, as a fleet's machines come up spread out.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        max_dialing: u32,
        /// A command stopped (timeout, cancel, leftover after a crash) gets
        /// SIGTERM, then SIGKILL after this long (default 10s).
        #[arg(long)]
        kill_grace: Option<String>,
        /// Audit and snapshot paths are taken under this directory (every
        /// agent of the swarm).
        #[arg(long, default_value = "/")]
        root: PathBuf,
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
