//! Arbitrary bytes through the wire decoder: `MsgCodec` as a stream drives it
//! (whole, and split in two), and `codec::decode` on the bytes as one payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses half of it
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::check_frame(data);
});
