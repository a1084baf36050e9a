//! The bench scripts work at small N (they are run for figures by hand, on
//! release builds; here they only have to run end to end and clean up).

use std::path::Path;
use std::process::Command;

fn bench(script: &str, args: &[&str]) -> String {
    bench_with(script, args, &[])
}

fn bench_with(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(crate::harness::HQ)
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("bench").join(script))
        .args(args)
        .env("RELAYTREE_BIN", &bin)
        .env("RELAYTREE_BENCH_CACHE", cache.path())
        .env_remove("RELAYTREE_DATA_DIR")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run bench script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn ping_and_rerun_scripts_run_at_small_n() {
    let ping = bench("ping.sh", &["40", "2", "1"]);
    assert!(ping.contains("ping N=40 R=2: median"), "{ping}");
    for line in [
        "ping N=40 R=2 cpu hq per job: median",
        "ping N=40 R=2 cpu relays per job: median",
        "ping N=40 R=2 cpu swarms per job: median",
        "ping N=40 R=2 tree µs per leaf: median",
        "ping N=40 R=2 relays rss after a job: median",
    ] {
        assert!(ping.contains(line), "no {line:?} in {ping}");
    }
    // The relays hold memory; a zero would mean the figure was not read.
    let rss: f64 = ping
        .lines()
        .find(|l| l.contains("relays rss after a job: median"))
        .and_then(|l| {
            l.split("median ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no rss figure: {ping}"));
    assert!(rss > 0.0, "{ping}");
    let rerun = bench("rerun.sh", &["40", "2", "1"]);
    assert!(
        rerun.contains("targets == failed leaves, and exactly those re-ran"),
        "{rerun}"
    );
}

#[test]
fn ping_pg_script_runs_at_small_n() {
    if relaytree::store::pg::testdb::server_bin().is_none() {
        eprintln!("SKIPPED: no PostgreSQL server installed (/usr/lib/postgresql/*/bin)");
        return;
    }
    // The same binary as the "base" build: both are timed, interleaved.
    let out = bench_with(
        "ping_pg.sh",
        &["20", "2", "1"],
        &[("BENCH_BASE_HQ", crate::harness::HQ)],
    );
    assert!(out.contains("ping N=20 R=2 HQ on sled: median"), "{out}");
    assert!(
        out.contains("ping N=20 R=2 HQ on PostgreSQL: median"),
        "{out}"
    );
    let base = format!(
        "ping N=20 R=2 HQ on PostgreSQL (base HQ {}): median",
        crate::harness::HQ
    );
    assert!(out.contains(&base), "{out}");
}

#[test]
fn packages_script_runs_at_small_n() {
    let out = bench("packages.sh", &["6", "2", "1"]);
    assert!(
        out.contains("packages v1 S=1048576 N=6 R=2: hq sent"),
        "{out}"
    );
    assert!(out.contains("packages v2 (1% changed)"), "{out}");
}

#[test]
fn audit_script_runs_at_small_n() {
    let out = bench("audit.sh", &["30", "2", "1"]);
    assert!(out.contains("audit N=30 R=2 objects=250: median"), "{out}");
    assert!(
        out.contains("audit N=30 R=2: bytes hq sent each relay per run"),
        "{out}"
    );
    // A compliant client's figure, in bytes (under 200: the goal).
    let up: f64 = out
        .lines()
        .find(|l| l.contains("bytes each agent sent its relay per run"))
        .and_then(|l| {
            l.split("median ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no bytes-up figure: {out}"));
    assert!(up > 0.0 && up < 200.0, "{out}");
}

#[test]
fn rollout_script_runs_at_small_n() {
    let out = bench("rollout.sh", &["200", "2"]);
    assert!(
        out.contains("rollout --batch 10% N=200 R=2: done in"),
        "{out}"
    );
    assert!(
        out.contains("rollout --max-failures 1% with 5% failing N=200 R=2:"),
        "{out}"
    );
}

#[test]
fn sync_script_runs_at_small_n() {
    let out = bench("sync.sh", &["12", "2", "16"]);
    assert!(
        out.contains("sync N=12 R=2 collections=3: 3 packages, 3 jobs, 1 batch"),
        "{out}"
    );
}

#[test]
fn failover_script_runs_at_small_n() {
    let out = bench("failover.sh", &["6", "1"]);
    assert!(
        out.contains(
            "failover N=6: kill -9 of the parent -> every ping result through the other: median"
        ),
        "{out}"
    );
}

#[test]
fn failover_hq_script_runs_at_small_n() {
    if relaytree::store::pg::testdb::server_bin().is_none() {
        eprintln!("SKIPPED: no PostgreSQL server installed (/usr/lib/postgresql/*/bin)");
        return;
    }
    let out = bench("failover_hq.sh", &["6", "1"]);
    assert!(
        out.contains("failover_hq N=6: kill -9 of HQ A -> every ping result at HQ B: median"),
        "{out}"
    );
}

#[test]
fn idle_script_runs_at_small_n() {
    let out = bench("idle.sh", &["20", "2", "2", "1"]);
    assert!(
        out.contains("idle N=20 R=2: HQ + relays CPU over 2 s: median"),
        "{out}"
    );
    assert!(
        out.contains("idle N=20 R=2: 0 sessions ended at the relays"),
        "{out}"
    );
}

#[test]
fn clients_script_runs_at_small_n() {
    let out = bench("clients.sh", &["30", "2", "1"]);
    assert!(out.contains("client list --json N=30 R=2: median"), "{out}");
}
