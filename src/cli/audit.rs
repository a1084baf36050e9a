//! `hq snapshot create`, `hq audit create`, `hq audit status`: parse, ask
//! HQ, show (a table, or the documented JSON). Holds no state.

use super::args::{AuditCmd, SnapshotCmd};
use super::client::{AdminClient, CliError, Target};
use super::render::table;
use super::{parse_duration, parse_job, print_json, unexpected, EXIT_OK};
use crate::proto::audit::Selection;
use crate::proto::{AdminRequest, AdminResponse, AuditMaster, AuditStatusView, NodeName};
use std::path::PathBuf;

/// `--root` of an agent: an existing directory, made absolute.
pub(crate) fn check_root(root: PathBuf) -> Result<PathBuf, CliError> {
    let abs = std::fs::canonicalize(&root)
        .map_err(|e| CliError::Usage(format!("--root {}: {e}", root.display())))?;
    if !abs.is_dir() {
        return Err(CliError::Usage(format!(
            "--root {} is not a directory",
            root.display()
        )));
    }
    Ok(abs)
}

fn name(flag: &str, s: &str) -> Result<NodeName, CliError> {
    NodeName::new(s).map_err(|e| CliError::Usage(format!("{flag}: {e}")))
}

fn globs(files: &[String]) -> Result<(), CliError> {
    for g in files {
        crate::proto::audit::check_glob(g).map_err(CliError::Usage)?;
    }
    Ok(())
}

fn ms(flag: &str, s: Option<String>) -> Result<Option<u64>, CliError> {
    Ok(s.map(|s| parse_duration(flag, &s))
        .transpose()?
        .map(|d| d.as_millis() as u64))
}

/// `hq snapshot ...`.
pub(crate) async fn snapshot(cmd: SnapshotCmd, t: &Target) -> Result<u8, CliError> {
    let SnapshotCmd::Create {
        client,
        name: snap,
        files,
        no_packages,
        dpkg,
        wait,
        expires,
        json,
    } = cmd;
    let client = name("--client", &client)?;
    globs(&files)?;
    let wait_ms = parse_duration("--wait", &wait)?.as_millis() as u64;
    let expires_ms = ms("--expires", expires)?;
    let mut c = AdminClient::connect(t).await?;
    match c
        .request(AdminRequest::SnapshotCreate {
            client,
            name: snap,
            select: Selection {
                files,
                packages: !no_packages,
                dpkg,
            },
            expires_ms,
            wait_ms,
        })
        .await?
    {
        AdminResponse::Snapshot(v) if json => print_json(&v)?,
        AdminResponse::Snapshot(v) if v.done => outln!(
            "snapshot {} of {}: {} objects, {} files (job {})",
            v.snapshot,
            v.client,
            v.objects,
            v.files,
            v.job
        ),
        AdminResponse::Snapshot(v) => outln!(
            "snapshot {} of {} not finished yet (job {}: hq job wait {})",
            v.snapshot,
            v.client,
            v.job,
            v.job
        ),
        other => return Err(unexpected(other)),
    }
    Ok(EXIT_OK)
}

/// `hq audit ...`.
pub(crate) async fn audit(cmd: AuditCmd, t: &Target) -> Result<u8, CliError> {
    match cmd {
        AuditCmd::Create {
            master,
            snapshot,
            dest,
            relays,
            files,
            no_packages,
            dpkg,
            expires,
            wait,
            json,
        } => {
            let master = match (master, snapshot) {
                (Some(m), None) => AuditMaster::Client(name("--master", &m)?),
                (None, Some(s)) => AuditMaster::Snapshot(s),
                _ => {
                    return Err(CliError::Usage(
                        "give exactly one of --master CLIENT and --snapshot SNAP".into(),
                    ))
                }
            };
            if dest != crate::cli::args::Dest::AllLowerClients {
                return Err(CliError::Usage(
                    "an audit takes --dest all-lower-clients --relay NAME".into(),
                ));
            }
            let dest = relays
                .iter()
                .map(|r| name("--relay", r))
                .collect::<Result<Vec<_>, _>>()?;
            globs(&files)?;
            let wait_ms = parse_duration("--wait", &wait)?.as_millis() as u64;
            let expires_ms = ms("--expires", expires)?;
            let mut c = AdminClient::connect(t).await?;
            match c
                .request(AdminRequest::AuditCreate {
                    master,
                    dest,
                    files: (!files.is_empty()).then_some(files),
                    no_packages,
                    dpkg,
                    expires_ms,
                    wait_ms,
                })
                .await?
            {
                AdminResponse::AuditCreated { audit, snapshot } if json => {
                    print_json(&serde_json::json!({ "audit": audit, "snapshot": snapshot }))?
                }
                AdminResponse::AuditCreated { audit, .. } => outln!("{audit}"),
                other => return Err(unexpected(other)),
            }
        }
        AuditCmd::Status { audit, json } => {
            let audit = parse_job(&audit)?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::AuditStatus { audit }).await? {
                AdminResponse::AuditStatus(v) if json => print_json(&v)?,
                AdminResponse::AuditStatus(v) => out!("{}", render(&v)),
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(EXIT_OK)
}

/// The table `hq audit status` prints.
pub(crate) fn render(v: &AuditStatusView) -> String {
    let mut s = format!(
        "audit {} against {}: {}\n",
        v.audit,
        v.master,
        if v.done { "done" } else { "in progress" }
    );
    let line = |t: &crate::proto::AuditTotals| {
        format!(
            "compliant {}  non_compliant {}  error {}  pending {}",
            t.compliant, t.non_compliant, t.error, t.pending
        )
    };
    s.push_str(&format!("totals: {}\n", line(&v.totals)));
    let mut rt = table(&["relay", "compliant", "non_compliant", "error", "pending"]);
    for r in &v.relays {
        rt.add_row(vec![
            r.relay.to_string(),
            r.totals.compliant.to_string(),
            r.totals.non_compliant.to_string(),
            r.totals.error.to_string(),
            r.totals.pending.to_string(),
        ]);
    }
    s.push_str(&format!("{rt}\n"));
    let mut dt = table(&[
        "client", "relay", "state", "object", "kind", "master", "target",
    ]);
    let mut any = false;
    for c in &v.clients {
        if c.state == "compliant" || c.state == "pending" {
            continue;
        }
        any = true;
        if c.differences.is_empty() {
            dt.add_row(vec![
                c.client.to_string(),
                c.relay.to_string(),
                c.state.clone(),
                c.reason.clone().unwrap_or_default(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for d in &c.differences {
            dt.add_row(vec![
                c.client.to_string(),
                c.relay.to_string(),
                c.state.clone(),
                d.object.clone(),
                d.kind.clone(),
                d.master.clone().unwrap_or_else(|| "-".into()),
                d.target.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if any {
        s.push_str(&format!("{dt}\n"));
    }
    s
}
