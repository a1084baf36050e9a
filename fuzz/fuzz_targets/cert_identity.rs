//! Arbitrary bytes as a DER certificate through `tls::identity_from_cert`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses half of it
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::check_cert(data);
});
