//! Bounds on what an image may make rkt do. Each is generous for real images and finite, so a
//! hostile image costs at most a known amount of memory, disk and CPU; exceeding one is one clear
//! error (exit 254) and the import or render is undone. Documented in docs/store.md.

/// index.json, manifests, image indexes, configs, docker-archive manifest.json, ACI manifests.
pub const MAX_JSON_BYTES: u64 = 8 << 20;
/// Layers in one image (Docker refuses more than 125 when building; overlayfs stacks about 500).
pub const MAX_LAYERS: usize = 256;
/// One stored blob (a compressed layer or an ACI file).
pub const MAX_BLOB_BYTES: u64 = 64 << 30;
/// A layer may expand to `MAX_EXPANSION_RATIO` times its stored size, and always to at least
/// `MIN_LAYER_EXPANSION_BYTES`: counted both on the decompressed tar stream and on file data
/// written (sparse entries expand without stream bytes).
pub const MAX_EXPANSION_RATIO: u64 = 100;
pub const MIN_LAYER_EXPANSION_BYTES: u64 = 4 << 30;
/// Tar headers plus PAX / GNU long-name records of one entry: the tar reader holds these in memory.
pub const MAX_ENTRY_METADATA_BYTES: u64 = 1 << 20;
/// One entry's path inside the tree (bytes) and components. Below PATH_MAX (4096) with room for
/// the store's own prefix, so every tree path stays usable with one path-based syscall.
pub const MAX_PATH_BYTES: usize = 3072;
pub const MAX_PATH_DEPTH: usize = 1024;

/// The decompressed-size budget of a layer stored in `stored` bytes.
pub fn layer_budget(stored: u64) -> u64 {
    stored
        .saturating_mul(MAX_EXPANSION_RATIO)
        .max(MIN_LAYER_EXPANSION_BYTES)
}

/// `s` for an error message: debug-escaped (no raw control bytes) and cut to about 120 chars.
pub fn show(s: impl std::fmt::Debug) -> String {
    let d = format!("{s:?}");
    if d.chars().count() <= 120 {
        return d;
    }
    let head: String = d.chars().take(100).collect();
    format!("{head}…\" ({} chars)", d.chars().count())
}
