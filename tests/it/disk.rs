//! Disk trouble and durability: a relay whose disk fills up stops
//! acknowledging, says so in its log, and recovers by itself when space
//! returns, with nothing acknowledged lost and nothing run twice; and a
//! relay's store fsyncs what sled's flush wrote before anything is acked
//! (seen with strace). Tests here mount tmpfs and trace with ptrace: they
//! need root, and fail or say SKIPPED loudly rather than pass quietly.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        // Big writes first, then single bytes: to the very last byte.
        for size in [64 * 1024, 4096, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Everything relay `name` logged, every run of it (the harness's
/// `log_text` keeps only the tail of each file, and a relay whose disk fails
/// logs a burst of errors after the lines that matter).
fn full_log(env: &Env, name: &str) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(env.logs())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{name}.")) && f.ends_with(".err"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// The disk of relay r1 fills while two jobs' commands run on its three
/// agents, each waiting for its own gate file. The first job's commands
/// end at once, so their results meet the full disk; new jobs are made
/// until r1 reports the failing store (sled may first fill space it had
/// already claimed: how many it takes varies, the rest does not). Then the
/// second job's commands end: while the disk stays full, HQ sees no change
/// in any job, because r1 acknowledges and passes on nothing it cannot make
/// durable. Once space returns, r1 restarts by itself and every job
/// completes, each command having run exactly once: what r1 did not
/// acknowledge, the agents kept.
/// Creates jobs for r1 until its log says its storage failed; returns them.
fn jobs_until_storage_fails(env: &Env) -> Vec<String> {
    let mut jobs = Vec::new();
    let failed = || full_log(env, "r1").contains("storage failed");
    wait_until("r1 to report the failing disk", 2 * DEADLINE, || {
        if failed() {
            return true;
        }
        jobs.push(env.create_job(&["r1"], &[], &env.job_script("echo done")));
        // Pacing, not synchronisation: the condition is checked again below.
        std::thread::sleep(std::time::Duration::from_millis(100));
        failed()
    });
    jobs
}

/// A relay waiting for its full disk to accept writes again still stops on
/// SIGTERM (as systemd asks), at once and with EX_TEMPFAIL.
#[test]
fn a_relay_waiting_for_its_disk_stops_on_sigterm() {
    let mut env = Env::new();
    let disk = match Tmpfs::mount(&env.relay_data("r1"), "24m") {
        Ok(d) => d,
        Err(e) => panic!("cannot mount a tmpfs for this test (run as root): {e}"),
    };
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let _filler = disk.fill();
    jobs_until_storage_fails(&env);
    let mut relay = env.relays.remove("r1").unwrap();
    relay.proc.terminate();
    let st = relay.proc.wait_exit(DEADLINE);
    assert_eq!(st.code(), Some(75), "r1 after SIGTERM: {st:?}");
    drop(relay);
    env.agents.clear();
}

#[test]
fn a_relay_whose_disk_fills_stops_acknowledging_and_recovers() {
    let mut env = Env::new();
    let disk = match Tmpfs::mount(&env.relay_data("r1"), "24m") {
        Ok(d) => d,
        // Needs root (CI runs as root); say so loudly rather than pass quietly.
        Err(e) => panic!("cannot mount a tmpfs for this test (run as root): {e}"),
    };
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let clients = ["c1", "c2", "c3"];
    for c in clients {
        env.start_agent(c, &r1);
    }
    env.wait_clients(3);
    let before = env.create_job(&["r1"], &[], &env.job_script("true"));
    assert_eq!(env.wait_job(&before).0, 0);

    // Jobs whose commands run until a gate file exists, then append
    // "JOB CLIENT" to the done file: real effects, counted from outside.
    let done = env.root().join("done.log");
    let gated = |env: &Env, gate: &Path| {
        env.create_job(
            &["r1"],
            &[],
            &env.job_script(&format!(
                "while [ ! -e '{}' ]; do sleep 0.05; done; \
                 echo \"$RELAYTREE_JOB $RELAYTREE_CLIENT\" >> '{}'",
                gate.display(),
                done.display()
            )),
        )
    };
    let finished = |job: &str| {
        std::fs::read_to_string(&done)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(job))
            .count()
    };
    let (gate1, gate2) = (env.root().join("gate1"), env.root().join("gate2"));
    let (g1, g2) = (gated(&env, &gate1), gated(&env, &gate2));
    wait_until("both gated jobs to run on every agent", DEADLINE, || {
        env.run_counts(&g1) == each(&clients, 1) && env.run_counts(&g2) == each(&clients, 1)
    });

    let filler = disk.fill();
    std::fs::write(&gate1, b"").unwrap();
    let jobs = jobs_until_storage_fails(&env);
    eprintln!("jobs made before the disk failure showed: {}", jobs.len());
    // Once HQ has seen r1 go, nothing r1 sent before it failed is in flight.
    wait_until("HQ to see r1 disconnected", DEADLINE, || {
        env.tree()["relays"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|r| r["relay"] == "r1" && r["connected"] == false)
        })
    });
    let watched: Vec<&String> = [&g1, &g2].into_iter().chain(&jobs).collect();
    let seen: Vec<_> = watched.iter().map(|j| states(&env.status(j))).collect();
    assert!(
        !seen[1].values().any(|s| s == "succeeded"),
        "the second gated job has results at HQ before its commands ended: {:?}",
        seen[1]
    );

    // The second job's commands finish while the disk is full.
    std::fs::write(&gate2, b"").unwrap();
    wait_until(
        "the second gated job's commands to finish",
        DEADLINE,
        || finished(&g2) == clients.len(),
    );
    // For a while (the agents retry every second or so): nothing changes at HQ.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < end {
        for (job, was) in watched.iter().zip(&seen) {
            let now = states(&env.status(job));
            assert_eq!(
                &now, was,
                "job {job} changed at HQ while r1's disk was full"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !full_log(&env, "r1").contains("disk accepts writes again"),
        "r1 recovered while its disk was still full"
    );

    std::fs::remove_file(filler).unwrap();
    for job in &watched {
        let (code, st) = env.wait_job(job);
        assert_eq!(code, 0, "job {job}: {st}");
        assert_eq!(states(&st), all(&clients, "succeeded"), "job {job}");
        assert_eq!(env.run_counts(job), each(&clients, 1), "job {job}");
    }
    assert_eq!((finished(&g1), finished(&g2)), (3, 3));
    // What was acknowledged before the failure is still there.
    assert_eq!(states(&env.status(&before)), all(&clients, "succeeded"));
    let log = full_log(&env, "r1");
    assert!(
        log.contains("disk accepts writes again; restarting"),
        "r1 never said it restarted:\n{log}"
    );
    if std::env::var("SHOW_LOGS").is_ok() {
        eprintln!("{}", env.log_text());
    }
    // Stop the relay before the tmpfs goes.
    env.relays.clear();
}

/// An agent whose disk is too small for a package fails that install alone,
/// with the figures, writes nothing, and goes on running jobs.
#[test]
fn an_install_that_does_not_fit_fails_its_leaf_and_nothing_else() {
    let mut env = Env::new();
    let data = env.root().join("data").join("c1");
    let _disk = match Tmpfs::mount(&data, "24m") {
        Ok(d) => d,
        Err(e) => panic!("cannot mount a tmpfs for this test (run as root): {e}"),
    };
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.wait_clients(1);
    let pkg = env.root().join("big");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("blob.bin"),
        crate::packages::noise(20 * 1024 * 1024, 88172645463325252),
    )
    .unwrap();
    env.admin(&[
        "package",
        "add",
        pkg.to_str().unwrap(),
        "--name",
        "big",
        "--version",
        "1",
    ])
    .ok();
    let out = env
        .admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--install",
            "big",
            "--json",
        ])
        .ok();
    let (code, st) = env.wait_job(&job_id(&out.json()));
    assert_eq!(code, 1, "{st}");
    let leaf = &leaves(&st)["c1"];
    let reason = leaf["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not enough disk space"), "{st}");
    // Nothing was fetched, the agent still runs jobs.
    let chunks = data.join("packages").join("c1").join("chunks");
    let stored: usize = std::fs::read_dir(&chunks)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| std::fs::read_dir(e.path()).map(|f| f.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    // The manifest alone.
    assert!(
        stored <= 1,
        "{stored} blobs were fetched into {}",
        chunks.display()
    );
    let ping = env.create_ping(&["r1"]);
    assert_eq!(env.wait_job(&ping).0, 0);
}

/// Whether strace can trace here: `Err(why)` when ptrace is refused (a
/// container without the capability). A missing strace is a failure, not a
/// skip: `.ci/run` installs it.
fn strace_usable() -> Result<(), String> {
    let out = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e", "trace=fsync", "true"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "strace cannot be started ({e}): install it \
                 (apt-get install strace; .ci/run does)"
            )
        });
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if err.contains("ptrace") || err.contains("Operation not permitted") {
        return Err(err);
    }
    panic!("strace fails, and not because ptrace is refused: {err}");
}

/// The pid of the relay process whose command line holds every one of `args`.
fn relay_pid(args: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let relay = argv.first().is_some_and(|a| a == RELAY);
        (relay && args.iter().all(|a| argv.iter().any(|v| v == a))).then_some(pid)
    })
}

/// SIGKILL to a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// What an `strace -f -y` trace shows about one file's syncs.
#[derive(Debug, Default)]
struct SyncTrace {
    /// sync_file_range calls on the file that returned.
    ranges: usize,
    /// fsync/fdatasync calls on the file that began.
    fsyncs: usize,
    /// The sync_file_range calls that returned with no fsync/fdatasync of
    /// the file begun after them.
    unsynced: Vec<String>,
}

/// Reads a trace in order. A call interrupted by another thread's shows
/// twice: "TID NAME(FD<file>, ... <unfinished ...>" when it begins and
/// "TID <... NAME resumed>...) = 0" when it returns.
fn read_trace(text: &str, file: &str) -> SyncTrace {
    let tag = format!("<{file}>");
    let mut t = SyncTrace::default();
    // Per thread, the call on `file` in flight.
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let (tid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let (name, began, returned) = if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("").to_string();
            if open.get(tid) != Some(&name) {
                continue;
            }
            open.remove(tid);
            (name, false, true)
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            let fd = args.split([',', ')', ' ']).next().unwrap_or("");
            if !fd.ends_with(&tag) {
                continue;
            }
            let unfinished = rest.ends_with("<unfinished ...>");
            if unfinished {
                open.insert(tid.to_string(), name.to_string());
            }
            (name.to_string(), true, !unfinished)
        };
        match name.as_str() {
            "sync_file_range" if returned => {
                t.ranges += 1;
                t.unsynced.push(line.to_string());
            }
            "fsync" | "fdatasync" if began => {
                t.fsyncs += 1;
                t.unsynced.clear();
            }
            _ => {}
        }
    }
    t
}

#[test]
fn the_sync_trace_reader_sees_an_unsynced_range() {
    let f = "/d/db/db";
    let ok = "1 sync_file_range(7</d/db/db>, 0, 10, SYNC_FILE_RANGE_WAIT_BEFORE) = 0\n\
              2 fsync(4</d/db/conf>) = 0\n\
              1 fdatasync(7</d/db/db> <unfinished ...>\n\
              3 sync_file_range(7</d/db/db>, 10, 10, SYNC_FILE_RANGE_WRITE <unfinished ...>\n\
              1 <... fdatasync resumed>) = 0\n\
              3 <... sync_file_range resumed>) = 0\n\
              1 fdatasync(7</d/db/db>) = 0\n";
    let t = read_trace(ok, f);
    assert_eq!((t.ranges, t.fsyncs, t.unsynced.len()), (2, 2, 0), "{t:?}");
    // The second range returned after the only fsync began.
    let bad = "1 fdatasync(7</d/db/db> <unfinished ...>\n\
               3 sync_file_range(7</d/db/db>, 10, 10, SYNC_FILE_RANGE_WRITE) = 0\n\
               1 <... fdatasync resumed>) = 0\n\
               1 fdatasync(8</d/db/blobs/9>) = 0\n";
    let t = read_trace(bad, f);
    assert_eq!((t.ranges, t.fsyncs, t.unsynced.len()), (1, 1, 1), "{t:?}");
}

/// Acked means fsynced, seen from outside: a real relay runs under strace
/// during four jobs (one with a record large enough for a blob file of its
/// own) until it is killed, and every `sync_file_range` that
/// sled's flush made on the relay's database file is followed by an
/// fsync/fdatasync of that file; the blob file and its directory are
/// fsynced too. (The relay acknowledges only after
/// `Store::durable`, which returns only after an fsync begun after the
/// write: `store::tests::durable_returns_only_after_an_fsync_that_began_after_the_write`.)
#[test]
fn every_flush_of_a_relay_store_is_followed_by_an_fsync_of_it() {
    if let Err(why) = strace_usable() {
        eprintln!(
            "\n!!!!!!!! SKIPPED disk::every_flush_of_a_relay_store_is_followed_by_an_fsync_of_it: \
             strace cannot trace in this environment (ptrace refused): {why}\n"
        );
        return;
    }
    let mut env = Env::new();
    let hq = env.start_hq();
    let id = env.issue("relay", "r1");
    let data = env.relay_data("r1");
    std::fs::create_dir_all(&data).unwrap();
    // strace -y prints resolved paths.
    let data = data.canonicalize().unwrap();
    let trace = env.root().join("r1.strace");
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-y",
        "-e",
        "trace=fsync,fdatasync,sync_file_range",
        "-o",
    ])
    .arg(&trace)
    .arg(RELAY)
    .args(["serve", "--identity"])
    .arg(&id)
    .arg("--data-dir")
    .arg(&data)
    .args(["--listen", "127.0.0.1:0", "--parent", &hq]);
    let mut relay = Proc::spawn("r1", cmd, &env.logs());
    let r1 = relay.wait_listening().unwrap();
    // Killing strace would leave the relay running, detached: kill it
    // first, whatever happens to the test.
    let data_arg = data.display().to_string();
    let pid = relay_pid(&["serve", &data_arg]).expect("the traced relay's pid");
    let traced = KillOnDrop(pid);
    let clients = ["c1", "c2"];
    for c in clients {
        env.start_agent(c, &r1);
    }
    env.wait_clients(2);
    for _ in 0..3 {
        let job = env.create_job(&["r1"], &[], &env.job_script("true"));
        let (code, st) = env.wait_job(&job);
        assert_eq!(code, 0, "{st}");
        assert_eq!(env.run_counts(&job), each(&clients, 1));
    }
    // A job too large for sled's log: its record goes to a blob file of its
    // own (over 128 KiB), which sled writes but never fsyncs.
    let big = "x".repeat(100 * 1024);
    let out = env
        .admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--json",
            "--relay",
            "r1",
            "--",
            "sh",
            "-c",
            ": \"$@\"",
            "_",
            &big,
            &big,
        ])
        .ok();
    assert_eq!(env.wait_job(&job_id(&out.json())).0, 0);
    // Every round so far ends in an fsync: wait for the trace to show it
    // (strace writes as it goes; a round may still be under way).
    let db = data.join("db").join("db").display().to_string();
    let end = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < end {
        let live = read_trace(&std::fs::read_to_string(&trace).unwrap_or_default(), &db);
        if live.ranges > 0 && live.unsynced.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // No graceful stop: sled fsyncs when the database is dropped, which
    // would cover for a store that did not. strace ends with the relay.
    drop(traced);
    relay.wait_exit(DEADLINE);
    let text = std::fs::read_to_string(&trace).unwrap();
    let t = read_trace(&text, &db);
    eprintln!(
        "relay r1, 4 jobs: {} sync_file_range calls on {db}, {} fsync/fdatasync of it",
        t.ranges, t.fsyncs
    );
    assert!(t.ranges > 0, "no sync_file_range on {db} traced:\n{text}");
    let blobs = data.join("db").join("blobs").display().to_string();
    let blob_syncs = text
        .lines()
        .filter(|l| l.contains("sync(") && l.contains(&format!("<{blobs}/")))
        .count();
    let dir_syncs = text
        .lines()
        .filter(|l| l.contains(&format!("<{blobs}>")) && l.contains("sync("))
        .count();
    eprintln!("{blob_syncs} fsyncs of blob files, {dir_syncs} of their directory");
    assert!(
        blob_syncs > 0 && dir_syncs > 0,
        "blob files never fsynced:\n{text}"
    );
    assert!(
        t.unsynced.is_empty(),
        "{} sync_file_range calls on {db} were not followed by an fsync of it:\n{}",
        t.unsynced.len(),
        t.unsynced.join("\n")
    );
}
