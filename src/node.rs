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

/// Raises the open-file limit (a relay holds one socket per agent, a swarm
/// one per agent): to 1,048,576 where the process may raise its hard limit
/// (root), else to the hard limit. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    const WANT: u64 = 1 << 20;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, WANT, WANT).is_ok() {
        return WANT;
    }
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

/// An error that ends a node.
pub trait NodeFailure: std::fmt::Display {
    /// The disk refused a write: reopen the database once it accepts writes.
    fn storage_failed(&self) -> bool;
}

impl NodeFailure for crate::hq::HqError {
    fn storage_failed(&self) -> bool {
        matches!(self, crate::hq::HqError::Store(e) if e.is_disk_failure())
    }
}

impl NodeFailure for crate::relay::RelayError {
    fn storage_failed(&self) -> bool {
        matches!(self, crate::relay::RelayError::Store(e) if e.is_disk_failure())
    }
}

impl NodeFailure for crate::agent::AgentError {
    fn storage_failed(&self) -> bool {
        matches!(self, crate::agent::AgentError::Store(e) if e.is_disk_failure())
    }
}

/// After a disk failure (sled refuses every write after an I/O error):
/// logs it, waits until `data_dir` accepts writes again, then replaces this
/// process with a fresh copy of itself (same arguments; `--listen` pinned to
/// the address already bound, so children find it again), which reopens the
/// database. Nothing was acknowledged after the failure, so nothing is lost.
/// Returns only if the restart itself fails.
pub async fn restart_when_writable(
    data_dir: &Path,
    listen: Option<SocketAddr>,
    why: &str,
) -> std::io::Error {
    tracing::error!(
        error = %why,
        data_dir = %data_dir.display(),
        "storage failed: acknowledging nothing; restarting once the disk accepts writes"
    );
    // SIGTERM and SIGINT still end the process while it waits.
    let stop = shutdown_on_signal();
    let mut waited = 0u64;
    while let Err(e) = probe_write(data_dir) {
        if waited.is_multiple_of(30) {
            tracing::warn!(error = %e, "disk still refuses writes; waiting");
        }
        waited += 1;
        tokio::select! {
            _ = stop.cancelled() => std::process::exit(STOPPED_WHILE_WAITING),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    tracing::info!("disk accepts writes again; restarting");
    reexec(listen)
}

/// The exit status of a node stopped by a signal while it waited for its
/// disk to accept writes again (EX_TEMPFAIL: nothing was acknowledged).
pub const STOPPED_WHILE_WAITING: i32 = 75;

/// A `durable()` wait this long with no flush finishing means the store is
/// stuck (not merely slow).
pub const STALL: std::time::Duration = std::time::Duration::from_secs(20);

/// Watches, from a thread of its own (it works even when every runtime
/// thread is blocked inside the store), for a flush that does not finish
/// within [`STALL`] while no flush finishes: then restarts the process as after a disk failure
/// (nothing was acknowledged since, so nothing is lost).
pub fn start_watchdog(data_dir: std::path::PathBuf, listen: Option<SocketAddr>) {
    let spawned = std::thread::Builder::new()
        .name("store-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if let Some(d) = crate::store::longest_stall().filter(|d| *d > STALL) {
                tracing::error!(stalled = ?d, "storage failed: a flush did not finish; acknowledging nothing; restarting once the disk accepts writes");
                while probe_write(&data_dir).is_err() {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                tracing::info!("disk accepts writes again; restarting");
                let e = reexec(listen);
                tracing::error!(error = %e, "cannot restart");
                std::process::exit(70);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the storage watchdog");
    }
}

/// Replaces this process with a fresh copy of itself, `--listen` pinned.
fn reexec(listen: Option<SocketAddr>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let args = pin_listen(std::env::args_os().skip(1).collect(), listen);
    std::process::Command::new(exe).args(args).exec()
}

/// Writes, syncs and removes a small file.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let p = dir.join(".write-probe");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    r
}

/// The arguments with the value of `--listen` replaced by `addr`.
fn pin_listen(
    mut args: Vec<std::ffi::OsString>,
    addr: Option<SocketAddr>,
) -> Vec<std::ffi::OsString> {
    let Some(addr) = addr else { return args };
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--listen" && i + 1 < args.len() {
            args[i + 1] = addr.to_string().into();
        } else if args[i].to_string_lossy().starts_with("--listen=") {
            args[i] = format!("--listen={addr}").into();
        }
        i += 1;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_pinned_to_the_bound_address() {
        let a: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let args = |v: &[&str]| {
            v.iter()
                .map(|s| s.into())
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert_eq!(
            pin_listen(
                args(&["serve", "--listen", "127.0.0.1:0", "--data-dir", "d"]),
                Some(a)
            ),
            args(&["serve", "--listen", "127.0.0.1:4242", "--data-dir", "d"])
        );
        assert_eq!(
            pin_listen(args(&["serve", "--listen=0.0.0.0:0"]), Some(a)),
            args(&["serve", "--listen=127.0.0.1:4242"])
        );
        assert_eq!(pin_listen(args(&["serve"]), None), args(&["serve"]));
    }
}
