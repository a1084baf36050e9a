//! Frames to messages: 4-byte length prefix, one named-MessagePack [`Msg`] each.
//!
//! Decoding never panics: bad bytes, oversized frames and too-deep nesting are
//! errors that close the one session they came from.

use super::msg::Msg;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame accepted or sent.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
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

/// Length-delimited MessagePack codec for [`Msg`].
pub struct MsgCodec {
    inner: LengthDelimitedCodec,
}

impl Default for MsgCodec {
    fn default() -> Self {
        MsgCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME)
                .new_codec(),
        }
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
        match self.inner.decode(src)? {
            Some(frame) => decode(&frame).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<&Msg> for MsgCodec {
    type Error = CodecError;
    fn encode(&mut self, msg: &Msg, dst: &mut BytesMut) -> Result<(), CodecError> {
        let bytes = encode(msg)?;
        self.inner.encode(Bytes::from(bytes), dst)?;
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
    fn oversized_frame_is_refused() {
        let mut c = MsgCodec::default();
        let mut buf = BytesMut::from(&((MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        buf.extend_from_slice(&[0; 16]);
        assert!(c.decode(&mut buf).is_err());
    }
}
