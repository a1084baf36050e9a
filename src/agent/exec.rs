//! Running a command: argv, env, a timeout or a cancel that stops the whole
//! process group, a bounded output tail; and the process-group helpers the
//! agent uses to stop what an earlier run of itself left behind.
//!
//! The child runs in its own process group with stdin closed; stdout and stderr are
//! read concurrently, each into its own bounded tail (and both into a short
//! mixed tail, for peers that know no better). On timeout or cancel the group
//! gets SIGTERM, then, if anything of it is still alive after the grace
//! ([`ExecSpec::kill_grace`]), SIGKILL. If the [`run`] future is dropped, the
//! group is killed with SIGKILL at once (a drop cannot wait). Processes the
//! command leaves behind after a normal exit are not killed, but they cannot make
//! [`run`] hang: pipes are read for at most [`PIPE_GRACE`] after the child exits.
//!
//! Knows nothing of the run log or the store: the caller records the group
//! it is handed through [`Control::on_spawn`].

use std::collections::{HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long pipes are still read after the child has exited (or been killed).
/// Output written by leftover grandchildren after that is ignored.
pub const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Default time between SIGTERM and SIGKILL when a command is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// How often a stopping group is looked at.
const STOP_POLL: Duration = Duration::from_millis(50);

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
    /// Keep at most this many bytes of the end of stdout, and as many of stderr.
    pub stream_tail_bytes: usize,
    /// On timeout or cancel: time between SIGTERM and SIGKILL of the group.
    pub kill_grace: Duration,
}

/// A process group this module spawned, as the caller records it to find
/// it again after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The process group id (the leader's pid).
    pub pgid: i32,
    /// The leader's start time (clock ticks after boot, `/proc/PID/stat`
    /// field 22), when it could be read: a live process with this pid but
    /// another start time is a stranger.
    pub leader_start: Option<u64>,
}

/// What the caller tells a [`run`] while it runs.
#[derive(Default)]
pub struct Control {
    /// When cancelled, the command is stopped (SIGTERM, grace, SIGKILL) and
    /// the outcome is [`Outcome::Canceled`]; cancelled before the spawn, no
    /// process is started at all.
    pub cancel: Option<CancellationToken>,
    /// Called once, right after the spawn, with the new process group.
    pub on_spawn: Option<Box<dyn FnOnce(Group) + Send>>,
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
    /// The timeout expired and the process group was stopped: SIGTERM, then
    /// SIGKILL if it outlived the grace (`forced`).
    TimedOut {
        forced: bool,
    },
    /// Canceled: stopped as on a timeout; `started` is false when it was
    /// canceled before any process was spawned.
    Canceled {
        forced: bool,
        started: bool,
    },
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
    /// Stdout and stderr apart.
    pub streams: Streams,
    /// When the process was spawned (or the attempt to), unix ms.
    pub started_at_ms: u64,
    pub duration: Duration,
}

/// The ends of stdout and stderr, apart, each at most
/// [`ExecSpec::stream_tail_bytes`] (lossy UTF-8), and how much each carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

/// The three tails a run fills.
struct Tails {
    mixed: Tail,
    out: Tail,
    err: Tail,
}

impl Tails {
    fn new(spec: &ExecSpec) -> Tails {
        Tails {
            mixed: Tail::new(spec.tail_bytes),
            out: Tail::new(spec.stream_tail_bytes),
            err: Tail::new(spec.stream_tail_bytes),
        }
    }

    fn stdout(&mut self, data: &[u8]) {
        self.mixed.push(data);
        self.out.push(data);
    }

    fn stderr(&mut self, data: &[u8]) {
        self.mixed.push(data);
        self.err.push(data);
    }

    fn finish(self) -> (String, Streams) {
        let (stdout_bytes, stderr_bytes) = (self.out.seen, self.err.seen);
        (
            self.mixed.into_string(),
            Streams {
                stdout: self.out.into_string(),
                stderr: self.err.into_string(),
                stdout_bytes,
                stderr_bytes,
            },
        )
    }
}

/// Why a running command is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancel,
}

/// Runs `spec` to completion (or timeout) and reports how it ended.
pub async fn run(spec: &ExecSpec) -> ExecResult {
    run_with(spec, Control::default()).await
}

/// Runs `spec` to completion, timeout or cancel, and reports how it ended.
pub async fn run_with(spec: &ExecSpec, ctl: Control) -> ExecResult {
    let start = Instant::now();
    let started_at_ms = crate::proto::now_ms();
    let done = |outcome: Outcome, tails: Option<Tails>| {
        let (output_tail, streams) = tails.map(Tails::finish).unwrap_or_default();
        ExecResult {
            outcome,
            output_tail,
            streams,
            started_at_ms,
            duration: start.elapsed(),
        }
    };

    let Some((program, args)) = spec.argv.split_first() else {
        return done(
            Outcome::SpawnFailed {
                reason: "empty command".to_string(),
            },
            None,
        );
    };
    let cancel = ctl.cancel.unwrap_or_default();
    if cancel.is_cancelled() {
        return done(
            Outcome::Canceled {
                forced: false,
                started: false,
            },
            None,
        );
    }

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
            return done(Outcome::SpawnFailed { reason }, None);
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
    if let (Some(pgid), Some(f)) = (guard.pgid, ctl.on_spawn) {
        f(Group {
            pgid: pgid.as_raw(),
            leader_start: start_ticks(pgid.as_raw()),
        });
    }

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let mut tails = Tails::new(spec);

    let deadline = spec.timeout.map(|t| start + t);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut stopping: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut term_at = Instant::now();
    let mut forced = false;
    let mut grace_end: Option<Instant> = None;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let why = tokio::select! {
            r = read_stdout(&mut stdout, &mut out_buf) => { match r {
                Ok(n) if n > 0 => tails.stdout(&out_buf[..n]),
                _ => stdout = None,
            }; None }
            r = read_stderr(&mut stderr, &mut err_buf) => { match r {
                Ok(n) if n > 0 => tails.stderr(&err_buf[..n]),
                _ => stderr = None,
            }; None }
            r = child.wait(), if status.is_none() => {
                if r.is_ok() && stopping.is_none() {
                    // Reaped: the pgid may be reused from now on, never signal it again.
                    // (While stopping, what is left of the group still holds the
                    // pgid, and gets SIGKILL after the grace.)
                    guard.disarm();
                }
                status = Some(r);
                grace_end = Some(Instant::now() + PIPE_GRACE);
                None
            }
            _ = sleep_until_opt(deadline), if status.is_none() && stopping.is_none() => Some(Stop::Timeout),
            _ = cancel.cancelled(), if status.is_none() && stopping.is_none() => Some(Stop::Cancel),
            _ = sleep_until_opt(kill_at), if !forced => {
                tracing::debug!(pid = ?child.id(), "exec: grace over, killing process group");
                forced = true;
                guard.signal(Signal::SIGKILL);
                // In case the child moved itself out of its group.
                let _ = child.start_kill();
                None
            }
            _ = sleep_until_opt(grace_end) => {
                tracing::debug!("exec: pipes still open after exit, no longer reading them");
                break;
            }
        };
        if let Some(why) = why {
            tracing::debug!(pid = ?child.id(), ?why, grace = ?spec.kill_grace, "exec: stopping process group (SIGTERM)");
            stopping = Some(why);
            term_at = Instant::now();
            kill_at = Some(term_at + spec.kill_grace);
            guard.signal(Signal::SIGTERM);
        }
    }

    // Stopping, and the leader is gone: whatever is left of its group gets
    // the rest of the grace, then SIGKILL.
    if let (Some(pgid), Some(kill_at)) = (guard.pgid, kill_at) {
        if status.as_ref().is_some_and(|s| s.is_ok()) && !forced {
            forced = !wait_group_gone(pgid.as_raw(), term_at, kill_at).await;
            if forced {
                guard.signal(Signal::SIGKILL);
            }
        }
        guard.disarm();
    }

    let outcome = match status {
        _ if stopping == Some(Stop::Timeout) => Outcome::TimedOut { forced },
        _ if stopping == Some(Stop::Cancel) => Outcome::Canceled {
            forced,
            started: true,
        },
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
    let result = done(outcome, Some(tails));
    tracing::debug!(
        argv = ?spec.argv,
        outcome = ?result.outcome,
        duration = ?result.duration,
        "exec: finished"
    );
    result
}

/// How [`stop_group`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing of the group was alive.
    NothingLeft,
    /// SIGTERM was enough.
    Terminated,
    /// It outlived the grace and got SIGKILL.
    Killed,
}

/// Stops every process of group `pgid`: SIGTERM, up to `grace` for it to go,
/// then SIGKILL, and waits (a little) until nothing of it is alive. Zombies
/// count as gone (in containers nobody may reap them). `known` is a moment
/// the caller knows the group already existed at (a view of `/proc` taken
/// since then says whether anything of it is left: a group only shrinks).
pub async fn stop_group(pgid: i32, grace: Duration, known: Instant) -> Stopped {
    if !group_alive_since(pgid, known).await {
        return Stopped::NothingLeft;
    }
    let pg = Pid::from_raw(pgid);
    let signalled = Instant::now();
    if let Err(e) = killpg(pg, Signal::SIGTERM) {
        if e == Errno::ESRCH {
            return Stopped::NothingLeft;
        }
        tracing::debug!(pgid, error = %e, "exec: SIGTERM to the group failed");
    }
    if wait_group_gone(pgid, signalled, signalled + grace).await {
        return Stopped::Terminated;
    }
    let signalled = Instant::now();
    let _ = killpg(pg, Signal::SIGKILL);
    wait_group_gone(pgid, signalled, signalled + Duration::from_secs(5)).await;
    Stopped::Killed
}

/// Waits until no live process is in group `pgid` (signalled at
/// `signalled`), or `until`; whether it emptied.
async fn wait_group_gone(pgid: i32, signalled: Instant, until: Instant) -> bool {
    loop {
        // A view from after the signal, and recent.
        let since = signalled.max(Instant::now().checked_sub(STOP_POLL).unwrap_or(signalled));
        if !group_alive_since(pgid, since).await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Whether group `pgid` had a live (not zombie) process at some moment
/// after `since`. Cheap when the kernel knows the group is empty;
/// otherwise answered from one view of `/proc` begun after `since`, shared
/// by every caller of this process and read off the runtime's threads, so
/// that a swarm stopping a thousand groups at once reads `/proc` a few
/// times per poll, not a thousand times.
pub async fn group_alive_since(pgid: i32, since: Instant) -> bool {
    if pgid <= 1 {
        return false;
    }
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return false;
    }
    live_groups(since).await.contains(&pgid)
}

/// Every group with a live process, from a read of `/proc` begun after `since`.
async fn live_groups(since: Instant) -> Arc<HashSet<i32>> {
    type View = Option<(Instant, Arc<HashSet<i32>>)>;
    static VIEW: tokio::sync::Mutex<View> = tokio::sync::Mutex::const_new(None);
    let mut v = VIEW.lock().await;
    if let Some((at, groups)) = &*v {
        if *at >= since {
            return groups.clone();
        }
    }
    let begun = Instant::now();
    let groups = tokio::task::spawn_blocking(|| {
        all_pids()
            .into_iter()
            .filter_map(proc_stat)
            .filter(|s| s.state != 'Z')
            .map(|s| s.pgrp)
            .collect::<HashSet<i32>>()
    })
    .await
    .unwrap_or_default();
    let groups = Arc::new(groups);
    *v = Some((begun, groups.clone()));
    groups
}

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Process state letter (`Z` for a zombie).
    pub state: char,
    /// Process group.
    pub pgrp: i32,
    /// Start time, clock ticks after boot (field 22).
    pub start: u64,
}

/// Parses the text of `/proc/PID/stat` (the command name, in parentheses,
/// may itself hold spaces and parentheses: fields are counted after the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of `pid`, if it exists.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of process `pid` (clock ticks after boot).
pub fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start)
}

/// Every pid under `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// The live (not zombie) processes of group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| proc_stat(*p).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
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

/// Kills the child's process group (SIGKILL) when dropped, unless disarmed
/// once the child has been reaped. Covers cancellation of the [`run`] future.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            if let Err(e) = killpg(pgid, sig) {
                tracing::debug!(%pgid, error = %e, ?sig, "exec: killpg failed");
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// The last `cap` bytes of a byte stream.
struct Tail {
    cap: usize,
    buf: VecDeque<u8>,
    truncated: bool,
    /// Bytes pushed in all.
    seen: u64,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: VecDeque::new(),
            truncated: false,
            seen: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.seen += data.len() as u64;
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
pub(crate) mod tests {
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
            stream_tail_bytes: 4096,
            kill_grace: Duration::from_secs(5),
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
    async fn streams_apart_each_tail_bounded() {
        // 100,000 bytes to stdout, then a marker; two lines to stderr.
        let mut s = sh("echo err1 >&2; yes | head -c 100000; echo OUTEND; echo err2 >&2");
        s.stream_tail_bytes = 64 * 1024;
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        let o = &r.streams;
        assert_eq!(o.stderr, "err1\nerr2\n");
        assert_eq!(o.stdout.len(), 64 * 1024, "stdout tail bounded");
        assert!(
            o.stdout.ends_with("y\nOUTEND\n"),
            "{:?}",
            &o.stdout[o.stdout.len() - 20..]
        );
        assert!(!o.stdout.contains("err"));
        assert_eq!((o.stdout_bytes, o.stderr_bytes), (100_007, 10));
        assert!(r.output_tail.len() <= 4096);
        assert!(r.started_at_ms > 0);
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
        assert_eq!(r.outcome, Outcome::TimedOut { forced: false });
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

    /// Whether process `pid` (as text) runs `sleep` (has exec'd).
    pub(crate) fn is_sleep(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{}/comm", pid.trim()))
            .is_ok_and(|c| c.trim() == "sleep")
    }

    /// A file's lines.
    fn lines(p: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn timeout_sends_sigterm_first_and_the_command_may_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("trap");
        let mut s =
            sh("trap 'echo term >> \"$F\"; exit 7' TERM; echo start >> \"$F\"; sleep 30 & wait");
        s.env.push(("F".into(), f.to_str().unwrap().into()));
        s.timeout = Some(Duration::from_millis(300));
        s.kill_grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::TimedOut { forced: false });
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(lines(&f), ["start", "term"]);
    }

    #[tokio::test]
    async fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut s = sh("trap '' TERM; sleep 30 & echo $! > \"$PIDFILE\"; wait");
        s.env
            .push(("PIDFILE".into(), pidfile.to_str().unwrap().into()));
        s.timeout = Some(Duration::from_millis(200));
        s.kill_grace = Duration::from_millis(700);
        let t0 = Instant::now();
        let r = run(&s).await;
        let took = t0.elapsed();
        assert_eq!(r.outcome, Outcome::TimedOut { forced: true });
        assert!(
            took >= Duration::from_millis(850),
            "killed before the grace: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        let bg = read_pid(&pidfile).await;
        assert!(wait_gone(bg).await, "background sleep {bg} survived");
    }

    #[tokio::test]
    async fn a_leader_gone_on_sigterm_leaves_no_straggler_after_the_grace() {
        // sh exits on TERM, its child ignores it: the child still goes (SIGKILL
        // at the end of the grace), although the leader was reaped already.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let mut s = sh("(trap '' TERM; sleep 30) & echo $! > \"$PIDFILE\"; sleep 30");
        s.env
            .push(("PIDFILE".into(), pidfile.to_str().unwrap().into()));
        s.timeout = Some(Duration::from_millis(200));
        s.kill_grace = Duration::from_millis(500);
        let r = run(&s).await;
        assert_eq!(r.outcome, Outcome::TimedOut { forced: true });
        let bg = read_pid(&pidfile).await;
        assert!(wait_gone(bg).await, "straggler {bg} survived");
    }

    #[tokio::test]
    async fn cancel_stops_the_group_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("trap");
        let mut s =
            sh("trap 'echo term >> \"$F\"; exit 0' TERM; sleep 30 & echo $! >> \"$F\"; wait");
        s.env.push(("F".into(), f.to_str().unwrap().into()));
        let token = CancellationToken::new();
        let spawned = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = spawned.clone();
        let ctl = Control {
            cancel: Some(token.clone()),
            on_spawn: Some(Box::new(move |g| *seen.lock().unwrap() = Some(g))),
        };
        let t = token.clone();
        let f2 = f.clone();
        tokio::spawn(async move {
            // Once the background sleep runs: a SIGTERM that lands between
            // its fork and its exec is taken by the shell's handler in the
            // child, and the sleep then outlives it (until SIGKILL).
            while !lines(&f2).first().is_some_and(|p| is_sleep(p)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            t.cancel();
        });
        let r = run_with(&s, ctl).await;
        assert_eq!(
            r.outcome,
            Outcome::Canceled {
                forced: false,
                started: true
            }
        );
        assert_eq!(lines(&f).get(1).map(String::as_str), Some("term"));
        let g = spawned.lock().unwrap().expect("on_spawn called");
        assert!(g.pgid > 1);
        assert!(g.leader_start.is_some());
        assert!(group_members(g.pgid).is_empty());
    }

    #[tokio::test]
    async fn canceled_before_the_spawn_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ran");
        let mut s = sh("echo ran >> \"$F\"");
        s.env.push(("F".into(), f.to_str().unwrap().into()));
        let token = CancellationToken::new();
        token.cancel();
        let r = run_with(
            &s,
            Control {
                cancel: Some(token),
                on_spawn: None,
            },
        )
        .await;
        assert_eq!(
            r.outcome,
            Outcome::Canceled {
                forced: false,
                started: false
            }
        );
        assert!(!f.exists(), "the command ran");
    }

    #[test]
    fn stat_lines() {
        // (stat text, (state, pgrp, start))
        type Row<'a> = (&'a str, Option<(char, i32, u64)>);
        let table: &[Row] = &[
            (
                "123 (sh) S 1 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 2138112 200 18446744073709551615",
                Some(('S', 123, 98765)),
            ),
            (
                "77 (a) b) (c) Z 1 70 70 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5 0 0",
                Some(('Z', 70, 5)),
            ),
            ("77 (short) S 1 2", None),
            ("garbage", None),
        ];
        for (text, want) in table {
            let got = parse_stat(text).map(|s| (s.state, s.pgrp, s.start));
            assert_eq!(got, *want, "{text}");
        }
    }

    #[tokio::test]
    async fn stop_group_terms_then_kills() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id() as i32;
        // Give sh time to set its trap (its state is visible only as running).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        let r = stop_group(pgid, Duration::from_millis(400), Instant::now()).await;
        let _ = child.wait();
        assert_eq!(r, Stopped::Killed);
        assert!(t0.elapsed() >= Duration::from_millis(400));
        assert!(group_members(pgid).is_empty());
        assert_eq!(
            stop_group(pgid, Duration::from_secs(1), Instant::now()).await,
            Stopped::NothingLeft
        );
    }
}
