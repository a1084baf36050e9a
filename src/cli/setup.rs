//! `hq init` and `hq cert issue`: the CA and the identities it signs.

use super::args::IssueRole;
use super::CliError;
use crate::proto::{NodeName, Role};
use crate::tls::Ca;
use std::path::Path;

/// Creates the CA, HQ's identity (name `hq`) and an admin identity (`admin`).
pub fn init(data_dir: &Path, trust_domain: &str) -> Result<(), CliError> {
    let ca_dir = crate::hq::layout::ca(data_dir);
    if ca_dir.join("ca.key").exists() {
        return Err(CliError::Usage(format!(
            "{} already holds a CA; refusing to overwrite it",
            data_dir.display()
        )));
    }
    let ca = Ca::create(trust_domain)?;
    ca.save(&ca_dir)?;
    crate::tls::SigningKey::create(&ca_dir)?;
    ca.issue(Role::Hq, &name("hq")?, &crate::hq::layout::hq(data_dir))?;
    ca.issue(
        Role::Admin,
        &name("admin")?,
        &crate::hq::layout::admin(data_dir),
    )?;
    Ok(())
}

fn name(s: &str) -> Result<NodeName, CliError> {
    NodeName::new(s).map_err(|e| CliError::Usage(e.to_string()))
}

/// `hq cert issue`: as [`issue`], but an identity already in a directory it
/// would write is an error naming that directory, unless `force`. Checked
/// for every directory before any is written.
pub fn issue_new(
    data_dir: &Path,
    role: IssueRole,
    prefix: &str,
    out: &Path,
    count: Option<u32>,
    force: bool,
) -> Result<Vec<std::path::PathBuf>, CliError> {
    if !force {
        let dirs: Vec<std::path::PathBuf> = match count {
            None | Some(0) => vec![out.to_path_buf()],
            Some(n) => (1..=n)
                .map(|i| out.join(format!("{prefix}-{i:05}")))
                .collect(),
        };
        if let Some(d) = dirs.iter().find(|d| crate::tls::Ca::holds_identity(d)) {
            return Err(CliError::Usage(format!(
                "{} already holds an identity; refusing to overwrite it (use --force to replace it)",
                d.display()
            )));
        }
    }
    issue(data_dir, role, prefix, out, count)
}

/// Issues one identity into `out`, or `count` identities into
/// `out/NAME-00001` ... `out/NAME-N`. Returns the directories written.
pub fn issue(
    data_dir: &Path,
    role: IssueRole,
    prefix: &str,
    out: &Path,
    count: Option<u32>,
) -> Result<Vec<std::path::PathBuf>, CliError> {
    let role = match role {
        IssueRole::Relay => Role::Relay,
        IssueRole::Agent => Role::Agent,
        IssueRole::Admin => Role::Admin,
    };
    let ca_dir = crate::hq::layout::ca(data_dir);
    let ca = Ca::load(&ca_dir)?;
    // Every identity carries HQ's public job-signing key.
    let sign_pub = ca_dir.join(crate::tls::SIGN_PUB);
    let pubkey = std::fs::read(&sign_pub)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", sign_pub.display())))?;
    let issue_one = |nm: &NodeName, dir: &Path| -> Result<(), CliError> {
        ca.issue(role, nm, dir)?;
        let p = dir.join(crate::tls::SIGN_PUB);
        std::fs::write(&p, &pubkey)
            .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", p.display())))
    };
    match count {
        None => {
            issue_one(&name(prefix)?, out)?;
            Ok(vec![out.to_path_buf()])
        }
        Some(0) => Err(CliError::Usage("--count must be at least 1".into())),
        Some(n) => {
            let mut dirs = Vec::with_capacity(n as usize);
            for i in 1..=n {
                let nm = format!("{prefix}-{i:05}");
                let dir = out.join(&nm);
                issue_one(&name(&nm)?, &dir)?;
                dirs.push(dir);
            }
            Ok(dirs)
        }
    }
}
