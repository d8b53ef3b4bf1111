//! Hostile test images built inside a test: the busybox OCI image plus one layer whose tree the
//! test makes (symlinks to host paths, `..` chains, loops, odd file types), via tar and umoci as
//! images/build.sh does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{images, run_command};

/// An OCI layout built by [`busybox_plus_layer`].
#[derive(Debug, Clone)]
pub struct HostileImage {
    /// The OCI layout directory (tag `latest`).
    pub layout: PathBuf,
}

impl HostileImage {
    /// `oci:<layout>:latest`
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:latest", self.layout.display())
    }
}

#[track_caller]
fn must(cmd: Command, what: &str) {
    let out = run_command(cmd, 300);
    if out.code != 0 {
        panic!("{what} failed\n{out}");
    }
}

/// A copy of the busybox image in `dir/name` with one more layer: the tree `populate` makes in
/// an empty directory (symlinks are stored as symlinks, whatever they point at). `workdir` sets
/// the image config's WorkingDir.
#[track_caller]
pub fn busybox_plus_layer(
    dir: &Path,
    name: &str,
    workdir: Option<&str>,
    populate: impl FnOnce(&Path),
) -> HostileImage {
    let layout = dir.join(name);
    let tree = dir.join(format!("{name}-layer"));
    let tar = dir.join(format!("{name}-layer.tar"));
    std::fs::create_dir_all(&tree).expect("creating the layer tree");
    populate(&tree);
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(&images().busybox_oci).arg(&layout);
    must(cp, "copying the busybox layout");
    let mut entries: Vec<String> = std::fs::read_dir(&tree)
        .expect("reading the layer tree")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let mut t = Command::new("tar");
    t.args(["--sort=name", "--numeric-owner", "--format=gnu", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg("--")
        .args(&entries);
    must(t, "tar of the hostile layer");
    let image = format!("{}:latest", layout.display());
    let mut add = Command::new("umoci");
    add.args(["raw", "add-layer", "--image", &image]).arg(&tar);
    must(add, "umoci raw add-layer");
    if let Some(w) = workdir {
        let mut cfg = Command::new("umoci");
        cfg.args(["config", "--image", &image, "--config.workingdir", w]);
        must(cfg, "umoci config --config.workingdir");
    }
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&tar);
    HostileImage { layout }
}
