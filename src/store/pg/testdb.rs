//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a
//! temporary directory, `postgres` on a free loopback port, as the
//! unprivileged `postgres` user when run as root (PostgreSQL refuses root),
//! its socket in the same directory; stopped and removed on drop.
//!
//! Owns nothing of the store's logic; never used by a node.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running test server.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    ids: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The directory holding PostgreSQL's server binaries (the newest of
/// `/usr/lib/postgresql/*/bin`, or `$RELAYTREE_PG_BIN`).
pub fn server_bin() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("RELAYTREE_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

impl TestPostgres {
    /// Starts a fresh server; `Err` says why none could be (no PostgreSQL
    /// installed, or it would not start).
    pub fn start() -> Result<TestPostgres, String> {
        let bin = server_bin().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new()
            .prefix("relaytree-pg")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let ids = if nix::unistd::Uid::effective().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .map_err(|e| e.to_string())?
                .ok_or("running as root and there is no `postgres` user to run PostgreSQL as")?;
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let mut pg = TestPostgres {
            dir,
            bin,
            port: 0,
            ids,
            child: None,
        };
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "relaytree",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(pg.data())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        pg.start_server(true)?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// Starts `postgres`; on a fresh port unless `keep_port` is false and a
    /// port was already chosen (a restart keeps its address).
    fn start_server(&mut self, new_port: bool) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            if new_port || self.port == 0 {
                self.port = free_port().map_err(|e| e.to_string())?;
            }
            let log = std::fs::File::create(self.dir.path().join("postgres.log"))
                .map_err(|e| e.to_string())?;
            if let Some((uid, gid)) = self.ids {
                let _ = nix::unistd::chown(
                    &self.dir.path().join("postgres.log"),
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                );
            }
            let mut child = self
                .command("postgres")
                .arg("-D")
                .arg(self.data())
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(self.dir.path())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "max_connections=50"])
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("postgres: {e}"))?;
            let end = Instant::now() + Duration::from_secs(60);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                let ready = std::fs::read_to_string(self.dir.path().join("postgres.log"))
                    .unwrap_or_default()
                    .contains("ready to accept connections");
                if ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    break true;
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                self.child = Some(child);
                return Ok(());
            }
            last =
                std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
            // Most likely the port was taken meanwhile: try another.
        }
        Err(format!("postgres would not start: {last}"))
    }

    /// `postgres://relaytree@127.0.0.1:PORT/DB` for database `db` (created
    /// when missing; `postgres` always exists).
    pub fn url(&self, db: &str) -> String {
        if db != "postgres" {
            let _ = self
                .command("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "relaytree",
                ])
                .args([
                    "-d",
                    "postgres",
                    "-q",
                    "-c",
                    &format!("CREATE DATABASE \"{db}\""),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        format!("postgres://relaytree@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with psql on database `db`; its stdout.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "relaytree",
            ])
            .args(["-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > end => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Starts it again on the same port after [`Self::stop`].
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.start_server(false)
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listened on a moment ago (PostgreSQL cannot bind port 0
/// and report it; a clash makes it exit, and [`TestPostgres`] retries).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
