//! Integration tests: the real `hq`, `relay` and `agent` binaries on loopback.

mod cli_errors;
mod crash;
mod fanout;
mod garbage;
mod harness;
mod offline;
mod rerun;
mod roles;
