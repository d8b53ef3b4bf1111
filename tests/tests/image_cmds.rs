//! `rkt image list|rm|cat-manifest|extract|render|export|gc` against a real store.

use rkt_tests::{images, run_command, RktEnv};
use std::path::Path;
use std::process::Command;

fn fetch(env: &RktEnv, image: &str) -> String {
    let out = env.rkt(&["fetch", image]);
    out.assert_ok();
    out.stdout.trim().to_string()
}

#[test]
fn list_columns_formats_and_sorting() {
    let env = RktEnv::new();
    let im = images();
    let a = fetch(&env, &im.busybox_oci_ref());
    let b = fetch(&env, im.busybox_aci.to_str().unwrap());

    let out = env.rkt(&["image", "list"]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split('\t').filter(|s| !s.is_empty()).collect();
    assert_eq!(
        header,
        ["ID", "NAME", "SIZE", "IMPORT TIME", "LAST USED"],
        "{out}"
    );
    let row: Vec<&str> = lines[1].split('\t').filter(|s| !s.is_empty()).collect();
    assert_eq!(row[0], &a[..19], "short ID is sha256- and 12 hex\n{out}");
    assert_eq!(row[1], "busybox-oci:latest");
    assert!(row[2].ends_with("MiB"), "human size like 1.7MiB\n{out}");
    assert!(row[3].ends_with("ago") || row[3] == "now", "{out}");
    // Columns line up: every field starts at the same offset in every line (tab stops of 8).
    let col = |l: &str, n: usize| {
        let mut pos = 0;
        let mut fields = 0;
        let bytes = l.as_bytes();
        let mut i = 0;
        while i < bytes.len() && fields < n {
            if bytes[i] == b'\t' {
                pos = (pos / 8 + 1) * 8;
                if i + 1 < bytes.len() && bytes[i + 1] != b'\t' {
                    fields += 1;
                }
            } else {
                pos += 1;
            }
            i += 1;
        }
        pos
    };
    for n in 1..5 {
        assert_eq!(
            col(lines[0], n),
            col(lines[1], n),
            "column {n} misaligned\n{out}"
        );
        assert_eq!(
            col(lines[0], n),
            col(lines[2], n),
            "column {n} misaligned\n{out}"
        );
    }

    let out = env.rkt(&[
        "image",
        "list",
        "--no-legend",
        "--full",
        "--fields=id,name",
        "--sort=importtime",
        "--order=desc",
    ]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&b) && lines[1].starts_with(&a),
        "desc order by import time\n{out}"
    );
    assert!(lines[0].ends_with("example.com/busybox:latest"), "{out}");

    let out = env.rkt(&["image", "list", "--format=json"]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert!(arr
        .iter()
        .any(|i| i["id"] == a.as_str() && i["size"].as_u64().unwrap() > 1_000_000));
    let pretty = env.rkt(&["image", "list", "--format=json-pretty"]);
    pretty.assert_ok();
    assert!(pretty.stdout.lines().count() > 2);

    env.rkt(&["image", "list", "--format=yaml"])
        .assert_code(254)
        .assert_stderr_contains("invalid format");
    env.rkt(&["image", "list", "--fields=id,bogus"])
        .assert_code(254)
        .assert_stderr_contains("unknown field");
}

#[test]
fn rm_by_id_and_name_and_unknown() {
    let env = RktEnv::new();
    let im = images();
    let a = fetch(&env, &im.busybox_oci_ref());
    let b = fetch(&env, &im.busybox_docker_archive_ref());
    let out = env.rkt(&["image", "rm", &a[..19], "docker.io/library/busybox:latest"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("successfully removed aci for image: {a}"));
    out.assert_stdout_contains(&format!("successfully removed aci for image: {b}"));
    out.assert_stdout_contains("2 image(s) successfully removed");
    // Everything of both images is gone: tree, blobs and index entries.
    assert_eq!(
        std::fs::read_dir(env.dir.join("cas/tree")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let out = env.rkt(&["image", "rm", "foo"]);
    out.assert_code(254);
    assert_eq!(
        out.stderr.trim(),
        "rkt: image \"foo\" not found in the store"
    );
    env.rkt(&["image", "rm", &a])
        .assert_code(254)
        .assert_stderr_contains("not found");
}

#[test]
fn ids_resolve_by_prefix_and_digest_form() {
    let env = RktEnv::new();
    let a = fetch(&env, &images().busybox_oci_ref());
    env.rkt(&["image", "cat-manifest", &a[..19]]).assert_ok();
    env.rkt(&[
        "image",
        "cat-manifest",
        &a.replacen("sha256-", "sha256:", 1),
    ])
    .assert_ok();
    env.rkt(&["image", "cat-manifest", &a[..12]])
        .assert_code(254)
        .assert_stderr_contains("at least 12 hex");
    env.rkt(&["image", "cat-manifest", "sha256-000000000000"])
        .assert_code(254)
        .assert_stderr_contains("not found");
}

fn listing(root: &Path) -> String {
    let mut c = Command::new("find");
    c.arg(".")
        .arg("-printf")
        .arg("%p %y %m %U %G %s %l\n")
        .current_dir(root);
    let out = run_command(c, 60);
    out.assert_ok();
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn extract_render_and_export() {
    let env = RktEnv::new();
    let im = images();
    let id = fetch(&env, &im.multilayer_oci_ref());
    let tree = env.dir.join("cas/tree").join(&id).join("rootfs");

    let ex = env.scratch.join("extracted");
    env.rkt(&["image", "extract", &id, ex.to_str().unwrap()])
        .assert_ok();
    assert!(ex.join("manifest").is_file() && ex.join("rootfs/bin/busybox").is_file());
    assert_eq!(listing(&ex.join("rootfs")), listing(&tree));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ex.join("manifest")).unwrap()).unwrap();
    assert_eq!(m["acKind"], "ImageManifest");

    let rd = env.scratch.join("rendered");
    env.rkt(&[
        "image",
        "render",
        "--rootfs-only",
        &id,
        rd.to_str().unwrap(),
    ])
    .assert_ok();
    assert!(!rd.join("manifest").exists());
    assert_eq!(listing(&rd), listing(&tree));

    // OUTDIR exists: refused unless --overwrite.
    env.rkt(&["image", "extract", &id, ex.to_str().unwrap()])
        .assert_code(254)
        .assert_stderr_contains("--overwrite");
    std::fs::write(ex.join("junk"), "x").unwrap();
    env.rkt(&["image", "extract", "--overwrite", &id, ex.to_str().unwrap()])
        .assert_ok();
    assert!(!ex.join("junk").exists());

    // Export: skopeo reads it back with the same layers and config.
    let out = env.scratch.join("out.tar");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        &id,
        out.to_str().unwrap(),
    ])
    .assert_ok();
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "inspect"])
        .arg(format!("oci-archive:{}", out.display()));
    let ins = run_command(c, 120);
    ins.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&ins.stdout).unwrap();
    assert_eq!(
        v["Digest"],
        id.replacen("sha256-", "sha256:", 1),
        "OCI manifest exported unchanged\n{ins}"
    );
    assert_eq!(v["Labels"]["org.example.test"], "multilayer");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        &id,
        out.to_str().unwrap(),
    ])
    .assert_code(254)
    .assert_stderr_contains("--overwrite");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        "--overwrite",
        &id,
        out.to_str().unwrap(),
    ])
    .assert_ok();

    // An exported image can be fetched again and gives the same tree.
    let env2 = RktEnv::new();
    let id2 = fetch(&env2, &format!("oci-archive:{}", out.display()));
    assert_eq!(id2, id);

    // ACI export: skopeo accepts it and rkt re-imports it to the same tree digest.
    let aci = fetch(&env, im.busybox_aci.to_str().unwrap());
    let out2 = env.scratch.join("aci-out.tar");
    env.rkt(&[
        "image",
        "export",
        "--format=oci-archive",
        &aci,
        out2.to_str().unwrap(),
    ])
    .assert_ok();
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "inspect"])
        .arg(format!("oci-archive:{}", out2.display()));
    run_command(c, 120).assert_ok();
    let back = fetch(&env2, &format!("oci-archive:{}", out2.display()));
    let td = |e: &RktEnv, id: &str| {
        std::fs::read_to_string(e.dir.join("cas/tree").join(id).join("tree_digest")).unwrap()
    };
    assert_eq!(td(&env, &aci), td(&env2, &back));
}

#[test]
fn gc_removes_unused_trees_and_old_images() {
    let env = RktEnv::new();
    let im = images();
    let a = fetch(&env, &im.busybox_oci_ref());
    let b = fetch(&env, im.busybox_aci.to_str().unwrap());
    // Pretend a pod uses b's tree.
    let appinfo = env.dir.join("pods/run/0123/appsinfo/app");
    std::fs::create_dir_all(&appinfo).unwrap();
    std::fs::write(appinfo.join("treeStoreID"), &b).unwrap();

    // Default grace period: images stay, the unused tree goes.
    let out = env.rkt(&["image", "gc"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("removed treestore \"{a}\""));
    out.assert_stdout_contains("0 image(s) successfully removed");
    assert!(!env.dir.join("cas/tree").join(&a).exists());
    assert!(env
        .dir
        .join("cas/tree")
        .join(&b)
        .join("rootfs/bin/busybox")
        .exists());

    // Grace 0s: the unused image goes with its blobs; the in-use one stays.
    let out = env.rkt(&["image", "gc", "--grace-period=0s"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("successfully removed aci for image: {a}"));
    out.assert_stdout_contains("1 image(s) successfully removed");
    let list = env.rkt(&["image", "list", "--no-legend", "--full"]);
    assert!(
        !list.stdout.contains(&a) && list.stdout.contains(&b),
        "{list}"
    );
    assert_eq!(
        std::fs::read_dir(env.dir.join("cas/blobs/sha256"))
            .unwrap()
            .count(),
        1
    );

    // Rendering again after gc works (the tree is rebuilt from the blobs).
    std::fs::remove_dir_all(env.dir.join("pods")).unwrap();
    env.rkt(&["image", "gc"]).assert_ok();
    assert!(!env.dir.join("cas/tree").join(&b).exists());
    let rd = env.scratch.join("r");
    env.rkt(&["image", "render", &b, rd.to_str().unwrap()])
        .assert_ok();
    assert!(rd.join("rootfs/bin/busybox").is_file());
    env.rkt(&["image", "gc", "--grace-period=soon"])
        .assert_code(254)
        .assert_stderr_contains("invalid duration");
}
