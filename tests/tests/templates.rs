//! `rkt stage1 template list|build|rm` and what a template is trusted for (issue 12,
//! docs/kvm-template.md): a restored pod is measured with its template's digests, and a
//! template whose memory file was altered is refused by its digest (one line, cold boot).
//! Every test uses its own template cache (`RKT_TEMPLATE_CACHE`).

mod tpm_support;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use rkt_tests::{images, require_root, run_command, RktEnv, RktOutput};
use tpm_support::Swtpm;

fn rkt(env: &RktEnv, cache: &Path, args: &[&str]) -> RktOutput {
    let mut c = env.command(args);
    c.env("RKT_TEMPLATE_CACHE", cache);
    run_command(c, 900)
}

/// A template directory as rkt writes it (without a real VM in it).
fn fake_template(cache: &Path, key: &str, meta: bool) {
    let d = cache.join(key);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("state"), b"state").unwrap();
    let f = std::fs::File::create(d.join("mem")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    if meta {
        let m = serde_json::json!({
            "key": key, "created": 1_700_000_000u64, "state_sha256": "00", "mem_sha256": "00",
            "mem_pages": 1, "kernel": "/k/vmlinux", "kernel_sha256": "ab".repeat(32),
            "initramfs": "/i", "initramfs_sha256": "cd".repeat(32), "vcpus": 1, "mem_mib": 64,
            "cmdline": "console=ttyS0",
        });
        std::fs::write(d.join("meta.json"), m.to_string()).unwrap();
    }
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o500)).unwrap();
}

#[test]
fn template_list_and_rm_without_a_vm() {
    require_root();
    let env = RktEnv::new();
    let cache = env.scratch.join("templates");
    // An empty (even missing) cache lists only the header.
    let out = rkt(&env, &cache, &["stage1", "template", "list"]);
    out.assert_ok();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stdout.starts_with("KEY"), "{}", out.stdout);

    let (a, b) = ("a".repeat(64), format!("ab{}", "c".repeat(62)));
    fake_template(&cache, &a, true);
    fake_template(&cache, &b, false);
    std::fs::create_dir_all(cache.join("digests")).unwrap();
    let out = rkt(&env, &cache, &["stage1", "template", "list", "--no-legend"]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let row_a = lines.iter().find(|l| l.starts_with(&a[..12])).unwrap();
    // Size on disk is what the sparse file holds (one 4 KiB page and the state), not 64 MiB.
    assert!(row_a.contains("64.0 MiB"), "{row_a}");
    assert!(
        !row_a.split('\t').nth(1).unwrap_or("").contains("64.0"),
        "{row_a}"
    );
    assert!(row_a.contains("sha256:abababababab"), "{row_a}");
    let row_b = lines.iter().find(|l| l.starts_with(&b[..12])).unwrap();
    assert!(row_b.contains("no meta.json"), "{row_b}");
    let full = rkt(&env, &cache, &["stage1", "template", "list", "--full"]);
    full.assert_stdout_contains(&a)
        .assert_stdout_contains("/k/vmlinux");

    // Refusals: one line, exit 254, nothing removed.
    for args in [
        &["stage1", "template", "rm"][..],
        &["stage1", "template", "rm", "a"],
        &["stage1", "template", "rm", "ffff"],
    ] {
        let out = rkt(&env, &cache, args);
        out.assert_code(254);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(rkt(&env, &cache, &["stage1", "template", "rm", "a"])
        .stderr
        .contains("ambiguous"));
    assert!(cache.join(&a).is_dir() && cache.join(&b).is_dir());

    let out = rkt(&env, &cache, &["stage1", "template", "rm", "AB"]);
    out.assert_ok()
        .assert_stdout_contains(&format!("removed {b}"));
    assert!(!cache.join(&b).exists() && cache.join(&a).is_dir());
    rkt(&env, &cache, &["stage1", "template", "rm", "--all"]).assert_ok();
    assert!(!cache.join(&a).exists());
    assert!(cache.join("digests").is_dir(), "only templates are removed");
}

/// Reads `<pod>/stage1/kvm-boot` of the pod whose uuid was saved in `uuid_file`.
fn kvm_boot(env: &RktEnv, uuid_file: &Path) -> (String, String) {
    let uuid = std::fs::read_to_string(uuid_file)
        .unwrap()
        .trim()
        .to_string();
    let pod = ["run", "exited-garbage", "garbage"]
        .iter()
        .map(|s| env.dir.join("pods").join(s).join(&uuid))
        .find(|p| p.is_dir())
        .expect("pod directory");
    let how = std::fs::read_to_string(pod.join("stage1/kvm-boot")).unwrap_or_default();
    (uuid, how.trim().to_string())
}

/// One cold boot for `build`, one restore (measured), one cold boot after tampering.
#[test]
fn kvm_template_build_measured_restore_and_tampered_template() {
    require_root();
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing");
    let mut env = RktEnv::new();
    env.set_timeout(900);
    let cache = env.scratch.join("templates");
    let img = images().busybox_oci_ref();

    let out = rkt(&env, &cache, &["stage1", "template", "build"]);
    out.assert_ok();
    let key = out.stdout.split_whitespace().next().unwrap().to_string();
    assert_eq!(key.len(), 64, "{}", out.stdout);
    assert!(out.stdout.contains("(made,"), "{}", out.stdout);
    let tdir = cache.join(&key);
    for f in ["state", "mem", "meta.json"] {
        let md = std::fs::metadata(tdir.join(f)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o400, "{f}");
    }
    let list = rkt(&env, &cache, &["stage1", "template", "list", "--no-legend"]);
    list.assert_ok().assert_stdout_contains(&key[..12]);
    assert!(!list.stdout.contains("no meta.json"), "{}", list.stdout);
    let again = rkt(&env, &cache, &["stage1", "template", "build"]);
    again.assert_ok().assert_stdout_contains("already there");

    // A measured pod restores from it, and the log says which template, with its digests.
    let tpm = Swtpm::start();
    let tcti = format!("--tpm-tcti={}", tpm.tcti());
    let uuid_file = env.scratch.join("uuid-measured");
    let uf = format!("--uuid-file-save={}", uuid_file.display());
    let out = rkt(
        &env,
        &cache,
        &[
            &tcti,
            "--insecure-options=image",
            "run",
            "--tpm=required",
            "--stage1=kvm",
            "--net=none",
            &uf,
            &img,
            "--exec=/inspect",
            "--",
            "--echo=from-template",
        ],
    );
    out.assert_ok().assert_stdout_contains("from-template");
    let (uuid, how) = kvm_boot(&env, &uuid_file);
    assert_eq!(how, format!("restored {key}"));
    let log = rkt(
        &env,
        &cache,
        &[&tcti, "tpm", "log", "--pod", &uuid, "--format=json"],
    );
    log.assert_ok();
    let events: Vec<serde_json::Value> = serde_json::from_str(log.stdout.trim()).unwrap();
    let labels: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "rkt/stage0",
            "rkt/stage1/kvm/vmm",
            "rkt/stage1/kvm/vmlinux",
            "rkt/stage1/kvm/initramfs",
            "rkt/stage1/kvm/cmdline",
            "rkt/stage1/kvm/template",
            "rkt/pod-manifest",
            "rkt/app",
        ]
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tdir.join("meta.json")).unwrap()).unwrap();
    let t = events[5]["event"].as_str().unwrap();
    for want in [
        key.clone(),
        meta["mem_sha256"].as_str().unwrap().to_string(),
        meta["state_sha256"].as_str().unwrap().to_string(),
    ] {
        assert!(t.contains(&want), "{t} lacks {want}");
    }
    let table = rkt(&env, &cache, &[&tcti, "tpm", "log", "--pod", &uuid]);
    table.assert_stdout_contains(&format!("rkt/stage1/kvm/template key={key}"));
    rkt(&env, &cache, &[&tcti, "tpm", "verify", "--pod", &uuid]).assert_ok();

    // Tampered: one byte of guest memory changed in place (root can; the digest notices).
    // The pod refuses it in one line, boots cold and makes a fresh template.
    let mem = tdir.join("mem");
    let data = {
        let f = std::fs::File::open(&mem).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an fd we own.
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) }
    };
    assert!(data >= 0);
    let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    let mut b = [0u8; 1];
    std::fs::File::open(&mem)
        .unwrap()
        .read_exact_at(&mut b, data as u64 + 100)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], data as u64 + 100).unwrap();
    drop(f);
    let uuid_file = env.scratch.join("uuid-tampered");
    let uf = format!("--uuid-file-save={}", uuid_file.display());
    let out = rkt(
        &env,
        &cache,
        &[
            "--insecure-options=image",
            "run",
            "--stage1=kvm",
            "--net=none",
            &uf,
            &img,
            "--exec=/inspect",
            "--",
            "--echo=from-template",
        ],
    );
    out.assert_ok().assert_stdout_contains("from-template");
    let refusals: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("template"))
        .collect();
    assert_eq!(refusals.len(), 1, "{}", out.stderr);
    assert!(
        refusals[0].starts_with("rkt: stage1 kvm: VM template ")
            && refusals[0].contains("memory file's digest")
            && refusals[0].ends_with("booting cold"),
        "{}",
        refusals[0]
    );
    let (_, how) = kvm_boot(&env, &uuid_file);
    assert_eq!(
        how,
        format!("cold template {key}"),
        "remade by the cold boot"
    );

    rkt(&env, &cache, &["stage1", "template", "rm", &key]).assert_ok();
    let list = rkt(&env, &cache, &["stage1", "template", "list", "--no-legend"]);
    assert_eq!(list.stdout.trim(), "");
}
