//! The integration tests that exercise HQ's state, run again with HQ on
//! PostgreSQL: each test starts a PostgreSQL server of its own (initdb
//! into a temporary directory, a free port, the unprivileged `postgres`
//! user) and every `hq serve` gets `--store postgres://...`. The modules
//! are the files of `tests/it`, compiled here with this binary's harness.
//! Without a PostgreSQL installation they say so and run HQ on sled.

// Not every harness helper is used by the modules chosen here.
#![allow(dead_code)]

/// Whether HQ runs on PostgreSQL in this test binary (read by the harness).
pub const POSTGRES: bool = true;

#[path = "../it/harness.rs"]
mod harness;

/// HQ, relay r1 under it and agents c1 and c2 under r1, once HQ counts
/// them; then one job (`true`) for both, which must succeed. The job.
fn start_r1_pair_and_run_a_job(env: &mut harness::Env) -> String {
    let hq = env.start_hq();
    let r1 = env.start_relay("r1", &hq);
    env.start_agent("c1", &r1);
    env.start_agent("c2", &r1);
    env.wait_clients(2);
    let job = env.create_job(&["r1"], &[], &env.job_script("true"));
    let (code, st) = env.wait_job(&job);
    assert_eq!(code, 0, "{st}");
    job
}

#[path = "../it/audit.rs"]
mod audit;
#[path = "../it/cancel.rs"]
mod cancel;
#[path = "../it/crashloop_hq.rs"]
mod crashloop_hq;
#[path = "../it/enroll.rs"]
mod enroll;
#[path = "../it/failover.rs"]
mod failover;
#[path = "../it/forged.rs"]
mod forged;
#[path = "../it/jobs_cli.rs"]
mod jobs_cli;
#[path = "../it/metrics.rs"]
mod metrics;
mod multihq;
#[path = "../it/offline.rs"]
mod offline;
#[path = "../it/output.rs"]
mod output;
#[path = "../it/packages.rs"]
mod packages;
#[path = "../it/proxy.rs"]
mod proxy;
#[path = "../it/rerun.rs"]
mod rerun;
#[path = "../it/retention.rs"]
mod retention;
#[path = "../it/rollout.rs"]
mod rollout;
#[path = "../it/security.rs"]
mod security;
mod store_pg;
#[path = "../it/sync.rs"]
mod sync;
#[path = "../it/targeting.rs"]
mod targeting;
