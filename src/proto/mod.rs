//! The wire: ids, messages and the framed MessagePack codec.
//!
//! Imports nothing of ours but the package library's hash type; knows nothing
//! of sockets beyond the codec.

pub mod admin;
pub mod audit;
pub mod codec;
pub mod ids;
pub mod msg;
pub mod pkg;
pub mod sync;

pub use admin::*;
pub use codec::{CodecError, MsgCodec, ADMIN_MAX_FRAME, AGENT_MAX_FRAME, MAX_FRAME};
pub use ids::{Attempt, InvalidName, JobId, NodeName, Role};
pub use msg::*;
pub use pkg::*;
