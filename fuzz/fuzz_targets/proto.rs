//! The host<->guest protocol of stage1 kvm (guest-init/src/proto.rs), as the host reads what a
//! hostile guest sends and the guest reads the host: frame bodies and byte streams of frames,
//! every message including `rkt app`'s AppStart/AppStop. Never panics; a body that decodes
//! re-encodes to the same bytes, and what it encodes is accepted back.
//!   cargo +nightly fuzz run proto   (from this directory, with cargo-fuzz installed)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkt_guest_init::proto::{self, Msg};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode_body(data) {
        assert_eq!(m.encode_body(), data, "{m:?} does not re-encode to its body");
        if let Ok(frame) = m.encode() {
            assert_eq!(proto::read_msg(&mut &frame[..]).unwrap(), Some(m));
        }
    }
    // The same bytes as a stream of frames, read until the end or the first error.
    let mut r = data;
    for _ in 0..64 {
        match proto::read_msg(&mut r) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
