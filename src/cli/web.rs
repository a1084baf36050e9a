//! `hq serve --http` (binding the dashboard's listener, choosing TLS) and
//! `hq web login`. The dashboard itself is `crate::web`; this file only
//! turns flags into its options and prints what the contract says.

use super::args::{HttpArgs, WebCmd};
use super::client::{AdminClient, CliError, Target};
use super::{parse_duration, print_json, unexpected};
use crate::proto::{AdminRequest, AdminResponse};

/// Binds `--http` (if given) and announces it ("http on HOST:PORT", also
/// written to DATA_DIR/http.addr). Off loopback the dashboard gets TLS with
/// HQ's certificate unless `--http-insecure`.
pub(super) async fn bind(
    http: &HttpArgs,
    data_dir: &std::path::Path,
) -> Result<Option<(tokio::net::TcpListener, crate::web::Options)>, CliError> {
    let Some(addr) = &http.http else {
        return Ok(None);
    };
    let session_ttl = parse_duration("--http-session", &http.http_session)?;
    if session_ttl.is_zero() {
        return Err(CliError::Usage(
            "--http-session must be longer than 0s".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .map_err(|e| CliError::Usage(format!("--http {addr}: cannot listen there: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::Other(format!("--http {addr}: {e}")))?;
    let tls = if crate::web::use_tls(bound, http.http_insecure) {
        let id = crate::tls::Identity::load(&crate::hq::layout::hq(data_dir))?;
        Some(id.browser_server_config()?)
    } else {
        None
    };
    if !bound.ip().is_loopback() && tls.is_none() {
        tracing::warn!(%bound, "dashboard served as plain http off loopback (--http-insecure)");
    }
    outln!("http on {bound}");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let _ = std::fs::write(data_dir.join("http.addr"), bound.to_string());
    let base_url = match &http.http_url {
        Some(u) => Some(crate::web::check_base_url(u).map_err(CliError::Usage)?),
        None => None,
    };
    Ok(Some((
        listener,
        crate::web::Options {
            tls,
            session_ttl,
            base_url,
        },
    )))
}

/// `hq web ...`.
pub(super) async fn command(cmd: WebCmd, t: &Target) -> Result<(), CliError> {
    match cmd {
        WebCmd::Login { json } => {
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::WebLogin).await? {
                AdminResponse::WebLogin { url } if json => {
                    print_json(&serde_json::json!({ "url": url }))?
                }
                AdminResponse::WebLogin { url } => outln!("{url}"),
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(())
}
