//! The store's parsers for what an image source hands it: OCI index.json / image indexes,
//! manifests (with the layer-count and size limits), image configs (converted to an appc
//! manifest, which must round-trip), appc manifests, docker-archive manifest.json, registry
//! `WWW-Authenticate` headers, credential files (auth.d, auth.json), appc discovery pages and
//! names, and image references. Input: [which parser] then the bytes.
//!   cargo +nightly fuzz run image_json   (from this directory, with cargo-fuzz installed)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, rest)) = data.split_first() {
        rkt_store::fuzzing::image_json(kind, rest);
    }
});
