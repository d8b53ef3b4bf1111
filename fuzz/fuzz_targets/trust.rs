//! Image trust's parsers for what a key file, a signature or a lookaside hands rkt: OpenPGP
//! public keys (armored or binary), detached signatures (checked against an empty key ring),
//! simple-signing signed messages and their JSON payloads, registries.d YAML, and `--prefix`
//! values (whose trust-store directory must stay under prefix.d and round-trip).
//! Input: [which parser] then the bytes.
//!   cargo +nightly fuzz run trust   (from this directory, with cargo-fuzz installed)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, rest)) = data.split_first() {
        rkt_store::fuzzing::trust(kind, rest);
    }
});
