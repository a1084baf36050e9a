//! Shell completions (`hq completions SHELL`, also `relay` and `agent`) and
//! man pages (`hq man --out DIR`, committed under deploy/man), both made
//! from the clap definitions as the binaries parse them (`--config` included).

use super::args::{AgentCli, HqCli, RelayCli};
use super::CliError;
use clap::{Command, CommandFactory};
use std::path::Path;

/// Prints the completion script of binary `bin` for `shell`.
pub(crate) fn completions<C: CommandFactory>(shell: clap_complete::Shell, bin: &str) {
    let mut cmd = super::config::command::<C>();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut out);
    out!("{}", String::from_utf8_lossy(&out));
}

/// Every man page: file name and content (roff).
pub fn pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut out = Vec::new();
    for cmd in [
        super::config::command::<HqCli>(),
        super::config::command::<RelayCli>(),
        super::config::command::<AgentCli>(),
    ] {
        let mut cmd = cmd;
        cmd.build();
        render(&cmd, None, &mut out)?;
    }
    Ok(out)
}

fn render(
    cmd: &Command,
    prefix: Option<&str>,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), std::io::Error> {
    let name = match prefix {
        Some(p) => format!("{p}-{}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    // clap wants a 'static name; this runs once per page in a short-lived command.
    let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
    let page = cmd.clone().name(static_name);
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    out.push((format!("{name}.1"), buf));
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        render(sub, Some(&name), out)?;
    }
    Ok(())
}

/// `hq man --out DIR`.
pub(crate) fn man(dir: &Path) -> Result<(), CliError> {
    let err = |e: std::io::Error| {
        CliError::Other(format!(
            "cannot write man pages into {}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let pages = pages().map_err(err)?;
    for (name, body) in &pages {
        std::fs::write(dir.join(name), body).map_err(err)?;
    }
    outln!("wrote {} man pages into {}", pages.len(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// deploy/man holds exactly what `hq man` writes today.
    #[test]
    fn committed_man_pages_are_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/man");
        let fix = "run `cargo run --bin hq -- man --out deploy/man` and commit the result";
        let pages = pages().unwrap();
        let mut want: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        want.sort();
        let mut have: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; {fix}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        assert_eq!(have, want, "deploy/man has other pages: {fix}");
        for (name, body) in &pages {
            let on_disk = std::fs::read(dir.join(name)).unwrap();
            assert!(on_disk == *body, "deploy/man/{name} is out of date: {fix}");
        }
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut cmd = crate::cli::config::command::<HqCli>();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "hq", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["token", "serve", "--config", "completions"] {
            assert!(text.contains(word), "{word} missing from bash completions");
        }
    }
}
