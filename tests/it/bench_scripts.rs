//! The bench scripts work at small N (they are run for figures by hand, on
//! release builds; here they only have to run end to end and clean up).

use std::path::Path;
use std::process::Command;

fn bench(script: &str, args: &[&str]) -> String {
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
    let rerun = bench("rerun.sh", &["40", "2", "1"]);
    assert!(
        rerun.contains("targets == failed leaves, and exactly those re-ran"),
        "{rerun}"
    );
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
}

#[test]
fn clients_script_runs_at_small_n() {
    let out = bench("clients.sh", &["30", "2", "1"]);
    assert!(out.contains("client list --json N=30 R=2: median"), "{out}");
}
