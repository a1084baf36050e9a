//! The command lines of `hq package ...` and `hq client ...`, and the
//! `NAME[@VERSION]` form shared with `hq job create --install`.

use clap::{ArgGroup, Subcommand};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A package named on the command line: `NAME` or `NAME@VERSION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkgSpec {
    /// The package name.
    pub name: String,
    /// The version (`None`: the newest in the depot).
    pub version: Option<String>,
}

impl FromStr for PkgSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<PkgSpec, String> {
        let bad = |why: &str| format!("bad package {s:?}: {why} (expected NAME or NAME@VERSION)");
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace"));
        }
        match s.split_once('@') {
            None if s.is_empty() => Err(bad("empty")),
            None => Ok(PkgSpec {
                name: s.to_string(),
                version: None,
            }),
            Some(("", _)) => Err(bad("no name before '@'")),
            Some((_, "")) => Err(bad("no version after '@'")),
            Some((_, v)) if v.contains('@') => Err(bad("more than one '@'")),
            Some((n, v)) => Ok(PkgSpec {
                name: n.to_string(),
                version: Some(v.to_string()),
            }),
        }
    }
}

impl fmt::Display for PkgSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A package name alone (`--remove N`): no `@VERSION`.
pub fn parse_pkg_name(s: &str) -> Result<String, String> {
    let spec: PkgSpec = s.parse()?;
    if spec.version.is_some() {
        return Err(format!(
            "bad package {s:?}: give the name alone (removal takes whatever version is installed)"
        ));
    }
    Ok(spec.name)
}

/// `hq package` subcommands.
#[derive(Subcommand, Debug)]
pub enum PackageCmd {
    /// Chunk a file or directory tree, upload what the depot lacks, add the package.
    Add {
        /// The file or directory (its contents become the package root).
        path: PathBuf,
        /// Package name.
        #[arg(long)]
        name: String,
        /// Package version.
        #[arg(long)]
        version: String,
        /// Install command (`/bin/sh -c`, run in the unpacked tree).
        #[arg(long, value_name = "CMD")]
        install: Option<String>,
        /// Remove command.
        #[arg(long, value_name = "CMD")]
        remove: Option<String>,
        /// A bundle (service-pack-like): left out of `hq sync` unless
        /// `--include-bundles`.
        #[arg(long)]
        bundle: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every package version in the depot.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One package version (the newest when no @VERSION), with its entries.
    Show {
        /// NAME or NAME@VERSION.
        #[arg(value_name = "N[@V]")]
        package: PkgSpec,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Order relays to bring packages into their caches now.
    Sync {
        /// Relay to sync (repeatable).
        #[arg(long = "relay", required = true, value_name = "NAME")]
        relays: Vec<String>,
        /// Only this package (default: the newest version of every package).
        #[arg(long, value_name = "N[@V]")]
        package: Option<PkgSpec>,
        /// Re-verify and re-fetch everything, not only what is missing.
        #[arg(long)]
        complete: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per relay: each package present, outdated, missing, syncing or failed.
    Status {
        /// Only this relay.
        #[arg(long, value_name = "NAME")]
        relay: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set (or clear) a relay's sync schedule, in UTC:
    /// "daily 02:00", "weekly tue 02:00", "monthly 2nd tue +4d 02:30".
    #[command(group(ArgGroup::new("what").required(true).args(["spec", "clear"])))]
    Schedule {
        /// The relay.
        #[arg(long, value_name = "NAME")]
        relay: String,
        /// The schedule (quoted, or as separate words).
        #[arg(value_name = "SPEC", num_args = 1..)]
        spec: Vec<String>,
        /// Spread relays' pulls over this long (e.g. 30m); default 0.
        #[arg(long, value_name = "DURATION", conflicts_with = "clear")]
        stagger: Option<String>,
        /// Remove the relay's schedule.
        #[arg(long)]
        clear: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `hq client` subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// One client: home relay, since when, installed packages.
    Show {
        /// The client's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{HqCli, HqCmd};
    use clap::Parser;

    fn spec(n: &str, v: Option<&str>) -> PkgSpec {
        PkgSpec {
            name: n.into(),
            version: v.map(Into::into),
        }
    }

    #[test]
    fn name_at_version() {
        assert_eq!("tool".parse::<PkgSpec>().unwrap(), spec("tool", None));
        assert_eq!(
            "tool@1.2.3".parse::<PkgSpec>().unwrap(),
            spec("tool", Some("1.2.3"))
        );
        for bad in ["", "a@", "@1", "@", "a@b@c", "a b", "a@1 2"] {
            let e = bad.parse::<PkgSpec>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(spec("x", Some("2")).to_string(), "x@2");
        assert_eq!(spec("x", None).to_string(), "x");
        assert_eq!(parse_pkg_name("tool").unwrap(), "tool");
        assert!(parse_pkg_name("tool@1").is_err());
    }

    fn pkg(args: &[&str]) -> Result<PackageCmd, clap::Error> {
        let mut v = vec!["hq", "package"];
        v.extend_from_slice(args);
        HqCli::try_parse_from(v).map(|c| match c.cmd {
            HqCmd::Package { cmd, .. } => cmd,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn package_add() {
        match pkg(&[
            "add",
            "./dir",
            "--name",
            "tool",
            "--version",
            "1",
            "--install",
            "./install.sh",
            "--json",
        ])
        .unwrap()
        {
            PackageCmd::Add {
                path,
                name,
                version,
                install,
                remove,
                json,
                ..
            } => {
                assert_eq!(path, PathBuf::from("./dir"));
                assert_eq!((name.as_str(), version.as_str()), ("tool", "1"));
                assert_eq!(install.as_deref(), Some("./install.sh"));
                assert_eq!(remove, None);
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        assert!(pkg(&["add", "./dir", "--name", "tool"]).is_err());
        assert!(pkg(&["add", "--name", "tool", "--version", "1"]).is_err());
    }

    #[test]
    fn package_list_show_status() {
        assert!(matches!(
            pkg(&["list", "--json"]).unwrap(),
            PackageCmd::List { json: true }
        ));
        match pkg(&["show", "tool@2"]).unwrap() {
            PackageCmd::Show { package, json } => {
                assert_eq!(package, spec("tool", Some("2")));
                assert!(!json);
            }
            other => panic!("{other:?}"),
        }
        assert!(pkg(&["show", "tool@"]).is_err());
        assert!(pkg(&["show", "@2"]).is_err());
        assert!(pkg(&["show"]).is_err());
        match pkg(&["status", "--relay", "r1"]).unwrap() {
            PackageCmd::Status { relay, json } => {
                assert_eq!(relay.as_deref(), Some("r1"));
                assert!(!json);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pkg(&["status", "--json"]).unwrap(),
            PackageCmd::Status {
                relay: None,
                json: true
            }
        ));
    }

    #[test]
    fn package_sync() {
        match pkg(&[
            "sync",
            "--relay",
            "r1",
            "--relay",
            "r2",
            "--package",
            "tool",
            "--complete",
        ])
        .unwrap()
        {
            PackageCmd::Sync {
                relays,
                package,
                complete,
                json,
            } => {
                assert_eq!(relays, vec!["r1", "r2"]);
                assert_eq!(package, Some(spec("tool", None)));
                assert!(complete);
                assert!(!json);
            }
            other => panic!("{other:?}"),
        }
        assert!(pkg(&["sync"]).is_err(), "--relay is required");
        assert!(pkg(&["sync", "--relay", "r1", "--package", "a@"]).is_err());
    }

    #[test]
    fn package_schedule() {
        match pkg(&[
            "schedule",
            "--relay",
            "r1",
            "monthly 2nd tue +4d 02:30",
            "--stagger",
            "30m",
        ])
        .unwrap()
        {
            PackageCmd::Schedule {
                relay,
                spec,
                stagger,
                clear,
                ..
            } => {
                assert_eq!(relay, "r1");
                assert_eq!(spec, vec!["monthly 2nd tue +4d 02:30"]);
                assert_eq!(stagger.as_deref(), Some("30m"));
                assert!(!clear);
            }
            other => panic!("{other:?}"),
        }
        match pkg(&["schedule", "--relay", "r1", "weekly", "tue", "02:00"]).unwrap() {
            PackageCmd::Schedule { spec, .. } => assert_eq!(spec, vec!["weekly", "tue", "02:00"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pkg(&["schedule", "--relay", "r1", "--clear"]).unwrap(),
            PackageCmd::Schedule { clear: true, .. }
        ));
        // Exactly one of SPEC and --clear; no --stagger with --clear; --relay needed.
        assert!(pkg(&["schedule", "--relay", "r1"]).is_err());
        assert!(pkg(&["schedule", "--relay", "r1", "--clear", "daily"]).is_err());
        assert!(pkg(&["schedule", "--relay", "r1", "--clear", "--stagger", "5m"]).is_err());
        assert!(pkg(&["schedule", "daily"]).is_err());
    }

    #[test]
    fn client_show() {
        let c = HqCli::try_parse_from(["hq", "client", "show", "c1", "--json"]).unwrap();
        match c.cmd {
            HqCmd::Client {
                cmd: ClientCmd::Show { name, json },
                ..
            } => {
                assert_eq!(name, "c1");
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        assert!(HqCli::try_parse_from(["hq", "client", "show"]).is_err());
    }
}
