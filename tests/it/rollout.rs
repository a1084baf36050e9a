//! Rollout policies enforced by real relays: `--batch` measured from the
//! start and end times the commands write, canary ordering, the circuit
//! breaker pausing across nested relays, pause and resume by hand (an
//! offline client still gets the job once resumed), `--at`, `--window`,
//! and the bad inputs refused with exit 2.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One leaf's run as its command wrote it: client, relay, start and end ms.
#[derive(Debug, Clone)]
struct Span {
    client: String,
    relay: String,
    start: u64,
    end: Option<u64>,
}

/// A script that writes "CLIENT RELAY start MS", runs `body`, then writes
/// "CLIENT RELAY end MS" to `times` (one line each, appended).
fn timed(times: &Path, body: &str) -> String {
    let t = times.display();
    format!(
        r#"echo "$RELAYTREE_CLIENT $RELAYTREE_RELAY start $(date +%s%3N)" >> '{t}'; {body}; rc=$?; echo "$RELAYTREE_CLIENT $RELAYTREE_RELAY end $(date +%s%3N)" >> '{t}'; exit $rc"#
    )
}

/// Blocks until `gate` exists (at most about 60 s).
fn until_gate(gate: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
        gate.display()
    )
}

fn spans(times: &Path) -> BTreeMap<String, Span> {
    let text = std::fs::read_to_string(times).unwrap_or_default();
    let mut out: BTreeMap<String, Span> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 4 {
            continue;
        }
        let ms: u64 = f[3].parse().unwrap();
        match f[2] {
            "start" => {
                out.insert(
                    f[0].to_string(),
                    Span {
                        client: f[0].into(),
                        relay: f[1].into(),
                        start: ms,
                        end: None,
                    },
                );
            }
            _ => {
                if let Some(s) = out.get_mut(f[0]) {
                    s.end = Some(ms);
                }
            }
        }
    }
    out
}

/// The most spans of `relay` running at one moment.
fn max_in_flight(spans: &BTreeMap<String, Span>, relay: &str) -> usize {
    let mut ev: Vec<(u64, i32)> = Vec::new();
    for s in spans.values().filter(|s| s.relay == relay) {
        ev.push((s.start, 1));
        ev.push((s.end.unwrap_or(u64::MAX), -1));
    }
    // Ends before starts at the same ms.
    ev.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

fn times_file(env: &Env, name: &str) -> PathBuf {
    env.root().join(name)
}

/// HQ <- r1 <- r2, three agents under each: `--batch 1` lets one leaf per
/// relay run at a time, at both the relay under HQ and the nested one,
/// while the two relays run side by side.
#[test]
fn batch_limits_leaves_in_flight_at_every_relay() {
    let mut env = Env::new();
    env.start_nested(&["a1", "a2", "a3"], &["b1", "b2", "b3"]);
    let times = times_file(&env, "batch.times");
    let job = env.create_job(&["r1"], &["--batch", "1"], &timed(&times, "sleep 0.4"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&times);
    assert_eq!(sp.len(), 6, "{sp:?}");
    assert!(sp.values().all(|s| s.end.is_some()), "{sp:?}");
    assert_eq!(max_in_flight(&sp, "r1"), 1, "r1: {sp:?}");
    assert_eq!(max_in_flight(&sp, "r2"), 1, "r2: {sp:?}");
    assert_eq!(st["policy"]["batch"]["count"], 1, "{st}");
}

/// `--canary 2` over two relays: HQ picks one canary under each; every
/// other leaf starts only after both canaries ended. A failing canary
/// pauses the job with the reason; resume lets the rest run.
#[test]
fn canaries_run_first_and_a_failed_one_pauses_the_job() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    for a in ["a1", "a2"] {
        env.start_agent(a, &r1);
    }
    for b in ["b1", "b2"] {
        env.start_agent(b, &r2);
    }
    env.wait_clients(4);
    let times = times_file(&env, "canary.times");
    let job = env.create_job(
        &["r1", "r2"],
        &["--canary", "2"],
        &timed(&times, "sleep 0.5"),
    );
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let canaries: Vec<String> = st["policy"]["canary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(canaries, vec!["a1", "b1"], "{st}");
    let sp = spans(&times);
    assert_eq!(sp.len(), 4, "{sp:?}");
    let canary_end = canaries.iter().map(|c| sp[c].end.unwrap()).max().unwrap();
    for c in ["a2", "b2"] {
        assert!(
            sp[c].start >= canary_end,
            "{c} started before the canaries ended: {sp:?}"
        );
    }

    // A canary that fails: the job pauses, nothing else starts.
    let times2 = times_file(&env, "canary2.times");
    let job2 = env.create_job(
        &["r1", "r2"],
        &["--canary", "1"],
        &timed(&times2, r#"[ "$RELAYTREE_CLIENT" != a1 ]"#),
    );
    let st = wait_for("the failed canary to pause the job", DEADLINE, || {
        let st = env.status(&job2);
        (st["state"] == "paused").then_some(st)
    });
    let reason = st["pause_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("canary a1"), "{st}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(spans(&times2).len(), 1, "only the canary ran while paused");
    let r = env.admin(&["job", "resume", &job2, "--json"]).ok().json();
    assert_eq!(r["state"], "active", "{r}");
    let (code, st) = env.wait_job(&job2);
    assert_eq!(code, 1, "the canary failed: {st}");
    assert_eq!(st["state"], "done", "{st}");
    assert_eq!(spans(&times2).len(), 4, "the rest ran after resume");
}

/// HQ <- r1 <- r2: the failures at the nested relay pass `--max-failures 1`;
/// the job pauses everywhere (r1's waiting leaves stay pending too), the
/// reason says why; resume runs what was left.
#[test]
fn max_failures_pauses_across_nested_relays_and_resume_continues() {
    let mut env = Env::new();
    env.start_nested(&["a1", "a2", "a3"], &["b1", "b2", "b3"]);
    let times = times_file(&env, "breaker.times");
    let gate = env.root().join("breaker.gate");
    // a* block until the gate exists; b1 and b2 fail at once; b3 would succeed.
    let body = format!(
        r#"case "$RELAYTREE_CLIENT" in a*) {};; b1|b2) exit 1;; esac"#,
        until_gate(&gate)
    );
    let job = env.create_job(
        &["r1"],
        &["--batch", "1", "--max-failures", "1"],
        &timed(&times, &body),
    );
    let st = wait_for("the breaker to pause the job", DEADLINE, || {
        let st = env.status(&job);
        (st["state"] == "paused").then_some(st)
    });
    let reason = st["pause_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("past --max-failures 1"), "{st}");
    // The paused job reaches r2 through r1.
    wait_until("r2 to apply the pause", DEADLINE, || {
        env.relays["r2"]
            .proc
            .stderr_text()
            .contains("rollout control applied")
    });
    std::fs::write(&gate, b"").unwrap();
    wait_until("a1 to finish", DEADLINE, || {
        states(&env.status(&job)).get("a1").map(String::as_str) == Some("succeeded")
    });
    std::thread::sleep(Duration::from_secs(2));
    let sp = spans(&times);
    let ran: Vec<&str> = sp.keys().map(String::as_str).collect();
    assert_eq!(ran, vec!["a1", "b1", "b2"], "started while paused: {sp:?}");
    let s = states(&env.status(&job));
    for c in ["a2", "a3", "b3"] {
        assert_eq!(s[c], "pending", "{c}: {s:?}");
    }
    // Pausing a paused job changes nothing.
    let r = env.admin(&["job", "pause", &job, "--json"]).ok().json();
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("failures"),
        "{r}"
    );
    env.admin(&["job", "resume", &job]).ok();
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    assert_eq!(spans(&times).len(), 6, "every leaf ran after resume");
    // A finished job cannot be paused, resumed or canceled.
    for verb in ["pause", "resume", "cancel"] {
        let out = env.admin(&["job", verb, &job]);
        assert_eq!(out.code, 2, "{verb}: {out:?}");
        assert!(out.stderr.contains("done"), "{verb}: {out:?}");
    }
}

/// `hq job pause` by hand: no new leaf starts; a client offline at the
/// time returns while paused and gets nothing; resume delivers to it.
#[test]
fn pause_by_hand_holds_leaves_and_an_offline_client_gets_the_job_after_resume() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    for a in ["a1", "a2", "a3"] {
        env.start_agent(a, &r1);
    }
    env.wait_clients(3);
    env.kill_agent("a3");
    let times = times_file(&env, "pause.times");
    let gate = env.root().join("pause.gate");
    let job = env.create_job(
        &["r1"],
        &["--batch", "1"],
        &timed(&times, &until_gate(&gate)),
    );
    wait_until("a1 to run", DEADLINE, || {
        states(&env.status(&job)).get("a1").map(String::as_str) == Some("running")
    });
    // Resuming a job that is not paused: one line, exit 2.
    let out = env.admin(&["job", "resume", &job]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not paused"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    let r = env.admin(&["job", "pause", &job, "--json"]).ok().json();
    assert_eq!(r["state"], "paused", "{r}");
    assert_eq!(r["reason"], "paused by the operator", "{r}");
    let st = env.status(&job);
    assert_eq!(st["state"], "paused", "{st}");
    assert_eq!(st["pause_reason"], "paused by the operator", "{st}");
    wait_until("r1 to apply the pause", DEADLINE, || {
        env.relays["r1"]
            .proc
            .stderr_text()
            .contains("rollout control applied")
    });
    // `job wait` on the paused job says so once on stderr, and keeps
    // waiting (here until its timeout).
    let w = env.admin(&["job", "wait", &job, "--timeout", "2s"]);
    assert_eq!(w.code, 3, "{w:?}");
    assert_eq!(
        w.stderr
            .matches(&format!("job {job} is paused (paused by the operator)"))
            .count(),
        1,
        "{w:?}"
    );
    std::fs::write(&gate, b"").unwrap();
    env.start_agent("a3", &r1);
    wait_until("a1 to finish", DEADLINE, || {
        states(&env.status(&job)).get("a1").map(String::as_str) == Some("succeeded")
    });
    // a3 is back; let a ping reach it so that it surely had the chance.
    let ping = env.create_ping(&["r1"]);
    let (code, _) = env.wait_job(&ping);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        spans(&times).len(),
        1,
        "started while paused: {:?}",
        spans(&times)
    );
    let r = env.admin(&["job", "resume", &job, "--json"]).ok().json();
    assert_eq!(r["state"], "active", "{r}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&times);
    assert_eq!(sp.len(), 3, "{sp:?}");
    assert_eq!(max_in_flight(&sp, "r1"), 1, "{sp:?}");
}

/// A leaf handed to its agent but not started yet (the agent's one slot
/// is busy) when its job is paused: the relay recalls it and the agent
/// gives it back, so it does not start while the job is paused, not even
/// once the slot is free; after resume it runs, once.
#[test]
fn a_paused_jobs_unstarted_leaf_is_recalled_and_runs_after_resume() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent_with("a1", &r1, &["--max-parallel", "1"]);
    env.wait_clients(1);
    let gate = env.root().join("recall.gate");
    // Holds a1's only slot until the gate exists.
    let busy = env.create_job(&["r1"], &[], &env.job_script(&until_gate(&gate)));
    wait_until("the first job to run", DEADLINE, || {
        env.job_runs(&busy).len() == 1
    });
    let job = env.create_job(&["r1"], &["--batch", "1"], &env.job_script("true"));
    wait_until("the second job's leaf to reach a1", DEADLINE, || {
        states(&env.status(&job)).get("a1").map(String::as_str) == Some("delivered")
    });
    env.admin(&["job", "pause", &job]).ok();
    wait_until("a1 to give the leaf back", DEADLINE, || {
        env.agents["a1"]
            .stderr_text()
            .contains("attempt given back")
    });
    std::fs::write(&gate, b"").unwrap();
    let (code, st) = env.wait_job(&busy);
    assert_eq!(code, 0, "{st}");
    // The slot is free: a job queued behind the recalled leaf runs (the
    // slot is first come, first served), the paused one does not.
    let after = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&after);
    assert_eq!(code, 0, "{st}");
    assert!(
        env.job_runs(&job).is_empty(),
        "started while paused: {:?}",
        env.runs()
    );
    env.admin(&["job", "resume", &job]).ok();
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job), each(&["a1"], 1));
}

/// `--at` a few seconds ahead: no command starts before it.
#[test]
fn at_delays_the_start() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    for a in ["a1", "a2"] {
        env.start_agent(a, &r1);
    }
    env.wait_clients(2);
    let times = times_file(&env, "at.times");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at_s = now.as_secs() + 4;
    let at = rfc3339(at_s);
    let job = env.create_job(&["r1"], &["--at", &at], &timed(&times, "true"));
    let st = env.status(&job);
    assert_eq!(st["policy"]["start_at_ms"], at_s * 1000, "{st}");
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&times);
    assert_eq!(sp.len(), 2, "{sp:?}");
    for s in sp.values() {
        assert!(
            s.start >= at_s * 1000,
            "{} started before --at: {sp:?}",
            s.client
        );
    }
}

/// `--window` that excludes now: nothing starts, also for a client that
/// returns meanwhile; a window that includes now: it runs.
#[test]
fn window_holds_leaves_outside_it() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    for a in ["a1", "a2"] {
        env.start_agent(a, &r1);
    }
    env.wait_clients(2);
    env.kill_agent("a2");
    let now_min = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60)
        % (24 * 60);
    let hm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let outside = format!("{}-{}", hm(now_min + 120), hm(now_min + 180));
    let inside = format!("{}-{}", hm(now_min + 1440 - 60), hm(now_min + 60));
    let times = times_file(&env, "window.times");
    let job = env.create_job(&["r1"], &["--window", &outside], &timed(&times, "true"));
    env.start_agent("a2", &r1);
    let ping = env.create_ping(&["r1"]);
    let (code, _) = env.wait_job(&ping);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(spans(&times).is_empty(), "ran outside the window");
    let s = states(&env.status(&job));
    assert_eq!(s, all(&["a1", "a2"], "pending"), "{s:?}");
    let times2 = times_file(&env, "window2.times");
    let job2 = env.create_job(&["r1"], &["--window", &inside], &timed(&times2, "true"));
    let (code, st) = env.wait_job(&job2);
    assert_eq!(code, 0, "{st}");
    assert_eq!(spans(&times2).len(), 2);
}

/// Bad rollout input: one line, exit 2, and no job is made.
#[test]
fn bad_rollout_input_is_refused_with_one_line() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("a1", &r1);
    env.wait_clients(1);
    let past = rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 300,
    );
    for (flags, culprit) in [
        (vec!["--batch", "0"], "--batch"),
        (vec!["--batch", "x"], "--batch"),
        (vec!["--max-failures", "150%"], "--max-failures"),
        (vec!["--at", past.as_str()], "--at"),
        (vec!["--at", "soon"], "--at"),
        (vec!["--window", "25:00-01:00"], "--window"),
        (vec!["--window", "02:00"], "--window"),
        (vec!["--canary", "0"], "--canary"),
    ] {
        let mut args = vec![
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
        ];
        args.extend(flags.iter().copied());
        args.extend(["--", "true"]);
        let out = env.admin(&args);
        assert_eq!(out.code, 2, "{flags:?}: {out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{flags:?}: {out:?}");
        assert!(out.stderr.contains(culprit), "{flags:?}: {out:?}");
    }
    let list = env.admin(&["job", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    for verb in ["pause", "resume"] {
        let out = env.admin(&["job", verb, "99"]);
        assert_eq!(out.code, 2, "{out:?}");
    }
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `--repeat 'daily HH:MM'` for the coming minute: the occurrence fires
/// once, as a job linked to its schedule that really runs; after an HQ
/// restart the same due time makes no second job; `job list` shows the
/// schedule and its next run (tomorrow).
#[test]
fn a_recurring_job_fires_once_per_due_time_across_restarts() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("a1", &r1);
    env.wait_clients(1);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let due_s = (now_s / 60 + 1) * 60;
    let m = (due_s / 60) % 1440;
    let spec = format!("daily {:02}:{:02}", m / 60, m % 60);
    let times = times_file(&env, "repeat.times");
    let script = timed(&times, "true");
    let out = env.admin(&repeat_args("r1", &spec, &script)).ok().json();
    let schedule = out["schedule"].as_u64().expect("a schedule id");
    assert_eq!(out["next_ms"], due_s * 1000, "{out}");
    let occurrences = |env: &Env| -> Vec<serde_json::Value> {
        let list = env.admin(&["job", "list", "--json"]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|j| j["repeat"]["schedule"].as_u64() == Some(schedule))
            .cloned()
            .collect()
    };
    let job = wait_for("the occurrence", Duration::from_secs(120), || {
        occurrences(&env).first().map(job_id)
    });
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&times);
    assert_eq!(sp.len(), 1, "{sp:?}");
    assert!(
        sp["a1"].start >= due_s * 1000,
        "ran before it was due: {sp:?}"
    );
    // HQ restarts: the due time is behind it; no second occurrence.
    let addr = env.kill_hq();
    env.start_hq_on(&addr);
    let ping = env.create_ping(&["r1"]);
    let (code, _) = env.wait_job(&ping);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_secs(2));
    let occ = occurrences(&env);
    assert_eq!(occ.len(), 1, "{occ:?}");
    assert_eq!(
        occ[0]["repeat"]["next_ms"],
        (due_s + 86_400) * 1000,
        "{occ:?}"
    );
    assert_eq!(spans(&times).len(), 1);
    let text = env.admin(&["job", "list"]).ok().stdout;
    assert!(
        text.contains(&spec) && text.contains("recurring jobs"),
        "{text}"
    );
}

/// `--after-sync r2` while r2 is down with a sync ordered: the job waits,
/// paused with the reason; r2 returns, answers its sync, and the job runs.
#[test]
fn a_job_after_sync_waits_for_the_relays_sync() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_relay("r2", &hq);
    env.start_agent("a1", &r1);
    env.wait_clients(1);
    wait_until("r2 known", DEADLINE, || {
        env.tree()["relays"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    });
    let r2_addr = env.kill_relay("r2");
    let dir = env.root().join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.txt"), "some content\n").unwrap();
    env.admin(&[
        "package",
        "add",
        dir.to_str().unwrap(),
        "--name",
        "tool",
        "--version",
        "1",
    ])
    .ok();
    env.admin(&["package", "sync", "--relay", "r2"]).ok();
    let times = times_file(&env, "aftersync.times");
    let job = env.create_job(&["r1"], &["--after-sync", "r2"], &timed(&times, "true"));
    let st = env.status(&job);
    assert_eq!(st["state"], "paused", "{st}");
    assert!(
        st["pause_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("r2"),
        "{st}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(spans(&times).is_empty(), "ran before r2's sync");
    env.start_relay_on("r2", &hq, &r2_addr);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(spans(&times).len(), 1);
}

/// `hq job create --json --dest clients --client NAME... EXTRA -- sh -c SCRIPT`.
fn create_named(env: &Env, clients: &[&str], extra: &[&str], script: &str) -> Out {
    let mut args = vec!["job", "create", "--json", "--dest", "clients"];
    for c in clients {
        args.extend(["--client", c]);
    }
    args.extend(extra);
    args.extend(["--", "sh", "-c", script]);
    env.admin(&args)
}

/// `--dest clients` takes the rollout rules: four named clients under two
/// relays (one nested) with `--canary 1 --batch 1`. The canary is one of
/// the named clients and ends before any other starts; one leaf at a time
/// runs at each relay; a client not named runs nothing.
#[test]
fn named_clients_take_the_rollout_rules() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    for a in ["a1", "a2", "a3"] {
        env.start_agent(a, &r1);
    }
    for b in ["b1", "b2"] {
        env.start_agent(b, &r2);
    }
    env.wait_clients(5);
    let times = times_file(&env, "named.times");
    let out = create_named(
        &env,
        &["a2", "a3", "b1", "b2"],
        &["--canary", "1", "--batch", "1"],
        &timed(&times, "sleep 0.3"),
    )
    .ok();
    let job = job_id(&out.json());
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    // Spread over the named clients' homes, first name first: a2, not a1.
    assert_eq!(st["policy"]["canary"], serde_json::json!(["a2"]), "{st}");
    let sp = spans(&times);
    let ran: Vec<&str> = sp.keys().map(String::as_str).collect();
    assert_eq!(ran, ["a2", "a3", "b1", "b2"], "{sp:?}");
    let canary_end = sp["a2"].end.unwrap();
    for c in ["a3", "b1", "b2"] {
        assert!(sp[c].start >= canary_end, "{c} before the canary: {sp:?}");
    }
    assert_eq!(max_in_flight(&sp, "r1"), 1, "r1: {sp:?}");
    assert_eq!(max_in_flight(&sp, "r2"), 1, "r2: {sp:?}");
}

/// `--repeat` with `--dest clients`: the occurrence runs on the named
/// clients only (under two relays); `job schedules` lists the schedule,
/// `job unschedule` removes one: removed before its due time (the same
/// minute), it makes no job. Unscheduling an unknown schedule is one line,
/// exit 2.
#[test]
fn named_clients_repeat_and_a_removed_schedule_makes_no_job() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &hq);
    env.start_agent("a1", &r1);
    env.start_agent("a2", &r1);
    env.start_agent("b1", &r2);
    env.wait_clients(3);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let due_s = (now_s / 60 + 1) * 60;
    let m = (due_s / 60) % 1440;
    let spec = format!("daily {:02}:{:02}", m / 60, m % 60);
    let kept = times_file(&env, "kept.times");
    let gone = times_file(&env, "gone.times");
    let sched = |times: &Path| -> u64 {
        let v = create_named(
            &env,
            &["a2", "b1"],
            &["--repeat", &spec, "--batch", "1"],
            &timed(times, "true"),
        )
        .ok()
        .json();
        v["schedule"].as_u64().unwrap_or_else(|| panic!("{v}"))
    };
    let s1 = sched(&kept);
    let s2 = sched(&gone);
    let listed = env.admin(&["job", "schedules", "--json"]).ok().json();
    let ids: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["schedule"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [s1, s2], "{listed}");
    let out = env.admin(&["job", "unschedule", &s2.to_string()]).ok();
    assert!(out.stdout.contains(&format!("schedule {s2}")), "{out:?}");
    let listed = env.admin(&["job", "schedules", "--json"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let bad = env.admin(&["job", "unschedule", &s2.to_string()]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad:?}");
    assert!(bad.stderr.contains(&format!("no schedule {s2}")), "{bad:?}");
    let jobs = |env: &Env| -> Vec<String> {
        let list = env.admin(&["job", "list", "--json"]).ok().json();
        list.as_array().unwrap().iter().map(job_id).collect()
    };
    let job = wait_for("the occurrence", Duration::from_secs(120), || {
        jobs(&env).first().cloned()
    });
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&kept);
    let ran: Vec<&str> = sp.keys().map(String::as_str).collect();
    assert_eq!(ran, ["a2", "b1"], "{sp:?}");
    assert!(sp.values().all(|s| s.start >= due_s * 1000), "{sp:?}");
    // The same due time: the removed schedule had its chance and made nothing.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(jobs(&env), vec![job], "one job only");
    assert!(spans(&gone).is_empty(), "{:?}", spans(&gone));
}

/// Near the failure threshold a relay keeps fewer leaves in flight: with
/// `--max-failures 0` and room for six (`--batch 6`), one leaf runs first;
/// it fails, and nothing else starts (the job pauses). The same rules on a
/// job that succeeds run every leaf to the end.
#[test]
fn near_the_failure_threshold_fewer_leaves_are_in_flight() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let names = ["a1", "a2", "a3", "a4", "a5", "a6"];
    for a in names {
        env.start_agent(a, &r1);
    }
    env.wait_clients(6);
    let rules = ["--batch", "6", "--max-failures", "0"];
    let times = times_file(&env, "near.times");
    let job = env.create_job(&["r1"], &rules, &timed(&times, "sleep 0.3; exit 1"));
    // Paused (or, had every leaf started and failed, done).
    let state = wait_for("the breaker to pause the job", DEADLINE, || {
        let s = env.status(&job)["state"].clone();
        (s == "paused" || s == "done").then_some(s)
    });
    std::thread::sleep(Duration::from_secs(2));
    let sp = spans(&times);
    assert_eq!(sp.len(), 1, "more than one leaf started: {sp:?}");
    assert_eq!(state, "paused");
    let ok = times_file(&env, "near-ok.times");
    let job = env.create_job(&["r1"], &rules, &timed(&ok, "sleep 0.2"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    let sp = spans(&ok);
    assert_eq!(sp.len(), 6, "{sp:?}");
    assert!(max_in_flight(&sp, "r1") >= 2, "it never grew: {sp:?}");
}
