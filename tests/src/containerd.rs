//! A real containerd for the shim's tests (tests/containerd.rs, tests/cri.rs): a temporary root
//! whose `bin/` holds both shim names (the name picks the flavour, as the set-up installs them),
//! started on the caller's config with the shim pointed at the `rkt` under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The shim binary of this build.
pub fn shim_bin() -> PathBuf {
    let p = crate::target_dir().join("debug/containerd-shim-rkt-v2");
    assert!(
        p.is_file(),
        "build the shim first: cargo build -p rkt-shim (no {})",
        p.display()
    );
    p
}

/// A temporary directory under /tmp (`PREFIX…`) with `bin/` (both shim names) and `rkt/` (the
/// shim's `--dir`).
pub fn temp_root(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["containerd-shim-rkt-v2", "containerd-shim-rkt-ns-v2"] {
        std::os::unix::fs::symlink(shim_bin(), bin.join(name)).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("rkt")).unwrap();
    dir
}

/// Writes `config` to `<root>/config.toml` and starts containerd on it, `<root>/bin` first on
/// its PATH, logging to `<root>/containerd.log`.
pub fn spawn(root: &Path, config: &str) -> Child {
    std::fs::write(root.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(root.join("containerd.log")).unwrap();
    let path = format!(
        "{}:{}",
        root.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("containerd")
        .arg("--config")
        .arg(root.join("config.toml"))
        .env("PATH", path)
        .env("RKT_SHIM_DIR", root.join("rkt"))
        .env("RKT_SHIM_RKT", crate::rkt_bin())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("running containerd (scripts/deps.sh installs it)")
}
