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
    // The audit-and-sync act: 2 collections (c3 c5 content, c4 mode), one
    // batch, every target compliant after.
    assert!(
        out.stdout
            .contains("audit and sync: 2 unique collections, 2 jobs in batch")
            && out.stdout.contains("3 of 3 targets compliant"),
        "{out:?}"
    );
    // The demo prints what the real commands print.
    assert!(
        out.stdout
            .contains("$ hq job rerun 1 --failed\njob 1 attempt 2: 2 leaves targeted\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "$ hq job create --dest all-lower-clients --relay r1 --install hello@1.0\n2\n"
        ),
        "the install job's id: {out:?}"
    );
    assert!(
        out.stdout
            .contains("--- stderr (14 bytes) ---\nc2: disk full\n"),
        "{out:?}"
    );
}

#[test]
fn the_demo_prints_json_lines_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Out::of(run(Command::new(HQ)
        .args(["demo", "--json", "--dir"])
        .arg(dir.path().join("demo"))))
    .ok();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let step = |cmd: &str| {
        lines
            .iter()
            .find(|v| v["command"] == cmd)
            .unwrap_or_else(|| panic!("no step {cmd}: {}", out.stdout))
            .clone()
    };
    assert_eq!(step("hq job rerun 1 --failed")["result"]["targets"], 2);
    assert_eq!(
        step("hq job output 1 c2")["result"]["stderr"],
        "c2: disk full\n"
    );
    let install = step("hq job create --dest all-lower-clients --relay r1 --install hello@1.0");
    assert_eq!(install["result"]["job"], "2");
    assert_eq!(
        step("hq job status 2 --clients")["result"]["totals"]["succeeded"],
        5
    );
}
