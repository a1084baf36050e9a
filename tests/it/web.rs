//! The dashboard (`hq serve --http`): access rules checked over raw HTTP
//! (no session, reused link, forged CSRF, malformed and oversized requests),
//! then the real flow in headless Chromium through WebDriver: log in with
//! `hq web login`'s link, see the tree and a failed leaf, press "Rerun
//! failed", watch the leaf turn succeeded without a reload; on an audit's
//! page, see its differences, press "Sync" and see the batch appear.

/// A master `m` (under its own relay) with package tool@1 installed, and an
/// audit of r1's clients against it: each lacks the package. The audit's id.
fn audit_with_differences(env: &mut Env) -> String {
    let hq = env.hq.as_ref().unwrap().addr.clone();
    let rm = env.start_relay("rm", &hq);
    env.start_agent("m", &rm);
    env.wait_clients(4);
    let pkg = env.root().join("pkg-tool");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("README"), "tool\n").unwrap();
    env.admin(&[
        "package",
        "add",
        pkg.to_str().unwrap(),
        "--name",
        "tool",
        "--version",
        "1",
        "--install",
        "true",
    ])
    .ok();
    let j = env
        .admin(&[
            "job",
            "create",
            "--dest",
            "all-lower-clients",
            "--relay",
            "rm",
            "--install",
            "tool@1",
            "--json",
        ])
        .ok()
        .json();
    let (code, st) = env.wait_job(&job_id(&j));
    assert_eq!(code, 0, "{st}");
    let audit = env
        .admin(&[
            "audit",
            "create",
            "--master",
            "m",
            "--dest",
            "all-lower-clients",
            "--relay",
            "r1",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    env.wait_job(&audit);
    audit
}

use crate::harness::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts HQ with a dashboard on loopback; returns the dashboard's HOST:PORT.
fn start_with_dashboard(env: &mut Env) -> String {
    env.start_hq_with("127.0.0.1:0", &["--http", "127.0.0.1:0"]);
    let out = env.hq.as_ref().unwrap().proc.stdout.clone();
    wait_for("hq to print its http address", DEADLINE, || {
        let text = std::fs::read_to_string(&out).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("http on "))?;
        Some(line.trim().to_string())
    })
}

/// A fresh one-time login URL from `hq web login --json`.
fn login_url(env: &Env) -> String {
    let v = env.admin(&["web", "login", "--json"]).ok().json();
    v["url"].as_str().expect("url").to_string()
}

/// One HTTP/1.1 exchange over a fresh connection: (status, head, body).
/// Status 0 when the server closed without answering.
fn http(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get(addr: &str, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn post(addr: &str, path: &str, cookie: &str, extra: &str, body: &str) -> (u16, String, String) {
    http(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n{extra}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// The path and query of a login URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    format!("/{}", rest.split_once('/').unwrap().1)
}

/// Three clients under r1; c2 fails the first time it runs the job (a file
/// decides) and succeeds after. Returns (dashboard address, job id).
fn fleet_with_a_failed_leaf(env: &mut Env) -> (String, String) {
    let web = start_with_dashboard(env);
    let hq = env.hq.as_ref().unwrap().addr.clone();
    let r1 = env.start_relay("r1", &hq);
    for c in ["c1", "c2", "c3"] {
        env.start_agent(c, &r1);
    }
    env.wait_clients(3);
    let mark = env.root().join("c2-ran-once");
    let script = env.job_script(&format!(
        r#"if [ "$RELAYTREE_CLIENT" = c2 ] && [ ! -e '{m}' ]; then touch '{m}'; echo "first try on c2 fails"; echo "boom: disk on fire" >&2; exit 3; fi; echo fine"#,
        m = mark.display()
    ));
    let job = env.create_job(&["r1"], &[], &script);
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 1, "{st}");
    assert_eq!(states(&st)["c2"], "failed", "{st}");
    (web, job)
}

#[test]
fn dashboard_refuses_without_a_session() {
    let mut env = Env::new();
    let (web, job) = fleet_with_a_failed_leaf(&mut env);

    // No session: every page, the event streams and the API answer 401 and
    // name nothing of the fleet.
    for path in [
        "/".to_string(),
        format!("/jobs/{job}"),
        "/events".into(),
        format!("/jobs/{job}/events"),
        "/api/tree".into(),
        "/api/jobs".into(),
        format!("/api/jobs/{job}"),
    ] {
        for cookie in [None, Some("relaytree_session=forged")] {
            let (code, _, body) = get(&web, &path, cookie);
            assert_eq!(code, 401, "GET {path} with {cookie:?}: {body}");
            for secret in ["r1", "c1", "c2", "sh -c"] {
                assert!(!body.contains(secret), "GET {path} shows {secret}: {body}");
            }
        }
    }
    let (code, _, _) = post(&web, &format!("/jobs/{job}/rerun"), "x=y", "", "");
    assert_eq!(code, 401, "an action without a session");

    // Prometheus scrapes /metrics on the dashboard's listener without a
    // session: HQ's own counts, no client names.
    let (code, head, body) = get(&web, "/metrics", None);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/plain"), "{head}");
    let line = body
        .lines()
        .find(|l| l.starts_with("relaytree_leaves{") && l.contains("state=\"failed\""))
        .unwrap_or_else(|| panic!("no failed leaves in /metrics: {body}"));
    assert!(line.trim_end().ends_with(" 1"), "{line}");
    for secret in ["c1", "c2"] {
        assert!(!body.contains(secret), "/metrics shows {secret}");
    }

    // A login link works once.
    let url = login_url(&env);
    let (code, head, _) = get(&web, &path_of(&url), None);
    assert_eq!(code, 200, "{head}");
    let set = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let (code, _, body) = get(&web, &path_of(&url), None);
    assert_eq!(code, 401, "a reused link: {body}");
    assert!(!body.contains("set-cookie"));
    let (code, _, _) = get(&web, "/login?token=0000", None);
    assert_eq!(code, 401, "an unknown token");
    let (code, _, _) = get(&web, "/login", None);
    assert_eq!(code, 401, "no token");

    // The session sees the fleet.
    let (code, _, body) = get(&web, "/", Some(&cookie));
    assert_eq!(code, 200);
    assert!(body.contains("relay-r1") && body.contains("c2"), "{body}");
    let (code, _, body) = get(&web, &format!("/api/jobs/{job}"), Some(&cookie));
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(states(&st)["c2"], "failed", "{st}");

    // Actions need the session's CSRF token: none, a forged one, and a
    // token of the right length but wrong value are all refused, and HQ
    // makes no new attempt.
    let path = format!("/jobs/{job}/rerun");
    for (extra, body) in [
        ("", ""),
        ("", "csrf=forged"),
        ("x-csrf-token: forged\r\n", ""),
        (&*format!("x-csrf-token: {}\r\n", "0".repeat(64)), ""),
    ] {
        let (code, _, text) = post(&web, &path, &cookie, extra, body);
        assert_eq!(code, 403, "{extra:?} {body:?}: {text}");
    }
    assert_eq!(
        env.status(&job)["attempt"],
        1,
        "a refused action changed nothing"
    );
    assert_eq!(env.run_counts(&job)["c2"], 1);
    // The sync button is checked alike: nothing is launched.
    let jobs_before = env.admin(&["job", "list", "--json"]).ok().json();
    for (extra, body) in [("", ""), ("", "csrf=forged")] {
        let (code, _, text) = post(&web, &format!("/jobs/{job}/sync"), &cookie, extra, body);
        assert_eq!(code, 403, "sync {extra:?} {body:?}: {text}");
    }
    assert_eq!(
        env.admin(&["job", "list", "--json"]).ok().json(),
        jobs_before
    );

    // Malformed and oversized requests get 4xx; the server lives on.
    let (code, _, _) = get(&web, "/jobs/not-a-number", Some(&cookie));
    assert_eq!(code, 400);
    let (code, _, _) = get(&web, "/nope", Some(&cookie));
    assert_eq!(code, 404);
    let (code, _, _) = http(&web, b"BLAH\r\n\r\n");
    assert_eq!(code, 400, "a garbage request line");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (code, _, _) = http(&web, big.as_bytes());
    assert!(code == 431 || code == 400, "an oversized head: {code}");
    let csrf = body_csrf(&get(&web, "/", Some(&cookie)).2);
    let (code, _, _) = post(
        &web,
        &path,
        &cookie,
        "",
        &format!("csrf={csrf}&pad={}", "p".repeat(64 * 1024)),
    );
    assert_eq!(code, 413, "an oversized body");
    assert_eq!(env.status(&job)["attempt"], 1);
    let (code, _, _) = get(&web, "/", Some(&cookie));
    assert_eq!(code, 200, "the dashboard still serves");

    // Logging out ends the session.
    let (code, _, _) = post(&web, "/logout", &cookie, "", &format!("csrf={csrf}"));
    assert_eq!(code, 303);
    let (code, _, _) = get(&web, "/", Some(&cookie));
    assert_eq!(code, 401);
}

/// The CSRF token a page carries.
fn body_csrf(page: &str) -> String {
    let pat = r#"name="csrf-token" content=""#;
    let at = page.find(pat).expect("csrf meta") + pat.len();
    page[at..at + 64].to_string()
}

#[test]
fn the_csrf_helper_reads_pages() {
    let page = format!(r#"<meta name="csrf-token" content="{}">"#, "ab".repeat(32));
    assert_eq!(body_csrf(&page), "ab".repeat(32));
}

// ---------------------------------------------------------------------------
// The real browser.

/// Chromium and chromedriver, or why they are missing.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|n| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("no chromium on PATH (apt-get install chromium chromium-driver)")?;
    let driver = find(&["chromedriver"])
        .ok_or("no chromedriver on PATH (apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// chromedriver in its own process group, killed with every browser it
/// started when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start(driver: &Path, logs: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        // A free port: bind port 0, read it back, release it, pass it on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(logs).unwrap();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(logs.join("chromedriver.out")).unwrap())
            .stderr(std::fs::File::create(logs.join("chromedriver.err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let d = Driver { child, url };
        let addr = format!("127.0.0.1:{port}");
        wait_until("chromedriver to answer", DEADLINE, || {
            TcpStream::connect(&addr).is_ok() && {
                let (code, _, body) = get(&addr, "/status", None);
                code == 200 && body.contains("ready")
            }
        });
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> fantoccini::Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a webdriver session with chromium")
}

/// Polls `f` until it yields, failing with `what` after the deadline.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn attr(c: &fantoccini::Client, css: &str, name: &str) -> Option<String> {
    let e = c.find(fantoccini::Locator::Css(css)).await.ok()?;
    e.attr(name).await.ok().flatten()
}

async fn text(c: &fantoccini::Client, css: &str) -> Option<String> {
    let e = c.find(fantoccini::Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

/// Where screenshots go: `docs/` when RELAYTREE_SCREENSHOTS=1 (to refresh
/// the README's pictures), the test's own directory otherwise.
fn screenshot_dir(env: &Env) -> PathBuf {
    if std::env::var("RELAYTREE_SCREENSHOTS").as_deref() == Ok("1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        env.root().to_path_buf()
    }
}

#[test]
fn dashboard_in_a_real_browser() {
    let (chromium, chromedriver) = match browser() {
        Ok(b) => b,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n!!!!!!!!\n!!! SKIPPED dashboard_in_a_real_browser: {why}\n\
                 !!! .ci/run installs them; CI never skips this test.\n!!!!!!!!\n"
            );
            return;
        }
        Err(why) => panic!("CI must have a browser: {why}"),
    };
    let mut env = Env::new();
    let (web, job) = fleet_with_a_failed_leaf(&mut env);
    let audit = audit_with_differences(&mut env);
    let url = login_url(&env);
    let driver = Driver::start(&chromedriver, &env.logs());
    let shots = screenshot_dir(&env);
    let profile = env.root().join("chromium-profile");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = open_browser(&driver, &chromium, &profile).await;
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            browse(&c, &env, &web, &url, (&job, &audit), &shots),
        )
        .await;
        let _ = c.close().await;
        result.expect("the browser flow took too long");
    });
    drop(driver);
    // Real effects: c2 ran twice (failed, then succeeded), the others once.
    let counts = env.run_counts(&job);
    assert_eq!(
        counts,
        each(&["c1", "c3"], 1)
            .into_iter()
            .chain(each(&["c2"], 2))
            .collect()
    );
}

async fn browse(
    c: &fantoccini::Client,
    env: &Env,
    web: &str,
    url: &str,
    (job, audit): (&str, &str),
    shots: &Path,
) {
    use fantoccini::Locator::Css;
    // Without a session the browser sees nothing of the fleet.
    c.goto(&format!("http://{web}/")).await.unwrap();
    let src = c.source().await.unwrap();
    assert!(
        src.contains("Not signed in") && !src.contains("r1"),
        "{src}"
    );

    // The login link: a cookie, then the dashboard with the live tree.
    c.goto(url).await.unwrap();
    let state = eventually("relay r1 on /", || attr(c, "#relay-r1", "data-state")).await;
    assert_eq!(state, "connected");
    eventually("the live stream to connect", || async {
        (text(c, "#live").await? == "live").then_some(())
    })
    .await;
    let jobs = eventually("the jobs", || text(c, "#jobs")).await;
    assert!(jobs.contains("sh -c"), "{jobs}");
    let clients = eventually("the clients", || text(c, "#clients")).await;
    for cl in ["c1", "c2", "c3"] {
        assert!(clients.contains(cl), "{clients}");
    }
    // The client filter hides rows that do not match.
    c.find(Css("#client-filter"))
        .await
        .unwrap()
        .send_keys("c2")
        .await
        .unwrap();
    let visible: Value = c
        .execute(
            "return [...document.querySelectorAll('#clients tr[data-name]')].filter(r => !r.hidden).map(r => r.dataset.name)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(visible, json!(["c2"]));
    std::fs::write(
        shots.join("dashboard-home.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // The same link a second time is refused.
    c.goto(url).await.unwrap();
    let src = c.source().await.unwrap();
    assert!(src.contains("Login link refused"), "{src}");

    // The job: c2 failed, listed first, with its output.
    c.goto(&format!("http://{web}/jobs/{job}")).await.unwrap();
    // (Live updates replace these elements: every read may need a retry.)
    let first = eventually("the first leaf", || attr(c, "#leaves tbody tr", "id")).await;
    assert_eq!(first, "leaf-c2", "failed leaves come first");
    let state = eventually("c2's state", || attr(c, "#leaf-c2", "data-state")).await;
    assert_eq!(state, "failed");
    let out = eventually("c2's output", || text(c, "#output-c2")).await;
    assert!(out.contains("boom: disk on fire"), "{out}");
    let err = eventually("c2's stderr", || text(c, "#output-c2 pre.stderr")).await;
    assert_eq!(err.trim(), "boom: disk on fire", "stderr apart");
    let so = eventually("c2's stdout", || text(c, "#output-c2 pre.stdout")).await;
    assert_eq!(so.trim(), "first try on c2 fails", "stdout apart");
    eventually("the job page's stream", || async {
        (text(c, "#live").await? == "live").then_some(())
    })
    .await;
    std::fs::write(
        shots.join("dashboard-job.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // A forged CSRF token is refused, from inside the page too.
    let code: Value = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(location.pathname + '/rerun', {method: 'POST', headers: {'x-csrf-token': 'forged'}})
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(code, json!(403));
    assert_eq!(env.status(job)["attempt"], 1);

    // Rerun failed: the leaf turns succeeded by live updates, no reload.
    c.execute("window.__sameDocument = 42", vec![])
        .await
        .unwrap();
    c.find(Css("#rerun")).await.unwrap().click().await.unwrap();
    let flash = eventually("the rerun's answer", || async {
        let t = text(c, "#flash").await?;
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert!(flash.contains("attempt 2: 1 leaves rerun"), "{flash}");
    eventually("c2 to turn succeeded", || async {
        (attr(c, "#leaf-c2", "data-state").await? == "succeeded").then_some(())
    })
    .await;
    let same: Value = c
        .execute("return window.__sameDocument", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(42), "the page was reloaded");
    assert!(
        c.find(Css("#output-c2")).await.is_err(),
        "a succeeded leaf shows no failure output"
    );
    let summary = eventually("the summary", || text(c, "#summary")).await;
    assert!(
        summary.contains("3 succeeded") && summary.contains("attempt 2"),
        "{summary}"
    );

    // An audit's page: its differences, and a sync button that launches
    // the batch (one collection: r1's three clients lack tool@1).
    c.goto(&format!("http://{web}/jobs/{audit}")).await.unwrap();
    let diffs = eventually("the differences", || text(c, "#differences")).await;
    for cl in ["c1", "c2", "c3"] {
        assert!(
            diffs.contains(cl) && diffs.contains("package:tool"),
            "{diffs}"
        );
    }
    std::fs::write(
        shots.join("dashboard-audit.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.execute("window.confirm = () => true", vec![])
        .await
        .unwrap();
    c.find(Css("#sync")).await.unwrap().click().await.unwrap();
    let flash = eventually("the sync's answer", || async {
        let t = text(c, "#flash").await?;
        (!t.is_empty()).then_some(t)
    })
    .await;
    let batch = flash
        .strip_prefix("batch ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("{flash}"))
        .to_string();
    assert!(flash.contains("1 jobs launched"), "{flash}");
    c.goto(&format!("http://{web}/jobs/{batch}")).await.unwrap();
    eventually("the batch's job done", || async {
        let t = text(c, "#children").await?;
        (t.contains("done") && t.contains("sync")).then_some(())
    })
    .await;
    // Real effects: each client now has the package.
    for cl in ["c1", "c2", "c3"] {
        let v = env.admin(&["client", "show", cl, "--json"]).ok().json();
        assert_eq!(v["packages"][0]["name"], "tool", "{v}");
    }

    // Without the cookie the browser sees nothing again.
    c.delete_all_cookies().await.unwrap();
    c.goto(&format!("http://{web}/jobs/{job}")).await.unwrap();
    let src = c.source().await.unwrap();
    assert!(
        src.contains("Not signed in") && !src.contains("c2"),
        "{src}"
    );
}

// ---------------------------------------------------------------------------
// TLS off loopback.

/// Accepts any server certificate and keeps it, to compare with HQ's.
#[derive(Debug)]
struct Keep(std::sync::Mutex<Vec<u8>>);

impl rustls::client::danger::ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// GET over TLS: (status, the server's certificate).
fn https_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let keep = std::sync::Arc::new(Keep(Default::default()));
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(keep.clone())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("hq").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: hq\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let cert = keep.0.lock().unwrap().clone();
    (status, cert)
}

#[test]
fn dashboard_off_loopback_is_tls_unless_insecure() {
    let mut env = Env::new();
    env.start_hq_with("127.0.0.1:0", &["--http", "0.0.0.0:0"]);
    let out = env.hq.as_ref().unwrap().proc.stdout.clone();
    let bound = wait_for("the http line", DEADLINE, || {
        let text = std::fs::read_to_string(&out).ok()?;
        Some(
            text.lines()
                .find_map(|l| l.strip_prefix("http on "))?
                .trim()
                .to_string(),
        )
    });
    let port = bound.rsplit(':').next().unwrap();
    let local = format!("127.0.0.1:{port}");
    let url = login_url(&env);
    assert!(url.starts_with("https://"), "{url}");

    // Plain HTTP gets no HTTP answer; TLS does, with HQ's own certificate.
    let (code, _, _) = get(&local, "/", None);
    assert_eq!(code, 0, "plain http answered off loopback");
    let (code, cert) = https_get(&local, "/");
    assert_eq!(code, 401);
    let pem = std::fs::read(env.hq_dir.join("hq/node.crt")).unwrap();
    let (_, hq_cert) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(cert, hq_cert.contents, "served with HQ's certificate");
    let (code, _) = https_get(&local, &path_of(&url));
    assert_eq!(code, 200, "the login link over TLS");
    env.kill_hq();

    // --http-insecure: plain HTTP, and --http-url names the links.
    env.start_hq_with(
        "127.0.0.1:0",
        &[
            "--http",
            "0.0.0.0:0",
            "--http-insecure",
            "--http-url",
            "http://hq.example:8080/",
        ],
    );
    let url = login_url(&env);
    assert!(
        url.starts_with("http://hq.example:8080/login?token="),
        "{url}"
    );
}
