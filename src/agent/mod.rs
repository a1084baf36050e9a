//! The agent: run log and executor (being written).

pub mod exec;
