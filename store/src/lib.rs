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
//!
//! Layout: `cas/blobs/sha256/<hex>` (immutable blobs), `cas/db/index.sqlite` (image index),
//! `cas/tree/<id>/{rootfs,tree_digest}` (rendered trees), `cas/locks/` (flock files), `cas/tmp/`.

pub mod auth;
mod blob;
mod convert;
pub mod discovery;
mod error;
mod export;
pub mod extract;
mod fetch;
mod http;
mod index;
pub mod limits;
pub mod platform;
mod progress;
mod render;
mod source;
#[cfg(test)]
mod store_tests;
pub mod trust;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use rkt_flock::{Flock, Mode};

pub use blob::BlobStore;
pub use error::{Error, ErrorKind};
pub use export::Format as ExportFormat;
pub use render::tree_digest;
pub use rkt_schema::ImageManifest;
pub use source::Source;

/// Inside the crate: anyhow with context. The public API returns [`error::Result`] (a kind
/// callers can act on, and the same one-line message).
pub(crate) type Result<T> = anyhow::Result<T>;

/// `--pull-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Never,
    #[default]
    New,
    Update,
}

impl std::str::FromStr for PullPolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "never" => Ok(PullPolicy::Never),
            "new" => Ok(PullPolicy::New),
            "update" => Ok(PullPolicy::Update),
            o => bail!("invalid pull policy {o:?} (allowed: never, new, update)"),
        }
    }
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
    /// rkt's configuration directories, lowest priority first (system, local, user): their
    /// `auth.d` holds credentials, `certs.d/HOST[:PORT]/` CA certificates (docs/store.md).
    pub config_dirs: Vec<PathBuf>,
    /// Signature verification (docs/trust.md): on unless `trust.skip` (`--insecure-options=image`).
    pub trust: trust::Verify,
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

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    pub trees_removed: Vec<String>,
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    /// Leftovers of crashed imports/renders removed from `cas/tmp`.
    pub tmp_removed: usize,
}

pub struct Store {
    pub root: PathBuf,
    /// The rkt data dir (`--dir`), parent of `root`.
    pub data_dir: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) index: index::Index,
}

/// Creates `dir` (and missing parents) and makes it mode 0700 — also when it already exists with
/// a looser mode. The rkt data dir, `cas/` and `pods/` hold image and pod content (setuid
/// binaries, file capabilities, pods' writable layers): like /var/lib/containers and
/// /var/lib/docker, nothing under them is reachable by other host users.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        r => r.with_context(|| format!("creating {}", dir.display()))?,
    }
    let m = std::fs::metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    if !m.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if m.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to mode 0700", dir.display()))?;
    }
    Ok(())
}

/// Entry points for the cargo-fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Index/manifest/config/appc/docker-archive JSON and reference parsers (`kind` picks one).
    pub fn image_json(kind: u8, data: &[u8]) {
        crate::fetch::fuzz_parsers(kind, data)
    }

    /// OpenPGP key, detached signature, simple-signing message and payload, registries.d parsers.
    pub fn trust(kind: u8, data: &[u8]) {
        crate::trust::fuzz_parsers(kind, data)
    }
}

/// `sha256-<hex>` from `sha256:<hex>`.
pub fn digest_to_id(digest: &str) -> String {
    digest.replacen("sha256:", "sha256-", 1)
}

/// `sha256-<first 12 hex>`.
pub fn short_id(id: &str) -> String {
    id.chars().take("sha256-".len() + 12).collect()
}

/// Splits `name[:tag]` (the tag is after the last `:` that follows the last `/`); default `latest`.
pub fn split_name_tag(s: &str) -> (String, String) {
    let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[slash..].rfind(':') {
        Some(i) => (s[..slash + i].to_string(), s[slash + i + 1..].to_string()),
        None => (s.to_string(), "latest".to_string()),
    }
}

impl Store {
    pub fn open(dir: &Path) -> error::Result<Store> {
        private_dir(dir)?;
        let root = dir.join("cas");
        private_dir(&root)?;
        for sub in ["blobs/sha256", "db", "tree", "locks", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        // Image trees keep setuid files, file capabilities and root-owned content: no other host
        // user may reach them, even if `dir` or `cas` is opened up again later.
        for sub in ["tree", "tmp", "blobs"] {
            private_dir(&root.join(sub))?;
        }
        let blobs = BlobStore::new(root.join("blobs"), root.join("tmp"));
        let index = index::Index::open(&root.join("db/index.sqlite"))?;
        Ok(Store {
            data_dir: dir.to_path_buf(),
            root,
            blobs,
            index,
        })
    }

    /// An exclusive or shared lock on `cas/locks/<name>`, released on drop.
    pub(crate) fn lock(&self, name: &str, mode: Mode) -> Result<Flock> {
        let path = self.root.join("locks").join(name);
        let f = rkt_flock::open_lock_file(&path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        Flock::lock(f, mode).with_context(|| format!("locking {}", path.display()))
    }

    /// Fetches (or finds, per the pull policy) an image and leaves it rendered, ready to run.
    pub fn fetch(&self, image: &str, opts: &FetchOptions) -> error::Result<ImageInfo> {
        let src = Source::parse(image).map_err(|e| Error::wrap(ErrorKind::InvalidReference, e))?;
        let f = fetch::fetch(self, &src, opts)?;
        if let Err(e) = self.render(&f.info.id) {
            if f.new {
                // A freshly imported image whose layers cannot be rendered is taken out again.
                let _ = self.remove(&f.info.id);
            }
            return Err(e);
        }
        self.index.get(&f.info.id)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("image {} vanished from the store", f.info.id),
            )
        })
    }

    /// An image already in the store, by id (full or ≥ 12-hex prefix) or name[:tag].
    pub fn resolve(&self, name_or_id: &str) -> error::Result<ImageInfo> {
        let s = name_or_id.trim();
        if let Some(hex) = s
            .strip_prefix("sha256-")
            .or_else(|| s.strip_prefix("sha256:"))
        {
            if hex.len() < 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    format!("invalid image ID {s:?}: need sha256- and at least 12 hex digits"),
                ));
            }
            let ids = self
                .index
                .ids_with_prefix(&format!("sha256-{}", hex.to_ascii_lowercase()))?;
            return match ids.len() {
                0 => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("image {s:?} not found in the store"),
                )),
                1 => Ok(self.index.get(&ids[0])?.expect("listed id")),
                n => Err(Error::new(
                    ErrorKind::Ambiguous,
                    format!("image ID {s:?} is ambiguous ({n} images match)"),
                )),
            };
        }
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let (name, tag) = split_name_tag(s);
        self.index.by_name(&name, &tag)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("image {name_or_id:?} not found in the store"),
            )
        })
    }

    /// SQLite's integrity check of the image index.
    pub fn index_ok(&self) -> error::Result<bool> {
        Ok(self.index.integrity_ok()?)
    }

    /// All images in the index.
    pub fn list(&self) -> error::Result<Vec<ImageInfo>> {
        Ok(self.index.list()?)
    }

    /// The appc manifest of an image.
    pub fn manifest(&self, id: &str) -> error::Result<ImageManifest> {
        let rec = self.index.record(id)?;
        Ok(
            serde_json::from_str(&rec.appc_manifest)
                .context("parsing the stored image manifest")?,
        )
    }

    /// Renders the image's tree once (under a lock) and returns it; marks the image used.
    pub fn render(&self, id: &str) -> error::Result<RenderedTree> {
        let rec = self.index.record(id)?;
        let t = render::render(self, &rec)?;
        self.index.touch(id)?;
        Ok(t)
    }

    /// The rendered tree of an image, if it has been rendered.
    pub fn rendered(&self, id: &str) -> Option<RenderedTree> {
        render::existing(self, id)
    }

    /// Unpacks the image's layers into `outdir` (created; must not exist).
    pub fn extract_to(&self, id: &str, outdir: &Path) -> error::Result<()> {
        let rec = self.index.record(id)?;
        render::unpack_layers(self, &rec, outdir, &mut extract::ContentHashes::default())?;
        Ok(())
    }

    /// Renders the image (tree store) and copies its tree to `outdir` (must not exist).
    pub fn render_to(&self, id: &str, outdir: &Path) -> error::Result<()> {
        let t = self.render(id)?;
        Ok(render::copy_tree(&t.rootfs, outdir)?)
    }

    /// Writes the image at `out` as an ACI or an oci-archive.
    pub fn export(&self, id: &str, out: &Path, format: ExportFormat) -> error::Result<()> {
        let rec = self.index.record(id)?;
        // Shared gc.lock: gc must not clear the temp layer an ACI export writes to cas/tmp.
        let _g = self.lock("gc.lock", Mode::Shared)?;
        Ok(match format {
            ExportFormat::Aci => export::export_aci(self, &rec, out),
            ExportFormat::OciArchive => export::export_oci_archive(self, &rec, out),
        }?)
    }

    /// Removes an image: index entry, rendered tree and blobs no other image uses.
    pub fn remove(&self, id: &str) -> error::Result<()> {
        let _g = self.lock("gc.lock", Mode::Exclusive)?;
        if self.index.get(id)?.is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("image {id:?} not found in the store"),
            ));
        }
        render::remove_tree(self, id)?;
        self.index.remove(id)?;
        trust::forget(self, id);
        self.sweep_blobs()?;
        Ok(())
    }

    /// Image ids whose trees are in use by a pod: `<dir>/pods/*/*/appsinfo/*/treeStoreID`.
    pub fn trees_in_use(&self) -> std::collections::HashSet<String> {
        let mut used = std::collections::HashSet::new();
        let pods = self.data_dir.join("pods");
        let states = std::fs::read_dir(&pods).into_iter().flatten().flatten();
        for state in states {
            for pod in std::fs::read_dir(state.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let apps = pod.path().join("appsinfo");
                for app in std::fs::read_dir(&apps).into_iter().flatten().flatten() {
                    if let Ok(s) = std::fs::read_to_string(app.path().join("treeStoreID")) {
                        used.insert(s.trim().to_string());
                    }
                }
                if let Ok(s) = std::fs::read_to_string(pod.path().join("stage1TreeStoreID")) {
                    used.insert(s.trim().to_string());
                }
            }
        }
        used
    }

    /// `rkt image gc`: removes trees no pod uses, images unused for `grace`, then orphan blobs.
    pub fn gc(&self, grace: std::time::Duration) -> error::Result<GcReport> {
        let _g = self.lock("gc.lock", Mode::Exclusive)?;
        let mut report = GcReport::default();
        let in_use = self.trees_in_use();
        for id in render::rendered_ids(self)? {
            if !in_use.contains(&id) {
                render::remove_tree(self, &id)?;
                report.trees_removed.push(id);
            }
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(grace).map_err(|_| anyhow!("grace period too long"))?;
        for img in self.index.list()? {
            if img.last_used < cutoff && !in_use.contains(&img.id) {
                self.index.remove(&img.id)?;
                trust::forget(self, &img.id);
                report.images_removed.push(img.id);
            }
        }
        report.blobs_removed = self.sweep_blobs()?;
        // Nobody imports or renders while we hold gc.lock exclusively: whatever is in cas/tmp
        // was left by a process that died (temp blobs, half-rendered trees).
        for e in std::fs::read_dir(self.root.join("tmp"))? {
            let p = e?.path();
            // Not std's remove_dir_all: it holds an fd per level, and a killed render of a deep
            // hostile layer leaves thousands of levels.
            extract::remove_path(&p)
                .with_context(|| format!("removing leftover {}", p.display()))?;
            report.tmp_removed += 1;
        }
        Ok(report)
    }

    /// Deletes blobs no image references. Caller holds `gc.lock`; imports hold it shared.
    fn sweep_blobs(&self) -> Result<usize> {
        let referenced = self.index.referenced_blobs()?;
        let mut n = 0;
        for d in self.blobs.all()? {
            if !referenced.contains(&d) {
                self.blobs.remove(&d)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_errors_carry_their_kind() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let kind = |r: error::Result<ImageInfo>| r.unwrap_err().kind();
        assert_eq!(kind(store.resolve("busybox:1")), ErrorKind::NotFound);
        assert_eq!(
            kind(store.resolve(&format!("sha256-{}", "a".repeat(12)))),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(store.resolve("sha256-abc")),
            ErrorKind::InvalidReference
        );
        let opts = FetchOptions::default();
        assert_eq!(
            kind(store.fetch("docker://Bad/Name", &opts)),
            ErrorKind::InvalidReference
        );
        let e = store.remove("sha256-0").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "image \"sha256-0\" not found in the store");
    }

    #[test]
    fn name_tag_split() {
        assert_eq!(
            split_name_tag("busybox"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(split_name_tag("a/b:1.2"), ("a/b".into(), "1.2".into()));
        assert_eq!(
            split_name_tag("127.0.0.1:5000/x/y"),
            ("127.0.0.1:5000/x/y".into(), "latest".into())
        );
        assert_eq!(
            split_name_tag("127.0.0.1:5000/x:v1"),
            ("127.0.0.1:5000/x".into(), "v1".into())
        );
        assert_eq!(
            short_id(&format!("sha256-{}", "ab".repeat(32))),
            "sha256-abababababab"
        );
    }
}
