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

/// Default validity of an identity `hq cert issue` writes (days): about ten
/// years, as before the flag existed. Admin identities and those written by
/// `hq init` are never renewed, so a short default would stop a tree.
pub const DEFAULT_DAYS: u32 = 3650;

/// `hq cert issue`: as [`issue`], but an identity already in a directory it
/// would write is an error naming that directory, unless `force`. Checked
/// for every directory before any is written.
pub fn issue_new(
    data_dir: &Path,
    role: IssueRole,
    prefix: &str,
    out: &Path,
    count: Option<u32>,
    days: u32,
    force: bool,
) -> Result<Vec<std::path::PathBuf>, CliError> {
    let items = targets(prefix, out, count)?;
    if !force {
        if let Some((_, d)) = items.iter().find(|(_, d)| Ca::holds_identity(d)) {
            return Err(CliError::Usage(format!(
                "{} already holds an identity; refusing to overwrite it (use --force to replace it)",
                d.display()
            )));
        }
    }
    issue(data_dir, role, &items, days)?;
    Ok(items.into_iter().map(|(_, d)| d).collect())
}

/// The names and directories `hq cert issue` writes: `out` for one, or
/// `out/PREFIX-00001` ... `out/PREFIX-N` with `count`.
fn targets(
    prefix: &str,
    out: &Path,
    count: Option<u32>,
) -> Result<Vec<(NodeName, std::path::PathBuf)>, CliError> {
    match count {
        None => Ok(vec![(name(prefix)?, out.to_path_buf())]),
        Some(0) => Err(CliError::Usage("--count must be at least 1".into())),
        Some(n) => (1..=n)
            .map(|i| {
                let nm = format!("{prefix}-{i:05}");
                Ok((name(&nm)?, out.join(nm)))
            })
            .collect(),
    }
}

/// Issues the identity `name` into `out` with the default validity.
pub fn issue_one(data_dir: &Path, role: IssueRole, nm: &str, out: &Path) -> Result<(), CliError> {
    issue(
        data_dir,
        role,
        &[(name(nm)?, out.to_path_buf())],
        DEFAULT_DAYS,
    )
}

/// Issues an identity for each (name, directory), valid for `days`, each
/// carrying HQ's public job-signing key: in parallel, made durable by one
/// filesystem sync at the end.
fn issue(
    data_dir: &Path,
    role: IssueRole,
    items: &[(NodeName, std::path::PathBuf)],
    days: u32,
) -> Result<(), CliError> {
    let role = match role {
        IssueRole::Relay => Role::Relay,
        IssueRole::Agent => Role::Agent,
        IssueRole::Admin => Role::Admin,
    };
    if days == 0 {
        return Err(CliError::Usage("--days must be at least 1".into()));
    }
    let ca_dir = crate::hq::layout::ca(data_dir);
    let ca = Ca::load(&ca_dir)?;
    // Every identity carries HQ's public job-signing key.
    let sign_pub = ca_dir.join(crate::tls::SIGN_PUB);
    let pubkey = std::fs::read(&sign_pub)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", sign_pub.display())))?;
    let validity = std::time::Duration::from_secs(u64::from(days) * 24 * 3600);
    ca.issue_many(
        role,
        items,
        validity,
        &[(crate::tls::SIGN_PUB, pubkey.as_slice())],
    )?;
    Ok(())
}
