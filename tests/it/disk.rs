//! Disk trouble: a relay whose disk fills up stops acknowledging, says so in
//! its log, and recovers by itself when space returns, with nothing
//! acknowledged lost and nothing run twice.

use crate::harness::*;
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

    let filler = disk.fill();
    // An I/O error from sled, or a flush that hangs (sled can hang on a full
    // disk): either way the relay reports it and stops acknowledging. Writes
    // into space sled had already claimed still succeed, so jobs are made
    // until the relay needs new space (a few at most; some may get through
    // before the failure: what matters is that nothing is acknowledged after
    // it, and nothing is lost or run twice).
    let mut jobs = Vec::new();
    wait_until("r1 to report the failing disk", 2 * DEADLINE, || {
        if env.log_text().contains("storage failed") {
            return true;
        }
        if jobs.len() < 200 {
            jobs.push(env.create_job(&["r1"], &[], &env.job_script("echo done")));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        env.log_text().contains("storage failed")
    });

    eprintln!("jobs made before the disk failure showed: {}", jobs.len());
    std::fs::remove_file(filler).unwrap();
    for job in &jobs {
        let (code, st) = env.wait_job(job);
        assert_eq!(code, 0, "{st}");
        assert_eq!(states(&st), all(&clients, "succeeded"));
        assert_eq!(env.run_counts(job), each(&clients, 1));
    }
    // What was acknowledged before the failure is still there.
    assert_eq!(states(&env.status(&before)), all(&clients, "succeeded"));
    assert!(env
        .log_text()
        .contains("disk accepts writes again; restarting"));
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
