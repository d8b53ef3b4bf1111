//! `rkt fetch` from every local source format, the trees it renders, "no work" re-fetches, and
//! refusal of bad input with the store left consistent.

use rkt_tests::{images, run_command, RktEnv, RktOutput};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fetch_id(env: &RktEnv, args: &[&str]) -> String {
    let out = env.rkt(args);
    out.assert_ok();
    let id = out.stdout.trim().to_string();
    assert!(
        id.starts_with("sha256-")
            && id.len() == 71
            && id[7..].bytes().all(|b| b.is_ascii_hexdigit()),
        "fetch must print one full image ID\n{out}"
    );
    id
}

fn tree(env: &RktEnv, id: &str) -> PathBuf {
    env.dir.join("cas/tree").join(id).join("rootfs")
}

/// `find`-style listing (path type mode uid gid size link) of a tree, for comparisons.
fn listing(root: &Path) -> String {
    let mut c = Command::new("find");
    c.arg(".")
        .arg("-printf")
        .arg("%p %y %m %U %G %s %l\n")
        .current_dir(root);
    let out = run_command(c, 120);
    out.assert_ok();
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    lines.join("\n")
}

fn umoci_unpack(layout_ref: &str, dest: &Path) -> PathBuf {
    let mut c = Command::new("umoci");
    c.args(["unpack", "--image", layout_ref]).arg(dest);
    run_command(c, 300).assert_ok();
    dest.join("rootfs")
}

fn store_file_count(env: &RktEnv, sub: &str) -> usize {
    std::fs::read_dir(env.dir.join("cas").join(sub))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn oci_layout_renders_like_umoci_and_refetch_does_no_work() {
    let env = RktEnv::new();
    let im = images();
    let id = fetch_id(&env, &["fetch", &im.multilayer_oci_ref()]);
    let rootfs = tree(&env, &id);
    assert!(rootfs.join("bin/busybox").is_file());
    // The whiteout/opaque/hardlink/symlink layers give exactly what umoci produces.
    let want = umoci_unpack(
        &format!("{}:latest", im.multilayer_oci.display()),
        &env.scratch.join("umoci"),
    );
    assert_eq!(
        listing(&rootfs),
        listing(&want),
        "tree differs from umoci unpack"
    );
    let digest =
        std::fs::read_to_string(env.dir.join("cas/tree").join(&id).join("tree_digest")).unwrap();
    assert!(digest.trim().starts_with("sha256-") && digest.trim().len() == 71);

    // Re-fetch from a copy of the layout whose layer blobs are gone: it succeeds without reading
    // them, and neither the tree nor the blobs are rewritten.
    let copy = env.scratch.join("layout-copy");
    run_command(
        {
            let mut c = Command::new("cp");
            c.arg("-a").arg(&im.multilayer_oci).arg(&copy);
            c
        },
        60,
    )
    .assert_ok();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("blobs/sha256").join(&id[7..])).unwrap())
            .unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        std::fs::remove_file(copy.join("blobs/sha256").join(&d[7..])).unwrap();
    }
    let tree_ino = std::fs::metadata(&rootfs).unwrap().ino();
    let blob_mtimes: Vec<_> = std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().mtime_nsec())
        .collect();
    let again = fetch_id(&env, &["fetch", &format!("oci:{}:latest", copy.display())]);
    assert_eq!(again, id);
    assert_eq!(
        std::fs::metadata(&rootfs).unwrap().ino(),
        tree_ino,
        "tree was re-rendered"
    );
    let after: Vec<_> = std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().mtime_nsec())
        .collect();
    assert_eq!(blob_mtimes, after, "blobs were rewritten");
}

#[test]
fn oci_archive_docker_archive_and_aci() {
    let env = RktEnv::new();
    let im = images();
    let from_layout = fetch_id(&env, &["fetch", &im.busybox_oci_ref()]);
    // The archive holds the same manifest, so the same ID and no second image.
    let from_archive = fetch_id(&env, &["fetch", &im.busybox_oci_archive_ref()]);
    assert_eq!(from_layout, from_archive);

    let docker = fetch_id(&env, &["fetch", &im.busybox_docker_archive_ref()]);
    let aci = fetch_id(&env, &["fetch", im.busybox_aci.to_str().unwrap()]);
    let aci_tar = fetch_id(&env, &["fetch", im.busybox_aci_tar.to_str().unwrap()]);
    assert_ne!(aci, aci_tar, "the ID of an ACI is the digest of the file");

    // Same busybox everywhere: identical trees (same tree digest) for OCI and docker-archive,
    // and for the compressed and uncompressed ACI.
    let td = |id: &str| {
        std::fs::read_to_string(env.dir.join("cas/tree").join(id).join("tree_digest")).unwrap()
    };
    assert_eq!(td(&from_layout), td(&docker));
    assert_eq!(td(&aci), td(&aci_tar));
    for id in [&from_layout, &docker, &aci] {
        let busybox = tree(&env, id).join("bin/busybox");
        assert_eq!(
            std::fs::read(&busybox).unwrap(),
            std::fs::read(im.rootfs.join("bin/busybox")).unwrap()
        );
    }
    let list = env.rkt(&["image", "list", "--no-legend", "--full"]);
    list.assert_ok();
    assert_eq!(list.stdout.lines().count(), 4, "{list}");
    for id in [&from_layout, &docker, &aci, &aci_tar] {
        list.assert_stdout_contains(id);
    }
    let m = env.rkt(&["image", "cat-manifest", &aci]);
    m.assert_ok()
        .assert_stdout_contains("\"name\": \"example.com/busybox\"");
}

#[test]
fn oci_config_becomes_the_appc_manifest() {
    let env = RktEnv::new();
    let layout = images().dir.join("configured-oci");
    let id = fetch_id(&env, &["fetch", &format!("oci:{}", layout.display())]);
    let out = env.rkt(&["image", "cat-manifest", "--pretty-print=false", &id]);
    out.assert_ok();
    assert_eq!(
        out.stdout.trim().lines().count(),
        1,
        "compact JSON is one line\n{out}"
    );
    let m: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(m["acKind"], "ImageManifest");
    assert_eq!(m["name"], "configured-oci");
    let labels = m["labels"].as_array().unwrap();
    let label = |n: &str| {
        labels
            .iter()
            .find(|l| l["name"] == n)
            .map(|l| l["value"].clone())
    };
    assert_eq!(label("version").unwrap(), "latest");
    assert_eq!(label("os").unwrap(), "linux");
    assert_eq!(label("arch").unwrap(), "amd64");
    let app = &m["app"];
    assert_eq!(app["exec"][0], "/inspect");
    assert_eq!(app["user"], "user");
    assert_eq!(app["group"], "0");
    assert_eq!(app["workingDirectory"], "/home/user");
    assert!(app["environment"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "GREETING" && e["value"] == "hello"));
    assert!(app["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["port"] == 8080 && p["protocol"] == "tcp"));
}

fn assert_one_line_error(out: &RktOutput, needle: &str) {
    out.assert_code(254);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one error line expected\n{out}"
    );
    out.assert_stderr_contains(needle);
}

fn assert_store_clean(env: &RktEnv) {
    assert_eq!(
        store_file_count(env, "blobs/sha256"),
        0,
        "blobs left behind"
    );
    assert_eq!(store_file_count(env, "tmp"), 0, "temp files left behind");
    assert_eq!(store_file_count(env, "tree"), 0, "trees left behind");
    let list = env.rkt(&["image", "list", "--no-legend"]);
    list.assert_ok();
    assert_eq!(list.stdout.trim(), "", "{list}");
}

#[test]
fn bad_inputs_are_refused_and_leave_nothing() {
    let env = RktEnv::new();
    assert_one_line_error(
        &env.rkt(&["fetch", "oci:/nonexistent/layout"]),
        "does not exist",
    );
    assert_one_line_error(&env.rkt(&["fetch", "/nonexistent/x.aci"]), "No such file");
    assert_one_line_error(
        &env.rkt(&["fetch", "oci-archive:/etc/hostname"]),
        "not a valid tar archive",
    );
    assert_one_line_error(
        &env.rkt(&["fetch", "foo"]),
        "image \"foo\" not found in the store",
    );
    assert_one_line_error(
        &env.rkt(&["fetch", "--pull-policy=bogus", "foo"]),
        "invalid pull policy",
    );

    // A layout whose layer blob was corrupted: refused, and no blob, tree or temp file remains.
    let bad = env.scratch.join("bad");
    let mut c = Command::new("cp");
    c.arg("-a").arg(&images().multilayer_oci).arg(&bad);
    run_command(c, 60).assert_ok();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bad.join("blobs/sha256").join(&mdigest[7..])).unwrap(),
    )
    .unwrap();
    let last = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let p = bad.join("blobs/sha256").join(&last[7..]);
    let mut data = std::fs::read(&p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&p, &data).unwrap();
    let out = env.rkt(&["fetch", &format!("oci:{}:latest", bad.display())]);
    assert_one_line_error(&out, "digest mismatch");
    assert_store_clean(&env);

    // Truncated blob: a size mismatch.
    std::fs::write(&p, &data[..mid]).unwrap();
    let out = env.rkt(&["fetch", &format!("oci:{}:latest", bad.display())]);
    assert_one_line_error(&out, "mismatch");
    assert_store_clean(&env);

    // The store still works afterwards.
    fetch_id(&env, &["fetch", &images().busybox_oci_ref()]);
}

#[test]
fn pull_policy_never_only_uses_the_store() {
    let env = RktEnv::new();
    let im = images();
    let out = env.rkt(&["fetch", "--pull-policy=never", &im.busybox_oci_ref()]);
    assert_one_line_error(&out, "not found in the store");
    assert_eq!(store_file_count(&env, "blobs/sha256"), 0);
    let id = fetch_id(&env, &["fetch", &im.busybox_oci_ref()]);
    assert_eq!(
        fetch_id(
            &env,
            &["fetch", "--pull-policy=never", &im.busybox_oci_ref()]
        ),
        id
    );
    // By name and by short ID from the store.
    assert_eq!(fetch_id(&env, &["fetch", "busybox-oci"]), id);
    assert_eq!(fetch_id(&env, &["fetch", &id[..19]]), id);
}
