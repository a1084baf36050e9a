//! Integration tests: the real `hq`, `relay` and `agent` binaries on loopback.
//! HQ keeps its state in sled here; `tests/it_pg` runs the modules that
//! exercise HQ's state again with HQ on PostgreSQL.

/// Whether HQ runs on PostgreSQL in this test binary (read by the harness).
pub const POSTGRES: bool = false;

mod audit;
mod audit_wire;
mod bench_scripts;
mod cancel;
mod cli_errors;
mod cli_polish;
mod crash;
mod crashloop;
mod crashloop_hq;
mod demo;
mod disk;
mod enroll;
mod expiry;
mod failover;
mod fanout;
mod faults;
mod forged;
mod fuzz_regress;
mod garbage;
mod harness;
mod jobs_cli;
mod leftover;
mod metrics;
mod offline;
mod orders;
mod output;
mod packages;
mod proxy;
mod rerun;
mod retention;
mod roles;
mod rollout;
mod security;
mod simtier;
mod sync;
mod targeting;
mod transfer;
mod web;
