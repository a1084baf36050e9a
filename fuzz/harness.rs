//! What one fuzz input is run through, shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the regression tests
//! (`tests/it/fuzz_regress.rs`), so that a corpus file replayed by
//! `cargo test` exercises exactly what the fuzzer did.
//!
//! Any panic here is a bug: either in the code under test, or one of the
//! properties asserted below does not hold.

use bytes::BytesMut;
use relaytree::proto::{codec, CodecError, Msg, MsgCodec};
use relaytree::tls::{identity_from_cert, PeerIdentity, TlsError};
use tokio_util::codec::Decoder;

/// What the frame harness saw for one input.
#[derive(Debug)]
pub struct FrameOutcome {
    /// Messages `MsgCodec` decoded from the input as a stream, in order.
    pub frames: Vec<Msg>,
    /// Whether the stream stopped on an error (a session would be closed).
    pub stream_error: bool,
    /// `codec::decode` of the whole input as one frame payload.
    pub direct: Result<Msg, CodecError>,
}

/// Calls `decode` until it returns `Ok(None)` or an error, as `FramedRead`
/// does with the bytes it has. Every frame takes at least its 4-byte
/// prefix, so more messages than that would mean the decoder is looping.
fn drain(c: &mut MsgCodec, buf: &mut BytesMut, out: &mut Vec<Msg>) -> Result<(), CodecError> {
    let most = out.len() + buf.len() / 4;
    while let Some(m) = c.decode(buf)? {
        out.push(m);
        assert!(
            out.len() <= most,
            "decoder returned more frames than bytes allow"
        );
    }
    Ok(())
}

/// Bugs found by fuzzing and not fixed yet, which the tolerant harness
/// lets pass so that fuzzing can go on past them. Each has an `#[ignore]`d
/// test in tests/it/fuzz_regress.rs running the strict harness on its
/// input under fuzz/regressions/; delete the entry once the bug is fixed.
///
/// 1. `JobId` decodes the number 0 but encodes as the text "0", which
///    `JobId`'s decoder refuses: a message holding job 0 does not survive
///    being re-encoded (forwarded, or stored).
const KNOWN_BUGS: &[&str] = &[];

/// Checks that a decoded message survives encoding and decoding again.
fn roundtrips(m: &Msg, strict: bool) {
    let bytes = codec::encode(m).expect("a decoded message encodes");
    match codec::decode(&bytes) {
        Ok(again) => assert_eq!(&again, m, "message changed through encode/decode"),
        Err(e) if !strict && KNOWN_BUGS.iter().any(|k| e.to_string().contains(k)) => {}
        Err(e) => panic!("an encoded message decodes: {e}"),
    }
}

/// Runs `data` through the stream decoder (all at once, then split in two
/// at a point taken from the data) and through `codec::decode`. Panics if
/// anything panics, if the two stream runs disagree, or if a decoded
/// message does not round-trip (except through one of [`KNOWN_BUGS`]).
pub fn check_frame(data: &[u8]) -> FrameOutcome {
    frame_with(data, false)
}

/// [`check_frame`] without tolerance for [`KNOWN_BUGS`].
pub fn check_frame_strict(data: &[u8]) -> FrameOutcome {
    frame_with(data, true)
}

fn frame_with(data: &[u8], strict: bool) -> FrameOutcome {
    // All bytes at once.
    let mut c = MsgCodec::default();
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let stream_error = drain(&mut c, &mut buf, &mut frames).is_err();
    if !stream_error {
        // The peer closed: whatever is left is a truncated frame.
        let _ = c.decode_eof(&mut buf);
    }

    // The same bytes arriving in two reads must give the same messages.
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let mut c2 = MsgCodec::default();
    let mut buf2 = BytesMut::from(&data[..split]);
    let mut frames2 = Vec::new();
    let mut error2 = drain(&mut c2, &mut buf2, &mut frames2).is_err();
    if !error2 {
        buf2.extend_from_slice(&data[split..]);
        error2 = drain(&mut c2, &mut buf2, &mut frames2).is_err();
    }
    assert_eq!(frames, frames2, "messages depend on how the bytes arrive");
    assert_eq!(
        stream_error, error2,
        "errors depend on how the bytes arrive"
    );

    for m in &frames {
        roundtrips(m, strict);
    }
    let direct = codec::decode(data);
    if let Ok(m) = &direct {
        roundtrips(m, strict);
    }
    FrameOutcome {
        frames,
        stream_error,
        direct,
    }
}

/// Runs `der` through `identity_from_cert`. Panics if it panics, or if an
/// identity it returns does not print as a well-formed SPIFFE id.
pub fn check_cert(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let r = identity_from_cert(der);
    if let Ok(id) = &r {
        let spiffe = id.spiffe_id();
        let rest = spiffe.strip_prefix("spiffe://").expect("spiffe scheme");
        assert_eq!(rest.split('/').count(), 3, "malformed id {spiffe:?}");
        assert!(!id.trust_domain.is_empty());
    }
    r
}
