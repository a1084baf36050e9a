//! What every server process does the same way: bind and announce its
//! address, and stop on a signal.

use std::net::SocketAddr;
use std::path::Path;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binding or announcing failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds `addr` (port 0 allowed), writes the bound HOST:PORT to
/// `data_dir/listen.addr`, and returns the listener and the address.
pub async fn bind_announce(
    addr: &str,
    data_dir: &Path,
) -> Result<(TcpListener, SocketAddr), NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    std::fs::create_dir_all(data_dir).map_err(|source| NodeError::Write {
        path: data_dir.display().to_string(),
        source,
    })?;
    let path = data_dir.join("listen.addr");
    std::fs::write(&path, local.to_string()).map_err(|source| NodeError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok((listener, local))
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

/// Raises the open-file limit to the hard limit where allowed (a relay holds
/// one socket per agent); returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(0)
        }
    }
}
