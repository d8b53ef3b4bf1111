//! Importers: OCI layout dirs, oci-archive and docker-archive tarballs, ACI files, and Docker
//! Registry HTTP API v2. Every blob is verified (digest and size) while it streams into the store;
//! an image is entered into the index only once all of its blobs are in.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::blob::HashingReader;
use crate::index::{Layer, Record, ACI_MEDIA_TYPE};
use crate::source::{DockerRef, Source};
use crate::{convert, digest_to_id, progress, FetchOptions, ImageInfo, PullPolicy, Result, Store};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MAX_JSON: u64 = crate::limits::MAX_JSON_BYTES;

/// Reads at most `MAX_JSON` bytes of `what`; more is an error, not a silent cut.
fn read_json_bounded(mut r: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    (&mut r)
        .take(MAX_JSON + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {what}"))?;
    if v.len() as u64 > MAX_JSON {
        bail!("{what} is larger than {MAX_JSON} bytes");
    }
    Ok(v)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageManifestOci {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Where an OCI-style importer gets blobs from.
trait Blobs {
    /// `index.json` of a layout (None for a registry).
    fn index_json(&mut self) -> Result<Vec<u8>>;
    /// The blob's bytes, as a stream (`size` is the descriptor's, for progress).
    fn open(&mut self, digest: &str, size: u64) -> Result<Box<dyn Read + '_>>;
    fn describe(&self) -> String;
}

/// Reads a small JSON blob and checks it against its descriptor.
fn read_verified(b: &mut dyn Blobs, d: &Descriptor) -> Result<Vec<u8>> {
    if d.size > MAX_JSON {
        bail!(
            "{} is {} bytes, too large for a manifest or config",
            d.digest,
            d.size
        );
    }
    let mut r = HashingReader::new(b.open(&d.digest, d.size)?.take(d.size + 1));
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .with_context(|| format!("reading {}", d.digest))?;
    let (got, n) = r.digest();
    if got != d.digest {
        bail!("digest mismatch for {}: content hashes to {got}", d.digest);
    }
    if n != d.size {
        bail!(
            "size mismatch for {}: descriptor says {} bytes, got {n}",
            d.digest,
            d.size
        );
    }
    Ok(v)
}

// ------------------------------------------------------------------------------------- sources

struct LayoutDir(PathBuf);

impl Blobs for LayoutDir {
    fn index_json(&mut self) -> Result<Vec<u8>> {
        let p = self.0.join("index.json");
        let f = File::open(&p).with_context(|| {
            format!(
                "{} is not an OCI layout (no readable index.json)",
                self.0.display()
            )
        })?;
        read_json_bounded(f, &p.display().to_string())
    }
    fn open(&mut self, digest: &str, _size: u64) -> Result<Box<dyn Read + '_>> {
        let p = self
            .0
            .join("blobs/sha256")
            .join(crate::blob::digest_hex(digest)?);
        Ok(Box::new(File::open(&p).with_context(|| {
            format!("blob {digest} missing from {}", self.0.display())
        })?))
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// An uncompressed tarball read with random access: a first pass records where each member's
/// data lies, then members are read by seeking.
struct TarFile {
    path: PathBuf,
    file: File,
    members: HashMap<String, (u64, u64)>,
}

impl TarFile {
    fn open(path: &Path) -> Result<TarFile> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut head = [0u8; 6];
        let n = (&file).read(&mut head)?;
        if n >= 2
            && (head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]))
        {
            bail!(
                "{} is compressed; archives must be plain tar",
                path.display()
            );
        }
        (&file).seek(SeekFrom::Start(0))?;
        let mut members = HashMap::new();
        let mut ar = tar::Archive::new(&file);
        let not_tar = || anyhow!("{} is not a valid tar archive", path.display());
        for e in ar.entries_with_seek().map_err(|_| not_tar())? {
            let e = e.map_err(|_| not_tar())?;
            if e.header().entry_type().is_file() {
                let name = e
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                members.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        Ok(TarFile {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    fn member(&mut self, name: &str) -> Result<Box<dyn Read + '_>> {
        let &(off, size) = self
            .members
            .get(name)
            .ok_or_else(|| anyhow!("{} has no {name}", self.path.display()))?;
        self.file.seek(SeekFrom::Start(off))?;
        Ok(Box::new((&self.file).take(size)))
    }

    fn read_member(&mut self, name: &str) -> Result<Vec<u8>> {
        let v = read_json_bounded(self.member(name)?, name)?;
        Ok(v)
    }
}

impl Blobs for TarFile {
    fn index_json(&mut self) -> Result<Vec<u8>> {
        self.read_member("index.json")
            .with_context(|| format!("{} is not an oci-archive", self.path.display()))
    }
    fn open(&mut self, digest: &str, _size: u64) -> Result<Box<dyn Read + '_>> {
        let name = format!("blobs/sha256/{}", crate::blob::digest_hex(digest)?);
        self.member(&name)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

// ------------------------------------------------------------------------------------- import

pub struct Fetched {
    pub info: ImageInfo,
    /// True when this call added the image (so a failed render should take it out again).
    pub new: bool,
}

pub fn fetch(store: &Store, src: &Source, opts: &FetchOptions) -> Result<Fetched> {
    // Shared: gc and rm take it exclusively, so they never sweep blobs of an import in progress.
    let _gc = store.lock("gc.lock", rkt_flock::Mode::Shared)?;
    let never = opts.pull_policy == PullPolicy::Never;
    let old = |info: ImageInfo| Fetched { info, new: false };
    match src {
        Source::Stored(s) => Ok(old(store.resolve(s)?)),
        Source::Docker(r) => {
            if let Some(d) = &r.digest {
                if let Some(i) = store.index.get(&digest_to_id(d))? {
                    return Ok(old(i));
                }
            } else if opts.pull_policy != PullPolicy::Update {
                if let Some(i) = store.index.by_name(&r.name(), &r.tag)? {
                    return Ok(old(i));
                }
            }
            if never {
                bail!(
                    "image \"docker://{}:{}\" not found in the store (pull policy never)",
                    r.name(),
                    r.tag
                );
            }
            fetch_registry(store, r, opts)
        }
        Source::Oci { path, tag } => {
            if !path.is_dir() {
                bail!("OCI layout directory {} does not exist", path.display());
            }
            let name = path_name(path);
            let origin = format!("oci:{}", path.display());
            import_oci(
                store,
                &mut LayoutDir(path.clone()),
                &name,
                tag.as_deref(),
                &origin,
                opts,
                None,
            )
        }
        Source::OciArchive { path, tag } => {
            let mut t = TarFile::open(path)?;
            let name = path_name(path);
            let origin = format!("oci-archive:{}", path.display());
            import_oci(store, &mut t, &name, tag.as_deref(), &origin, opts, None)
        }
        Source::DockerArchive { path } => import_docker_archive(store, path, opts),
        Source::Aci { path } => import_aci(store, path, opts),
        Source::Url(url) => {
            if never {
                bail!("image {url:?} not found in the store (pull policy never)");
            }
            let d = crate::discovery::download_url(url, opts, &store.root.join("tmp"))?;
            import_aci_as(store, &d.aci, Some(url), None, opts)
        }
        Source::Discover(n) => {
            if opts.pull_policy != PullPolicy::Update {
                if let Some(i) = store.index.by_name(&n.name, n.version())? {
                    return Ok(old(i));
                }
            }
            if never {
                bail!(
                    "image \"{}:{}\" not found in the store (pull policy never)",
                    n.name,
                    n.version()
                );
            }
            let d = crate::discovery::download_discovered(n, opts, &store.root.join("tmp"))?;
            import_aci_as(store, &d.aci, Some(&d.location.aci), Some(&n.name), opts)
        }
    }
}

/// Image name for a local path: its file name without `.tar`/`.oci` extensions.
fn path_name(p: &Path) -> String {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let n = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let n = n.strip_suffix(".tar").unwrap_or(&n).to_string();
    n.to_ascii_lowercase()
}

/// Layer count and declared sizes within `limits`, before anything is downloaded.
fn check_layers(layers: &[Descriptor]) -> Result<()> {
    use crate::limits::{MAX_BLOB_BYTES, MAX_LAYERS};
    if layers.len() > MAX_LAYERS {
        bail!(
            "image manifest lists {} layers (limit {MAX_LAYERS})",
            layers.len()
        );
    }
    for l in layers {
        crate::blob::digest_hex(&l.digest)?;
        if l.size > MAX_BLOB_BYTES {
            bail!(
                "layer {} declares {} bytes (limit {MAX_BLOB_BYTES})",
                l.digest,
                l.size
            );
        }
    }
    Ok(())
}

fn is_index(media_type: &str, v: &Value) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST || v.get("manifests").is_some()
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Imports from an OCI layout (dir or archive). `top` short-circuits index.json (registry case).
#[allow(clippy::too_many_arguments)]
fn import_oci(
    store: &Store,
    b: &mut dyn Blobs,
    default_name: &str,
    tag: Option<&str>,
    origin: &str,
    opts: &FetchOptions,
    top: Option<Descriptor>,
) -> Result<Fetched> {
    let (mut desc, mut name, mut tag_out) = match top {
        Some(d) => (
            d,
            default_name.to_string(),
            tag.unwrap_or("latest").to_string(),
        ),
        None => {
            let idx: Value = serde_json::from_slice(&b.index_json()?)
                .with_context(|| format!("invalid index.json in {}", b.describe()))?;
            let ms: Vec<Descriptor> =
                serde_json::from_value(idx.get("manifests").cloned().unwrap_or(Value::Null))
                    .with_context(|| format!("invalid index.json in {}", b.describe()))?;
            let refname = |m: &Descriptor| {
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned()
            };
            let chosen = match tag {
                Some(t) => ms
                    .iter()
                    .find(|m| refname(m).is_some_and(|r| r == t || r.ends_with(&format!(":{t}"))))
                    .ok_or_else(|| anyhow!("tag {t:?} not found in {}", b.describe()))?,
                None if ms.len() == 1 => &ms[0],
                None => ms
                    .iter()
                    .find(|m| refname(m).as_deref() == Some("latest"))
                    .ok_or_else(|| {
                        anyhow!(
                            "{} holds {} images: name one with :TAG",
                            b.describe(),
                            ms.len()
                        )
                    })?,
            };
            let (mut n, mut t) = (
                default_name.to_string(),
                tag.unwrap_or("latest").to_string(),
            );
            if let Some(r) = refname(chosen) {
                if r.contains('/') || r.contains(':') {
                    (n, t) = crate::split_name_tag(&r);
                } else {
                    t = r;
                }
            }
            (chosen.clone(), n, t)
        }
    };
    // The signature covers the manifest the reference names (an index for multi-arch images).
    let verified = crate::trust::check_oci(opts, origin, &name, &tag_out, &desc.digest)?;
    // Follow image indexes down to this host's platform.
    let host = crate::platform::Platform::host();
    let mut manifest_bytes;
    let mut depth = 0;
    loop {
        manifest_bytes = read_verified(b, &desc)?;
        let v: Value = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("invalid manifest {}", desc.digest))?;
        let mt = v
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(&desc.media_type)
            .to_string();
        if is_index(&mt, &v) {
            depth += 1;
            if depth > 4 {
                bail!("image index nesting too deep in {}", b.describe());
            }
            desc = host.pick(&v, &b.describe())?;
            continue;
        }
        break;
    }
    if name.is_empty() {
        name = "image".into();
    }
    if tag_out.is_empty() {
        tag_out = "latest".into();
    }
    let id = digest_to_id(&desc.digest);
    if let Some(info) = store.index.get(&id)? {
        crate::trust::remember(store, &id, verified)?;
        store.index.add_name(&name, &tag_out, &id)?;
        return Ok(Fetched { info, new: false });
    }
    if opts.pull_policy == PullPolicy::Never {
        bail!("image {origin:?} ({id}) not found in the store (pull policy never)");
    }
    let m: ImageManifestOci = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("invalid image manifest {}", desc.digest))?;
    if m.schema_version != 2 {
        bail!(
            "unsupported manifest schema version {} (only 2)",
            m.schema_version
        );
    }
    check_layers(&m.layers)?;
    let config = read_verified(b, &m.config)?;
    let appc = convert::to_appc(&name, &tag_out, &config)?;
    let mut layers = Vec::new();
    let mut size = manifest_bytes.len() as u64 + config.len() as u64;
    // Blobs this import added: on failure they are removed again, so nothing is left behind.
    let mut added: Vec<String> = Vec::new();
    let r = (|| -> Result<()> {
        for (i, l) in m.layers.iter().enumerate() {
            size += l.size;
            layers.push(Layer {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            });
            if store.blobs.has(&l.digest) {
                // Already stored (by another image): the descriptor must still tell the truth.
                let have = std::fs::metadata(store.blobs.path(&l.digest)?)?.len();
                if have != l.size {
                    bail!(
                        "size mismatch for layer {}: descriptor says {} bytes, the stored blob has {have}",
                        l.digest,
                        l.size
                    );
                }
                continue;
            }
            let pb = progress::bar(
                opts.progress,
                l.size,
                &format!("layer {}/{} {}", i + 1, m.layers.len(), &l.digest[7..19]),
            );
            let mut r = b.open(&l.digest, l.size)?;
            store
                .blobs
                .put(&mut r, Some(&l.digest), Some(l.size), |n| {
                    progress::inc(&pb, n)
                })
                .with_context(|| format!("layer {} of {origin}", l.digest))?;
            progress::finish(pb);
            added.push(l.digest.clone());
        }
        for (data, d) in [(&config, &m.config.digest), (&manifest_bytes, &desc.digest)] {
            if !store.blobs.has(d) {
                store.blobs.put_bytes(data, Some(d))?;
                added.push(d.clone());
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        let referenced = store.index.referenced_blobs().unwrap_or_default();
        for d in added.iter().filter(|d| !referenced.contains(*d)) {
            let _ = store.blobs.remove(d);
        }
        return Err(e);
    }
    let now = chrono::Utc::now();
    let rec = Record {
        id: id.clone(),
        name,
        tag: tag_out,
        size,
        import_time: now,
        last_used: now,
        origin: origin.to_string(),
        kind: "oci".into(),
        appc_manifest: serde_json::to_string(&appc)?,
        manifest_digest: Some(desc.digest.clone()),
        config_digest: Some(m.config.digest.clone()),
        layers,
    };
    store.index.insert(&rec)?;
    crate::trust::remember(store, &id, verified)?;
    Ok(Fetched {
        info: store.index.get(&id)?.expect("just inserted"),
        new: true,
    })
}

// ------------------------------------------------------------------------------ docker-archive

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn sniff_compressed(r: &mut dyn Read) -> Result<Option<&'static str>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        Some(OCI_LAYER_GZIP)
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("application/vnd.oci.image.layer.v1.tar+zstd")
    } else {
        None
    })
}

/// `docker save` output: manifest.json + config + layer tars. The store keeps an equivalent OCI
/// manifest synthesised from them (its digest is the image ID), so export and rendering treat it
/// like any OCI image.
fn import_docker_archive(store: &Store, path: &Path, opts: &FetchOptions) -> Result<Fetched> {
    let mut t = TarFile::open(path)?;
    let mf: Vec<DockerArchiveEntry> = serde_json::from_slice(
        &t.read_member("manifest.json")
            .with_context(|| format!("{} is not a docker-archive", path.display()))?,
    )
    .with_context(|| format!("invalid manifest.json in {}", path.display()))?;
    let e = mf
        .first()
        .ok_or_else(|| anyhow!("{} holds no image", path.display()))?;
    let config = t.read_member(&e.config)?;
    let (config_digest, config_size) = {
        let mut h = HashingReader::new(&config[..]);
        std::io::copy(&mut h, &mut std::io::sink())?;
        h.digest()
    };
    let cfg: Value = serde_json::from_slice(&config).context("invalid image config")?;
    let diff_ids: Vec<String> = cfg
        .pointer("/rootfs/diff_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if diff_ids.len() != e.layers.len() {
        bail!(
            "{}: config lists {} layers, manifest.json {}",
            path.display(),
            diff_ids.len(),
            e.layers.len()
        );
    }
    let mut descs = Vec::new();
    for (i, lp) in e.layers.iter().enumerate() {
        let size = t
            .members
            .get(lp.trim_start_matches("./"))
            .map(|m| m.1)
            .ok_or_else(|| anyhow!("{} has no {lp}", path.display()))?;
        let mut r = t.member(lp.trim_start_matches("./"))?;
        let d = match sniff_compressed(&mut r)? {
            None => Descriptor {
                media_type: OCI_LAYER.into(),
                digest: diff_ids[i].clone(),
                size,
                annotations: None,
                platform: None,
            },
            Some(mt) => {
                // Compressed layer: its digest is not the diff_id, hash it.
                drop(r);
                let mut h = HashingReader::new(t.member(lp.trim_start_matches("./"))?);
                std::io::copy(&mut h, &mut std::io::sink())?;
                let (digest, _) = h.digest();
                Descriptor {
                    media_type: mt.into(),
                    digest,
                    size,
                    annotations: None,
                    platform: None,
                }
            }
        };
        descs.push((lp.trim_start_matches("./").to_string(), d));
    }
    let manifest = ImageManifestOci {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: config_digest.clone(),
            size: config_size,
            annotations: None,
            platform: None,
        },
        layers: descs.iter().map(|(_, d)| d.clone()).collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let mut blobs: HashMap<String, String> = descs
        .iter()
        .map(|(p, d)| (d.digest.clone(), p.clone()))
        .collect();
    blobs.insert(
        config_digest.clone(),
        e.config.trim_start_matches("./").to_string(),
    );
    let (name, tag) = match e.repo_tags.as_ref().and_then(|t| t.first()) {
        Some(rt) => crate::split_name_tag(rt),
        None => (path_name(path), "latest".to_string()),
    };
    // Serve the synthesised manifest and the archive's members as an OCI blob source.
    struct DockerBlobs<'a> {
        t: &'a mut TarFile,
        manifest: Vec<u8>,
        manifest_digest: String,
        paths: HashMap<String, String>,
    }
    impl Blobs for DockerBlobs<'_> {
        fn index_json(&mut self) -> Result<Vec<u8>> {
            unreachable!("descriptor given")
        }
        fn open(&mut self, digest: &str, _size: u64) -> Result<Box<dyn Read + '_>> {
            if digest == self.manifest_digest {
                return Ok(Box::new(&self.manifest[..]));
            }
            let p = self
                .paths
                .get(digest)
                .ok_or_else(|| anyhow!("no blob {digest}"))?
                .clone();
            self.t.member(&p)
        }
        fn describe(&self) -> String {
            self.t.path.display().to_string()
        }
    }
    let (mdigest, msize) = {
        let mut h = HashingReader::new(&manifest_bytes[..]);
        std::io::copy(&mut h, &mut std::io::sink())?;
        h.digest()
    };
    let top = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: mdigest.clone(),
        size: msize,
        annotations: None,
        platform: None,
    };
    let origin = format!("docker-archive:{}", path.display());
    let mut db = DockerBlobs {
        t: &mut t,
        manifest: manifest_bytes,
        manifest_digest: mdigest,
        paths: std::mem::take(&mut blobs),
    };
    import_oci(store, &mut db, &name, Some(&tag), &origin, opts, Some(top))
}

// ------------------------------------------------------------------------------------------ ACI

fn import_aci(store: &Store, path: &Path, opts: &FetchOptions) -> Result<Fetched> {
    import_aci_as(store, path, None, None, opts)
}

/// An ACI file; `origin` (default `file://PATH`) is where it came from, and a discovered ACI must
/// carry the name it was discovered for (`want_name`).
fn import_aci_as(
    store: &Store,
    path: &Path,
    origin: Option<&str>,
    want_name: Option<&str>,
    opts: &FetchOptions,
) -> Result<Fetched> {
    let f = File::open(path).with_context(|| format!("opening ACI {}", path.display()))?;
    let total = f.metadata()?.len();
    let mut h = HashingReader::new(f);
    std::io::copy(&mut h, &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    let (digest, size) = h.digest();
    if size > crate::limits::MAX_BLOB_BYTES {
        bail!(
            "{} is {size} bytes (limit {})",
            path.display(),
            crate::limits::MAX_BLOB_BYTES
        );
    }
    let id = digest_to_id(&digest);
    if let Some(info) = store.index.get(&id)? {
        let name = store.manifest(&id)?.name;
        crate::trust::remember(store, &id, crate::trust::check_aci(opts, path, &name)?)?;
        return Ok(Fetched { info, new: false });
    }
    if opts.pull_policy == PullPolicy::Never {
        bail!(
            "image {:?} ({id}) not found in the store (pull policy never)",
            path.display().to_string()
        );
    }
    // The manifest first: refuse anything that is not an ACI before storing it.
    let mut manifest = None;
    let r = crate::extract::decompress(File::open(path)?)?;
    let mut ar = tar::Archive::new(r);
    for e in ar
        .entries()
        .with_context(|| format!("{} is not an ACI (not a tar archive)", path.display()))?
    {
        let mut e = e.with_context(|| format!("{} is not an ACI (bad tar)", path.display()))?;
        let p = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if p == "manifest" {
            manifest = Some(read_json_bounded(&mut e, "the ACI manifest")?);
            break;
        }
    }
    let manifest =
        manifest.ok_or_else(|| anyhow!("{} is not an ACI: no manifest", path.display()))?;
    let im: crate::ImageManifest = serde_json::from_slice(&manifest)
        .with_context(|| format!("{}: invalid ACI manifest", path.display()))?;
    if im.ac_kind != "ImageManifest" {
        bail!(
            "{}: manifest acKind is {:?}, not ImageManifest",
            path.display(),
            im.ac_kind
        );
    }
    if let Some(w) = want_name.filter(|w| *w != im.name) {
        bail!(
            "{}: the ACI found for {w:?} is named {:?}",
            origin.unwrap_or_default(),
            im.name
        );
    }
    let verified = crate::trust::check_aci(opts, path, &im.name)?;
    let pb = progress::bar(opts.progress, total, "importing ACI");
    let mut f = File::open(path)?;
    store
        .blobs
        .put(&mut f, Some(&digest), Some(size), |n| progress::inc(&pb, n))
        .context("ACI changed while importing")?;
    progress::finish(pb);
    let tag = rkt_schema::lookup(&im.labels, "version")
        .unwrap_or("latest")
        .to_string();
    let now = chrono::Utc::now();
    let rec = Record {
        id: id.clone(),
        name: im.name.clone(),
        tag,
        size,
        import_time: now,
        last_used: now,
        origin: origin.map(str::to_string).unwrap_or_else(|| {
            format!(
                "file://{}",
                std::fs::canonicalize(path)
                    .unwrap_or(path.to_path_buf())
                    .display()
            )
        }),
        kind: "aci".into(),
        appc_manifest: serde_json::to_string(&im)?,
        manifest_digest: None,
        config_digest: None,
        layers: vec![Layer {
            digest,
            media_type: ACI_MEDIA_TYPE.into(),
            size,
        }],
    };
    store.index.insert(&rec)?;
    crate::trust::remember(store, &id, verified)?;
    Ok(Fetched {
        info: store.index.get(&id)?.expect("just inserted"),
        new: true,
    })
}

// ------------------------------------------------------------------------------------- registry

/// A Registry HTTP API v2 client for one repository. Credentials (docs/store.md) are sent only
/// after the registry asks for them: Basic straight to the registry, or to the token server named
/// by a `Bearer` challenge, whose token then goes to the registry.
struct RegistryClient {
    http: crate::http::Http,
    base: String,
    /// `host[:port]` as named in the reference (`docker.io` for Docker Hub), for credentials.
    host: String,
    repo: String,
    insecure_http: bool,
    creds: Option<crate::auth::Entry>,
    /// The `Authorization` header sent with every request once the registry asked for one.
    header: Option<String>,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A `WWW-Authenticate` challenge: the scheme (lowercase) and its parameters.
fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut m = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(a) = after.strip_prefix('"') {
            let end = a.find('"')?;
            (&a[..end], &a[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        m.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = next.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), m))
}

/// The parameters of a `Bearer` challenge (None for any other scheme).
fn auth_params(h: &str) -> Option<HashMap<String, String>> {
    parse_challenge(h).and_then(|(s, p)| (s == "bearer").then_some(p))
}

impl RegistryClient {
    fn no_credentials(&self) -> anyhow::Error {
        anyhow!(
            "registry {} wants credentials for {} and none are configured: add a dockerAuth \
             file to <local-config>/auth.d, or log in with podman, skopeo or docker \
             ($REGISTRY_AUTH_FILE, ~/.docker/config.json)",
            self.host,
            self.repo
        )
    }

    /// The error for credentials the server turned down (`by`: the registry or token server).
    fn refused(&self, by: &str) -> anyhow::Error {
        match &self.creds {
            Some(c) => anyhow!(
                "{by} refused the credentials of {} (from {}) for {}",
                c.who(),
                c.source.display(),
                self.repo
            ),
            None => self.no_credentials(),
        }
    }

    fn get(&mut self, path: &str, accept: &str) -> Result<ureq::Response> {
        let url = format!("{}/v2/{}/{}", self.base, self.repo, path);
        let mut authenticated = false;
        loop {
            let mut req = self.http.agent(&url)?.get(&url).set("Accept", accept);
            if let Some(h) = &self.header {
                req = req.set("Authorization", h);
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) => {
                    if authenticated {
                        return Err(self.refused(&format!("registry {}", self.host)));
                    }
                    let h = r.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&h)?;
                    authenticated = true;
                }
                Err(ureq::Error::Status(403, r)) => {
                    let who = self
                        .creds
                        .as_ref()
                        .map(|c| format!(" to {}", c.who()))
                        .unwrap_or_default();
                    bail!(
                        "registry {} denied access to {}{who}: HTTP 403 {}",
                        self.host,
                        self.repo,
                        crate::http::body_excerpt(r)
                    );
                }
                Err(ureq::Error::Status(code, r)) => {
                    bail!(
                        "registry GET {url}: HTTP {code} {}",
                        crate::http::body_excerpt(r)
                    );
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(crate::http::transport_error("registry GET", &url, &t))
                }
            }
        }
    }

    /// Answers a 401's challenge: sets the header to send from now on.
    fn authenticate(&mut self, challenge: &str) -> Result<()> {
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(self.no_credentials());
        };
        match scheme.as_str() {
            "basic" => {
                let h = self
                    .creds
                    .as_ref()
                    .and_then(|c| match c.secret {
                        crate::auth::Secret::Basic { .. } => c.header(),
                        _ => None,
                    })
                    .ok_or_else(|| self.no_credentials())?;
                self.header = Some(h);
            }
            "bearer" => {
                let t = self.fetch_token(&params)?;
                self.header = Some(format!("Bearer {t}"));
            }
            o => bail!(
                "registry {} asks for {o:?} authentication; rkt speaks Basic and Bearer",
                self.host
            ),
        }
        Ok(())
    }

    /// The Docker token flow: GET the realm with service and scope (Basic credentials if we have
    /// them, anonymous otherwise), or POST an OAuth2 refresh token for an `identitytoken`.
    fn fetch_token(&mut self, p: &HashMap<String, String>) -> Result<String> {
        use crate::auth::Secret;
        let realm = p
            .get("realm")
            .ok_or_else(|| anyhow!("registry {}: WWW-Authenticate without realm", self.host))?
            .clone();
        if !realm.starts_with("https://") && !realm.starts_with("http://") {
            bail!(
                "registry {}: token realm {realm:?} is not an http(s) URL",
                self.host
            );
        }
        if self.creds.is_some() && realm.starts_with("http://") && !self.insecure_http {
            bail!(
                "registry {}: token server {realm} is plain HTTP; not sending credentials there without --insecure-options=http",
                self.host
            );
        }
        let scope = p
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let service = p.get("service").cloned();
        let agent = self.http.agent(&realm)?;
        let resp = match self.creds.as_ref().map(|c| &c.secret) {
            Some(Secret::IdentityToken(t)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t.as_str()),
                    ("client_id", "rkt"),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = &service {
                    form.push(("service", s));
                }
                agent.post(&realm).send_form(&form)
            }
            other => {
                let mut req = agent.get(&realm).query("scope", &scope);
                if let Some(s) = &service {
                    req = req.query("service", s);
                }
                if let Some(Secret::Basic { user, password }) = other {
                    req = req.set("Authorization", &crate::auth::basic_header(user, password));
                }
                req.call()
            }
        };
        let v: Value = match resp {
            Ok(r) => r.into_json().context("registry token response")?,
            Err(ureq::Error::Status(401 | 403, _)) => {
                return Err(self.refused(&format!("token server {realm}")))
            }
            Err(ureq::Error::Status(code, r)) => bail!(
                "getting a registry token from {realm}: HTTP {code} {}",
                crate::http::body_excerpt(r)
            ),
            Err(ureq::Error::Transport(t)) => {
                return Err(crate::http::transport_error(
                    "getting a registry token from",
                    &realm,
                    &t,
                ))
            }
        };
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("token response from {realm} has no token"))
    }
}

struct RegistryBlobs<'a> {
    c: &'a mut RegistryClient,
    /// Manifests already fetched by reference, keyed by digest.
    cache: HashMap<String, Vec<u8>>,
    what: String,
}

impl Blobs for RegistryBlobs<'_> {
    fn index_json(&mut self) -> Result<Vec<u8>> {
        unreachable!("registry imports start from a descriptor")
    }
    fn open(&mut self, digest: &str, _size: u64) -> Result<Box<dyn Read + '_>> {
        if let Some(b) = self.cache.get(digest) {
            return Ok(Box::new(std::io::Cursor::new(b.clone())));
        }
        // Manifests live under manifests/, everything else under blobs/; try blobs first for
        // layers and configs, manifests for index children (the registry 404s the other).
        let r = match self.c.get(&format!("blobs/{digest}"), "*/*") {
            Ok(r) => r,
            Err(_) => self
                .c
                .get(&format!("manifests/{digest}"), MANIFEST_ACCEPT)?,
        };
        Ok(Box::new(r.into_reader()))
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

fn fetch_registry(store: &Store, r: &DockerRef, opts: &FetchOptions) -> Result<Fetched> {
    let scheme = if opts.insecure_http { "http" } else { "https" };
    let auth = crate::auth::Auth::load(&opts.config_dirs)?;
    let mut c = RegistryClient {
        http: crate::http::Http::new(opts.insecure_tls, &opts.config_dirs),
        base: format!("{scheme}://{}", r.api_host()),
        host: r.registry.clone(),
        repo: r.repo.clone(),
        insecure_http: opts.insecure_http,
        creds: auth.registry(&r.registry, &r.repo).cloned(),
        header: None,
    };
    let reference = r.digest.clone().unwrap_or_else(|| r.tag.clone());
    let resp = c.get(&format!("manifests/{reference}"), MANIFEST_ACCEPT)?;
    let ct = resp.content_type().to_string();
    let mut body = Vec::new();
    resp.into_reader().take(MAX_JSON).read_to_end(&mut body)?;
    let (digest, size) = {
        let mut h = HashingReader::new(&body[..]);
        std::io::copy(&mut h, &mut std::io::sink())?;
        h.digest()
    };
    if let Some(want) = &r.digest {
        if *want != digest {
            bail!("registry returned a manifest hashing to {digest}, not the requested {want}");
        }
    }
    let v: Value = serde_json::from_slice(&body).context("invalid manifest from registry")?;
    if v.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        bail!(
            "docker://{}: Docker schema 1 manifests are not supported",
            r.name()
        );
    }
    let mt = v
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(&ct)
        .to_string();
    let top = Descriptor {
        media_type: mt,
        digest: digest.clone(),
        size,
        annotations: None,
        platform: None,
    };
    // By digest, the origin says so: the signature check then wants the repository only.
    let what = match &r.digest {
        Some(d) => format!("docker://{}@{d}", r.name()),
        None => format!("docker://{}:{}", r.name(), r.tag),
    };
    let mut cache = HashMap::new();
    cache.insert(digest, body);
    let mut b = RegistryBlobs {
        c: &mut c,
        cache,
        what: what.clone(),
    };
    import_oci(
        store,
        &mut b,
        &r.name(),
        Some(&r.tag),
        &what,
        opts,
        Some(top),
    )
}

/// The JSON and reference parsers an image source reaches, for the fuzz target `image_json`
/// (fuzz/): each must return an error, never panic, on any input.
pub(crate) fn fuzz_parsers(kind: u8, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match kind % 7 {
        0 => {
            // index.json, as import_oci and the index-following loop read it.
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                let _ = serde_json::from_value::<Vec<Descriptor>>(
                    v.get("manifests").cloned().unwrap_or(Value::Null),
                );
                let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
                if is_index(mt, &v) {
                    if let Ok(d) = crate::platform::Platform::host().pick(&v, "fuzz") {
                        let _ = crate::blob::digest_hex(&d.digest);
                    }
                }
            }
        }
        1 => {
            if let Ok(m) = serde_json::from_slice::<ImageManifestOci>(data) {
                let _ = check_layers(&m.layers);
                let _ = crate::blob::digest_hex(&m.config.digest);
            }
        }
        2 => {
            if let Ok(m) = convert::to_appc("fuzz", "latest", data) {
                let s = serde_json::to_string(&m).expect("a parsed manifest serialises");
                let _: crate::ImageManifest =
                    serde_json::from_str(&s).expect("a serialised manifest parses");
            }
        }
        3 => {
            if let Ok(m) = serde_json::from_slice::<crate::ImageManifest>(data) {
                let _ = serde_json::to_string(&m);
                let _ = rkt_schema::lookup(&m.labels, "version");
            }
        }
        4 => {
            let _ = serde_json::from_slice::<Vec<DockerArchiveEntry>>(data);
        }
        5 => {
            // Registry challenges and credential files (auth.d, auth.json, docker config.json).
            let _ = parse_challenge(&text);
            let _ = auth_params(&text);
            crate::auth::fuzz_parse(data);
            crate::discovery::fuzz_parse(data);
        }
        _ => {
            if let Ok(s) = Source::parse(&text) {
                let _ = format!("{s:?}");
            }
            let _ = crate::split_name_tag(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_www_authenticate() {
        let p = auth_params(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#).unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        assert!(auth_params("Basic realm=x").is_none());
    }
}
