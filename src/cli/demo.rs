//! `hq demo`: a real tree on loopback (HQ, relay r1, relay r2 under r1, five
//! agents, mutual TLS, sled stores) in one process; a job on which some
//! leaves fail, the status, a rerun of the failed leaves, the final status;
//! then a package added to the depot and installed through both relays.

use super::client::{AdminClient, Target};
use super::{render, setup, CliError};
use crate::agent::AgentConfig;
use crate::link::Timing;
use crate::proto::{Action, AdminRequest, AdminResponse, JobId, JobStatus, NodeName, RunSpec};
use crate::relay::RelayConfig;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Other(e.to_string())
}

/// How the demo shows its steps: as the real commands print them, or with
/// `--json` one object per line: `{"note": TEXT}` for narration, and
/// `{"command": "hq ...", "result": JSON}` where `result` is what that
/// command prints with `--json`.
#[derive(Clone, Copy)]
struct Show {
    json: bool,
}

impl Show {
    fn note(&self, text: &str) {
        if self.json {
            outln!("{}", serde_json::json!({ "note": text }));
        } else {
            outln!("{text}");
        }
    }

    /// One command and what it printed (`human`), or its `--json` result.
    fn step<T: serde::Serialize>(&self, command: &str, human: &str, result: &T) {
        if self.json {
            outln!(
                "{}",
                serde_json::json!({ "command": command, "result": result })
            );
        } else {
            out!("\n$ {command}\n{human}");
            if !human.ends_with('\n') {
                outln!();
            }
        }
    }
}

fn all_leaves() -> render::Listing {
    render::Listing::new(&[], true, None, false)
}

/// Runs the demo in `dir` (a temporary directory when `None`).
pub async fn run(dir: Option<&Path>, json: bool) -> Result<(), CliError> {
    let tmp;
    let root = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::tempdir().map_err(err)?;
            tmp.path().to_path_buf()
        }
    };
    let stop = CancellationToken::new();
    let r = demo(&root, &stop, Show { json }).await;
    stop.cancel();
    // Give the servers a moment to flush and close their sessions.
    tokio::time::sleep(Duration::from_millis(200)).await;
    r
}

async fn demo(root: &Path, stop: &CancellationToken, show: Show) -> Result<(), CliError> {
    let hq_dir = root.join("hq");
    show.note(&format!("== relaytree demo in {}", root.display()));
    setup::init(&hq_dir, "demo.relaytree.local")?;
    let timing = Timing::default();

    let (listener, hq_addr) = crate::node::bind_announce("127.0.0.1:0", &hq_dir)
        .await
        .map_err(err)?;
    show.note(&format!("hq listening on {hq_addr}"));
    {
        let (d, s) = (hq_dir.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::hq::run(listener, &d, timing, crate::hq::DEFAULT_RETENTION, s).await
            {
                eprintln!("hq: {e}");
            }
        });
    }
    // r1 under HQ, r2 under r1.
    let mut relay_addrs = Vec::new();
    for (name, parent) in [("r1", hq_addr.to_string()), ("r2", String::new())] {
        let parent = if parent.is_empty() {
            relay_addrs
                .first()
                .cloned()
                .ok_or_else(|| err("r1 not started"))?
        } else {
            parent
        };
        let dir = root.join(name);
        setup::issue_one(
            &hq_dir,
            super::args::IssueRole::Relay,
            name,
            &dir.join("id"),
        )?;
        let (listener, addr) = crate::node::bind_announce("127.0.0.1:0", &dir)
            .await
            .map_err(err)?;
        show.note(&format!(
            "relay {name} listening on {addr}, parent {parent}"
        ));
        let cfg = RelayConfig {
            identity: dir.join("id"),
            data_dir: dir.clone(),
            parent: vec![parent],
            timing,
            limits: Default::default(),
        };
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::relay::run(listener, cfg, s).await {
                eprintln!("relay: {e}");
            }
        });
        relay_addrs.push(addr.to_string());
    }
    let agents = [("c1", 0), ("c2", 0), ("c3", 1), ("c4", 1), ("c5", 1)];
    for (name, relay) in agents {
        let dir = root.join(name);
        setup::issue_one(
            &hq_dir,
            super::args::IssueRole::Agent,
            name,
            &dir.join("id"),
        )?;
        let mut cfg = AgentConfig::new(
            dir.join("id"),
            dir.clone(),
            relay_addrs[relay].clone().into(),
        );
        // Each agent sees its own "machine" for the audit act.
        cfg.options.root = make_root(&dir, name)?;
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::agent::run(cfg, s).await {
                eprintln!("agent: {e}");
            }
        });
    }
    show.note("agents c1 c2 under r1; c3 c4 c5 under r2");

    let target = Target {
        hq: Some(hq_addr.to_string()),
        identity: Some(crate::hq::layout::admin(&hq_dir)),
        data_dir: None,
    };
    let mut admin = AdminClient::connect(&target).await?;
    // Wait until HQ has heard of all five clients.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let AdminResponse::Tree(t) = admin.request(AdminRequest::Tree).await? {
            if t.clients as usize == agents.len() {
                show.step("hq tree", &render::tree(&t), &t);
                break;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err("the tree did not come up within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // c2 and c4 fail on their first attempt only.
    let script = r#"echo "hello from $RELAYTREE_CLIENT (attempt $RELAYTREE_ATTEMPT via $RELAYTREE_RELAY)"; case "$RELAYTREE_CLIENT" in c2|c4) [ "$RELAYTREE_ATTEMPT" -gt 1 ] || { echo "$RELAYTREE_CLIENT: disk full" >&2; exit 3; };; esac"#;
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    show.note("a job that fails on c2 and c4 the first time:");
    let action = Action::Run(RunSpec {
        argv,
        env: vec![],
        cwd: None,
        timeout_ms: Some(30_000),
    });
    let shown = "hq job create --dest all-lower-clients --relay r1 -- sh -c '...'";
    let job = create_under_r1(&mut admin, show, action, shown).await?;
    let s = wait(&mut admin, job).await?;
    show.step(
        &format!("hq job status {job} --clients"),
        &render::status(&s, &all_leaves()),
        &s,
    );
    if let AdminResponse::Output(o) = admin
        .request(AdminRequest::Output {
            job,
            client: NodeName::new("c2").map_err(err)?,
        })
        .await?
    {
        show.step(&format!("hq job output {job} c2"), &render::output(&o), &o);
    }

    match admin
        .request(AdminRequest::Rerun {
            job,
            expired: false,
        })
        .await?
    {
        AdminResponse::Rerun(r) => show.step(
            &format!("hq job rerun {job} --failed"),
            &render::rerun(&r),
            &r,
        ),
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    }
    let s = wait(&mut admin, job).await?;
    show.step(
        &format!("hq job status {job} --clients"),
        &render::status(&s, &all_leaves()),
        &s,
    );
    show.note(&format!(
        "every leaf accounted for: {}, {} succeeded; c1 c3 c5 ran once, c2 c4 twice.",
        render::count(s.totals.total(), "leaf", "leaves"),
        s.totals.succeeded
    ));
    packages(root, &target, &mut admin, show).await?;
    audit_and_sync(&mut admin, show).await
}

/// An agent's root: /etc/demo/{app,limits}.conf; app.conf drifted on c3
/// and c5 (content), limits.conf on c4 (mode).
fn make_root(dir: &Path, name: &str) -> Result<std::path::PathBuf, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let r = dir.join("root");
    std::fs::create_dir_all(r.join("etc/demo")).map_err(err)?;
    let level = if matches!(name, "c3" | "c5") { 2 } else { 1 };
    let mode = if name == "c4" { 0o600 } else { 0o644 };
    for (file, text, mode) in [
        ("app.conf", format!("level = {level}\n"), 0o644),
        ("limits.conf", "open_files = 1024\n".to_string(), mode),
    ] {
        let f = r.join("etc/demo").join(file);
        std::fs::write(&f, text).map_err(err)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    std::fs::canonicalize(&r).map_err(err)
}

/// Audit r2's clients against c1, sync them in one batch, audit again.
async fn audit_and_sync(admin: &mut AdminClient, show: Show) -> Result<(), CliError> {
    show.note("audit r2's clients against c1, then bring them in line:");
    let audit = match admin
        .request(AdminRequest::AuditCreate {
            master: crate::proto::AuditMaster::Client(NodeName::new("c1").map_err(err)?),
            dest: vec![NodeName::new("r2").map_err(err)?],
            files: Some(vec!["/etc/demo/*.conf".into()]),
            no_packages: false,
            dpkg: false,
            expires_ms: Some(3_600_000),
            wait_ms: 30_000,
        })
        .await?
    {
        AdminResponse::AuditCreated { audit, .. } => audit,
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    };
    show.step(
        "hq audit create --master c1 --dest all-lower-clients --relay r2 --files '/etc/demo/*.conf'",
        &format!("{audit}\n"),
        &serde_json::json!({ "audit": audit }),
    );
    wait(admin, audit).await?;
    let v = audit_status(admin, audit).await?;
    show.step(
        &format!("hq audit status {audit}"),
        &super::audit::render(&v),
        &v,
    );
    let plan = match admin
        .request(AdminRequest::Sync(crate::proto::sync::SyncRequest {
            audit,
            ..Default::default()
        }))
        .await?
    {
        AdminResponse::Sync(p) => p,
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    };
    show.step(
        &format!("hq sync {audit}"),
        &super::sync::render(&plan),
        &plan,
    );
    let batch = plan.batch.ok_or_else(|| err("the sync launched nothing"))?;
    let s = wait(admin, batch).await?;
    show.step(
        &format!("hq job status {batch} --clients"),
        &render::status(&s, &all_leaves()),
        &s,
    );
    let v = audit_status(admin, audit).await?;
    show.step(
        &format!("hq audit status {audit}"),
        &super::audit::render(&v),
        &v,
    );
    show.note(&format!(
        "audit and sync: {} unique collections, {} jobs in batch {batch}; {} of {} targets compliant.",
        plan.jobs.len(),
        s.jobs.len(),
        v.totals.compliant,
        v.clients.len()
    ));
    Ok(())
}

/// A package through the tree: added to HQ's depot, installed on every lower
/// client of r1 (r1 and r2 each fetch it once), the inventory and caches.
async fn packages(
    root: &Path,
    target: &Target,
    admin: &mut AdminClient,
    show: Show,
) -> Result<(), CliError> {
    let src = root.join("hello-tool");
    std::fs::create_dir_all(src.join("bin")).map_err(err)?;
    std::fs::write(
        src.join("bin/hello"),
        "#!/bin/sh\necho hello from the hello tool\n",
    )
    .map_err(err)?;
    std::fs::write(
        src.join("setup.sh"),
        "#!/bin/sh\nset -e\n./bin/hello\necho \"installed in $RELAYTREE_PACKAGE_DIR\"\n",
    )
    .map_err(err)?;
    for f in ["bin/hello", "setup.sh"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join(f), std::fs::Permissions::from_mode(0o755))
            .map_err(err)?;
    }
    let p = super::package::add(
        target,
        src.clone(),
        "hello".into(),
        "1.0".into(),
        Some("./setup.sh".into()),
        None,
        false,
    )
    .await?;
    show.step(
        &format!(
            "hq package add {} --name hello --version 1.0 --install ./setup.sh",
            src.display()
        ),
        &super::pkg_render::added(&p),
        &p,
    );
    let want = super::pkg_args::PkgSpec {
        name: "hello".into(),
        version: Some("1.0".into()),
    };
    let spec = super::package::install_spec(admin, &want, None).await?;
    let shown = "hq job create --dest all-lower-clients --relay r1 --install hello@1.0";
    let job = create_under_r1(admin, show, Action::Install(spec), shown).await?;
    let s = wait(admin, job).await?;
    show.step(
        &format!("hq job status {job} --clients"),
        &render::status(&s, &all_leaves()),
        &s,
    );
    if let AdminResponse::Client(c) = admin
        .request(AdminRequest::ClientShow {
            name: NodeName::new("c4").map_err(err)?,
        })
        .await?
    {
        show.step("hq client show c4", &super::pkg_render::client(&c), &c);
    }
    if let AdminResponse::PackageStatus(v) = admin
        .request(AdminRequest::PackageStatus { relay: None })
        .await?
    {
        show.step("hq package status", &super::pkg_render::status(&v), &v);
    }
    Ok(())
}

async fn audit_status(
    admin: &mut AdminClient,
    audit: JobId,
) -> Result<crate::proto::AuditStatusView, CliError> {
    match admin.request(AdminRequest::AuditStatus { audit }).await? {
        AdminResponse::AuditStatus(v) => Ok(v),
        other => Err(CliError::Unexpected(format!("{other:?}"))),
    }
}

/// Creates a job for every client under r1 (expiring in an hour) and shows
/// it as `command` prints it.
async fn create_under_r1(
    admin: &mut AdminClient,
    show: Show,
    action: Action,
    command: &str,
) -> Result<JobId, CliError> {
    let job = match admin
        .request(AdminRequest::CreateJob {
            dest: vec![NodeName::new("r1").map_err(err)?],
            action,
            expires_ms: Some(3_600_000),
            policy: Default::default(),
            clients: vec![],
            filter: Default::default(),
        })
        .await?
    {
        AdminResponse::Created { job } => job,
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    };
    show.step(
        command,
        &format!("{job}\n"),
        &serde_json::json!({ "job": job }),
    );
    Ok(job)
}

async fn wait(admin: &mut AdminClient, job: JobId) -> Result<JobStatus, CliError> {
    match admin
        .request(AdminRequest::Wait {
            job,
            timeout_ms: 60_000,
        })
        .await?
    {
        AdminResponse::Status(s) if s.done => Ok(s),
        AdminResponse::Status(_) => Err(err("the job did not finish within 60 s")),
        other => Err(CliError::Unexpected(format!("{other:?}"))),
    }
}
