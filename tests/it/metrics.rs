//! Prometheus metrics: real hq, relays and agents started with
//! `--metrics 127.0.0.1:0`, a job and a package install through them, then
//! every `/metrics` scraped over HTTP, parsed strictly, and checked against
//! what really happened. The listeners answer only `GET /metrics`.

use crate::harness::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

/// One sample of the exposition text.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed.
#[derive(Debug)]
pub(crate) struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Samples of `name` whose labels include every pair of `with`.
    fn find(&self, name: &str, with: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
    /// The value of the one sample of `name` with those labels (0 when the
    /// metric has not been touched yet).
    pub(crate) fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        let found = self.find(name, with);
        assert!(found.len() <= 1, "{name} {with:?} is ambiguous: {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// The labels inside `{...}` (without the braces).
fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"").ok_or(format!("bad label at {s:?}"))?;
        if !is_name(k) {
            return Err(format!("bad label name {k:?}"));
        }
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value {rest:?}")),
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => v.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
            }
        };
        if out.insert(k.to_string(), v).is_some() {
            return Err(format!("label {k} twice"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(out)
}

/// A strict parser of the Prometheus text format (0.0.4): every sample
/// belongs to a family declared by `# TYPE` before it.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            match (f.next(), f.next(), f.next()) {
                (Some("TYPE"), Some(name), Some(t)) if is_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(format!("bad type {t:?}"));
                    }
                    types.insert(name.to_string(), t.to_string());
                }
                (Some("HELP"), Some(name), _) if is_name(name) => {}
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("no value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(l.strip_suffix('}').ok_or(format!("no '}}' in {line:?}"))?)?,
            ),
            None => (series, BTreeMap::new()),
        };
        if !is_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("sample {name} before its # TYPE"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value)?,
        });
    }
    Ok(Scrape { types, samples })
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {addr}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `GET /metrics`, parsed.
pub(crate) fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// The address from the "metrics on HOST:PORT" line of a server's stdout.
pub(crate) fn metrics_addr(p: &Proc) -> String {
    wait_for("the metrics address", DEADLINE, || {
        let text = std::fs::read_to_string(&p.stdout).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("metrics on "))
            .map(|a| a.trim().to_string())
    })
}

/// A server started with `--metrics 127.0.0.1:0`: (listen address, metrics address).
fn start(name: &str, mut cmd: Command, logs: &Path) -> (Server, String) {
    cmd.args(["--metrics", "127.0.0.1:0"]);
    let mut proc = Proc::spawn(name, cmd, logs);
    let addr = proc.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    let m = metrics_addr(&proc);
    (Server { proc, addr }, m)
}

pub(crate) const SENT: &str = "relaytree_child_sent_bytes_total";
const RECEIVED: &str = "relaytree_child_received_bytes_total";

/// A flush histogram is a true histogram, its buckets cumulative, and it
/// saw at least one flush.
fn check_flushes(who: &str, s: &Scrape) {
    let h = "relaytree_store_flush_seconds";
    assert_eq!(
        s.types.get(h).map(String::as_str),
        Some("histogram"),
        "{who}"
    );
    let count = s.value(&format!("{h}_count"), &[]);
    assert!(count > 0.0, "{who}: no flush counted");
    let buckets = s.find(&format!("{h}_bucket"), &[]);
    let mut last = 0.0;
    for b in &buckets {
        assert!(
            b.value >= last,
            "{who}: buckets not cumulative: {buckets:?}"
        );
        last = b.value;
    }
    assert_eq!(
        s.value(&format!("{h}_bucket"), &[("le", "+Inf")]),
        count,
        "{who}"
    );
    assert!(s.value(&format!("{h}_sum"), &[]) > 0.0, "{who}");
}

#[test]
fn every_node_exports_metrics_that_match_what_happened() {
    let mut env = Env::new();
    let logs = env.logs();
    // hq <- r1 <- {c1, c2, r2 <- c3}; hq, r1 and c1 export metrics.
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0"]);
    let (hq, hq_m) = start("hq", cmd, &logs);
    let hq_addr = hq.addr.clone();
    env.hq = Some(hq);

    let id = env.issue("relay", "r1");
    let mut cmd = Command::new(RELAY);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.relay_data("r1"))
        .args(["--listen", "127.0.0.1:0", "--parent", &hq_addr]);
    let (r1, r1_m) = start("r1", cmd, &logs);
    let r1_addr = r1.addr.clone();
    env.relays.insert("r1".into(), r1);
    env.start_relay("r2", &r1_addr);
    let r2_addr = env.relays["r2"].addr.clone();

    let id = env.issue("agent", "c1");
    let mut cmd = Command::new(AGENT);
    cmd.args(["serve", "--identity"])
        .arg(&id)
        .arg("--data-dir")
        .arg(env.root().join("data").join("c1"))
        .args(["--relay", &r1_addr, "--metrics", "127.0.0.1:0"]);
    let c1 = Proc::spawn("c1", cmd, &logs);
    let c1_m = metrics_addr(&c1);
    env.agents.insert("c1".into(), c1);
    env.start_agent("c2", &r1_addr);
    env.start_agent("c3", &r2_addr);
    env.wait_clients(3);

    // A job that leaves a line per run, and a package installed everywhere.
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, status) = env.wait_job(&job);
    assert_eq!(code, 0, "{status}");
    assert_eq!(env.run_counts(&job), each(&["c1", "c2", "c3"], 1));
    let pkg = env.root().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let marker = env.root().join("installed.log");
    std::fs::write(
        pkg.join("setup.sh"),
        format!(
            "#!/bin/sh\necho \"$RELAYTREE_CLIENT\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pkg.join("setup.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(pkg.join("data.bin"), crate::packages::noise(300_000, 7)).unwrap();
    env.admin(&[
        "package",
        "add",
        pkg.to_str().unwrap(),
        "--name",
        "tool",
        "--version",
        "1",
        "--install",
        "./setup.sh",
        "--json",
    ])
    .ok();
    let install = job_id(
        &env.admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
            "--install",
            "tool@1",
            "--json",
        ])
        .ok()
        .json(),
    );
    let (code, status) = env.wait_job(&install);
    assert_eq!(code, 0, "{status}");
    let installs = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(installs.lines().count(), 3, "{installs}");

    // A connection that is not TLS, refused by HQ's listener.
    let mut raw = TcpStream::connect(&hq_addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let _ = raw.read_to_end(&mut Vec::new());

    // HQ: every leaf of both jobs succeeded, both jobs done, one relay
    // session, bytes both ways with r1, flushes, a refused handshake.
    let hq_s = wait_for("hq to count the refused handshake", DEADLINE, || {
        let s = scrape(&hq_m);
        (s.value("relaytree_handshakes_refused_total", &[("reason", "tls")]) >= 1.0).then_some(s)
    });
    assert_eq!(hq_s.types["relaytree_sessions"], "gauge");
    assert_eq!(
        hq_s.value("relaytree_leaves", &[("state", "succeeded")]),
        6.0
    );
    assert_eq!(hq_s.value("relaytree_leaves", &[("state", "failed")]), 0.0);
    assert_eq!(hq_s.value("relaytree_jobs", &[("state", "done")]), 2.0);
    assert_eq!(hq_s.value("relaytree_jobs", &[("state", "active")]), 0.0);
    assert_eq!(
        hq_s.value(
            "relaytree_sessions",
            &[("role", "relay"), ("side", "child")]
        ),
        1.0
    );
    assert!(hq_s.value(SENT, &[("child", "r1")]) > 0.0);
    assert!(hq_s.value(RECEIVED, &[("child", "r1")]) > 0.0);
    check_flushes("hq", &hq_s);

    // r1: two agents and one relay below, HQ above; its home leaves; agents
    // counted together (no label per agent); r2 by name; the cache served
    // blobs; the outbox drained.
    let r1_s = wait_for("r1's outbox to drain", DEADLINE, || {
        let s = scrape(&r1_m);
        (s.value("relaytree_outbox_depth", &[]) == 0.0).then_some(s)
    });
    assert_eq!(
        r1_s.value(
            "relaytree_sessions",
            &[("role", "agent"), ("side", "child")]
        ),
        2.0
    );
    assert_eq!(
        r1_s.value(
            "relaytree_sessions",
            &[("role", "relay"), ("side", "child")]
        ),
        1.0
    );
    assert_eq!(
        r1_s.value("relaytree_sessions", &[("role", "hq"), ("side", "parent")]),
        1.0
    );
    assert_eq!(
        r1_s.value("relaytree_leaves", &[("state", "succeeded")]),
        4.0
    );
    assert_eq!(r1_s.value("relaytree_outbox_oldest_age_seconds", &[]), 0.0);
    for child in ["agents", "r2"] {
        assert!(r1_s.value(SENT, &[("child", child)]) > 0.0, "{child}");
        assert!(r1_s.value(RECEIVED, &[("child", child)]) > 0.0, "{child}");
    }
    for s in r1_s.find(SENT, &[]) {
        let c = &s.labels["child"];
        assert!(c == "agents" || c == "r2", "unexpected child label {c}");
    }
    // Three clients asked for the package's blobs; r1 fetched each once.
    let hits = r1_s.value("relaytree_cache_blobs_total", &[("result", "hit")]);
    let misses = r1_s.value("relaytree_cache_blobs_total", &[("result", "miss")]);
    assert!(hits > 0.0, "hits {hits} misses {misses}");
    assert!(hits + misses >= 3.0, "hits {hits} misses {misses}");
    check_flushes("r1", &r1_s);

    // c1: connected to its relay, its outbox drained, flushes.
    let c1_s = wait_for("c1's outbox to drain", DEADLINE, || {
        let s = scrape(&c1_m);
        (s.value("relaytree_outbox_depth", &[]) == 0.0).then_some(s)
    });
    assert_eq!(
        c1_s.value(
            "relaytree_sessions",
            &[("role", "relay"), ("side", "parent")]
        ),
        1.0
    );
    check_flushes("c1", &c1_s);

    // The shipped dashboard and scrape config speak of these metrics only.
    let seen: std::collections::BTreeSet<&str> = [&hq_s, &r1_s, &c1_s]
        .iter()
        .flat_map(|s| s.types.keys().map(String::as_str))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut used = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| seen.contains(b)))
                    .unwrap_or(&name);
                assert!(
                    seen.contains(family),
                    "dashboard uses unknown {name}: {expr}"
                );
                used += 1;
            }
        }
    }
    assert!(used >= 10, "{used}");
    let prom = std::fs::read_to_string(root.join("prometheus.yml")).unwrap();
    for job in ["relaytree-hq", "relaytree-relays", "relaytree-agents"] {
        assert!(prom.contains(&format!("job_name: {job}")), "{job}");
    }

    // An agent gone: r1 counts one agent session fewer.
    env.kill_agent("c2");
    wait_until("r1 to count one agent", DEADLINE, || {
        scrape(&r1_m).value(
            "relaytree_sessions",
            &[("role", "agent"), ("side", "child")],
        ) == 1.0
    });
}

/// The `relaytree_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("relaytree_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn metrics_listeners_answer_only_get_metrics() {
    let mut env = Env::new();
    let mut cmd = Command::new(HQ);
    cmd.args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0"]);
    let (hq, m) = start("hq", cmd, &env.logs());
    env.hq = Some(hq);
    let refused = [
        (&b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"[..], 405),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GET /metrics/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GARBAGE\r\n\r\n", 400),
    ];
    for (req, want) in refused {
        let (status, body) = http(&m, req);
        assert_eq!(status, want, "{:?}: {body}", String::from_utf8_lossy(req));
        assert!(!body.contains("relaytree_"), "{body}");
    }
    // A request head past the limit: a 4xx, and the server lives on.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (status, _) = http(&m, big.as_bytes());
    assert!((400..500).contains(&status), "{status}");
    // Still serving: HQ's gauges appear once it has opened its store.
    wait_until("hq's job gauges", DEADLINE, || {
        scrape(&m).types.get("relaytree_jobs").map(String::as_str) == Some("gauge")
    });
    // A bad address is refused clearly.
    let out = Out::of(run(Command::new(HQ)
        .args(["serve", "--data-dir"])
        .arg(env.root().join("other"))
        .args(["--listen", "127.0.0.1:0", "--metrics", "not-an-address"])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not-an-address"), "{out:?}");
}

#[test]
fn the_parser_is_strict() {
    assert!(parse("# TYPE a counter\na 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "sample before its type");
    assert!(parse("# TYPE a gauge\na{x=\"1} 1\n").is_err());
    assert!(parse("# TYPE a gauge\na{x=\"1\"} one\n").is_err());
    assert!(parse("# TYPE a gauge\n1a 1\n").is_err());
    let s = parse("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n").unwrap();
    assert_eq!(s.value("h_count", &[]), 2.0);
    let s = parse("# TYPE a gauge\na{x=\"q\\\"\\\\\",y=\"2\"} 3\n").unwrap();
    assert_eq!(s.samples[0].labels["x"], "q\"\\");
}
