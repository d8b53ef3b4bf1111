//! Hostile images against the image store (issue 9): the store is unreachable for other host
//! users, device nodes from images are never created, deep paths are refused quickly, whiteout
//! names are validated before anything is deleted, gc survives deep render debris, and the size,
//! count and descriptor limits hold. Pods run on `--stage1=ns` (the store is the same for kvm).

use rkt_tests::{images, require_root, RktEnv, RktOutput};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------- tar and OCI layouts

/// One raw tar entry; names and link targets are written as given (no sanitising), long names
/// through a GNU `L` record.
#[derive(Clone)]
struct Ent {
    name: String,
    kind: u8,
    mode: u32,
    data: Vec<u8>,
    link: String,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn ent(name: &str, kind: u8, mode: u32) -> Ent {
    Ent {
        name: name.into(),
        kind,
        mode,
        data: Vec::new(),
        link: String::new(),
        dev: (0, 0),
        xattrs: Vec::new(),
    }
}

fn file(name: &str, mode: u32, data: &[u8]) -> Ent {
    Ent {
        data: data.to_vec(),
        ..ent(name, b'0', mode)
    }
}

fn dir(name: &str) -> Ent {
    ent(name, b'5', 0o755)
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn header(name: &[u8], kind: u8, mode: u32, size: u64, link: &[u8], dev: (u32, u32)) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_500_000_000);
    h[156] = kind;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..265].copy_from_slice(b"ustar  \0");
    octal(&mut h[329..337], dev.0 as u64);
    octal(&mut h[337..345], dev.1 as u64);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar(entries: &[Ent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.xattrs.is_empty() {
            let mut pax = Vec::new();
            for (k, v) in &e.xattrs {
                let body_len = format!(" SCHILY.xattr.{k}=").len() + v.len() + 1;
                let mut len = body_len + 1;
                while format!("{len}").len() + body_len != len {
                    len += 1;
                }
                pax.extend_from_slice(format!("{len} SCHILY.xattr.{k}=").as_bytes());
                pax.extend_from_slice(v);
                pax.push(b'\n');
            }
            out.extend(header(b"pax", b'x', 0o644, pax.len() as u64, b"", (0, 0)));
            push_data(&mut out, &pax);
        }
        if e.name.len() > 100 {
            let mut n = e.name.as_bytes().to_vec();
            n.push(0);
            out.extend(header(
                b"././@LongLink",
                b'L',
                0o644,
                n.len() as u64,
                b"",
                (0, 0),
            ));
            push_data(&mut out, &n);
        }
        out.extend(header(
            e.name.as_bytes(),
            e.kind,
            e.mode,
            e.data.len() as u64,
            e.link.as_bytes(),
            e.dev,
        ));
        push_data(&mut out, &e.data);
    }
    out.extend(vec![0u8; 1024]);
    out
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn put_blob(layout: &Path, data: &[u8]) -> String {
    let d = sha(data);
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

fn desc(media: &str, digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media, "digest": digest, "size": size})
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// An OCI layout at `scratch/name`: the busybox test image's layers plus `extra` layers (raw
/// tar), with `edit` applied to the manifest JSON before it is stored. Returns `oci:PATH`.
fn layout_with(
    env: &RktEnv,
    name: &str,
    extra: &[Vec<u8>],
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let base = &images().busybox_oci;
    let out = env.scratch.join(name);
    std::fs::create_dir_all(out.join("blobs/sha256")).unwrap();
    for e in std::fs::read_dir(base.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("index.json")).unwrap()).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("blobs/sha256").join(&md[7..])).unwrap())
            .unwrap();
    for l in extra {
        let d = put_blob(&out, l);
        m["layers"]
            .as_array_mut()
            .unwrap()
            .push(desc(LAYER, &d, l.len() as u64));
    }
    edit(&mut m);
    let mb = serde_json::to_vec(&m).unwrap();
    let d = put_blob(&out, &mb);
    let mut top = desc(
        "application/vnd.oci.image.manifest.v1+json",
        &d,
        mb.len() as u64,
    );
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
    std::fs::write(
        out.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]})).unwrap(),
    )
    .unwrap();
    format!("oci:{}", out.display())
}

fn layout(env: &RktEnv, name: &str, extra: &[Vec<u8>]) -> String {
    layout_with(env, name, extra, |_| {})
}

/// rkt's own failure: exit 254 and exactly one line on stderr, containing `msg`.
#[track_caller]
fn assert_refused(out: &RktOutput, msg: &str) {
    assert_eq!(out.code, 254, "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line\n{out}");
    assert!(
        out.stderr.contains(msg),
        "stderr should mention {msg:?}\n{out}"
    );
}

/// The store holds no image and no debris, and the index is sound: a failed import left nothing.
#[track_caller]
fn assert_store_clean(env: &RktEnv) {
    let out = env.rkt(&["image", "list", "--no-legend"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "", "{out}");
    for d in ["cas/tree", "cas/tmp"] {
        let n = std::fs::read_dir(env.dir.join(d)).unwrap().count();
        assert_eq!(n, 0, "{d} not empty");
    }
}

// ---------------------------------------------------------------------------- host users

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs `cmd` as host user nobody (65534) with no supplementary groups. Through `sh`: setpriv
/// keeps root's effective capabilities until its own execve, so the path lookup of a command it
/// execs directly would still bypass directory permissions.
fn as_nobody(cmd: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(cmd)
        .output()
        .unwrap()
}

/// `security.capability` v2: cap_dac_read_search in permitted + effective.
fn file_cap_dac_read_search() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0200_0001u32, 1 << 2, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn find_named(root: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let ft = e.file_type().unwrap();
        if e.file_name() == name {
            out.push(e.path());
        }
        if ft.is_dir() {
            find_named(&e.path(), name, out);
        }
    }
}

#[test]
fn other_host_users_cannot_reach_setuid_files_caps_or_pod_upper_dirs() {
    require_root();
    let env = RktEnv::new();
    // As /var/lib/rkt would be: a world-traversable parent, and a data dir made 0755 by someone.
    std::fs::set_permissions(env.dir.parent().unwrap(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.dir, PermissionsExt::from_mode(0o755)).unwrap();
    let inspect = std::fs::read(&images().inspect).unwrap();
    let suid = file("suid-inspect", 0o4755, &inspect);
    let mut capped = file("cap-inspect", 0o755, &inspect);
    capped.xattrs = vec![("security.capability".into(), file_cap_dac_read_search())];
    let img = layout(&env, "suid", &[tar(&[suid, capped])]);
    let id = env.fetch_id(&["--insecure-options=image", &img]);

    // Images keep what they legitimately need: the setuid bit and the file capability.
    let rootfs = env.dir.join("cas/tree").join(&id).join("rootfs");
    assert_eq!(mode(&rootfs.join("suid-inspect")), 0o4755);
    assert_eq!(
        std::fs::metadata(rootfs.join("suid-inspect"))
            .unwrap()
            .uid(),
        0
    );
    let c = CString::new(rootfs.join("cap-inspect").to_str().unwrap()).unwrap();
    // SAFETY: valid C strings; size query only.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(n, 20, "file capability kept in the tree");

    // A pod whose root app plants a setuid-root copy in its writable layer.
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--insecure-options=image",
        &img,
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "cp /inspect /planted && chmod 4755 /planted && ls -l /planted",
    ]);
    out.assert_ok();
    let mut planted = Vec::new();
    find_named(&env.dir.join("pods"), "planted", &mut planted);
    assert!(
        !planted.is_empty(),
        "the planted file is in the pod's upper dir\n{out}"
    );
    assert_eq!(mode(&planted[0]), 0o4755);

    // The data dir was tightened even though it existed 0755; cas/ and pods/ are private too.
    for d in ["", "cas", "cas/tree", "cas/tmp", "pods"] {
        assert_eq!(mode(&env.dir.join(d)), 0o700, "{d:?}");
    }

    // Host user nobody reaches none of it: no setuid-root exec, no read through the file cap,
    // not even a stat of the pod's planted file.
    let targets = [
        rootfs.join("suid-inspect"),
        rootfs.join("cap-inspect"),
        planted[0].clone(),
    ];
    for t in &targets {
        let o = as_nobody(&[
            t.to_str().unwrap(),
            "--print-user",
            "--read-file=/etc/shadow",
        ]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{}: {all}", t.display());
        assert!(!all.contains("EUID=0"), "{}: {all}", t.display());
        assert!(!all.contains("CONTENT="), "{}: {all}", t.display());
        assert!(all.contains("Permission denied"), "{}: {all}", t.display());
    }

    // Loosened again by hand: the next rkt command restores 0700.
    std::fs::set_permissions(&env.dir, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.dir.join("cas"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.dir.join("pods"), PermissionsExt::from_mode(0o755)).unwrap();
    env.rkt(&["image", "list"]).assert_ok();
    env.rkt(&["list"]).assert_ok();
    for d in ["", "cas", "pods"] {
        assert_eq!(mode(&env.dir.join(d)), 0o700, "{d:?} after re-open");
    }

    // What a non-root user may try still ends in one clear line and exit 254.
    let rkt = rkt_tests::rkt_bin();
    let dir = format!("--dir={}", env.dir.display());
    for args in [["image", "list"], ["list", "--no-legend"]] {
        let o = as_nobody(&[rkt.to_str().unwrap(), &dir, args[0], args[1]]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(254), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
    }
}

// --------------------------------------------------------------------------------- devices

#[test]
fn image_device_nodes_are_not_in_the_tree_nor_the_pod() {
    require_root();
    let env = RktEnv::new();
    let mut loop0 = ent("loop0", b'4', 0o666);
    loop0.dev = (7, 0);
    let mut mem = ent("dev-mem", b'3', 0o666);
    mem.dev = (1, 1);
    let img = layout(
        &env,
        "dev",
        &[tar(&[loop0, mem, file("marker", 0o644, b"m")])],
    );
    let id = env.fetch_id(&["--insecure-options=image", &img]);
    let rootfs = env.dir.join("cas/tree").join(&id).join("rootfs");
    assert!(rootfs.join("marker").is_file());
    assert!(std::fs::symlink_metadata(rootfs.join("loop0")).is_err());
    assert!(std::fs::symlink_metadata(rootfs.join("dev-mem")).is_err());
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--insecure-options=image",
        &img,
        "--exec", "/bin/sh",
        "--",
        "-c",
        "for f in /loop0 /dev-mem; do if [ -e $f ]; then echo PRESENT $f; else echo ABSENT $f; fi; done",
    ]);
    out.assert_ok();
    assert!(out.stdout.contains("ABSENT /loop0"), "{out}");
    assert!(out.stdout.contains("ABSENT /dev-mem"), "{out}");
    assert!(!out.stdout.contains("PRESENT"), "{out}");
}

// ------------------------------------------------------------------------------ deep paths

#[test]
fn deep_paths_are_refused_fast_and_moderate_depth_works() {
    let env = RktEnv::new();
    // Depth 4096 (a 30000-deep one grew rkt to 24 GB before): one line, 254, quickly.
    for depth in [4096, 30000] {
        let img = layout(
            &env,
            &format!("deep{depth}"),
            &[tar(&[file(&("a/".repeat(depth) + "f"), 0o644, b"x")])],
        );
        let t0 = Instant::now();
        let out = env.rkt_timeout(120, &["fetch", "--insecure-options=image", &img]);
        assert_refused(&out, "limit");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "took {:?}",
            t0.elapsed()
        );
        assert_store_clean(&env);
    }
    // 2000 nested directory entries (60 s before): refused at the limit, not slowly.
    let mut ents = Vec::new();
    let mut p = String::new();
    for _ in 0..2000 {
        p.push_str("d/");
        ents.push(dir(&p));
    }
    let img = layout(&env, "nested2000", &[tar(&ents)]);
    let t0 = Instant::now();
    let out = env.rkt_timeout(120, &["fetch", "--insecure-options=image", &img]);
    assert_refused(&out, "limit");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_store_clean(&env);

    // 200 levels, each a directory entry, plus a file at the bottom: a legal image.
    let mut ents = Vec::new();
    let mut p = String::new();
    for _ in 0..200 {
        p.push_str("d/");
        ents.push(dir(&p));
    }
    ents.push(file(&format!("{p}bottom"), 0o644, b"deep"));
    let img = layout(&env, "deep200", &[tar(&ents)]);
    let t0 = Instant::now();
    let id = env.fetch_id(&["--insecure-options=image", &img]);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let bottom = env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs")
        .join("d/".repeat(200) + "bottom");
    assert_eq!(std::fs::read(bottom).unwrap(), b"deep");
}

// -------------------------------------------------------------------------------- whiteouts

#[test]
fn whiteout_of_dotdot_is_refused_before_anything_is_deleted() {
    let env = RktEnv::new();
    for (i, name) in [".wh...", "etc/.wh...", ".wh..", ".wh."].iter().enumerate() {
        let img = layout(&env, &format!("wh{i}"), &[tar(&[file(name, 0o644, b"")])]);
        let out = env.rkt(&["fetch", "--insecure-options=image", &img]);
        assert_refused(&out, "names no file");
        assert_store_clean(&env);
    }
    // The busybox image still imports and renders fine in the same store afterwards.
    let id = env.fetch_id(&[&images().busybox_oci_ref()]);
    assert!(env
        .dir
        .join("cas/tree")
        .join(&id)
        .join("rootfs/bin/busybox")
        .is_file());
}

// ------------------------------------------------------------------------------------- gc

#[test]
fn gc_removes_deep_render_debris() {
    let env = RktEnv::new();
    env.rkt(&["image", "list"]).assert_ok(); // creates the store
                                             // What a killed render of a deep layer leaves: 6000 levels (each with a file) in cas/tmp,
                                             // far beyond the default 1024 open files of `ulimit -n`.
    let top = env.dir.join("cas/tmp/render-killed");
    std::fs::create_dir(&top).unwrap();
    let mut d = std::fs::File::open(&top).unwrap();
    let x = CString::new("x").unwrap();
    let f = CString::new("f").unwrap();
    for _ in 0..6000 {
        // SAFETY: valid fds and C strings; every fd is owned by a File.
        unsafe {
            assert_eq!(libc::mkdirat(d.as_raw_fd(), x.as_ptr(), 0o755), 0);
            let fd = libc::openat(
                d.as_raw_fd(),
                f.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            );
            assert!(fd >= 0);
            libc::close(fd);
            let nd = libc::openat(
                d.as_raw_fd(),
                x.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY,
            );
            assert!(nd >= 0);
            d = std::os::fd::FromRawFd::from_raw_fd(nd);
        }
    }
    drop(d);
    // A low fd limit, as under a service manager: rkt must not need an fd per level.
    let mut c = env.command(&["image", "gc"]);
    // SAFETY: setrlimit in the child before exec is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            let r = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "rkt image gc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!top.exists());
    assert_store_clean(&env);
}

// --------------------------------------------------------------------------------- bounds

#[test]
fn counts_sizes_and_descriptors_are_bounded() {
    let env = RktEnv::new();
    // One layer listed 2000 times.
    let l = tar(&[file("x", 0o644, b"x")]);
    let img = layout_with(&env, "many", &[l], |m| {
        let one = m["layers"].as_array().unwrap().last().unwrap().clone();
        m["layers"] = serde_json::Value::Array(vec![one; 2000]);
    });
    let t0 = Instant::now();
    let out = env.rkt(&["fetch", "--insecure-options=image", &img]);
    assert_refused(&out, "2000 layers (limit 256)");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_store_clean(&env);

    // An index.json larger than the JSON limit is not read whole.
    let img = layout(&env, "bigindex", &[]);
    let path = PathBuf::from(img.strip_prefix("oci:").unwrap()).join("index.json");
    let mut idx = std::fs::read(&path).unwrap();
    idx.truncate(idx.len() - 1);
    idx.extend(std::iter::repeat_n(b' ', 9 << 20));
    idx.push(b'}');
    std::fs::write(&path, idx).unwrap();
    let out = env.rkt(&["fetch", "--insecure-options=image", &img]);
    assert_refused(&out, "larger than 8388608 bytes");
    assert_store_clean(&env);

    // A descriptor lying about a layer the store already holds: refused, not 8 EiB in the list.
    env.fetch_id(&[&images().busybox_oci_ref()]);
    let liar = layout_with(&env, "liar", &[], |m| {
        m["layers"][0]["size"] = serde_json::json!(9_223_372_036_854_775_807u64);
        m["annotations"] = serde_json::json!({"x": "liar"});
    });
    let out = env.rkt(&["fetch", "--insecure-options=image", &liar]);
    assert_eq!(out.code, 254, "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains("size mismatch") || out.stderr.contains("limit"),
        "{out}"
    );
    let list = env.rkt(&["image", "list", "--no-legend"]);
    list.assert_ok();
    assert_eq!(list.stdout.trim().lines().count(), 1, "{list}");
    assert!(!list.stdout.contains("EiB"), "{list}");
    // The size check on an already-stored blob itself, within the size limit.
    let liar2 = layout_with(&env, "liar2", &[], |m| {
        m["layers"][0]["size"] = serde_json::json!(1u64 << 30);
        m["annotations"] = serde_json::json!({"x": "liar2"});
    });
    let out = env.rkt(&["fetch", "--insecure-options=image", &liar2]);
    assert_refused(&out, "size mismatch");
}
