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

/// Runs the demo in `dir` (a temporary directory when `None`).
pub async fn run(dir: Option<&Path>) -> Result<(), CliError> {
    let tmp;
    let root = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::tempdir().map_err(err)?;
            tmp.path().to_path_buf()
        }
    };
    let stop = CancellationToken::new();
    let r = demo(&root, &stop).await;
    stop.cancel();
    // Give the servers a moment to flush and close their sessions.
    tokio::time::sleep(Duration::from_millis(200)).await;
    r
}

async fn demo(root: &Path, stop: &CancellationToken) -> Result<(), CliError> {
    let hq_dir = root.join("hq");
    outln!("== relaytree demo in {}", root.display());
    setup::init(&hq_dir, "demo.relaytree.local")?;
    let timing = Timing::default();

    let (listener, hq_addr) = crate::node::bind_announce("127.0.0.1:0", &hq_dir)
        .await
        .map_err(err)?;
    outln!("hq listening on {hq_addr}");
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
        setup::issue(
            &hq_dir,
            super::args::IssueRole::Relay,
            name,
            &dir.join("id"),
            None,
        )?;
        let (listener, addr) = crate::node::bind_announce("127.0.0.1:0", &dir)
            .await
            .map_err(err)?;
        outln!("relay {name} listening on {addr}, parent {parent}");
        let cfg = RelayConfig {
            identity: dir.join("id"),
            data_dir: dir.clone(),
            parent,
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
        setup::issue(
            &hq_dir,
            super::args::IssueRole::Agent,
            name,
            &dir.join("id"),
            None,
        )?;
        let cfg = AgentConfig::new(dir.join("id"), dir.clone(), relay_addrs[relay].clone());
        let s = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::agent::run(cfg, s).await {
                eprintln!("agent: {e}");
            }
        });
    }
    outln!("agents c1 c2 under r1; c3 c4 c5 under r2");

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
                outln!("\n$ hq tree\n{}", render::tree(&t));
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
    outln!("$ hq job create --dest all-lower-clients --relay r1 -- sh -c '...'   (fails on c2 and c4 the first time)");
    let job = match admin
        .request(AdminRequest::CreateJob {
            dest: vec![NodeName::new("r1").map_err(err)?],
            action: Action::Run(RunSpec {
                argv,
                env: vec![],
                cwd: None,
                timeout_ms: Some(30_000),
            }),
            expires_ms: Some(3_600_000),
        })
        .await?
    {
        AdminResponse::Created { job } => job,
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    };
    outln!("{job}");
    let s = wait(&mut admin, job).await?;
    outln!("\n$ hq job status {job}\n{}", render::status(&s, true));

    outln!("$ hq job rerun {job} --failed");
    match admin
        .request(AdminRequest::Rerun {
            job,
            expired: false,
        })
        .await?
    {
        AdminResponse::Rerun(r) => outln!("attempt {} targets {} leaves", r.attempt, r.targets),
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    }
    let s = wait(&mut admin, job).await?;
    outln!("\n$ hq job status {job}\n{}", render::status(&s, true));
    outln!(
        "every leaf accounted for: {} leaves, {} succeeded; c1 c3 c5 ran once, c2 c4 twice.",
        s.totals.total(),
        s.totals.succeeded
    );
    packages(root, &target, &mut admin).await
}

/// A package through the tree: added to HQ's depot, installed on every lower
/// client of r1 (r1 and r2 each fetch it once), the inventory and caches.
async fn packages(root: &Path, target: &Target, admin: &mut AdminClient) -> Result<(), CliError> {
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
    outln!(
        "\n$ hq package add {} --name hello --version 1.0 --install ./setup.sh",
        src.display()
    );
    let p = super::package::add(
        target,
        src,
        "hello".into(),
        "1.0".into(),
        Some("./setup.sh".into()),
        None,
    )
    .await?;
    out!("{}", super::pkg_render::added(&p));
    outln!("$ hq job create --dest all-lower-clients --relay r1 --install hello@1.0");
    let want = super::pkg_args::PkgSpec {
        name: "hello".into(),
        version: Some("1.0".into()),
    };
    let spec = super::package::install_spec(admin, &want, None).await?;
    let job = match admin
        .request(AdminRequest::CreateJob {
            dest: vec![NodeName::new("r1").map_err(err)?],
            action: Action::Install(spec),
            expires_ms: Some(3_600_000),
        })
        .await?
    {
        AdminResponse::Created { job } => job,
        other => return Err(CliError::Unexpected(format!("{other:?}"))),
    };
    let s = wait(admin, job).await?;
    outln!("\n$ hq job status {job}\n{}", render::status(&s, true));
    if let AdminResponse::Client(c) = admin
        .request(AdminRequest::ClientShow {
            name: NodeName::new("c4").map_err(err)?,
        })
        .await?
    {
        outln!("$ hq client show c4\n{}", super::pkg_render::client(&c));
    }
    if let AdminResponse::PackageStatus(v) = admin
        .request(AdminRequest::PackageStatus { relay: None })
        .await?
    {
        outln!("$ hq package status\n{}", super::pkg_render::status(&v));
    }
    Ok(())
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
