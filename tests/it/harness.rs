//! Helpers: a temporary installation, real `hq` / `relay` / `agent` child
//! processes that are killed when dropped, admin commands with `--json`,
//! and a polling `wait_until`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const HQ: &str = env!("CARGO_BIN_EXE_hq");
pub const RELAY: &str = env!("CARGO_BIN_EXE_relay");
pub const AGENT: &str = env!("CARGO_BIN_EXE_agent");

/// Default deadline for anything the tests wait for.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval.
const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` every 50 ms until it holds; panics with `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns `Some`; panics with `what` after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to `log_dir/<name>.<n>.{out,err}`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        std::fs::create_dir_all(log_dir).unwrap();
        let mut n = 0;
        let (stdout, stderr) = loop {
            let o = log_dir.join(format!("{name}.{n}.out"));
            if !o.exists() {
                break (o, log_dir.join(format!("{name}.{n}.err")));
            }
            n += 1;
        };
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (a polite stop); reaping is left to the caller.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits for it to exit on its own within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let name = self.name.clone();
        let st = wait_for(&format!("{name} to exit"), within, || self.try_wait());
        self.child = None;
        st
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The address from the "listening on HOST:PORT" first line of stdout;
    /// `Err(stderr)` if the process exits first.
    pub fn wait_listening(&mut self) -> Result<String, String> {
        let name = self.name.clone();
        let out = self.stdout.clone();
        wait_for(&format!("{name} to print its address"), DEADLINE, || {
            if let Some(st) = self.try_wait() {
                return Some(Err(format!("{name} exited ({st}): {}", self.stderr_text())));
            }
            let text = std::fs::read_to_string(&out).ok()?;
            let (first, _) = text.split_once('\n')?;
            let addr = first
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"));
            Some(Ok(addr.trim().to_string()))
        })
    }
}

/// Spawns a server until it announces its address. With a fixed port (a
/// restart on the old address) a failed bind is retried until `DEADLINE`.
fn spawn_server(name: &str, listen: &str, logs: &Path, make: impl Fn() -> Command) -> Server {
    let end = Instant::now() + DEADLINE;
    loop {
        let mut proc = Proc::spawn(name, make(), logs);
        match proc.wait_listening() {
            Ok(addr) => return Server { proc, addr },
            Err(e)
                if !listen.ends_with(":0")
                    && e.contains("cannot listen")
                    && Instant::now() < end =>
            {
                std::thread::sleep(POLL);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server process and the address it announced.
pub struct Server {
    pub proc: Proc,
    pub addr: String,
}

/// Runs a short-lived command to completion, killing it after three times
/// `DEADLINE` (past the 60 s `job wait` deadline the tests give).
pub fn run(cmd: &mut Command) -> Output {
    // Stderr is part of what the tests check: default log levels only.
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    // Drain the pipes on threads so a chatty child never blocks.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let end = Instant::now() + DEADLINE * 3;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {cmd:?} did not finish within {:?}", DEADLINE * 3);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// The result of a command: exit code, stdout, stderr as text.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn of(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
    /// Asserts exit 0.
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// A temporary installation: the CA and HQ's data dir, identities, the
/// processes, and a runs log the test jobs append to.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub hq_dir: PathBuf,
    pub hq: Option<Server>,
    pub relays: BTreeMap<String, Server>,
    pub agents: BTreeMap<String, Proc>,
    /// HQ's store when this test binary runs HQ on PostgreSQL
    /// (`crate::POSTGRES`): the URL every `hq serve` gets as `--store`.
    pub store_url: Option<String>,
    /// That PostgreSQL server, stopped after the processes above.
    pub pg: Option<TestPostgres>,
}

pub use relaytree::store::pg::testdb::TestPostgres;

/// A PostgreSQL server of the test's own, or `None` (said on stderr) when
/// none is installed: the tests then run HQ on sled.
pub fn postgres() -> Option<TestPostgres> {
    if relaytree::store::pg::testdb::server_bin().is_none() {
        eprintln!(
            "SKIPPED PostgreSQL: no server installed (/usr/lib/postgresql/*/bin); HQ runs on sled"
        );
        return None;
    }
    Some(TestPostgres::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}")))
}

impl Env {
    /// `hq init` in a fresh temporary directory (and a PostgreSQL server
    /// for HQ when this binary tests that backend).
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let hq_dir = dir.path().join("hq");
        Out::of(run(Command::new(HQ)
            .args(["init", "--data-dir"])
            .arg(&hq_dir)))
        .ok();
        let pg = if crate::POSTGRES { postgres() } else { None };
        Env {
            dir,
            hq_dir,
            hq: None,
            relays: BTreeMap::new(),
            agents: BTreeMap::new(),
            store_url: pg.as_ref().map(|p| p.url("relaytree")),
            pg,
        }
    }

    /// `--store URL` for `hq serve` when HQ runs on PostgreSQL; nothing on sled.
    pub fn store_args(&self) -> Vec<String> {
        match &self.store_url {
            Some(u) => vec!["--store".into(), u.clone()],
            None => Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> PathBuf {
        self.root().join("logs")
    }

    /// Where the identity of `name` lives.
    pub fn id_dir(&self, name: &str) -> PathBuf {
        self.root().join("ids").join(name)
    }

    /// `hq cert issue --role ROLE --name NAME`; returns the identity dir.
    pub fn issue(&self, role: &str, name: &str) -> PathBuf {
        let out = self.id_dir(name);
        Out::of(run(Command::new(HQ)
            .args(["cert", "issue", "--data-dir"])
            .arg(&self.hq_dir)
            .args(["--role", role, "--name", name, "--out"])
            .arg(&out)))
        .ok();
        out
    }

    /// Starts HQ on `listen` (e.g. `127.0.0.1:0`).
    pub fn start_hq_on(&mut self, listen: &str) -> String {
        self.start_hq_with(listen, &[])
    }

    /// Starts HQ on `listen` with more `hq serve` flags.
    pub fn start_hq_with(&mut self, listen: &str, extra: &[&str]) -> String {
        let hq_dir = self.hq_dir.clone();
        let store = self.store_args();
        let server = spawn_server("hq", listen, &self.logs(), || {
            let mut cmd = Command::new(HQ);
            cmd.args(["serve", "--data-dir"])
                .arg(&hq_dir)
                .args(["--listen", listen])
                .args(&store)
                .args(extra);
            cmd
        });
        let addr = server.addr.clone();
        let file = std::fs::read_to_string(self.hq_dir.join("listen.addr")).unwrap();
        assert_eq!(file.trim(), addr, "listen.addr and stdout disagree");
        self.hq = Some(server);
        addr
    }

    pub fn start_hq(&mut self) -> String {
        self.start_hq_on("127.0.0.1:0")
    }

    pub fn relay_data(&self, name: &str) -> PathBuf {
        self.root().join("data").join(name)
    }

    /// Starts relay `name` (its identity issued on first use) under `parent`.
    pub fn start_relay_on(&mut self, name: &str, parent: &str, listen: &str) -> String {
        let id = self.id_dir(name);
        if !id.exists() {
            self.issue("relay", name);
        }
        let data = self.relay_data(name);
        let server = spawn_server(name, listen, &self.logs(), || {
            let mut cmd = Command::new(RELAY);
            cmd.args(["serve", "--identity"])
                .arg(&id)
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen", listen, "--parent", parent]);
            cmd
        });
        let addr = server.addr.clone();
        let file = std::fs::read_to_string(data.join("listen.addr")).unwrap();
        assert_eq!(file.trim(), addr, "{name}: listen.addr and stdout disagree");
        self.relays.insert(name.to_string(), server);
        addr
    }

    /// Starts relay `name` under `parent` with `extra` arguments to `relay serve`.
    pub fn start_relay_with(&mut self, name: &str, parent: &str, extra: &[&str]) -> String {
        self.start_relay_on_with(name, parent, "127.0.0.1:0", extra)
    }

    /// Starts relay `name` on `listen` (e.g. the address it had before a
    /// kill) under `parent` with `extra` arguments to `relay serve`.
    pub fn start_relay_on_with(
        &mut self,
        name: &str,
        parent: &str,
        listen: &str,
        extra: &[&str],
    ) -> String {
        let id = self.id_dir(name);
        if !id.exists() {
            self.issue("relay", name);
        }
        let data = self.relay_data(name);
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let server = spawn_server(name, listen, &self.logs(), || {
            let mut cmd = Command::new(RELAY);
            cmd.args(["serve", "--identity"])
                .arg(&id)
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen", listen, "--parent", parent])
                .args(&extra);
            cmd
        });
        let addr = server.addr.clone();
        self.relays.insert(name.to_string(), server);
        addr
    }

    pub fn start_relay(&mut self, name: &str, parent: &str) -> String {
        self.start_relay_on(name, parent, "127.0.0.1:0")
    }

    /// Starts agent `name` (its identity issued on first use) under `relay_addr`.
    pub fn start_agent(&mut self, name: &str, relay_addr: &str) {
        self.start_agent_with(name, relay_addr, &[]);
    }

    /// Starts agent `name` under `relay_addr` with `extra` arguments to
    /// `agent serve` (e.g. `--label role=web`).
    pub fn start_agent_with(&mut self, name: &str, relay_addr: &str, extra: &[&str]) {
        let id = self.id_dir(name);
        if !id.exists() {
            self.issue("agent", name);
        }
        let mut cmd = Command::new(AGENT);
        cmd.args(["serve", "--identity"])
            .arg(&id)
            .arg("--data-dir")
            .arg(self.root().join("data").join(name))
            .args(["--relay", relay_addr])
            .args(extra);
        let proc = Proc::spawn(name, cmd, &self.logs());
        self.agents.insert(name.to_string(), proc);
    }

    /// HQ <- r1 <- r2 with agents `top` under r1 and `nested` under r2,
    /// every one registered; returns the addresses of HQ, r1 and r2.
    pub fn start_nested(&mut self, top: &[&str], nested: &[&str]) -> (String, String, String) {
        let hq = self.start_hq();
        let r1 = self.start_relay("r1", &hq);
        let r2 = self.start_relay("r2", &r1);
        for a in top {
            self.start_agent(a, &r1);
        }
        for b in nested {
            self.start_agent(b, &r2);
        }
        self.wait_clients((top.len() + nested.len()) as u64);
        (hq, r1, r2)
    }

    /// SIGKILLs agent `name`.
    pub fn kill_agent(&mut self, name: &str) {
        self.agents.remove(name).expect("agent running").kill();
    }

    /// SIGKILLs relay `name`; returns its address.
    pub fn kill_relay(&mut self, name: &str) -> String {
        let mut s = self.relays.remove(name).expect("relay running");
        s.proc.kill();
        s.addr
    }

    /// SIGKILLs HQ; returns its address.
    pub fn kill_hq(&mut self) -> String {
        let mut s = self.hq.take().expect("hq running");
        s.proc.kill();
        s.addr
    }

    /// `hq ARGS... --data-dir HQ` (before any `--`).
    pub fn admin(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(HQ);
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        cmd.args(&args[..split])
            .arg("--data-dir")
            .arg(&self.hq_dir)
            .args(&args[split..])
            .env_remove("RELAYTREE_HQ")
            .env_remove("RELAYTREE_IDENTITY")
            .env_remove("RELAYTREE_DATA_DIR");
        Out::of(run(&mut cmd))
    }

    pub fn tree(&self) -> Value {
        self.admin(&["tree", "--json"]).ok().json()
    }

    /// Waits until `hq tree` counts `n` clients.
    pub fn wait_clients(&self, n: u64) {
        let end = Instant::now() + DEADLINE;
        loop {
            let last = self.tree();
            if last["clients"].as_u64() == Some(n) {
                return;
            }
            if Instant::now() > end {
                self.dump_logs();
                panic!("hq tree never showed {n} clients; last: {last}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Path of the runs log that jobs made by [`Env::job_script`] append to.
    pub fn runs_log(&self) -> PathBuf {
        self.root().join("runs.log")
    }

    /// A shell script that appends "JOB CLIENT ATTEMPT RELAY" to the runs
    /// log, then runs `rest`.
    pub fn job_script(&self, rest: &str) -> String {
        format!(
            r#"echo "$RELAYTREE_JOB $RELAYTREE_CLIENT $RELAYTREE_ATTEMPT $RELAYTREE_RELAY" >> '{}'; {rest}"#,
            self.runs_log().display()
        )
    }

    /// The runs log, every line.
    pub fn runs(&self) -> Vec<Run> {
        let text = std::fs::read_to_string(self.runs_log()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 4, "bad runs.log line {l:?}");
                Run {
                    job: f[0].to_string(),
                    client: f[1].to_string(),
                    attempt: f[2].parse().unwrap(),
                    relay: f[3].to_string(),
                }
            })
            .collect()
    }

    /// The runs of `job`.
    pub fn job_runs(&self, job: &str) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.job == job).collect()
    }

    /// How many times each client ran `job`, per the runs log.
    pub fn run_counts(&self, job: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.job_runs(job) {
            *m.entry(r.client).or_insert(0) += 1;
        }
        m
    }

    /// `hq job create --dest all-lower-clients --relay R... EXTRA -- sh -c SCRIPT`;
    /// the job id.
    pub fn create_job(&self, relays: &[&str], extra: &[&str], script: &str) -> String {
        let mut args = vec!["job", "create", "--dest", "all-lower-clients", "--json"];
        for r in relays {
            args.extend(["--relay", r]);
        }
        args.extend(extra);
        args.extend(["--", "sh", "-c", script]);
        let out = self.admin(&args).ok();
        job_id(&out.json())
    }

    /// A `--ping` job; the job id.
    pub fn create_ping(&self, relays: &[&str]) -> String {
        let mut args = vec!["job", "create", "--dest", "all-lower-clients", "--json"];
        for r in relays {
            args.extend(["--relay", r]);
        }
        args.push("--ping");
        job_id(&self.admin(&args).ok().json())
    }

    pub fn status(&self, job: &str) -> Value {
        self.admin(&["job", "status", job, "--json"]).ok().json()
    }

    /// `hq job wait JOB --timeout 60s --json`: (exit code, status). The
    /// timeout is generous: it is a deadline, and a loaded machine is slow.
    pub fn wait_job(&self, job: &str) -> (i32, Value) {
        let out = self.admin(&["job", "wait", job, "--timeout", "60s", "--json"]);
        assert!(
            out.code == 0 || out.code == 1,
            "job wait {job} failed: {out:?}\n{}",
            self.log_text()
        );
        (out.code, out.json())
    }

    /// Prints every log file (for failures).
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.logs()) {
            let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                s.push_str(&format!("---- {}\n", p.display()));
                for l in tail.iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    pub fn dump_logs(&self) {
        eprintln!("{}", self.log_text());
        if let Some(pg) = &self.pg {
            let log = pg.dir().join("postgres.log");
            eprintln!("--- {}", log.display());
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Agents first, then relays, then HQ; Proc::drop kills each.
        self.agents.clear();
        self.relays.clear();
        self.hq = None;
    }
}

/// One line of the runs log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub job: String,
    pub client: String,
    pub attempt: u32,
    pub relay: String,
}

/// The id from `{"job": ID}`.
pub fn job_id(v: &Value) -> String {
    match &v["job"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("no job id in {v} ({other})"),
    }
}

/// The `clients` of a status, as client name -> leaf JSON.
pub fn leaves(status: &Value) -> BTreeMap<String, Value> {
    status["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("no clients in {status}"))
        .iter()
        .map(|c| (c["client"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

/// `job create` arguments for a job on every lower client of `relay`,
/// recurring per `spec`, running `sh -c script`, answering in JSON.
pub fn repeat_args<'a>(relay: &'a str, spec: &'a str, script: &'a str) -> Vec<&'a str> {
    vec![
        "job",
        "create",
        "--dest",
        "all-lower-clients",
        "--relay",
        relay,
        "--repeat",
        spec,
        "--json",
        "--",
        "sh",
        "-c",
        script,
    ]
}

/// The state of each leaf.
pub fn states(status: &Value) -> BTreeMap<String, String> {
    leaves(status)
        .into_iter()
        .map(|(k, v)| (k, v["state"].as_str().unwrap().to_string()))
        .collect()
}

/// `names` each mapped to `value`.
pub fn all(names: &[&str], value: &str) -> BTreeMap<String, String> {
    names
        .iter()
        .map(|n| (n.to_string(), value.to_string()))
        .collect()
}

/// `names` each mapped to `n`.
pub fn each(names: &[&str], n: usize) -> BTreeMap<String, usize> {
    names.iter().map(|c| (c.to_string(), n)).collect()
}

/// Opens a protocol session to the server at `addr` (of role `server`) as
/// the node whose identity is in `dir`: TLS, `Hello`s, then msgpack frames.
pub async fn dial_as(
    addr: &str,
    dir: &Path,
    server: relaytree::proto::Role,
    purpose: relaytree::proto::Purpose,
) -> relaytree::link::Session {
    let id = relaytree::tls::Identity::load(dir).unwrap();
    let d = relaytree::link::Dialer {
        addr: addr.into(),
        connector: tokio_rustls::TlsConnector::from(id.client_config(server, None).unwrap()),
        me: relaytree::proto::Hello {
            version: relaytree::proto::PROTOCOL_VERSION,
            name: id.me().name.clone(),
            role: id.me().role,
            purpose,
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        },
        timing: relaytree::link::Timing::default(),
        gate: None,
    };
    relaytree::link::dial_once(&d).await.unwrap()
}

/// Receives on `s` until `pick` returns something; panics after `within`.
pub async fn recv_until<T>(
    s: &mut relaytree::link::Session,
    within: Duration,
    mut pick: impl FnMut(relaytree::proto::Msg) -> Option<T>,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            let m = s.rx.recv().await.expect("session closed");
            if let Some(t) = pick(m) {
                return t;
            }
        }
    })
    .await
    .expect("nothing expected arrived in time")
}

/// Sends `events` as one batch of outbox entries numbered after `*seq`, and
/// waits for the parent's `Ack` of the batch.
pub async fn send_events(
    s: &mut relaytree::link::Session,
    seq: &mut u64,
    events: Vec<relaytree::proto::Event>,
) {
    let batch: Vec<(u64, relaytree::proto::Event)> = events
        .into_iter()
        .map(|e| {
            *seq += 1;
            (*seq, e)
        })
        .collect();
    let last = *seq;
    relaytree::link::send(&s.tx, relaytree::proto::Msg::Events(batch))
        .await
        .unwrap();
    recv_until(s, Duration::from_secs(10), |m| match m {
        relaytree::proto::Msg::Ack { seq } if seq >= last => Some(()),
        _ => None,
    })
    .await
}
