//! `rkt image list|rm|cat-manifest|extract|render|export|gc` (and the hidden `image fetch`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgAction, Args, Subcommand};
use rkt_store::{short_id, ImageInfo, Store};

use crate::global::Globals;
use crate::pod::table::{full_time, humanize, tabulate};

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub cmd: ImageCmd,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List images in the local store
    List(ListArgs),
    /// Remove one or more images with the given IDs or names from the local store
    Rm(RmArgs),
    /// Inspect and print the image manifest
    CatManifest(CatManifestArgs),
    /// Extract an image's rootfs (and manifest) to a directory
    Extract(OutDirArgs),
    /// Render an image from the tree store to a directory
    Render(OutDirArgs),
    /// Export a stored image as an ACI (or, with --format=oci-archive, an OCI archive)
    Export(ExportArgs),
    /// Garbage collect unused trees and images
    Gc(GcArgs),
    /// Check stored images' signatures against the trusted keys
    Verify(super::trust::VerifyArgs),
    /// Fetch image(s) and store them in the local store
    #[command(hide = true)]
    Fetch(super::fetch::FetchArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Comma-separated fields: id,name,size,importtime,lastused,latest
    #[arg(
        long,
        default_value = "id,name,size,importtime,lastused",
        value_name = "FIELDS"
    )]
    pub fields: String,
    /// Sort by: name,importtime,lastused,size (comma-separated)
    #[arg(long, default_value = "importtime", value_name = "FIELDS")]
    pub sort: String,
    /// asc or desc
    #[arg(long, default_value = "asc")]
    pub order: String,
    /// Do not print the header
    #[arg(long)]
    pub no_legend: bool,
    /// Full image IDs and absolute times
    #[arg(long)]
    pub full: bool,
    /// json or json-pretty
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CatManifestArgs {
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Pretty-print the manifest
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub pretty_print: bool,
}

#[derive(Args, Debug)]
pub struct OutDirArgs {
    #[arg(value_name = "IMAGE")]
    pub image: String,
    #[arg(value_name = "OUTDIR")]
    pub outdir: PathBuf,
    /// Write only the root filesystem into OUTDIR (no manifest)
    #[arg(long)]
    pub rootfs_only: bool,
    /// Replace OUTDIR if it exists
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(value_name = "IMAGE")]
    pub image: String,
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Replace OUT if it exists
    #[arg(long)]
    pub overwrite: bool,
    /// aci (rkt's image format: manifest + rootfs/) or oci-archive (an OCI layout in a tar)
    #[arg(long, default_value = "aci", value_name = "FORMAT")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Remove images not used for this long (Go duration, e.g. 24h, 30m, 0s)
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub grace_period: String,
}

pub fn run(g: &Globals, a: ImageArgs) -> anyhow::Result<i32> {
    match a.cmd {
        ImageCmd::Fetch(f) => super::fetch::run(g, f),
        ImageCmd::List(l) => list(g, l),
        ImageCmd::Verify(v) => super::trust::image_verify(g, v),
        ImageCmd::Rm(r) => rm(g, r),
        ImageCmd::CatManifest(c) => cat_manifest(g, c),
        ImageCmd::Extract(o) => to_dir(g, o, false),
        ImageCmd::Render(o) => to_dir(g, o, true),
        ImageCmd::Export(e) => export(g, e),
        ImageCmd::Gc(gc) => image_gc(g, gc),
    }
}

/// go-humanize's `IBytes`, without the space rkt stripped: 512B, 7.6MiB, 14MiB.
pub fn ibytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{v:.0}{}", units[i])
    }
}

fn list(g: &Globals, a: ListArgs) -> anyhow::Result<i32> {
    let store = Store::open(&g.dir)?;
    let mut imgs = store.list()?;
    let sort_keys: Vec<String> = a.sort.split(',').map(|s| s.trim().to_lowercase()).collect();
    for k in &sort_keys {
        if !["name", "importtime", "lastused", "size", "id"].contains(&k.as_str()) {
            bail!("unknown sort field {k:?} (allowed: name, importtime, lastused, size)");
        }
    }
    let desc = match a.order.as_str() {
        "asc" => false,
        "desc" => true,
        o => bail!("invalid order {o:?} (allowed: asc, desc)"),
    };
    imgs.sort_by(|x, y| {
        let mut o = std::cmp::Ordering::Equal;
        for k in &sort_keys {
            o = o.then(match k.as_str() {
                "name" => x.name.cmp(&y.name),
                "importtime" => x.import_time.cmp(&y.import_time),
                "lastused" => x.last_used.cmp(&y.last_used),
                "size" => x.size.cmp(&y.size),
                _ => x.id.cmp(&y.id),
            });
        }
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    if let Some(f) = &a.format {
        let v: Vec<serde_json::Value> = imgs
            .iter()
            .map(|i| {
                serde_json::json!({
                    "id": i.id,
                    "name": i.name,
                    "import_time": i.import_time.timestamp_nanos_opt().unwrap_or(0),
                    "last_used_time": i.last_used.timestamp_nanos_opt().unwrap_or(0),
                    "size": i.size,
                })
            })
            .collect();
        match f.as_str() {
            "json" => crate::outln!("{}", serde_json::to_string(&v)?),
            "json-pretty" => crate::outln!("{}", serde_json::to_string_pretty(&v)?),
            o => bail!("invalid format {o:?} (allowed: json, json-pretty)"),
        }
        return Ok(0);
    }
    let fields: Vec<String> = a
        .fields
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .collect();
    let mut header = Vec::new();
    for f in &fields {
        header.push(match f.as_str() {
            "id" => "ID",
            "name" => "NAME",
            "size" => "SIZE",
            "importtime" => "IMPORT TIME",
            "lastused" => "LAST USED",
            "latest" => "LATEST",
            o => {
                bail!("unknown field {o:?} (allowed: id, name, size, importtime, lastused, latest)")
            }
        });
    }
    let now = chrono::Utc::now();
    let time = |t: chrono::DateTime<chrono::Utc>| {
        if a.full {
            full_time(t)
        } else {
            humanize(t, now)
        }
    };
    let mut rows = Vec::new();
    if !a.no_legend {
        rows.push(header.iter().map(|s| s.to_string()).collect());
    }
    for i in &imgs {
        let mut row = Vec::new();
        for f in &fields {
            row.push(match f.as_str() {
                "id" if a.full => i.id.clone(),
                "id" => short_id(&i.id),
                "name" => i.name.clone(),
                "size" => ibytes(i.size),
                "importtime" => time(i.import_time),
                "lastused" => time(i.last_used),
                _ => store
                    .resolve(&i.name)
                    .map(|l| l.id == i.id)
                    .unwrap_or(false)
                    .to_string(),
            });
        }
        rows.push(row);
    }
    crate::out!("{}", tabulate(&rows));
    Ok(0)
}

fn rm(g: &Globals, a: RmArgs) -> anyhow::Result<i32> {
    let store = Store::open(&g.dir)?;
    let in_use = store.trees_in_use();
    let mut removed = 0;
    let mut failed = false;
    for img in &a.images {
        let r = (|| -> anyhow::Result<String> {
            let info: ImageInfo = store.resolve(img)?;
            if in_use.contains(&info.id) {
                bail!("image {} is in use by a pod", info.id);
            }
            store.remove(&info.id)?;
            Ok(info.id)
        })();
        match r {
            Ok(id) => {
                crate::outln!("successfully removed aci for image: {id}");
                removed += 1;
            }
            Err(e) => {
                eprintln!("rkt: {}", crate::one_line(&e));
                failed = true;
            }
        }
    }
    if removed > 0 {
        crate::outln!("{removed} image(s) successfully removed");
    }
    Ok(if failed { crate::EXIT_RKT_ERROR } else { 0 })
}

fn cat_manifest(g: &Globals, a: CatManifestArgs) -> anyhow::Result<i32> {
    let store = Store::open(&g.dir)?;
    let info = store.resolve(&a.image)?;
    let m = store.manifest(&info.id)?;
    if a.pretty_print {
        crate::outln!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        crate::outln!("{}", serde_json::to_string(&m)?);
    }
    Ok(0)
}

/// Prepares OUTDIR: refuses an existing one unless --overwrite (then removes it).
fn prepare_out(p: &Path, overwrite: bool) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(p).is_ok() {
        if !overwrite {
            bail!(
                "output directory {} already exists (use --overwrite)",
                p.display()
            );
        }
        std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn to_dir(g: &Globals, a: OutDirArgs, render: bool) -> anyhow::Result<i32> {
    let store = Store::open(&g.dir)?;
    let info = store.resolve(&a.image)?;
    prepare_out(&a.outdir, a.overwrite)?;
    let rootfs = if a.rootfs_only {
        a.outdir.clone()
    } else {
        std::fs::create_dir_all(&a.outdir)
            .with_context(|| format!("creating {}", a.outdir.display()))?;
        a.outdir.join("rootfs")
    };
    let r = (|| {
        if render {
            store.render_to(&info.id, &rootfs)?;
        } else {
            store.extract_to(&info.id, &rootfs)?;
        }
        if !a.rootfs_only {
            let m = store.manifest(&info.id)?;
            std::fs::write(a.outdir.join("manifest"), serde_json::to_vec_pretty(&m)?)?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&a.outdir);
        return Err(e);
    }
    Ok(0)
}

fn export(g: &Globals, a: ExportArgs) -> anyhow::Result<i32> {
    let format: rkt_store::ExportFormat = a.format.parse()?;
    let store = Store::open(&g.dir)?;
    let info = store.resolve(&a.image)?;
    if std::fs::symlink_metadata(&a.out).is_ok() && !a.overwrite {
        bail!("{} already exists (use --overwrite)", a.out.display());
    }
    store.export(&info.id, &a.out, format)?;
    Ok(0)
}

fn image_gc(g: &Globals, a: GcArgs) -> anyhow::Result<i32> {
    let grace = super::pods::parse_go_duration(&a.grace_period)
        .with_context(|| format!("invalid duration {:?} for --grace-period", a.grace_period))?;
    let store = Store::open(&g.dir)?;
    // Exclusive: no pod is being prepared with a tree gc might remove.
    let _prepare = crate::pod::lifecycle::prepare_lock(&g.dir, rkt_flock::Mode::Exclusive)?;
    let rep = store.gc(grace)?;
    for t in &rep.trees_removed {
        crate::outln!("removed treestore {t:?}");
    }
    for i in &rep.images_removed {
        crate::outln!("successfully removed aci for image: {i}");
    }
    crate::outln!("{} image(s) successfully removed", rep.images_removed.len());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibytes_like_go_humanize() {
        assert_eq!(ibytes(512), "512B");
        assert_eq!(ibytes(7_969_177), "7.6MiB");
        assert_eq!(ibytes(14 * 1024 * 1024), "14MiB");
        assert_eq!(ibytes(1536), "1.5KiB");
    }

    #[test]
    fn table_and_times() {
        let rows = vec![
            vec!["ID".to_string(), "NAME".into(), "X".into()],
            vec!["sha256-0123456789ab".to_string(), "n".into(), "y".into()],
        ];
        assert_eq!(
            tabulate(&rows),
            "ID\t\t\tNAME\tX\nsha256-0123456789ab\tn\ty\n"
        );
        let now = chrono::Utc::now();
        assert_eq!(humanize(now, now), "now");
        assert_eq!(
            humanize(now - chrono::Duration::seconds(125), now),
            "2 minutes ago"
        );
    }
}
