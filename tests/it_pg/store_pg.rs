//! `hq serve --store postgres://...` itself: HQ's state is in the database
//! (not under the data directory), a store that cannot be used fails at
//! start with one line and exit 2, and an HQ of another CA is refused.

use crate::harness::*;
use std::process::Command;

fn rows(pg: &TestPostgres, tree: &str) -> u64 {
    pg.psql(
        "relaytree",
        &format!("SELECT count(*) FROM entries WHERE tree = '{tree}'"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn hq_state_lives_in_postgres_and_survives_a_restart() {
    let mut env = Env::new();
    if env.pg.is_none() {
        return;
    }
    let job = crate::start_r1_pair_and_run_a_job(&mut env);
    // Nothing of HQ's state under the data directory: it is all in PostgreSQL.
    assert!(!env.hq_dir.join("db").exists());
    let pg = env.pg.as_ref().unwrap();
    assert_eq!(rows(pg, "leaves"), 2);
    assert_eq!(rows(pg, "jobs"), 1);
    assert!(rows(pg, "clients") >= 2);
    let addr = env.kill_hq();
    env.start_hq_on(&addr);
    let st = env.status(&job);
    assert_eq!(st["totals"]["succeeded"], 2, "{st}");
    // The relay finds HQ again and a second job runs.
    let job2 = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&job2);
    assert_eq!(code, 0, "{st}");
    assert_eq!(env.run_counts(&job).values().sum::<usize>(), 2);
    assert_eq!(env.run_counts(&job2).values().sum::<usize>(), 2);
}

fn serve(env: &Env, store: &str) -> Out {
    Out::of(run(Command::new(HQ)
        .args(["serve", "--data-dir"])
        .arg(&env.hq_dir)
        .args(["--listen", "127.0.0.1:0", "--store", store])))
}

#[test]
fn a_store_that_cannot_be_used_fails_at_start_with_one_line() {
    let env = Env::new();
    let Some(pg) = env.pg.as_ref() else { return };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (url, says) in [
        (
            format!("postgres://relaytree@127.0.0.1:{closed}/relaytree"),
            "cannot use the store at",
        ),
        ("mysql:/nope".to_string(), "not a PostgreSQL URL"),
        (
            format!("postgres://nobody@127.0.0.1:{}/relaytree", pg.port()),
            "nobody",
        ),
    ] {
        let out = serve(&env, &url);
        assert_eq!(out.code, 2, "{url}: {out:?}");
        assert!(out.stderr.contains(says), "{url}: {out:?}");
        let errors: Vec<_> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{url}: {out:?}");
        assert!(!out.stdout.contains("listening on"), "{url}: {out:?}");
    }
}

#[test]
fn an_hq_of_another_ca_is_refused_by_the_database() {
    let mut env = Env::new();
    let Some(url) = env.store_url.clone() else {
        return;
    };
    let _hq = env.start_hq();
    let other = env.root().join("other-hq");
    Out::of(run(Command::new(HQ)
        .args(["init", "--data-dir"])
        .arg(&other)))
    .ok();
    let out = Out::of(run(Command::new(HQ)
        .args(["serve", "--data-dir"])
        .arg(&other)
        .args(["--listen", "127.0.0.1:0", "--store", &url])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("another CA"), "{out:?}");
    // `hq init --store` refuses it just the same.
    let third = env.root().join("third-hq");
    let out = Out::of(run(Command::new(HQ)
        .args(["init", "--data-dir"])
        .arg(&third)
        .args(["--store", &url])));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("another CA"), "{out:?}");
}
