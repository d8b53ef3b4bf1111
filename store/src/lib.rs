//! The image store under `<dir>/cas`: content-addressed blobs, a crash-safe image index, fetchers
//! for OCI/Docker/ACI images, and rendered read-only image trees shared by every pod.
//!
//! CONTRACT (used by the pods code in `cli/`; keep these signatures stable):
//! - `Store::open(dir)` opens/creates `<dir>/cas`.
//! - `Store::fetch(image, &FetchOptions)` -> `ImageInfo` (imports if needed, honours pull policy).
//! - `Store::resolve(name_or_id)` -> `ImageInfo` for an image already in the store
//!   (accepts `sha256-<hex>` full or unambiguous prefix ≥ 12 hex, `sha256:<hex>`, or a name[:tag]).
//! - `Store::render(&id)` -> `RenderedTree` (renders once, then reuses; marks the image used).
//! - `Store::manifest(&id)` -> the appc `ImageManifest` of an image.

use std::path::{Path, PathBuf};

pub use rkt_schema::ImageManifest;

pub type Result<T> = anyhow::Result<T>;

/// `--pull-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Never,
    #[default]
    New,
    Update,
}

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub pull_policy: PullPolicy,
    /// `--insecure-options=http`: allow plain-HTTP registries.
    pub insecure_http: bool,
    /// `--insecure-options=tls`: accept any TLS certificate.
    pub insecure_tls: bool,
    /// Show progress bars (stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// `sha256-<64 hex>`: digest of the image manifest (OCI/Docker) or of the ACI file.
    pub id: String,
    /// Name with tag, e.g. `127.0.0.1:5000/busybox:latest`.
    pub name: String,
    pub size: u64,
    pub import_time: chrono::DateTime<chrono::Utc>,
    pub last_used: chrono::DateTime<chrono::Utc>,
    pub origin: String,
}

#[derive(Debug, Clone)]
pub struct RenderedTree {
    pub image_id: String,
    /// Read-only root filesystem of the image (lower dir for overlayfs).
    pub rootfs: PathBuf,
    /// `sha256-<hex>` digest of the rendered tree (paths, modes, owners, contents), for TPM measurement.
    pub tree_digest: String,
}

pub struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let root = dir.join("cas");
        std::fs::create_dir_all(&root)?;
        Ok(Store { root })
    }
}
