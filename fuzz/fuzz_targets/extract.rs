//! Feeds hostile layers to the store's tar/whiteout extractor: input = [flags][split] then two
//! layers (flags bit 0: ACI mode, bit 1: the layers go through the decompressor sniffing).
//! Oracle beyond "no panic": nothing may appear outside the tree root, and a canary next to it
//! must survive (symlink/hardlink/`..`/whiteout escapes).
//!   cargo +nightly fuzz run extract      (from this directory, with cargo-fuzz installed)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkt_store::extract::{decompress, remove_path, ContentHashes, Extractor};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (flags, split, rest) = (data[0], usize::from(data[1]), &data[2..]);
    let cut = rest.len() * split / 256;
    let (l1, l2) = rest.split_at(cut);

    let base = scratch_dir();
    let root = base.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(base.join("canary"), b"canary").unwrap();
    {
        let mut hashes = ContentHashes::default();
        let mut x = Extractor::new(&root, &mut hashes).unwrap();
        // Small budget: the fuzzer must not fill the disk.
        x.set_budget(16 << 20);
        if flags & 1 != 0 {
            x = x.aci();
        }
        for l in [l1, l2] {
            let r = if flags & 2 != 0 {
                match decompress(l) {
                    Ok(r) => x.apply(r),
                    Err(_) => continue,
                }
            } else {
                x.apply(l)
            };
            if r.is_err() {
                break;
            }
        }
    }
    let _ = rkt_store::tree_digest(&root);
    let mut names: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["canary", "root"], "something was created next to the tree");
    assert_eq!(std::fs::read(base.join("canary")).unwrap(), b"canary");
    remove_path(&base).unwrap();
});

fn scratch_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "rkt-extract-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = remove_path(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
