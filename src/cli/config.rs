//! The configuration of every `serve` (`hq serve`, `relay serve`, `agent
//! serve`, `agent swarm`): `--config FILE` (TOML), then `RELAYTREE_<KEY>`
//! environment variables, then flags, each overriding the one before
//! (read with figment). Keys are the long flag names with `_` for `-`
//! (`data_dir`, `listen`, `idle_timeout`, ...): whatever flags a `serve`
//! has, its config file takes, so this module names no flag itself.
//!
//! Owns figment; never decides what a value means (the flags' own parsers do).

use clap::{ArgAction, Command, CommandFactory, Parser};
use figment::providers::{Format, Toml};
use figment::value::Value;
use figment::Figment;
use std::ffi::OsString;
use std::path::PathBuf;

/// The subcommands that take `--config`.
const SERVES: &[&str] = &["serve", "swarm"];
/// Environment variables that override a config file start with this.
pub const ENV_PREFIX: &str = "RELAYTREE_";

/// A config file or variable that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The command line of `C` as the binaries parse it: every serve takes `--config`.
pub fn command<C: CommandFactory>() -> Command {
    let mut cmd = C::command();
    for name in SERVES {
        if cmd.find_subcommand(name).is_some() {
            cmd = cmd.mut_subcommand(*name, |sc| {
                sc.arg(
                    clap::Arg::new("config")
                        .long("config")
                        .value_name("FILE")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help(
                            "Read settings from this TOML file: keys are the long flags with _ \
                             for - (data_dir = \"/var/lib/relaytree\"); RELAYTREE_<KEY> \
                             variables override it, flags override both",
                        ),
                )
            });
        }
    }
    cmd
}

/// Why parsing failed.
#[derive(Debug)]
pub enum Failure {
    /// The command line itself.
    Clap(clap::Error),
    /// The config file or a `RELAYTREE_*` variable.
    Config(ConfigError),
}

/// The subcommand named on the command line (the first word that is not an option).
fn subcommand_of(args: &[OsString]) -> Option<String> {
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'))
        .map(|a| a.into_owned())
}

/// The value of `--config` after the subcommand, if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// A value as the words a flag would take (an array: the flag repeated).
fn words(v: &Value) -> Option<Vec<String>> {
    Some(match v {
        Value::String(_, s) => vec![s.clone()],
        Value::Char(_, c) => vec![c.to_string()],
        Value::Bool(_, b) => vec![b.to_string()],
        Value::Num(_, n) => vec![if let Some(i) = n.to_i128() {
            i.to_string()
        } else {
            n.to_f64()?.to_string()
        }],
        Value::Array(_, items) => {
            let mut out = Vec::new();
            for i in items {
                match i {
                    Value::Array(..) | Value::Dict(..) => return None,
                    other => out.extend(words(other)?),
                }
            }
            out
        }
        Value::Empty(..) | Value::Dict(..) => return None,
    })
}

/// Parses `args` (the whole command line) as `C`, with the config file and
/// the variables (read through `env`) under the flags of a serve.
pub fn try_parse_from<C: Parser>(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<C, Failure> {
    let mut cmd = command::<C>();
    if let Some(sub) = subcommand_of(&args).filter(|s| SERVES.contains(&s.as_str())) {
        if let Some(sc) = cmd.find_subcommand(&sub) {
            let defaults = layered(sc, config_path(&args), env).map_err(Failure::Config)?;
            cmd = cmd.mut_subcommand(&sub, |mut sc| {
                for (id, vals) in defaults {
                    sc = sc.mut_arg(id, |a| a.default_values(vals).required(false));
                }
                sc
            });
        }
    }
    let m = cmd.try_get_matches_from(args).map_err(Failure::Clap)?;
    C::from_arg_matches(&m).map_err(Failure::Clap)
}

/// The values the file and the environment give the arguments of `sc`
/// (argument id -> words), checked with each flag's own parser.
fn layered(
    sc: &Command,
    file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    // key (flag name with _) -> argument
    let args: Vec<(String, &clap::Arg)> = sc
        .get_arguments()
        .filter(|a| a.get_id() != "config" && a.get_id() != "help" && !a.is_positional())
        .filter_map(|a| Some((a.get_long()?.replace('-', "_"), a)))
        .collect();
    let known: Vec<&str> = args.iter().map(|(k, _)| k.as_str()).collect();
    let mut fig = Figment::new();
    let file_text = file.as_ref().map(|p| p.display().to_string());
    if let Some(path) = &file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "config file {}: not found (or not a file)",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    // Only the variables of this command's own keys (others, such as
    // RELAYTREE_HQ for admin commands, are not ours to judge).
    let mut from_env = Vec::new();
    for k in &known {
        let var = format!("{ENV_PREFIX}{}", k.to_uppercase());
        if let Some(v) = env(&var) {
            from_env.push((k.to_string(), var, v));
        }
    }
    let dict: figment::value::Dict = fig.extract().map_err(|e| {
        ConfigError(format!(
            "config file {}: {e}",
            file_text.clone().unwrap_or_default()
        ))
    })?;
    let mut out = Vec::new();
    for (key, value) in &dict {
        let norm = key.replace('-', "_");
        let Some((_, arg)) = args.iter().find(|(k, _)| *k == norm) else {
            return Err(ConfigError(format!(
                "config file {}: unknown key {key:?} for {} (known: {})",
                file_text.clone().unwrap_or_default(),
                sc.get_name(),
                known.join(", ")
            )));
        };
        if from_env.iter().any(|(k, _, _)| *k == norm) {
            continue;
        }
        let what = format!(
            "config file {}: key {key:?}",
            file_text.clone().unwrap_or_default()
        );
        let vals = words(value).ok_or_else(|| {
            ConfigError(format!(
                "{what}: expected a string, number, boolean or array of them"
            ))
        })?;
        out.push((arg.get_id().to_string(), check(sc, arg, vals, &what)?));
    }
    // A variable is one flag's word, as typed after the flag.
    for (key, var, raw) in from_env {
        let Some((_, arg)) = args.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        let what = format!("environment variable {var}");
        out.push((arg.get_id().to_string(), check(sc, arg, vec![raw], &what)?));
    }
    Ok(out)
}

/// Runs each word through the argument's own parser, as clap would for a
/// flag; the error names `what` (the file and key, or the variable).
fn check(
    sc: &Command,
    arg: &clap::Arg,
    vals: Vec<String>,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    let many = matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    if vals.len() != 1 && !many {
        return Err(ConfigError(format!(
            "{what}: expects one value, not {}",
            vals.len()
        )));
    }
    // The subcommand alone, nothing required: clap parses the value exactly
    // as it would parse the flag.
    let probe = sc
        .clone()
        .no_binary_name(true)
        .mut_args(|a| a.required(false));
    let long = arg.get_long().unwrap_or_default();
    for v in &vals {
        let v = if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            match v.as_str() {
                "true" | "false" => continue,
                _ => {
                    return Err(ConfigError(format!(
                        "{what}: expected true or false, not {v:?}"
                    )))
                }
            }
        } else {
            v
        };
        probe
            .clone()
            .try_get_matches_from([format!("--{long}={v}")])
            .map_err(|e| {
                let msg = e.to_string();
                let first = msg
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                ConfigError(format!("{what}: {first}"))
            })?;
    }
    Ok(vals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{AgentCli, AgentCmd, HqCli, HqCmd};

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn hq(file: &str, env: &[(&str, &str)], extra: &[&str]) -> Result<HqCmd, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.toml");
        std::fs::write(&path, file).unwrap();
        let mut a = vec!["hq", "serve", "--config", path.to_str().unwrap()];
        a.extend_from_slice(extra);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let look = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match try_parse_from::<HqCli>(args(&a), &look) {
            Ok(c) => Ok(c.cmd),
            Err(Failure::Clap(e)) => Err(e.to_string()),
            Err(Failure::Config(e)) => Err(e.to_string()),
        }
    }

    fn listen_of(c: HqCmd) -> String {
        match c {
            HqCmd::Serve { listen, .. } => listen,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_then_env_then_flag() {
        let file = "data_dir = \"/d\"\nlisten = \"127.0.0.2:0\"\n";
        assert_eq!(listen_of(hq(file, &[], &[]).unwrap()), "127.0.0.2:0");
        let env = [("RELAYTREE_LISTEN", "127.0.0.3:0")];
        assert_eq!(listen_of(hq(file, &env, &[]).unwrap()), "127.0.0.3:0");
        assert_eq!(
            listen_of(hq(file, &env, &["--listen", "127.0.0.4:0"]).unwrap()),
            "127.0.0.4:0"
        );
        // Dashes are accepted as well.
        let c = hq(
            "data-dir = \"/d\"\nlisten = \"x:0\"\nidle-timeout = \"30s\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(listen_of(c), "x:0");
    }

    #[test]
    fn bad_keys_and_values_name_the_key_and_file() {
        for (file, env, want) in [
            (
                "data_dir = \"/d\"\nlisten = \"a:0\"\nlisen = 1\n",
                &[][..],
                "unknown key \"lisen\"",
            ),
            (
                "data_dir = \"/d\"\nlisten = [\"a:0\", \"b:0\"]\n",
                &[][..],
                "key \"listen\": expects one value",
            ),
            ("data_dir = \"/d\"\nlisten = \n", &[][..], "hq.toml"),
            (
                "data_dir = \"/d\"\nlisten = { a = 1 }\n",
                &[][..],
                "key \"listen\"",
            ),
        ] {
            let e = hq(file, env, &[]).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
            assert!(e.contains("hq.toml"), "{e:?} names no file");
        }
        let e = hq("listen = \"a:0\"\n", &[], &[]).unwrap_err();
        assert!(
            e.contains("--data-dir"),
            "required flag still required: {e}"
        );
    }

    /// The sample files under deploy/config are valid for their serve.
    #[test]
    fn sample_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        let none = |_: &str| None;
        for (bin, file) in [
            ("hq", "hq.toml"),
            ("relay", "relay.toml"),
            ("agent", "agent.toml"),
        ] {
            let a = args(&[bin, "serve", "--config", &p(file)]);
            let r = match bin {
                "hq" => try_parse_from::<HqCli>(a, &none).map(drop),
                "relay" => try_parse_from::<crate::cli::args::RelayCli>(a, &none).map(drop),
                _ => try_parse_from::<AgentCli>(a, &none).map(drop),
            };
            assert!(r.is_ok(), "{file}: {r:?}");
        }
    }

    #[test]
    fn numbers_and_flags_of_an_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "identity = \"/i\"\ndata_dir = \"/d\"\nrelay = \"r:1\"\nmax_parallel = 7\n",
        )
        .unwrap();
        let a = args(&["agent", "serve", "--config", path.to_str().unwrap()]);
        let c = match try_parse_from::<AgentCli>(a.clone(), &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        };
        match c.cmd {
            AgentCmd::Serve { max_parallel, .. } => assert_eq!(max_parallel, 7),
            other => panic!("{other:?}"),
        }
        std::fs::write(
            &path,
            "identity = \"/i\"\ndata_dir = \"/d\"\nrelay = \"r:1\"\nmax_parallel = \"many\"\n",
        )
        .unwrap();
        match try_parse_from::<AgentCli>(a, &|_| None) {
            Err(Failure::Config(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("max_parallel") && e.contains("agent.toml"),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
