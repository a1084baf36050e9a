//! Running a command: argv, env, timeout killing the process group, bounded output tail.
//!
//! The child runs in its own process group with stdin closed; stdout and stderr are
//! read concurrently into one bounded tail buffer. On timeout, or if the [`run`]
//! future is dropped, the whole process group is killed with SIGKILL. Processes the
//! command leaves behind after a normal exit are not killed, but they cannot make
//! [`run`] hang: pipes are read for at most [`PIPE_GRACE`] after the child exits.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::time::Instant;

/// How long pipes are still read after the child has exited (or been killed).
/// Output written by leftover grandchildren after that is ignored.
pub const PIPE_GRACE: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 8 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// `argv[0]` is the program, looked up in `PATH`; no shell is involved.
    pub argv: Vec<String>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Keep at most this many bytes of the end of combined stdout+stderr.
    pub tail_bytes: usize,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The timeout expired and the whole process group was killed.
    TimedOut,
    /// The command could not be started (or, rarely, not waited for).
    SpawnFailed {
        reason: String,
    },
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct ExecResult {
    pub outcome: Outcome,
    /// The end of combined stdout+stderr, at most `tail_bytes` bytes, lossy UTF-8.
    pub output_tail: String,
    pub duration: Duration,
}

/// Runs `spec` to completion (or timeout) and reports how it ended.
pub async fn run(spec: &ExecSpec) -> ExecResult {
    let start = Instant::now();
    let done = |outcome: Outcome, output_tail: String| ExecResult {
        outcome,
        output_tail,
        duration: start.elapsed(),
    };

    let Some((program, args)) = spec.argv.split_first() else {
        return done(
            Outcome::SpawnFailed {
                reason: "empty command".to_string(),
            },
            String::new(),
        );
    };

    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let reason = match &spec.cwd {
                Some(cwd) if !cwd.is_dir() => {
                    format!("cannot run {program:?} in {}: {e}", cwd.display())
                }
                _ => format!("cannot run {program:?}: {e}"),
            };
            tracing::debug!(argv = ?spec.argv, %reason, "exec: spawn failed");
            return done(Outcome::SpawnFailed { reason }, String::new());
        }
    };

    // Declared after `child` so it is dropped first: the group is killed while the
    // (possibly zombie) leader still reserves its pid as the process group id.
    let mut guard = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    };
    tracing::debug!(argv = ?spec.argv, pid = ?child.id(), "exec: spawned");

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut tail = Tail::new(spec.tail_bytes);

    let deadline = spec.timeout.map(|t| start + t);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut timed_out = false;
    let mut grace_end: Option<Instant> = None;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            r = read_stdout(&mut stdout, &mut out_buf) => match r {
                Ok(n) if n > 0 => tail.push(&out_buf[..n]),
                _ => stdout = None,
            },
            r = read_stderr(&mut stderr, &mut err_buf) => match r {
                Ok(n) if n > 0 => tail.push(&err_buf[..n]),
                _ => stderr = None,
            },
            r = child.wait(), if status.is_none() => {
                if r.is_ok() {
                    // Reaped: the pgid may be reused from now on, never signal it again.
                    guard.disarm();
                }
                status = Some(r);
                grace_end = Some(Instant::now() + PIPE_GRACE);
            }
            _ = sleep_until_opt(deadline), if status.is_none() && !timed_out => {
                tracing::debug!(pid = ?child.id(), "exec: timeout, killing process group");
                timed_out = true;
                guard.kill();
                // In case the child moved itself out of its group.
                let _ = child.start_kill();
            }
            _ = sleep_until_opt(grace_end) => {
                tracing::debug!("exec: pipes still open after exit, no longer reading them");
                break;
            }
        }
    }

    let output_tail = tail.into_string();
    let outcome = match status {
        _ if timed_out => Outcome::TimedOut,
        Some(Ok(st)) => match (st.code(), st.signal()) {
            (Some(code), _) => Outcome::Exited { code },
            (None, Some(signal)) => Outcome::Signaled { signal },
            (None, None) => Outcome::SpawnFailed {
                reason: format!("unrecognised exit status of {program:?}: {st}"),
            },
        },
        Some(Err(e)) => Outcome::SpawnFailed {
            reason: format!("cannot wait for {program:?}: {e}"),
        },
        None => unreachable!("loop only ends after the child was waited for"),
    };
    let result = done(outcome, output_tail);
    tracing::debug!(
        argv = ?spec.argv,
        outcome = ?result.outcome,
        duration = ?result.duration,
        "exec: finished"
    );
    result
}

/// Reads from an optional pipe; never completes once the pipe is gone.
async fn read_stdout(pipe: &mut Option<ChildStdout>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads from an optional pipe; never completes once the pipe is gone.
async fn read_stderr(pipe: &mut Option<ChildStderr>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never completes for `None`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Kills the child's process group when dropped, unless disarmed once the child
/// has been reaped. Covers cancellation of the [`run`] future.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            if let Err(e) = killpg(pgid, Signal::SIGKILL) {
                tracing::debug!(%pgid, error = %e, "exec: killpg failed");
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `cap` bytes of a byte stream.
struct Tail {
    cap: usize,
    buf: VecDeque<u8>,
    truncated: bool,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: VecDeque::new(),
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.truncated |= !self.buf.is_empty() || data.len() > self.cap;
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if overflow > 0 {
            self.truncated = true;
            self.buf.drain(..overflow);
        }
        self.buf.extend(data);
    }

    fn into_string(mut self) -> String {
        let mut bytes: &[u8] = self.buf.make_contiguous();
        if self.truncated {
            // Start on a character boundary: skip continuation bytes (at most 3).
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|&&b| b & 0xC0 == 0x80)
                .count();
            bytes = &bytes[skip..];
        }
        let s = String::from_utf8_lossy(bytes);
        // Replacement characters can make the text longer than the raw bytes.
        if s.len() <= self.cap {
            return s.into_owned();
        }
        let mut from = s.len() - self.cap;
        while !s.is_char_boundary(from) {
            from += 1;
        }
        s[from..].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::signal::kill;

    fn spec(argv: &[&str]) -> ExecSpec {
        ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            timeout: Some(Duration::from_secs(20)),
            tail_bytes: 4096,
        }
    }

    fn sh(script: &str) -> ExecSpec {
        spec(&["sh", "-c", script])
    }

    /// True once `pid` no longer exists (or is a zombie nobody has reaped yet:
    /// in containers, pid 1 may not reap orphans).
    fn gone(pid: Pid) -> bool {
        match kill(pid, None) {
            Err(Errno::ESRCH) => true,
            _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false),
        }
    }

    async fn wait_gone(pid: Pid) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gone(pid)
    }

    async fn read_pid(path: &std::path::Path) -> Pid {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                if let Ok(n) = s.trim().parse::<i32>() {
                    return Pid::from_raw(n);
                }
            }
            assert!(Instant::now() < deadline, "pid file never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn exit_codes() {
        let r = run(&spec(&["true"])).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        let r = run(&sh("exit 3")).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 3 });
    }

    #[tokio::test]
    async fn output_combined() {
        let r = run(&sh("echo out; echo err >&2")).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert!(r.output_tail.contains("out\n"), "{:?}", r.output_tail);
        assert!(r.output_tail.contains("err\n"), "{:?}", r.output_tail);
    }

    #[tokio::test]
    async fn env_visible() {
        let mut s = sh("echo $FOO");
        s.env.push(("FOO".into(), "bar baz".into()));
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert_eq!(r.output_tail, "bar baz\n");
    }

    #[tokio::test]
    async fn cwd_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(&["pwd", "-P"]);
        s.cwd = Some(dir.path().to_path_buf());
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        let want = dir.path().canonicalize().unwrap();
        assert_eq!(r.output_tail.trim_end(), want.to_str().unwrap());
    }

    #[tokio::test]
    async fn spawn_failures() {
        let r = run(&spec(&["relaytree-no-such-command"])).await;
        match &r.outcome {
            Outcome::SpawnFailed { reason } => {
                assert!(
                    reason.starts_with("cannot run \"relaytree-no-such-command\": "),
                    "{reason}"
                );
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let r = run(&spec(&[])).await;
        assert_eq!(
            r.outcome,
            Outcome::SpawnFailed {
                reason: "empty command".into()
            }
        );
    }

    #[tokio::test]
    async fn tail_bounded() {
        let mut s = sh("yes | head -c 1000000; echo END");
        s.tail_bytes = 100;
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert!(r.output_tail.len() <= 100, "{}", r.output_tail.len());
        assert!(r.output_tail.ends_with("y\nEND\n"), "{:?}", r.output_tail);
    }

    #[test]
    fn tail_utf8_boundary() {
        let mut t = Tail::new(4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the tail starts inside "é"
        assert_eq!(t.into_string(), "€");
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cd");
        assert_eq!(t.into_string(), "abcd");
        let mut t = Tail::new(0);
        t.push(b"abc");
        assert_eq!(t.into_string(), "");
        let mut t = Tail::new(4);
        t.push(&[0xff; 4]); // invalid bytes expand to 3-byte replacement chars
        assert!(t.into_string().len() <= 4);
    }

    #[tokio::test]
    async fn timeout_kills_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut s = sh("sleep 30 & echo $! > \"$PIDFILE\"; sleep 30");
        s.env
            .push(("PIDFILE".into(), pidfile.to_str().unwrap().into()));
        s.timeout = Some(Duration::from_millis(300));
        let t0 = Instant::now();
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let bg = read_pid(&pidfile).await;
        assert!(wait_gone(bg).await, "background sleep {bg} survived");
    }

    #[tokio::test]
    async fn signaled() {
        let r = run(&sh("kill -9 $$")).await;
        assert_eq!(r.outcome, Outcome::Signaled { signal: 9 });
    }

    #[tokio::test]
    async fn leftover_grandchild_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut s = sh("sleep 30 & echo $! > \"$PIDFILE\"; echo hi");
        s.env
            .push(("PIDFILE".into(), pidfile.to_str().unwrap().into()));
        let t0 = Instant::now();
        let r = run(&s).await;
        let bg = read_pid(&pidfile).await;
        let _ = kill(bg, Signal::SIGKILL);
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        assert_eq!(r.output_tail, "hi\n");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn cancellation_kills_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut s = sh("sleep 30 & echo $! > \"$PIDFILE\"; sleep 30");
        s.env
            .push(("PIDFILE".into(), pidfile.to_str().unwrap().into()));
        let cancelled = tokio::time::timeout(Duration::from_millis(300), run(&s)).await;
        assert!(cancelled.is_err());
        let bg = read_pid(&pidfile).await;
        assert!(wait_gone(bg).await, "background sleep {bg} survived");
    }
}
