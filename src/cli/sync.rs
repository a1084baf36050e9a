//! `hq sync`: parse, ask HQ, show the plan (a table, or the documented
//! JSON). Holds no state; the planning is HQ's.

use super::args::SyncArgs;
use super::client::{AdminClient, CliError, Target};
use super::render::table;
use super::{parse_job, print_json, unexpected, EXIT_OK};
use crate::proto::audit::ObjectId;
use crate::proto::sync::{DpkgMatch, SyncRequest, SyncView};
use crate::proto::{AdminRequest, AdminResponse, NodeName};

/// `hq sync AUDIT ...`.
pub(crate) async fn sync(a: SyncArgs, t: &Target) -> Result<u8, CliError> {
    let req = SyncRequest {
        audit: parse_job(&a.audit)?,
        clients: a
            .clients
            .iter()
            .map(|c| NodeName::new(c).map_err(|e| CliError::Usage(format!("--client: {e}"))))
            .collect::<Result<_, _>>()?,
        objects: a
            .objects
            .iter()
            .map(|o| ObjectId::parse(o).map_err(CliError::Usage))
            .collect::<Result<_, _>>()?,
        remove_extra: a.remove_extra,
        include_bundles: a.include_bundles,
        matches: a
            .matches
            .iter()
            .map(|m| DpkgMatch::parse(m).map_err(CliError::Usage))
            .collect::<Result<_, _>>()?,
        dry_run: a.dry_run,
    };
    let mut c = AdminClient::connect(t).await?;
    match c.request(AdminRequest::Sync(req)).await? {
        AdminResponse::Sync(v) if a.json => print_json(&v)?,
        AdminResponse::Sync(v) => out!("{}", render(&v)),
        other => return Err(unexpected(other)),
    }
    Ok(EXIT_OK)
}

/// The table `hq sync` prints.
pub(crate) fn render(v: &SyncView) -> String {
    let mut s = match (v.batch, v.dry_run) {
        (_, true) => format!("sync plan (dry run): {} jobs\n", v.jobs.len()),
        (Some(b), false) => format!("batch {b}: {} jobs (hq job wait {b})\n", v.jobs.len()),
        (None, false) => "nothing to sync\n".to_string(),
    };
    if !v.jobs.is_empty() {
        let mut t = table(&["job", "package", "clients", "objects", "installs"]);
        for j in &v.jobs {
            t.add_row(vec![
                j.job.map_or("-".into(), |j| j.to_string()),
                j.package.clone().unwrap_or_else(|| "-".into()),
                j.clients
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                j.objects.join(" "),
                j.installs.join(" "),
            ]);
        }
        s.push_str(&format!("{t}\n"));
    }
    for (what, list) in [
        ("unmatched", &v.unmatched),
        ("excluded (bundle)", &v.excluded),
    ] {
        for u in list {
            s.push_str(&format!(
                "{what}: {} on {}\n",
                u.object,
                u.clients
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    s
}
