//! The command lines of `relay` and `agent`.

use super::*;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
