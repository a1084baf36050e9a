//! Integration tests: the real `hq`, `relay` and `agent` binaries on loopback.

mod audit;
mod bench_scripts;
mod cancel;
mod cli_errors;
mod crash;
mod crashloop;
mod crashloop_hq;
mod demo;
mod disk;
mod expiry;
mod fanout;
mod faults;
mod fuzz_regress;
mod garbage;
mod harness;
mod jobs_cli;
mod leftover;
mod offline;
mod packages;
mod proxy;
mod rerun;
mod retention;
mod roles;
mod security;
mod transfer;
