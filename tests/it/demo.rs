//! `hq demo`, the README's first command: a real tree on loopback, a job with
//! a rerun, a package installed through two relays.

use crate::harness::*;
use std::process::Command;

#[test]
fn the_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = Out::of(run(Command::new(HQ)
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))))
    .ok();
    assert!(
        out.stdout
            .contains("every leaf accounted for: 5 leaves, 5 succeeded"),
        "{out:?}"
    );
    assert!(out.stdout.contains("$ hq client show c4"), "{out:?}");
    assert!(out.stdout.contains("hello     1.0"), "{out:?}");
    assert!(out.stdout.contains("hq sent: r1"), "{out:?}");
}
