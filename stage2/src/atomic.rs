//! The one atomic file write: a temporary file in the same directory, renamed over the target,
//! so that no reader ever sees half a file. Whether it is also fsynced is the caller's decision:
//! a pod's runtime files (pid, exit statuses, spec) are meaningless after a host crash, a
//! prepared pod's manifest is not.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Data fsynced before the rename (the directory entry is the caller's: [`sync_dir`]).
    Fsync,
    /// Atomic but not crash-safe.
    Runtime,
}

/// Writes `data` to `path` atomically, mode 0644 (rkt list/status read pod files unprivileged).
/// The temporary file has a random name and is created with O_EXCL, so a planted symlink in the
/// directory is never followed.
pub fn write(path: &Path, data: &[u8], durability: Durability) -> anyhow::Result<()> {
    let dir = path.parent().context("path without a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".rkt-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    if durability == Durability::Fsync {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// fsyncs a directory so that renames into it survive a crash; best effort (some file systems
/// refuse fsync on a directory).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"one", Durability::Fsync).unwrap();
        write(&p, b"two", Durability::Runtime).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(write(&d.path().join("missing/f"), b"x", Durability::Runtime).is_err());
    }
}
