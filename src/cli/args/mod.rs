//! The command lines of `hq`, `relay` and `agent` (DESIGN.md section 6).

pub use super::pkg_args::{ClientCmd, PackageCmd, PkgSpec};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

mod hq;
mod job;
mod node;

pub use hq::*;
pub use job::*;
pub use node::*;

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

/// Parses `--label KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    crate::proto::labels::parse_label(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

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
