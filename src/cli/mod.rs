//! The command lines: parsing (clap), the admin commands against HQ, how
//! results are shown, and `hq demo`. The binaries in `src/bin` only call
//! [`hq_main`], [`relay_main`] and [`agent_main`].

#[macro_use]
mod output;
pub mod args;
mod audit;
pub mod client;
pub mod config;
mod demo;
mod docs;
mod enroll;
mod package;
pub mod pkg_args;
mod pkg_render;
pub mod render;
pub mod setup;
mod status_json;
mod sync;
mod watch;
mod web;

use crate::link::Timing;
use crate::proto::{Action, AdminRequest, AdminResponse, JobId, NodeName, RunSpec};
use args::{AdminArgs, AgentCmd, CertCmd, HqCmd, JobCmd, RelayCmd};
pub use client::CliError;
use client::{AdminClient, Target};
use std::time::Duration;

/// Exit code: success (and, for `job wait`, every leaf succeeded).
pub const EXIT_OK: u8 = 0;
/// `job wait`: every leaf is final and some did not succeed.
pub const EXIT_FAILED_LEAVES: u8 = 1;
/// An error: bad input, unreachable HQ, refused request.
pub const EXIT_ERROR: u8 = 2;
/// `job wait`: the timeout passed first.
pub const EXIT_TIMEOUT: u8 = 3;

/// Logs to stderr (stdout carries results and the "listening on" line);
/// `RUST_LOG` overrides the level; `--log-format json` writes one JSON
/// object per line (with the span fields: job, attempt, client, relay).
pub fn init_tracing(default: &str, format: args::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        args::LogFormat::Json => b.json().with_current_span(true).try_init(),
        args::LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// Parses the command line; an argument error is printed as one line on
/// stderr (exit 2), help and version as clap prints them (exit 0).
pub fn parse<T: clap::Parser>() -> T {
    let args = std::env::args_os().collect();
    match config::try_parse_from::<T>(args, &|k| std::env::var(k).ok()) {
        Ok(t) => t,
        // A bad config file or RELAYTREE_* variable: the key and the file named.
        Err(config::Failure::Config(e)) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_ERROR as i32)
        }
        Err(config::Failure::Clap(e)) => {
            use clap::error::ErrorKind::*;
            match e.kind() {
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                _ => {
                    eprintln!("{}", one_line(&e.render().to_string()));
                    std::process::exit(EXIT_ERROR as i32)
                }
            }
        }
    }
}

/// Clap's error text on one line: the error and its tips, without the
/// usage block ("--help" has it).
pub fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("Usage:") || t.starts_with("For more information") {
            break;
        }
        if !t.is_empty() {
            parts.push(t);
        }
    }
    let mut line = parts.join(" ");
    line += " (see --help)";
    line
}

/// Parses `30s`, `5m`, `1h30m`, or a plain number of seconds.
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, CliError> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        CliError::Usage(format!(
            "invalid duration {s:?} for {flag}: {e} (expected e.g. 30s, 5m, 2h)"
        ))
    })
}

/// `--kill-grace` of an agent (default 10s).
fn kill_grace(s: Option<String>) -> Result<Duration, CliError> {
    Ok(s.map(|s| parse_duration("--kill-grace", &s))
        .transpose()?
        .unwrap_or(crate::agent::exec::DEFAULT_KILL_GRACE))
}

/// Session timers from the command line.
fn timing(t: &args::TimingArgs) -> Result<Timing, CliError> {
    let mut out = Timing::default();
    if let Some(h) = &t.heartbeat {
        out.heartbeat = parse_duration("--heartbeat", h)?;
    }
    if let Some(i) = &t.idle_timeout {
        out.idle_timeout = parse_duration("--idle-timeout", i)?;
    }
    if out.heartbeat.is_zero() || out.idle_timeout <= out.heartbeat {
        return Err(CliError::Usage(format!(
            "--idle-timeout ({}) must be longer than --heartbeat ({})",
            humantime::format_duration(out.idle_timeout),
            humantime::format_duration(out.heartbeat)
        )));
    }
    Ok(out)
}

fn parse_job(s: &str) -> Result<JobId, CliError> {
    s.parse().map_err(CliError::Usage)
}

fn target(a: &AdminArgs) -> Target {
    Target {
        hq: a.hq.clone(),
        identity: a.identity.clone(),
        data_dir: a.data_dir.clone(),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Other(e.to_string()))?;
    outln!("{s}");
    Ok(())
}

fn unexpected(r: AdminResponse) -> CliError {
    CliError::Unexpected(format!("{r:?}"))
}

/// Loads an identity and checks its role, before anything is announced.
fn check_identity(dir: &std::path::Path, role: crate::proto::Role) -> Result<(), CliError> {
    let id = crate::tls::Identity::load(dir)?;
    if id.me().role != role {
        return Err(CliError::Usage(format!(
            "{} holds {} certificate; this needs {} one",
            dir.display(),
            id.me().role.with_article(),
            role.with_article()
        )));
    }
    Ok(())
}

/// A node's end: an error as a [`CliError`]; after a disk failure, waits
/// until the disk accepts writes and restarts this process
/// ([`crate::node::restart_when_writable`]), returning only if that fails.
async fn finish<E: crate::node::NodeFailure>(
    r: Result<(), E>,
    data_dir: &std::path::Path,
    addr: Option<std::net::SocketAddr>,
) -> Result<(), CliError> {
    match r {
        Err(e) if e.storage_failed() => {
            let e = crate::node::restart_when_writable(data_dir, addr, &e.to_string()).await;
            Err(CliError::Other(format!("cannot restart: {e}")))
        }
        r => r.map_err(|e| CliError::Other(e.to_string())),
    }
}

/// `--store URL`: HQ's state in PostgreSQL, tied to this data directory's CA.
fn connect_store(url: &str, data_dir: &std::path::Path) -> Result<crate::store::Store, CliError> {
    let ca = crate::tls::Ca::load(&crate::hq::layout::ca(data_dir))?;
    let hash = crate::tls::enroll::ca_hash(ca.cert_der());
    crate::store::Store::connect(url, &hash).map_err(|e| CliError::Other(e.to_string()))
}

/// Binds `listen`, announces the address (stdout and `listen.addr`) and
/// starts the storage watchdog: what every server does before it runs.
async fn serve_on(
    listen: &str,
    data_dir: &std::path::Path,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), CliError> {
    let (listener, addr) = crate::node::bind_announce(listen, data_dir)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    announce(addr);
    crate::node::start_watchdog(data_dir.to_path_buf(), Some(addr));
    Ok((listener, addr))
}

/// `--metrics ADDR`: serves `/metrics` there (after the "listening on"
/// line, which stays first on stdout).
async fn serve_metrics(
    addr: Option<&str>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), CliError> {
    if let Some(addr) = addr {
        crate::metrics::serve(addr, shutdown.clone())
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
    }
    Ok(())
}

/// Announces the bound address: first line on stdout.
fn announce(addr: std::net::SocketAddr) {
    use std::io::Write;
    outln!("listening on {addr}");
    let _ = std::io::stdout().flush();
}

/// `hq ...`; returns the exit code.
pub async fn hq_main(cli: args::HqCli) -> Result<u8, CliError> {
    match cli.cmd {
        HqCmd::Init {
            data_dir,
            trust_domain,
            store,
            json,
        } => {
            setup::init(&data_dir, &trust_domain)?;
            if let Some(url) = &store {
                connect_store(url, &data_dir)?
                    .close()
                    .await
                    .map_err(|e| CliError::Other(e.to_string()))?;
            }
            if json {
                let l = |p: std::path::PathBuf| p.display().to_string();
                print_json(&serde_json::json!({
                    "data_dir": data_dir.display().to_string(),
                    "ca": l(crate::hq::layout::ca(&data_dir)),
                    "hq": l(crate::hq::layout::hq(&data_dir)),
                    "admin": l(crate::hq::layout::admin(&data_dir)),
                    "trust_domain": trust_domain,
                }))?;
            } else {
                outln!(
                    "initialised {}: CA in ca/, hq identity in hq/, admin identity in admin/",
                    data_dir.display()
                );
            }
        }
        HqCmd::Cert {
            cmd:
                CertCmd::Issue {
                    data_dir,
                    role,
                    name,
                    out,
                    count,
                    days,
                    force,
                    json,
                },
        } => {
            let dirs = setup::issue_new(&data_dir, role, &name, &out, count, days, force)?;
            if json {
                let issued: Vec<_> = dirs
                    .iter()
                    .map(|d| {
                        let n = if count.is_some() {
                            d.file_name()
                                .map(|f| f.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        } else {
                            name.clone()
                        };
                        serde_json::json!({ "name": n, "dir": d.display().to_string() })
                    })
                    .collect();
                let role = format!("{role:?}").to_lowercase();
                print_json(&serde_json::json!({ "role": role, "issued": issued }))?;
            } else if count.is_some() {
                outln!(
                    "issued {} under {}",
                    render::count(dirs.len() as u64, "identity", "identities"),
                    out.display()
                );
            } else {
                outln!("issued {}", out.display());
            }
        }
        HqCmd::Cert {
            cmd:
                CertCmd::Revoke {
                    name,
                    force,
                    json,
                    admin,
                },
        } => {
            let name = NodeName::new(name.as_str()).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut c = AdminClient::connect(&target(&admin)).await?;
            match c
                .request(AdminRequest::Revoke {
                    name: name.clone(),
                    force,
                })
                .await?
            {
                AdminResponse::Revoked { denied } if json => {
                    print_json(&serde_json::json!({ "revoked": name, "denied": denied }))?
                }
                AdminResponse::Revoked { denied } => outln!(
                    "revoked {name}; deny list: {}",
                    denied
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => return Err(unexpected(other)),
            }
        }
        HqCmd::Serve {
            data_dir,
            store,
            listen,
            retention,
            metrics,
            cert_validity,
            order_ttl,
            timing: t,
            http,
        } => {
            let t = timing(&t)?;
            let retention = parse_duration("--retention", &retention)?;
            let cert_validity = cert_validity
                .map(|v| parse_duration("--cert-validity", &v))
                .transpose()?
                .unwrap_or(crate::hq::DEFAULT_CERT_VALIDITY);
            if cert_validity < Duration::from_secs(3) {
                return Err(CliError::Usage(
                    "--cert-validity must be at least 3s".into(),
                ));
            }
            if retention.is_zero() {
                return Err(CliError::Usage(
                    "--retention must be longer than 0s (finished jobs are kept that long)".into(),
                ));
            }
            let order_ttl = parse_duration("--order-ttl", &order_ttl)?;
            if order_ttl.is_zero() {
                return Err(CliError::Usage("--order-ttl must be more than 0".into()));
            }
            // Before the listener: a store that cannot be used is one clear
            // line, and nothing announced.
            let store = store
                .map(|url| connect_store(&url, &data_dir))
                .transpose()?;
            let opts = crate::hq::HqOptions {
                order_ttl_ms: order_ttl.as_millis() as u64,
                retention,
                cert_validity,
                store,
            };
            crate::node::raise_fd_limit();
            let shutdown = crate::node::shutdown_on_signal();
            let (listener, addr) = serve_on(&listen, &data_dir).await?;
            serve_metrics(metrics.as_deref(), &shutdown).await?;
            if http.http.is_some() {
                // The dashboard's listener serves /metrics too.
                crate::metrics::install().map_err(|e| CliError::Other(e.to_string()))?;
            }
            let web = web::bind(&http, &data_dir).await?;
            let stop_web = shutdown.clone();
            finish(
                crate::hq::run_with_console(
                    listener,
                    &data_dir,
                    t,
                    opts,
                    shutdown,
                    move |console| {
                        if let Some((l, web_opts)) = web {
                            tokio::spawn(crate::web::serve(l, console, web_opts, stop_web));
                        }
                    },
                )
                .await,
                &data_dir,
                Some(addr),
            )
            .await?;
        }
        HqCmd::Job { cmd, admin } => return job(cmd, &target(&admin)).await,
        HqCmd::Package { cmd, admin } => package::package(cmd, &target(&admin)).await?,
        HqCmd::Client { cmd, admin } => package::client(cmd, &target(&admin)).await?,
        HqCmd::Web { cmd, admin } => web::command(cmd, &target(&admin)).await?,
        HqCmd::Snapshot { cmd, admin } => return audit::snapshot(cmd, &target(&admin)).await,
        HqCmd::Audit { cmd, admin } => return audit::audit(cmd, &target(&admin)).await,
        HqCmd::Sync { args, admin } => return sync::sync(args, &target(&admin)).await,
        HqCmd::Tree { json, admin } => {
            let mut c = AdminClient::connect(&target(&admin)).await?;
            match c.request(AdminRequest::Tree).await? {
                AdminResponse::Tree(t) if json => print_json(&t)?,
                AdminResponse::Tree(t) => out!("{}", render::tree(&t)),
                other => return Err(unexpected(other)),
            }
        }
        HqCmd::Demo { dir, json } => demo::run(dir.as_deref(), json).await?,
        HqCmd::Token {
            cmd:
                args::TokenCmd::Create {
                    role,
                    ttl,
                    uses,
                    json,
                },
            admin,
        } => enroll::token_create(&target(&admin), role, &ttl, uses, json).await?,
        HqCmd::Completions { shell } => docs::completions::<args::HqCli>(shell, "hq"),
        HqCmd::Man { out } => docs::man(&out)?,
    }
    Ok(EXIT_OK)
}

/// `--batch`, `--canary`, `--max-failures`, `--at`, `--window` checked and
/// made a request (each wrong one: a one-line usage error naming it).
pub(crate) fn policy_request(
    r: &args::RolloutArgs,
    now_ms: u64,
) -> Result<crate::proto::PolicyRequest, CliError> {
    use crate::proto::{Limit, Window};
    let batch = r
        .batch
        .as_deref()
        .map(|s| Limit::parse("--batch", s, 1))
        .transpose()
        .map_err(CliError::Usage)?;
    let max_failures = r
        .max_failures
        .as_deref()
        .map(|s| Limit::parse("--max-failures", s, 0))
        .transpose()
        .map_err(CliError::Usage)?;
    if r.canary == Some(0) {
        return Err(CliError::Usage("--canary: must be at least 1".into()));
    }
    let start_at_ms = match r.at.as_deref() {
        None => None,
        Some(s) => {
            let at = crate::pkg::schedule::parse_rfc3339_ms(s)
                .map_err(|e| CliError::Usage(format!("--at: {e}")))?;
            if at + 60_000 < now_ms {
                return Err(CliError::Usage(format!(
                    "--at: {s} is more than a minute in the past"
                )));
            }
            Some(at)
        }
    };
    let window = r
        .window
        .as_deref()
        .map(Window::parse)
        .transpose()
        .map_err(CliError::Usage)?;
    if let Some(spec) = &r.repeat {
        spec.parse::<crate::pkg::schedule::Schedule>()
            .map_err(|e| CliError::Usage(format!("--repeat: {e}")))?;
    }
    let after_sync = r
        .after_sync
        .as_deref()
        .map(|n| NodeName::new(n).map_err(|e| CliError::Usage(format!("--after-sync: {e}"))))
        .transpose()?;
    Ok(crate::proto::PolicyRequest {
        batch,
        canary: r.canary,
        max_failures,
        start_at_ms,
        window,
        repeat: r.repeat.clone(),
        after_sync,
    })
}

/// `hq job pause` (`pause`) or `hq job resume`.
async fn control(t: &Target, job: &str, pause: bool, json: bool) -> Result<(), CliError> {
    let job = parse_job(job)?;
    let mut c = AdminClient::connect(t).await?;
    let req = if pause {
        AdminRequest::Pause { job }
    } else {
        AdminRequest::Resume { job }
    };
    match c.request(req).await? {
        AdminResponse::Control(r) if json => print_json(&r)?,
        AdminResponse::Control(r) => match &r.reason {
            Some(why) => outln!("job {}: {} ({why})", r.job, r.state),
            None => outln!("job {}: {}", r.job, r.state),
        },
        other => return Err(unexpected(other)),
    }
    Ok(())
}

async fn job(cmd: JobCmd, t: &Target) -> Result<u8, CliError> {
    match cmd {
        JobCmd::Create {
            dest: d,
            relays,
            clients,
            labels,
            exclude,
            timeout,
            expires,
            ping,
            install,
            remove,
            rollout,
            json,
            command,
        } => {
            let policy = policy_request(&rollout, crate::proto::now_ms())?;
            let names = |flag: &str, list: &[String]| {
                list.iter()
                    .map(|r| {
                        NodeName::new(r.as_str())
                            .map_err(|e| CliError::Usage(format!("--{flag} {r}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let dest = names("relay", &relays)?;
            let clients = names("client", &clients)?;
            match (d, dest.is_empty(), clients.is_empty()) {
                (args::Dest::AllLowerClients, false, true) | (args::Dest::Clients, true, false) => {
                }
                (args::Dest::AllLowerClients, _, _) => {
                    return Err(CliError::Usage(
                        "--dest all-lower-clients takes --relay NAME (not --client)".into(),
                    ))
                }
                (args::Dest::Clients, _, _) => {
                    return Err(CliError::Usage(
                        "--dest clients takes --client NAME (not --relay)".into(),
                    ))
                }
            }
            let filter = crate::proto::TargetFilter {
                labels: labels.into_iter().collect(),
                exclude: names("exclude", &exclude)?,
            };
            let timeout_ms = timeout
                .map(|s| parse_duration("--timeout", &s))
                .transpose()?
                .map(|d| d.as_millis() as u64);
            if timeout_ms == Some(0) {
                return Err(CliError::Usage(
                    "--timeout must be longer than 0 (e.g. 30s, 5m): a command with no time to run would always time out".into(),
                ));
            }
            let expires_ms = expires
                .map(|s| parse_duration("--expires", &s))
                .transpose()?
                .map(|d| d.as_millis() as u64);
            if !ping && install.is_none() && remove.is_none() && command.is_empty() {
                return Err(CliError::Usage(
                    "no command: give it after --, or use --ping, --install or --remove".into(),
                ));
            }
            let mut c = AdminClient::connect(t).await?;
            let action = if ping {
                Action::Ping
            } else if let Some(p) = install {
                Action::Install(package::install_spec(&mut c, &p, timeout_ms).await?)
            } else if let Some(name) = remove {
                Action::Remove(package::remove_spec(&mut c, name, timeout_ms).await?)
            } else {
                Action::Run(RunSpec {
                    argv: command,
                    env: vec![],
                    cwd: None,
                    timeout_ms,
                })
            };
            match c
                .request(AdminRequest::CreateJob {
                    dest,
                    action,
                    expires_ms,
                    policy,
                    clients,
                    filter,
                })
                .await?
            {
                AdminResponse::Created { job } if json => {
                    print_json(&serde_json::json!({ "job": job }))?
                }
                AdminResponse::Created { job } => outln!("{job}"),
                AdminResponse::Repeating(r) if json => print_json(&r)?,
                AdminResponse::Repeating(r) => outln!(
                    "schedule {} ({}): next run {}",
                    r.schedule,
                    r.spec,
                    r.next_ms.map(render::at).unwrap_or_else(|| "never".into())
                ),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Status {
            job: None, json, ..
        }
        | JobCmd::List { json } => {
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::List).await? {
                AdminResponse::List(l) if json => print_json(&l)?,
                AdminResponse::List(l) => {
                    out!("{}", render::list(&l));
                    if let AdminResponse::Repeats(r) = c.request(AdminRequest::Repeats).await? {
                        out!("{}", render::repeats(&r));
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Status {
            job: Some(job),
            clients,
            states,
            relay,
            limit,
            watch,
            json,
        } => {
            let job = parse_job(&job)?;
            let relay = relay
                .map(|r| {
                    NodeName::new(r.as_str()).map_err(|e| CliError::Usage(format!("--relay: {e}")))
                })
                .transpose()?;
            let listing = render::Listing::new(&states, clients, limit, relay.is_some());
            // JSON lists every matching leaf unless --limit says otherwise;
            // the table asks only for what it shows.
            let (ask_states, ask_limit) = if json {
                (states.clone(), limit)
            } else {
                (listing.states.clone(), Some(listing.limit))
            };
            let paged = |page: Option<u64>, after: Option<NodeName>| AdminRequest::Status {
                job,
                states: ask_states.clone(),
                relay: relay.clone(),
                limit: ask_limit,
                page,
                after,
            };
            let req = || paged(None, None);
            let mut c = AdminClient::connect(t).await?;
            if watch && !json {
                watch::watch_status(&mut c, job, req, &listing).await?;
                return Ok(EXIT_OK);
            }
            if json && limit.is_none() {
                // Every leaf: in pages, written out as they come.
                let size = status_json::page_size();
                status_json::print_paged(&mut c, |after| paged(Some(size), after)).await?;
                return Ok(EXIT_OK);
            }
            match c.request(req()).await? {
                AdminResponse::Status(s) if json => print_json(&s)?,
                AdminResponse::Status(s) => out!("{}", render::status(&s, &listing)),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Output { job, client, json } => {
            let job = parse_job(&job)?;
            let client = NodeName::new(client.as_str())
                .map_err(|e| CliError::Usage(format!("client: {e}")))?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::Output { job, client }).await? {
                AdminResponse::Output(o) if json => print_json(&o)?,
                AdminResponse::Output(o) => out!("{}", render::output(&o)),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Wait {
            job,
            timeout,
            progress,
            json,
        } => {
            let job = parse_job(&job)?;
            let timeout = timeout
                .map(|s| parse_duration("--timeout", &s))
                .transpose()?
                .unwrap_or(Duration::from_secs(600));
            let deadline = tokio::time::Instant::now() + timeout;
            let mut c = AdminClient::connect(t).await?;
            watch::follow_until_done(&mut c, job, deadline, progress).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let s = match c
                .request(AdminRequest::Wait {
                    job,
                    timeout_ms: left.as_millis() as u64,
                })
                .await?
            {
                AdminResponse::Status(s) => s,
                other => return Err(unexpected(other)),
            };
            if json {
                print_json(&s)?;
            } else {
                out!(
                    "{}",
                    render::status(&s, &render::Listing::new(&[], false, None, false))
                );
            }
            if !s.done {
                eprintln!(
                    "job {job} not finished after {}",
                    humantime::format_duration(timeout)
                );
                return Ok(EXIT_TIMEOUT);
            }
            if s.totals.succeeded != s.totals.total() {
                return Ok(EXIT_FAILED_LEAVES);
            }
        }
        JobCmd::Purge { older_than, json } => {
            let older = parse_duration("--older-than", &older_than)?;
            let mut c = AdminClient::connect(t).await?;
            match c
                .request(AdminRequest::Purge {
                    older_than_ms: older.as_millis() as u64,
                })
                .await?
            {
                AdminResponse::Purged(p) if json => print_json(&p)?,
                AdminResponse::Purged(p) => outln!(
                    "purged {} ({}){}",
                    render::count(p.jobs.len() as u64, "job", "jobs"),
                    render::count(p.leaves, "leaf", "leaves"),
                    if p.jobs.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ": {}",
                            p.jobs
                                .iter()
                                .map(|j| j.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    }
                ),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Schedules { json } => {
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::Repeats).await? {
                AdminResponse::Repeats(r) if json => print_json(&r)?,
                AdminResponse::Repeats(r) if r.is_empty() => outln!("no recurring jobs"),
                AdminResponse::Repeats(r) => out!("{}", render::repeats(&r)),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Unschedule { schedule, json } => {
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::Unschedule { schedule }).await? {
                AdminResponse::Unscheduled(r) if json => print_json(&r)?,
                AdminResponse::Unscheduled(r) => outln!(
                    "schedule {} ({}) removed; {} stay",
                    r.schedule,
                    r.spec,
                    render::count(r.jobs.len() as u64, "job it made", "jobs it made")
                ),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Pause { job, json } => control(t, &job, true, json).await?,
        JobCmd::Resume { job, json } => control(t, &job, false, json).await?,
        JobCmd::Cancel { job, json } => {
            let job = parse_job(&job)?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::Cancel { job }).await? {
                AdminResponse::Canceled(r) if json => print_json(&r)?,
                AdminResponse::Canceled(r) => out!("{}", render::canceled(&r)),
                other => return Err(unexpected(other)),
            }
        }
        JobCmd::Rerun {
            job, json, expired, ..
        } => {
            let job = parse_job(&job)?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::Rerun { job, expired }).await? {
                AdminResponse::Rerun(r) if json => print_json(&r)?,
                AdminResponse::Rerun(r) => out!("{}", render::rerun(&r)),
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(EXIT_OK)
}

/// `relay ...`.
pub async fn relay_main(cli: args::RelayCli) -> Result<u8, CliError> {
    match cli.cmd {
        RelayCmd::Serve {
            identity,
            data_dir,
            listen,
            parent,
            metrics,
            timing: t,
            max_handshakes,
        } => {
            let t = timing(&t)?;
            let mut limits = crate::link::Limits::default();
            match max_handshakes {
                Some(0) => {
                    return Err(CliError::Usage(
                        "--max-handshakes must be at least 1".into(),
                    ))
                }
                Some(n) => limits.max_handshakes = n,
                None => {}
            }
            // Fail on a bad identity before announcing anything.
            check_identity(&identity, crate::proto::Role::Relay)?;
            crate::node::raise_fd_limit();
            let shutdown = crate::node::shutdown_on_signal();
            let (listener, addr) = serve_on(&listen, &data_dir).await?;
            serve_metrics(metrics.as_deref(), &shutdown).await?;
            let cfg = crate::relay::RelayConfig {
                identity,
                data_dir: data_dir.clone(),
                parent,
                timing: t,
                limits,
            };
            finish(
                crate::relay::run(listener, cfg, shutdown).await,
                &data_dir,
                Some(addr),
            )
            .await?;
        }
        RelayCmd::Enroll { parent, enroll } => {
            enroll::enroll(&parent, crate::proto::Role::Relay, enroll).await?
        }
        RelayCmd::Completions { shell } => docs::completions::<args::RelayCli>(shell, "relay"),
    }
    Ok(EXIT_OK)
}

/// `agent ...`.
pub async fn agent_main(cli: args::AgentCli) -> Result<u8, CliError> {
    match cli.cmd {
        AgentCmd::Serve {
            identity,
            data_dir,
            relay,
            max_parallel,
            metrics,
            kill_grace: grace,
            root,
            labels,
            timing: t,
        } => {
            let t = timing(&t)?;
            let grace = kill_grace(grace)?;
            let root = audit::check_root(root)?;
            check_identity(&identity, crate::proto::Role::Agent)?;
            crate::node::raise_fd_limit();
            crate::node::start_watchdog(data_dir.clone(), None);
            let shutdown = crate::node::shutdown_on_signal();
            serve_metrics(metrics.as_deref(), &shutdown).await?;
            let mut cfg = crate::agent::AgentConfig::new(
                identity,
                data_dir.clone(),
                crate::link::Addrs::new(relay),
            );
            cfg.options.max_parallel = max_parallel;
            cfg.options.timing = t;
            cfg.options.kill_grace = grace;
            cfg.options.root = root;
            cfg.options.labels = labels.into_iter().collect();
            finish(crate::agent::run(cfg, shutdown).await, &data_dir, None).await?;
        }
        AgentCmd::Enroll { relay, enroll } => {
            enroll::enroll(&relay, crate::proto::Role::Agent, enroll).await?
        }
        AgentCmd::Completions { shell } => docs::completions::<args::AgentCli>(shell, "agent"),
        AgentCmd::Runlog { data_dir, json } => {
            if !data_dir.join("db").exists() {
                return Err(CliError::Usage(format!(
                    "{} holds no agent database",
                    data_dir.display()
                )));
            }
            let runs = crate::agent::read_run_log(&data_dir)
                .await
                .map_err(|e| match e {
                    crate::agent::AgentError::Store(s) if s.is_locked() => CliError::Usage(format!(
                        "the agent using {} is running (its database is locked): stop it to read its run log, or ask hq (`hq job status JOB`, `hq job output JOB CLIENT`)",
                        data_dir.display()
                    )),
                    e => CliError::Other(e.to_string()),
                })?;
            if json {
                print_json(&runs)?;
            } else {
                for r in runs {
                    outln!(
                        "{} job {} attempt {} via {}: {}{}",
                        r.client,
                        r.job,
                        r.attempt,
                        r.relay,
                        r.state,
                        r.result
                            .map(|s| format!(" ({})", s.as_str()))
                            .unwrap_or_default()
                    );
                }
            }
        }
        AgentCmd::Swarm {
            identities,
            relay,
            data_dir,
            fail_fraction,
            delay,
            max_parallel,
            max_dialing,
            metrics,
            kill_grace: grace,
            root,
            labels,
            timing: t,
        } => {
            let timing = timing(&t)?;
            let kill_grace = kill_grace(grace)?;
            let root = audit::check_root(root)?;
            if !(0.0..=1.0).contains(&fail_fraction) {
                return Err(CliError::Usage(format!(
                    "--fail-fraction {fail_fraction} is not between 0 and 1"
                )));
            }
            let delay = delay
                .map(|d| parse_duration("--delay", &d))
                .transpose()?
                .unwrap_or_default();
            crate::node::raise_fd_limit();
            crate::node::start_watchdog(data_dir.clone(), None);
            let shutdown = crate::node::shutdown_on_signal();
            serve_metrics(metrics.as_deref(), &shutdown).await?;
            let options = crate::agent::AgentOptions {
                max_parallel,
                timing,
                fail_fraction,
                delay,
                dial_gate: Some(std::sync::Arc::new(tokio::sync::Semaphore::new(
                    max_dialing as usize,
                ))),
                kill_grace,
                root,
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            let cfg = crate::agent::SwarmConfig {
                identities,
                relay,
                data_dir: data_dir.clone(),
                options,
            };
            finish(
                crate::agent::swarm(cfg, shutdown).await.map(drop),
                &data_dir,
                None,
            )
            .await?;
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fold_into_one_line() {
        let table = [
            (
                "error: the following required arguments were not provided:\n  --failed\n\nUsage: hq job rerun --failed <JOB>\n\nFor more information, try '--help'.\n",
                "error: the following required arguments were not provided: --failed (see --help)",
            ),
            (
                "error: unrecognized subcommand 'jobb'\n\n  tip: a similar subcommand exists: 'job'\n\nUsage: hq <COMMAND>\n",
                "error: unrecognized subcommand 'jobb' tip: a similar subcommand exists: 'job' (see --help)",
            ),
        ];
        for (text, want) in table {
            assert_eq!(one_line(text), want);
        }
        // What clap really renders stays on one line too.
        let e =
            <args::HqCli as clap::Parser>::try_parse_from(["hq", "job", "rerun", "1"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n') && line.contains("--failed"), "{line}");
    }
}
