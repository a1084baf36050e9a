//! Targeting: labels agents report, jobs narrowed by labels and
//! exclusions, jobs to named clients wherever they live (nested relays
//! too), and the client list with online/offline as relays report it.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

/// `hq client list --json ARGS`, by client name.
fn client_list(env: &Env, args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let mut a = vec!["client", "list", "--json"];
    a.extend(args);
    let v = env.admin(&a).ok().json();
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|c| (c["client"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

/// Waits until every one of `want` (client, label text) is online in the
/// client list with exactly those labels.
fn wait_labels(env: &Env, want: &[(&str, &str)]) {
    wait_until("clients online with their labels", DEADLINE, || {
        let l = client_list(env, &[]);
        want.iter().all(|(c, labels)| {
            l.get(*c)
                .is_some_and(|e| e["state"] == "online" && label_text(&e["labels"]) == *labels)
        })
    });
}

fn label_text(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Clients that ran `job`, per the runs log (each once), sorted.
fn ran(env: &Env, job: &str) -> Vec<String> {
    let counts = env.run_counts(job);
    assert!(counts.values().all(|n| *n == 1), "ran twice: {counts:?}");
    counts.into_keys().collect()
}

fn create(env: &Env, args: &[&str], script: &str) -> String {
    let mut a = vec!["job", "create", "--json"];
    a.extend(args);
    a.extend(["--", "sh", "-c", script]);
    job_id(&env.admin(&a).ok().json())
}

#[test]
fn labels_exclusions_and_named_clients_select_exactly_their_agents() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    let r3 = env.start_relay("r3", &hq);
    env.start_agent_with("c1", &r1, &["--label", "role=web"]);
    env.start_agent_with("c2", &r1, &["--label", "role=db"]);
    env.start_agent_with("c3", &r2, &["--label", "role=web"]);
    env.start_agent_with("c4", &r2, &["--label", "role=web", "--label", "zone=eu"]);
    env.start_agent_with("c5", &r3, &["--label", "role=web"]);
    wait_labels(
        &env,
        &[
            ("c1", "role=web"),
            ("c2", "role=db"),
            ("c3", "role=web"),
            ("c4", "role=web,zone=eu"),
            ("c5", "role=web"),
        ],
    );
    let script = env.job_script("true");

    // All lower clients of r1 (r2 nested), role=web, without c4: the
    // snapshot at r1 narrows by the labels r2 passed up.
    let job = env.create_job(
        &["r1"],
        &["--label", "role=web", "--exclude", "c4"],
        &script,
    );
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(states(&st), all(&["c1", "c3"], "succeeded"), "{st}");
    assert_eq!(ran(&env, &job), ["c1", "c3"]);

    // Two labels: both must match.
    let job = env.create_job(
        &["r1", "r3"],
        &["--label", "role=web", "--label", "zone=eu"],
        &script,
    );
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(ran(&env, &job), ["c4"]);

    // Named clients across branches (r1, nested r2, r3), each at its home.
    let job = create(
        &env,
        &[
            "--dest", "clients", "--client", "c2", "--client", "c4", "--client", "c5",
        ],
        &script,
    );
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(ran(&env, &job), ["c2", "c4", "c5"]);
    let homes: Vec<(String, String)> = leaves(&st)
        .into_iter()
        .map(|(c, l)| (c, l["relay"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        homes,
        [("c2", "r1"), ("c4", "r2"), ("c5", "r3")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // ... narrowed by a label and an exclusion.
    let job = create(
        &env,
        &[
            "--dest",
            "clients",
            "--client",
            "c1",
            "--client",
            "c2",
            "--client",
            "c3",
            "--label",
            "role=web",
            "--exclude",
            "c3",
        ],
        &script,
    );
    env.wait_job(&job);
    assert_eq!(ran(&env, &job), ["c1"]);

    // Bad input: one line naming the culprit, exit 2, nothing created.
    let jobs_before = env.admin(&["job", "list", "--json"]).ok().json();
    for (args, culprit) in [
        (
            vec!["--dest", "clients", "--client", "c1", "--client", "nobody"],
            "nobody",
        ),
        (
            vec![
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
                "--label",
                "role",
            ],
            "role",
        ),
        (
            vec![
                "--dest",
                "all-lower-clients",
                "--relay",
                "r1",
                "--exclude",
                "c44",
            ],
            "c44",
        ),
        (vec!["--dest", "clients", "--relay", "r1"], "--client"),
    ] {
        let mut a = vec!["job", "create"];
        a.extend(args.iter());
        a.push("--ping");
        let out = env.admin(&a);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(culprit), "{args:?}: {err}");
    }
    assert_eq!(
        env.admin(&["job", "list", "--json"]).ok().json(),
        jobs_before
    );
    assert_eq!(env.runs().len(), 2 + 1 + 3 + 1, "nothing else ran");

    // The tree counts them per relay, all online.
    let t = env.tree();
    let counts: Vec<(String, u64, u64)> = t["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relay"].as_str().unwrap().to_string(),
                r["online"].as_u64().unwrap(),
                r["offline"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [("r1", 2, 0), ("r2", 2, 0), ("r3", 1, 0)].map(|(r, a, b)| (r.to_string(), a, b)),
        "{t}"
    );
}

#[test]
fn clients_go_offline_and_online_and_their_labels_change_on_restart() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent_with("c1", &r1, &["--label", "role=web"]);
    env.start_agent("c2", &r1);
    wait_labels(&env, &[("c1", "role=web"), ("c2", "")]);
    let l = client_list(&env, &[]);
    assert_eq!(l["c1"]["relay"], "r1", "{l:?}");
    assert!(
        l["c1"]["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{l:?}"
    );
    assert!(l["c1"]["last_seen_ms"].as_u64().unwrap() > 0, "{l:?}");

    // Killed: offline well within the idle timeout (20 s), seen by the relay.
    env.kill_agent("c1");
    wait_until("c1 offline", Duration::from_secs(20), || {
        client_list(&env, &["--state", "offline"]).contains_key("c1")
    });
    let online = client_list(&env, &["--state", "online"]);
    assert_eq!(online.keys().collect::<Vec<_>>(), ["c2"]);
    let off = &client_list(&env, &[])["c1"];
    assert_eq!(off["state"], "offline");
    assert_eq!(label_text(&off["labels"]), "role=web", "labels kept: {off}");
    let r1v = &env.tree()["relays"][0];
    assert_eq!(
        (r1v["online"].as_u64(), r1v["offline"].as_u64()),
        (Some(1), Some(1)),
        "{r1v}"
    );
    let by_label = client_list(&env, &["--label", "role=web"]);
    assert_eq!(by_label.keys().collect::<Vec<_>>(), ["c1"]);

    // Back with other labels: online again, labels replaced; a job by the
    // new label runs there only.
    env.start_agent_with("c1", &r1, &["--label", "role=db"]);
    wait_labels(&env, &[("c1", "role=db")]);
    let show = env.admin(&["client", "show", "c1", "--json"]).ok().json();
    assert_eq!(label_text(&show["labels"]), "role=db", "{show}");
    assert_eq!(show["state"], "online", "{show}");
    let text = env.admin(&["client", "show", "c1"]).ok().stdout;
    assert!(text.contains("role=db"), "{text}");
    let script = env.job_script("true");
    let job = env.create_job(&["r1"], &["--label", "role=db"], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    assert_eq!(ran(&env, &job), ["c1"]);

    // Revoked: listed as such.
    env.admin(&["cert", "revoke", "c2"]).ok();
    wait_until("c2 revoked in the list", DEADLINE, || {
        client_list(&env, &["--state", "revoked"]).contains_key("c2")
    });
    let text = env
        .admin(&["client", "list", "--state", "revoked"])
        .ok()
        .stdout;
    assert!(text.contains("c2") && text.contains("revoked"), "{text}");
}

/// HQ matches `--label` against the labels it last heard; the home relay
/// holds fresher ones. c1 comes back as a db while its relay r2 cannot
/// tell HQ (r1, between them, is down): HQ still targets it, and r2 skips
/// it, accounted for as `canceled` with the reason; c2 runs.
#[test]
fn named_clients_are_filtered_again_at_their_home_relay() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    let r2 = env.start_relay("r2", &r1);
    env.start_agent_with("c1", &r2, &["--label", "role=web"]);
    env.start_agent_with("c2", &r2, &["--label", "role=web"]);
    wait_labels(&env, &[("c1", "role=web"), ("c2", "role=web")]);
    let r1_addr = env.kill_relay("r1");
    env.kill_agent("c1");
    env.start_agent_with("c1", &r2, &["--label", "role=db"]);
    wait_until("c1 back at r2", DEADLINE, || {
        env.relays["r2"]
            .proc
            .stderr_text()
            .lines()
            .filter(|l| l.contains("session up") && l.contains("c1"))
            .count()
            == 2
    });
    // HQ has not heard.
    assert_eq!(
        label_text(&client_list(&env, &[])["c1"]["labels"]),
        "role=web"
    );
    let script = env.job_script("true");
    let job = create(
        &env,
        &[
            "--dest", "clients", "--client", "c1", "--client", "c2", "--label", "role=web",
        ],
        &script,
    );
    env.start_relay_on("r1", &hq, &r1_addr);
    let (_, st) = env.wait_job(&job);
    let s = states(&st);
    assert_eq!(s["c2"], "succeeded", "{st}");
    assert_eq!(s["c1"], "canceled", "{st}");
    let c1 = &leaves(&st)["c1"];
    let reason = c1["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("skipped at its home relay r2") && reason.contains("role=db"),
        "{c1}"
    );
    assert_eq!(ran(&env, &job), ["c2"]);
}
