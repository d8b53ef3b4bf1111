//! Tree store: each image rendered once into `cas/tree/<id>/rootfs` and shared by every pod.
//! Rendering happens under a per-image lock into a temp dir that is renamed into place, so a tree
//! either exists complete (with its `tree_digest`) or not at all.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::extract::{decompress, ContentHashes, Extractor};
use crate::index::{Record, ACI_MEDIA_TYPE};
use crate::{blob::sync_dir, RenderedTree, Result, Store};

fn tree_dir(store: &Store, id: &str) -> PathBuf {
    store.root.join("tree").join(id)
}

pub fn existing(store: &Store, id: &str) -> Option<RenderedTree> {
    let d = tree_dir(store, id);
    let digest = std::fs::read_to_string(d.join("tree_digest")).ok()?;
    Some(RenderedTree {
        image_id: id.to_string(),
        rootfs: d.join("rootfs"),
        tree_digest: digest.trim().to_string(),
    })
}

pub fn render(store: &Store, rec: &Record) -> Result<RenderedTree> {
    if let Some(t) = existing(store, &rec.id) {
        return Ok(t);
    }
    // gc.lock shared (as imports hold it): `image gc` takes it exclusively and may then treat
    // everything in cas/tmp as debris of crashed runs.
    let _gc = store.lock("gc.lock", rkt_flock::Mode::Shared)?;
    let _lock = store.lock(&format!("tree-{}.lock", rec.id), rkt_flock::Mode::Exclusive)?;
    if let Some(t) = existing(store, &rec.id) {
        return Ok(t); // another process rendered it while we waited
    }
    let tmp = tempfile::Builder::new()
        .prefix("render-")
        .tempdir_in(store.root.join("tmp"))
        .context("creating a render dir")?;
    let rootfs = tmp.path().join("rootfs");
    let mut hashes = ContentHashes::default();
    unpack_layers(store, rec, &rootfs, &mut hashes)
        .with_context(|| format!("rendering image {}", rec.id))?;
    let digest = tree_digest_with(&rootfs, &hashes)?;
    let mut f = std::fs::File::create(tmp.path().join("tree_digest"))?;
    writeln!(f, "{digest}")?;
    f.sync_all()?;
    let dest = tree_dir(store, &rec.id);
    let _ = crate::extract::remove_path(&dest); // a digest-less leftover cannot exist, but be safe
    let kept = tmp.keep();
    std::fs::rename(&kept, &dest).with_context(|| format!("publishing tree {}", dest.display()))?;
    sync_dir(&store.root.join("tree"));
    Ok(existing(store, &rec.id).expect("just published"))
}

/// Applies the image's layers in order into `outdir` (created, mode 0755).
pub fn unpack_layers(
    store: &Store,
    rec: &Record,
    outdir: &Path,
    hashes: &mut ContentHashes,
) -> Result<()> {
    std::fs::create_dir(outdir).with_context(|| format!("creating {}", outdir.display()))?;
    std::fs::set_permissions(outdir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut x = Extractor::new(outdir, hashes)?;
    if rec.kind == "aci" {
        x = x.aci();
    }
    if rec.layers.len() > crate::limits::MAX_LAYERS {
        anyhow::bail!(
            "image has {} layers (limit {})",
            rec.layers.len(),
            crate::limits::MAX_LAYERS
        );
    }
    for l in &rec.layers {
        let f = store.blobs.open(&l.digest)?;
        x.set_budget_for(f.metadata()?.len());
        let r = decompress(f).with_context(|| format!("layer {}", l.digest))?;
        x.apply(r).with_context(|| format!("layer {}", l.digest))?;
        debug_assert!(l.media_type != ACI_MEDIA_TYPE || rec.kind == "aci");
    }
    Ok(())
}

/// Removes a rendered tree: renamed away first, so it vanishes atomically.
pub fn remove_tree(store: &Store, id: &str) -> Result<()> {
    let d = tree_dir(store, id);
    if !d.exists() {
        return Ok(());
    }
    let _lock = store.lock(&format!("tree-{id}.lock"), rkt_flock::Mode::Exclusive)?;
    let grave = store
        .root
        .join("tmp")
        .join(format!("del-{id}-{}", std::process::id()));
    std::fs::rename(&d, &grave).with_context(|| format!("removing tree {}", d.display()))?;
    crate::extract::remove_path(&grave)?;
    Ok(())
}

pub fn rendered_ids(store: &Store) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(store.root.join("tree"))? {
        if let Some(n) = e?.file_name().to_str() {
            v.push(n.to_string());
        }
    }
    Ok(v)
}

/// Copies a tree preserving types, modes, owners (when root), hardlinks, symlinks and devices.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = std::collections::HashMap::new();
    copy_entry(src, dst, &mut links)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::{chown, lchown, PermissionsExt};
    let m = std::fs::symlink_metadata(src)?;
    let ft = m.file_type();
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if ft.is_dir() {
        std::fs::create_dir(dst)?;
        let mut names: Vec<_> = std::fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            copy_entry(&src.join(&n), &dst.join(&n), links)?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
        if root {
            lchown(dst, Some(m.uid()), Some(m.gid()))?;
        }
        return Ok(());
    } else if let Some(first) = links.get(&(m.dev(), m.ino())).filter(|_| m.nlink() > 1) {
        std::fs::hard_link(first, dst)?;
        return Ok(());
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
        if m.nlink() > 1 {
            links.insert((m.dev(), m.ino()), dst.to_path_buf());
        }
    } else {
        if !root && !ft.is_fifo() {
            return Ok(());
        }
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dst.as_os_str()))?;
        // SAFETY: valid C string; mode and rdev come from an existing node.
        if unsafe { libc::mknod(c.as_ptr(), m.mode(), m.rdev()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mknod {}", dst.display()));
        }
    }
    if root {
        chown(dst, Some(m.uid()), Some(m.gid()))?;
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    Ok(())
}

/// `sha256-<hex>` over a canonical walk of `root`: for every entry in byte order of its path, one
/// record `path NUL type NUL mode(octal) NUL uid NUL gid NUL size NUL extra LF`, where type is
/// d/f/l/c/b/p/s, size is the file size (0 otherwise) and extra is the content sha256 (files), the
/// link target (symlinks), `major,minor` (devices) or empty. Timestamps are not measured.
pub fn tree_digest(root: &Path) -> Result<String> {
    tree_digest_with(root, &ContentHashes::default())
}

fn tree_digest_with(root: &Path, known: &ContentHashes) -> Result<String> {
    let mut h = Sha256::new();
    walk(root, Path::new("/"), known, &mut h)?;
    Ok(format!("sha256-{}", hex::encode(h.finalize())))
}

fn walk(abs: &Path, rel: &Path, known: &ContentHashes, h: &mut Sha256) -> Result<()> {
    let m = std::fs::symlink_metadata(abs).with_context(|| format!("stat {}", abs.display()))?;
    let ft = m.file_type();
    let (ty, size, extra) = if ft.is_dir() {
        ('d', 0, String::new())
    } else if ft.is_file() {
        let sum = match known.0.get(&(m.dev(), m.ino())) {
            Some(s) => *s,
            None => {
                let mut f = std::fs::File::open(abs)?;
                let mut s = Sha256::new();
                std::io::copy(&mut f, &mut s)?;
                s.finalize().into()
            }
        };
        ('f', m.size(), hex::encode(sum))
    } else if ft.is_symlink() {
        let t = std::fs::read_link(abs)?;
        ('l', 0, t.to_string_lossy().into_owned())
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = m.rdev();
        let c = if ft.is_char_device() { 'c' } else { 'b' };
        (c, 0, format!("{},{}", libc::major(rdev), libc::minor(rdev)))
    } else if ft.is_fifo() {
        ('p', 0, String::new())
    } else {
        ('s', 0, String::new())
    };
    use std::os::unix::ffi::OsStrExt;
    h.update(rel.as_os_str().as_bytes());
    h.update(
        format!(
            "\0{ty}\0{:o}\0{}\0{}\0{size}\0",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        )
        .as_bytes(),
    );
    h.update(extra.as_bytes());
    h.update(b"\n");
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            walk(&abs.join(&n), &rel.join(&n), known, h)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_changes_with_content_mode_and_names() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/f"), "x").unwrap();
        std::os::unix::fs::symlink("d/f", r.join("l")).unwrap();
        let a = tree_digest(r).unwrap();
        assert_eq!(a, tree_digest(r).unwrap());
        std::fs::write(r.join("d/f"), "y").unwrap();
        let b = tree_digest(r).unwrap();
        assert_ne!(a, b);
        std::fs::set_permissions(
            r.join("d/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(b, tree_digest(r).unwrap());
        assert!(a.starts_with("sha256-") && a.len() == 71);
    }
}
