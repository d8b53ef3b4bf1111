//! `rkt image export`: an ACI (rkt's format, the default) or an oci-archive (OCI layout in a
//! tar). An ACI-kind image is written back byte for byte (so it keeps its ID and any signature
//! made over it); an OCI image becomes a tar of `manifest` (its appc manifest) and `rootfs/` (its
//! rendered tree). For oci-archive, Docker schema 2 manifests are rewritten with OCI media types
//! and ACI images get a layer made from their tree.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::blob::HashingReader;
use crate::fetch::{
    Descriptor, ImageManifestOci, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use crate::index::Record;
use crate::{Result, Store};

fn oci_media_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => OCI_LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" => OCI_LAYER.into(),
        "application/vnd.docker.container.image.v1+json" => OCI_CONFIG.into(),
        o => o.into(),
    }
}

fn digest_of(data: &[u8]) -> String {
    let mut h = HashingReader::new(data);
    std::io::copy(&mut h, &mut std::io::sink()).expect("hashing memory");
    h.digest().0
}

fn append(
    b: &mut tar::Builder<impl Write>,
    name: &str,
    data: &mut dyn std::io::Read,
    size: u64,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)?;
    Ok(())
}

/// `rkt image export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Aci,
    OciArchive,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "aci" => Ok(Format::Aci),
            "oci-archive" => Ok(Format::OciArchive),
            o => anyhow::bail!("invalid export format {o:?} (allowed: aci, oci-archive)"),
        }
    }
}

/// A temp file beside `out` (renamed over it once complete, so a failed export leaves nothing).
fn temp_beside(out: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".rkt-export-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))
}

fn persist(tmp: tempfile::NamedTempFile, out: &Path) -> Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

pub fn export_aci(store: &Store, rec: &Record, out: &Path) -> Result<()> {
    let mut tmp = temp_beside(out)?;
    if rec.kind == "aci" {
        let digest = &rec
            .layers
            .first()
            .ok_or_else(|| anyhow!("image {} has no ACI blob", rec.id))?
            .digest;
        let mut f = store.blobs.open(digest)?;
        std::io::copy(&mut f, tmp.as_file_mut()).context("copying the ACI")?;
        return persist(tmp, out);
    }
    let tree = crate::render::render(store, rec)?;
    {
        let mut b = tar::Builder::new(tmp.as_file_mut());
        b.follow_symlinks(false);
        let m = rec.appc_manifest.as_bytes();
        append(&mut b, "manifest", &mut &m[..], m.len() as u64)?;
        b.append_dir_all("rootfs", &tree.rootfs)
            .context("archiving the image tree")?;
        b.finish()?;
    }
    persist(tmp, out)
}

pub fn export_oci_archive(store: &Store, rec: &Record, out: &Path) -> Result<()> {
    let tmp = temp_beside(out)?;
    let mut b = tar::Builder::new(tmp.as_file());
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(&mut b, "oci-layout", &mut &layout[..], layout.len() as u64)?;

    let (manifest, config, layer_files): Parts = if rec.kind == "aci" {
        aci_parts(store, rec)?
    } else {
        let mbytes = store.blobs.read(
            rec.manifest_digest
                .as_deref()
                .ok_or_else(|| anyhow!("image has no manifest"))?,
        )?;
        let mut m: ImageManifestOci = serde_json::from_slice(&mbytes).context("stored manifest")?;
        let config = store.blobs.read(&m.config.digest)?;
        let mut layers = Vec::new();
        let mut docker = m.media_type.contains("docker") || m.config.media_type.contains("docker");
        for l in &mut m.layers {
            docker |= l.media_type.contains("docker");
            l.media_type = oci_media_type(&l.media_type);
            layers.push((l.clone(), LayerData::Blob(l.digest.clone())));
        }
        let mbytes = if docker {
            m.media_type = OCI_MANIFEST.into();
            m.config.media_type = OCI_CONFIG.into();
            serde_json::to_vec(&m)?
        } else {
            mbytes
        };
        (mbytes, config, layers)
    };
    let mdigest = digest_of(&manifest);
    let cdigest = digest_of(&config);
    for (d, data) in &layer_files {
        let name = format!("blobs/sha256/{}", &d.digest[7..]);
        match data {
            LayerData::Blob(digest) => {
                let mut f = store.blobs.open(digest)?;
                let size = f.metadata()?.len();
                append(&mut b, &name, &mut f, size)?;
            }
            LayerData::File(f) => {
                let mut f = f.reopen()?;
                let size = f.metadata()?.len();
                append(&mut b, &name, &mut f, size)?;
            }
        }
    }
    append(
        &mut b,
        &format!("blobs/sha256/{}", &cdigest[7..]),
        &mut &config[..],
        config.len() as u64,
    )?;
    append(
        &mut b,
        &format!("blobs/sha256/{}", &mdigest[7..]),
        &mut &manifest[..],
        manifest.len() as u64,
    )?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": mdigest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": rec.tag},
        }]
    });
    let index = serde_json::to_vec(&index)?;
    append(&mut b, "index.json", &mut &index[..], index.len() as u64)?;
    b.finish()?;
    drop(b);
    persist(tmp, out)
}

/// (manifest, config, layers) of an image being exported.
type Parts = (Vec<u8>, Vec<u8>, Vec<(Descriptor, LayerData)>);

enum LayerData {
    Blob(String),
    File(tempfile::NamedTempFile),
}

/// An ACI as OCI: one uncompressed layer made from the rendered tree, a config from its manifest.
fn aci_parts(store: &Store, rec: &Record) -> Result<Parts> {
    let tree = crate::render::render(store, rec)?;
    let mut layer = tempfile::Builder::new()
        .prefix("export-layer-")
        .tempfile_in(store.root.join("tmp"))?;
    {
        let mut b = tar::Builder::new(layer.as_file_mut());
        b.follow_symlinks(false);
        b.append_dir_all(".", &tree.rootfs)
            .context("archiving the image tree")?;
        b.finish()?;
    }
    let f = layer.as_file_mut();
    f.seek(SeekFrom::Start(0))?;
    let mut h = HashingReader::new(&*f);
    std::io::copy(&mut h, &mut std::io::sink())?;
    let (ldigest, lsize) = h.digest();
    let im: crate::ImageManifest = serde_json::from_str(&rec.appc_manifest)?;
    let app = im.app.clone().unwrap_or_default();
    let env: Vec<String> = app
        .environment
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    let labels: serde_json::Map<String, Value> = im
        .labels
        .iter()
        .map(|l| (l.name.clone(), Value::String(l.value.clone())))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": app.exec,
            "Env": env,
            "User": format!("{}:{}", app.user, app.group),
            "WorkingDir": app.working_directory,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [ldigest]},
    }))?;
    let ld = Descriptor {
        media_type: OCI_LAYER.into(),
        digest: ldigest,
        size: lsize,
        annotations: None,
        platform: None,
    };
    let m = ImageManifestOci {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: digest_of(&config),
            size: config.len() as u64,
            annotations: None,
            platform: None,
        },
        layers: vec![ld.clone()],
    };
    Ok((
        serde_json::to_vec(&m)?,
        config,
        vec![(ld, LayerData::File(layer))],
    ))
}
