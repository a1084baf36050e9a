//! Frames to messages: 4-byte length prefix, one named-MessagePack [`Msg`] each.
//!
//! Decoding never panics: bad bytes, oversized frames and too-deep nesting are
//! errors that close the one session they came from.

use super::msg::Msg;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame accepted or sent by default (relay to relay: assignments
/// carry target lists).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Largest frame read from an agent, or by an agent: its messages are small.
pub const AGENT_MAX_FRAME: usize = 1024 * 1024;
/// Largest frame an admin reads (a full status of a very large job).
pub const ADMIN_MAX_FRAME: usize = 256 * 1024 * 1024;
/// Deepest MessagePack nesting accepted.
pub const MAX_DEPTH: usize = 32;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The transport failed, or a frame exceeded [`MAX_FRAME`].
    #[error("frame: {0}")]
    Io(#[from] std::io::Error),
    /// A frame did not hold a valid message.
    #[error("undecodable message ({len} bytes): {source}")]
    Decode {
        /// Frame length.
        len: usize,
        /// Why.
        source: rmp_serde::decode::Error,
    },
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Length-delimited MessagePack codec for [`Msg`], with a frame limit for
/// each direction.
pub struct MsgCodec {
    read: LengthDelimitedCodec,
    write: LengthDelimitedCodec,
}

impl Default for MsgCodec {
    fn default() -> Self {
        MsgCodec::with_max_frame(MAX_FRAME)
    }
}

fn ld(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

impl MsgCodec {
    /// A codec refusing frames over `max` bytes, both ways.
    pub fn with_max_frame(max: usize) -> MsgCodec {
        MsgCodec {
            read: ld(max),
            write: ld(max),
        }
    }

    /// The codec of a session between a node of role `me` and one of role
    /// `peer`: each side reads at most what the other may send it.
    pub fn for_session(me: crate::proto::Role, peer: crate::proto::Role) -> MsgCodec {
        MsgCodec {
            read: ld(read_limit(me, peer)),
            write: ld(read_limit(peer, me)),
        }
    }
}

/// The largest frame a `reader` accepts from a `sender`: 1 MiB where an
/// agent or an admin sends (their messages are small) and for agents; 8 MiB
/// between relays and HQ (target lists); 256 MiB for an admin reading answers.
pub fn read_limit(reader: crate::proto::Role, sender: crate::proto::Role) -> usize {
    use crate::proto::Role::*;
    match (reader, sender) {
        (Admin, _) => ADMIN_MAX_FRAME,
        (Agent, _) | (_, Agent) | (_, Admin) => AGENT_MAX_FRAME,
        _ => MAX_FRAME,
    }
}

/// Decodes one message from a frame's payload.
pub fn decode(frame: &[u8]) -> Result<Msg, CodecError> {
    let mut de = rmp_serde::Deserializer::new(frame);
    de.set_max_depth(MAX_DEPTH);
    serde::Deserialize::deserialize(&mut de).map_err(|source| CodecError::Decode {
        len: frame.len(),
        source,
    })
}

/// Encodes one message as a frame payload.
pub fn encode(msg: &Msg) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(msg)?)
}

impl Decoder for MsgCodec {
    type Item = Msg;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, CodecError> {
        match self.read.decode(src)? {
            Some(frame) => decode(&frame).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<&Msg> for MsgCodec {
    type Error = CodecError;
    fn encode(&mut self, msg: &Msg, dst: &mut BytesMut) -> Result<(), CodecError> {
        let bytes = encode(msg)?;
        self.write.encode(Bytes::from(bytes), dst)?;
        Ok(())
    }
}

impl Encoder<Msg> for MsgCodec {
    type Error = CodecError;
    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Msg>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn roundtrip(m: Msg) {
        let mut c = MsgCodec::default();
        let mut buf = BytesMut::new();
        c.encode(&m, &mut buf).unwrap();
        assert_eq!(c.decode(&mut buf).unwrap(), Some(m));
    }

    #[test]
    fn messages_roundtrip() {
        roundtrip(Msg::Heartbeat);
        roundtrip(Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: NodeName::new("r1").unwrap(),
            role: Role::Relay,
            purpose: Default::default(),
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        }));
        roundtrip(Msg::Assign(Assignment {
            job: JobId(3),
            attempt: Attempt(2),
            action: Action::Run(RunSpec {
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                timeout_ms: Some(5),
            }),
            expires_at_ms: None,
            scope: Scope::Targets(vec![NodeName::new("c1").unwrap()]),
            orders: vec![],
            placement: None,
            hq_now_ms: None,
            policy: None,
        }));
        roundtrip(Msg::Ack { seq: 9 });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b"\xc1"[..],
            b"\xff\xff",
            b"",
            b"\x92\x01",
            b"\x81\xa3foo\x01",
        ] {
            assert!(decode(bytes).is_err());
        }
        // deep nesting
        let deep = vec![0x91u8; 100_000];
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn limits_per_direction() {
        use crate::proto::Role::*;
        assert_eq!(read_limit(Relay, Agent), AGENT_MAX_FRAME);
        assert_eq!(read_limit(Agent, Relay), AGENT_MAX_FRAME);
        assert_eq!(read_limit(Hq, Relay), MAX_FRAME);
        assert_eq!(read_limit(Hq, Admin), AGENT_MAX_FRAME);
        assert_eq!(read_limit(Admin, Hq), ADMIN_MAX_FRAME);
        // A relay reading from an agent refuses a frame over 1 MiB.
        let mut c = MsgCodec::for_session(Relay, Agent);
        let mut buf = BytesMut::from(&((AGENT_MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        buf.extend_from_slice(&[0; 16]);
        assert!(c.decode(&mut buf).is_err());
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut c = MsgCodec::default();
        let mut buf = BytesMut::from(&((MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        buf.extend_from_slice(&[0; 16]);
        assert!(c.decode(&mut buf).is_err());
    }
}
