//! relaytree: jobs dispatched down a tree of relay managers, results rolled back up.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod hq;
pub mod link;
pub mod metrics;
pub mod node;
pub mod pkg;
pub mod proto;
pub mod relay;
pub mod rollout;
pub mod rules;
pub mod store;
pub mod tls;
pub mod web;
