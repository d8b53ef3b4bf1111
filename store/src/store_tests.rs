//! Store-level tests on hand-built OCI layouts: platform selection in nested indexes, compressed
//! layers, hostile layers refused by `fetch` with nothing left behind, device nodes and xattrs.

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{FetchOptions, PullPolicy, Store};

fn put(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

struct Entry<'a> {
    path: &'a str,
    kind: tar::EntryType,
    data: &'a str,
}

fn e<'a>(path: &'a str, kind: tar::EntryType, data: &'a str) -> Entry<'a> {
    Entry { path, kind, data }
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(en.kind);
        h.set_mode(if en.kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_500_000_000);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..en.path.len()].copy_from_slice(en.path.as_bytes());
        match en.kind {
            tar::EntryType::Regular => {
                h.set_size(en.data.len() as u64);
                h.set_cksum();
                b.append(&h, en.data.as_bytes()).unwrap();
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.as_gnu_mut().unwrap().linkname[..en.data.len()]
                    .copy_from_slice(en.data.as_bytes());
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            _ => {
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(d).unwrap();
    g.finish().unwrap()
}

/// Writes an image manifest (config + layers) into `layout` and returns its descriptor.
fn image(layout: &Path, layers: &[(Vec<u8>, &str)], cmd: &str) -> serde_json::Value {
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": [cmd]},
                        "rootfs": {"type": "layers", "diff_ids": []}});
    let (cd, cs) = put(layout, &serde_json::to_vec(&config).unwrap());
    let ls: Vec<_> = layers
        .iter()
        .map(|(data, mt)| {
            let (d, s) = put(layout, data);
            json!({"mediaType": mt, "digest": d, "size": s})
        })
        .collect();
    let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                   "layers": ls});
    let (md, ms) = put(layout, &serde_json::to_vec(&m).unwrap());
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms})
}

fn write_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let idx = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

fn opts() -> FetchOptions {
    FetchOptions {
        pull_policy: PullPolicy::Update,
        // The hand-made test images are unsigned (verification: tests/tests/trust.rs).
        trust: crate::trust::Verify::skip(),
        ..Default::default()
    }
}

fn count(p: &Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn multi_arch_index_picks_linux_amd64_and_zstd_layers_work() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("img");
    use tar::EntryType as T;
    let arm = image(
        &layout,
        &[(
            gzip(&layer_tar(&[e("arch", T::Regular, "arm64")])),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )],
        "arm",
    );
    let amd_layer = zstd::encode_all(&layer_tar(&[e("arch", T::Regular, "amd64")])[..], 3).unwrap();
    let amd = image(
        &layout,
        &[(amd_layer, "application/vnd.oci.image.layer.v1.tar+zstd")],
        "amd",
    );
    let mut arm = arm;
    arm["platform"] = json!({"os": "linux", "architecture": "arm64"});
    let mut amd = amd;
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let nested = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [arm, amd.clone()]});
    let (nd, ns) = put(&layout, &serde_json::to_vec(&nested).unwrap());
    write_index(
        &layout,
        vec![
            json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": ns,
                    "annotations": {"org.opencontainers.image.ref.name": "v2"}}),
        ],
    );
    let store = Store::open(&t.path().join("data")).unwrap();
    let info = store
        .fetch(&format!("oci:{}:v2", layout.display()), &opts())
        .unwrap();
    assert_eq!(
        info.id,
        crate::digest_to_id(amd["digest"].as_str().unwrap())
    );
    assert_eq!(info.name, "img:v2");
    let tree = store.rendered(&info.id).unwrap();
    assert_eq!(
        std::fs::read_to_string(tree.rootfs.join("arch")).unwrap(),
        "amd64"
    );
    assert_eq!(store.manifest(&info.id).unwrap().app.unwrap().exec, ["amd"]);
    assert_eq!(crate::tree_digest(&tree.rootfs).unwrap(), tree.tree_digest);
    // Unknown tag: clear error.
    let err = store
        .fetch(&format!("oci:{}:v3", layout.display()), &opts())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("tag \"v3\" not found"),
        "{err:#}"
    );
}

#[test]
fn hostile_layer_is_refused_by_fetch_and_leaves_nothing() {
    use tar::EntryType as T;
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let out = outside.to_str().unwrap().to_string();
    let out: &'static str = Box::leak(out.into_boxed_str());
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "absolute",
            vec![layer_tar(&[e(format!("{out}/x").leak(), T::Regular, "x")])],
            "absolute path",
        ),
        (
            "dotdot",
            vec![layer_tar(&[e("../../outside/x", T::Regular, "x")])],
            "\"..\"",
        ),
        (
            "symlink-then-write",
            vec![
                layer_tar(&[e("a", T::Symlink, out)]),
                layer_tar(&[e("a/x", T::Regular, "x")]),
            ],
            "is a symlink",
        ),
        (
            "escaping-symlink",
            vec![layer_tar(&[e("d/l", T::Symlink, "../../../outside")])],
            "escapes the tree",
        ),
        (
            "escaping-hardlink",
            vec![layer_tar(&[e("h", T::Link, "../outside/x")])],
            "escapes the tree",
        ),
    ];
    for (name, layers, msg) in cases {
        let layout = t.path().join(name);
        let ls: Vec<_> = layers
            .into_iter()
            .map(|l| (l, "application/vnd.oci.image.layer.v1.tar"))
            .collect();
        let d = image(&layout, &ls, "x");
        write_index(&layout, vec![d]);
        let data = t.path().join(format!("data-{name}"));
        let store = Store::open(&data).unwrap();
        let err = store
            .fetch(&format!("oci:{}", layout.display()), &opts())
            .unwrap_err();
        assert!(format!("{err:#}").contains(msg), "{name}: {err:#}");
        assert_eq!(count(&outside), 0, "{name}: wrote outside the tree");
        assert!(store.list().unwrap().is_empty(), "{name}: image kept");
        assert_eq!(
            count(&data.join("cas/blobs/sha256")),
            0,
            "{name}: blobs kept"
        );
        assert_eq!(count(&data.join("cas/tree")), 0, "{name}: tree kept");
        assert_eq!(count(&data.join("cas/tmp")), 0, "{name}: temp files kept");
    }
}

#[test]
fn owners_setuid_and_xattrs_kept_device_nodes_skipped_when_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (device nodes, chown)");
    }
    use std::os::unix::fs::MetadataExt;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_size(2);
    b.append_pax_extensions([("SCHILY.xattr.user.test", &b"v1"[..])])
        .unwrap();
    b.append_data(&mut h, "bin/suid", &b"hi"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("dev");
    let d = image(
        &layout,
        &[(layer, "application/vnd.oci.image.layer.v1.tar")],
        "x",
    );
    write_index(&layout, vec![d]);
    let store = Store::open(&t.path().join("data")).unwrap();
    let info = store
        .fetch(&format!("oci:{}", layout.display()), &opts())
        .unwrap();
    let root = store.rendered(&info.id).unwrap().rootfs;
    // Device nodes from images are never created (docs/store.md); their directory is.
    assert!(std::fs::symlink_metadata(root.join("dev/null")).is_err());
    assert!(root.join("dev").is_dir());
    // The store is private to its owner: 0700 on the data dir, cas/ and the trees.
    for d in ["data", "data/cas", "data/cas/tree", "data/cas/tmp"] {
        let m = std::fs::metadata(t.path().join(d)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700, "{d}");
    }
    let m = std::fs::metadata(root.join("bin/suid")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 100, 0o4755));
    let c = std::ffi::CString::new(root.join("bin/suid").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.test".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // tmpfs without user xattrs would refuse the set; everywhere else the value must be there.
    if n >= 0 {
        assert_eq!(&buf[..n as usize], b"v1");
    }
}

#[test]
fn ambiguous_short_id_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    for tail in ['1', '2'] {
        let now = chrono::Utc::now();
        store
            .index
            .insert(&crate::index::Record {
                id: format!("sha256-{}{}", "a".repeat(63), tail),
                name: format!("img{tail}"),
                tag: "latest".into(),
                size: 0,
                import_time: now,
                last_used: now,
                origin: "test".into(),
                kind: "oci".into(),
                appc_manifest: "{}".into(),
                manifest_digest: None,
                config_digest: None,
                layers: vec![],
            })
            .unwrap();
    }
    let err = store
        .resolve(&format!("sha256-{}", "a".repeat(12)))
        .unwrap_err();
    assert!(
        err.to_string().contains("ambiguous (2 images match)"),
        "{err}"
    );
    let one = store
        .resolve(&format!("sha256:{}2", "a".repeat(63)))
        .unwrap();
    assert_eq!(one.name, "img2:latest");
    assert_eq!(store.resolve("img1").unwrap().name, "img1:latest");
}
