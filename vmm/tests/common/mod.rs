//! Shared by the VMM's boot tests: the cached guest kernel and a static test init in an initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cached guest kernel; fails with what to run when it is not built.
pub fn kernel_path() -> PathBuf {
    let script = repo_root().join("kernel-config/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-path")
        .output()
        .expect("running kernel-config/build.sh --print-path");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&path).is_file(),
        "\n\n*** rkt-vmm boot test: the guest kernel is not built. Run `{}` first (takes ~7 min). ***\n{}\n",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(path)
}

/// Builds the static test init from `tests/guest/<source>` and an initramfs holding it.
pub fn initramfs(dir: &Path, source: &str) -> PathBuf {
    let init = dir.join("init");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guest")
        .join(source);
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&init)
        .arg(&src)
        .status()
        .expect("running gcc (needed to build the test init)");
    assert!(st.success(), "building {} failed", src.display());
    let cpio = dir.join("initramfs.cpio.gz");
    let st = Command::new("bash")
        .arg(repo_root().join("kernel-config/mkinitramfs.sh"))
        .arg(&cpio)
        .arg(&init)
        .status()
        .expect("running kernel-config/mkinitramfs.sh");
    assert!(st.success(), "mkinitramfs.sh failed");
    cpio
}
