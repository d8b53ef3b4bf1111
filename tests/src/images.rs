//! Test images built by `images/build.sh`, cached under `<target>/test-images/<hash of images/>`
//! so they are built once across test processes (guarded by a file lock).

use crate::{target_dir, workspace_root};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the built test images (see images/README.md for what each contains).
#[derive(Debug, Clone)]
pub struct TestImages {
    /// The cache directory holding everything below.
    pub dir: PathBuf,
    /// OCI image layout directory, tag `latest`.
    pub busybox_oci: PathBuf,
    /// The same image as an oci-archive tarball.
    pub busybox_oci_archive: PathBuf,
    /// The same image as a docker-archive tarball (`docker save` format), named `busybox:latest`.
    pub busybox_docker_archive: PathBuf,
    /// appc image (gzip-compressed tar of `manifest` + `rootfs/`), name `example.com/busybox`.
    pub busybox_aci: PathBuf,
    /// The same ACI uncompressed.
    pub busybox_aci_tar: PathBuf,
    /// Armored detached signature of `busybox_aci` by the trusted key.
    pub busybox_aci_asc: PathBuf,
    /// Armored detached signature of `busybox_aci` by the other (untrusted) key.
    pub busybox_aci_other_asc: PathBuf,
    /// Armored public key (RSA 2048) that made `busybox_aci_asc`, for `rkt trust`.
    pub trusted_pubkey: PathBuf,
    /// Armored public key that made `busybox_aci_other_asc`.
    pub other_pubkey: PathBuf,
    /// OCI layout, tag `latest`: the busybox layer with a richer config (User `user`, Entrypoint
    /// `/inspect --print-user`, Cmd `--print-cwd --print-env=GREETING`, Env GREETING=hello,
    /// WorkingDir /home/user, ports 8080/tcp 5353/udp, volume /data, StopSignal SIGINT).
    pub configured_oci: PathBuf,
    /// OCI layout: the busybox layer plus three layers with whiteouts, an opaque dir, a hardlink
    /// and symlinks; tag `latest`.
    pub multilayer_oci: PathBuf,
    /// The multilayer image as a docker-archive, `docker.io/library/multilayer:latest`.
    pub multilayer_docker_archive: PathBuf,
    /// The statically linked `inspect` test app (also `/inspect` in every image).
    pub inspect: PathBuf,
    /// The busybox root filesystem the images were made from.
    pub rootfs: PathBuf,
}

impl TestImages {
    /// `oci:<busybox_oci>:latest`
    pub fn busybox_oci_ref(&self) -> String {
        format!("oci:{}:latest", self.busybox_oci.display())
    }
    /// `oci-archive:<busybox_oci_archive>`
    pub fn busybox_oci_archive_ref(&self) -> String {
        format!("oci-archive:{}", self.busybox_oci_archive.display())
    }
    /// `docker-archive:<busybox_docker_archive>`
    pub fn busybox_docker_archive_ref(&self) -> String {
        format!("docker-archive:{}", self.busybox_docker_archive.display())
    }
    /// `oci:<multilayer_oci>:latest`
    pub fn multilayer_oci_ref(&self) -> String {
        format!("oci:{}:latest", self.multilayer_oci.display())
    }
    /// Uppercase hex fingerprint of `trusted_pubkey`.
    pub fn trusted_fingerprint(&self) -> String {
        read_trimmed(&self.dir.join("keys/trusted.fingerprint"))
    }
    /// Uppercase hex fingerprint of `other_pubkey`.
    pub fn other_fingerprint(&self) -> String {
        read_trimmed(&self.dir.join("keys/other.fingerprint"))
    }
    /// `docker-archive:<multilayer_docker_archive>`
    pub fn multilayer_docker_archive_ref(&self) -> String {
        format!(
            "docker-archive:{}",
            self.multilayer_docker_archive.display()
        )
    }
    /// `oci:<configured_oci>:latest`
    pub fn configured_oci_ref(&self) -> String {
        format!("oci:{}:latest", self.configured_oci.display())
    }
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The test images, built on first use (once per process; shared between processes via the cache).
pub fn images() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = build_cached(false);
        TestImages {
            busybox_oci: dir.join("busybox-oci"),
            busybox_oci_archive: dir.join("busybox-oci.tar"),
            busybox_docker_archive: dir.join("busybox-docker.tar"),
            busybox_aci: dir.join("busybox.aci"),
            busybox_aci_tar: dir.join("busybox-aci.tar"),
            busybox_aci_asc: dir.join("busybox.aci.asc"),
            busybox_aci_other_asc: dir.join("busybox.aci.other.asc"),
            trusted_pubkey: dir.join("keys/trusted.pub.asc"),
            other_pubkey: dir.join("keys/other.pub.asc"),
            configured_oci: dir.join("configured-oci"),
            multilayer_oci: dir.join("multilayer-oci"),
            multilayer_docker_archive: dir.join("multilayer-docker.tar"),
            inspect: dir.join("inspect"),
            rootfs: dir.join("rootfs"),
            dir,
        }
    })
}

/// The big image (~200 MB oci-archive, three layers of random data), built on first use: slow.
pub fn big_image() -> &'static PathBuf {
    static BIG: OnceLock<PathBuf> = OnceLock::new();
    BIG.get_or_init(|| build_cached(true).join("big-oci.tar"))
}

/// Hash of every file under images/ (path, mode and content), skipping build output.
fn sources_hash(images_dir: &Path) -> String {
    let mut files = Vec::new();
    collect(images_dir, images_dir, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let p = images_dir.join(&rel);
        let meta = std::fs::symlink_metadata(&p).expect("stat images source");
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.permissions().mode().to_le_bytes());
        if meta.is_file() {
            h.update(std::fs::read(&p).expect("read images source"));
        }
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("reading images/").flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
        }
    }
}

/// Builds (or reuses) the cache dir; with `big`, also the big image.
fn build_cached(big: bool) -> PathBuf {
    let images_dir = workspace_root().join("images");
    let cache_root = target_dir().join("test-images");
    std::fs::create_dir_all(&cache_root).expect("creating target/test-images");
    let dir = cache_root.join(sources_hash(&images_dir));
    let marker = dir.join(if big { ".complete-big" } else { ".complete" });
    if marker.exists() {
        return dir;
    }

    let lock = File::create(cache_root.join(".lock")).expect("creating image cache lock");
    // SAFETY: flock on an fd we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!(
            "locking the image cache: {}",
            std::io::Error::last_os_error()
        );
    }
    if marker.exists() {
        return dir; // another process built it while we waited
    }

    let mut cmd = Command::new("bash");
    cmd.arg(images_dir.join("build.sh"));
    if big {
        cmd.arg("--big");
    }
    cmd.arg(&dir);
    eprintln!("building test images into {} …", dir.display());
    let out = crate::run_command(cmd, 1800);
    let log = dir.with_extension(if big { "big.log" } else { "log" });
    let _ = std::fs::write(&log, format!("{out}"));
    if out.code != 0 {
        panic!("images/build.sh failed (log: {})\n{out}", log.display());
    }
    std::fs::write(&marker, b"").expect("writing image cache marker");
    prune_stale(&cache_root, &dir);
    drop(lock);
    dir
}

/// Removes cache dirs built from older images/ sources (the big image makes them ~230 MB each).
/// Called under the lock, right after a build for new sources.
fn prune_stale(cache_root: &Path, keep: &Path) {
    let keep_name = keep
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(rd) = std::fs::read_dir(cache_root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Entries are `<hash>` dirs and `<hash>.log` / `<hash>.big.log` files.
        let hash = name.split('.').next().unwrap_or("");
        if hash == keep_name || hash.len() != 16 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}
