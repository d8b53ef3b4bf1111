//! The boundary between stage0 and the stage1 flavours, as a user meets it (issue 10): stage1
//! flags that name no flavour of ours and flavour/flag conflicts are refused before anything of
//! the pod is written or measured; a kvm pod is ready when `rkt enter` works, `rkt enter` during
//! its boot waits for it, and `rkt stop` works from the moment `rkt run` saved the UUID;
//! `--oom-score-adj` reaches the app; `oci:PATH:REF` splits at the first colon.

mod tpm_support;

use std::path::Path;
use std::time::{Duration, Instant};

use rkt_tests::{flavours, images, require_root, Flavor, RktEnv, RktOutput};
use tpm_support::Swtpm;

fn busybox() -> String {
    images().busybox_oci_ref()
}

/// Every pod directory under `<dir>/pods/*/`.
fn pods(env: &RktEnv) -> Vec<String> {
    let Ok(states) = std::fs::read_dir(env.dir.join("pods")) else {
        return Vec::new();
    };
    states
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .flatten()
        .map(|p| p.path().display().to_string())
        .collect()
}

#[track_caller]
fn refused_in_one_line(out: &RktOutput, needle: &str) {
    out.assert_code(254);
    out.assert_stderr_contains(needle);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out}");
}

fn wait_for_file(p: &Path, secs: u64) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} did not appear",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_uuid(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

#[test]
fn stage1_flags_that_name_no_flavour_are_refused() {
    require_root();
    let env = RktEnv::new();
    let img = busybox();
    let real = env.scratch.join("stage1-coreos.aci");
    std::fs::write(&real, b"").unwrap();
    let typo = format!(
        "--stage1-path={}",
        env.scratch.join("stage1-coreos.acj").display()
    );
    let other = env.scratch.join("my-stage1.aci");
    std::fs::write(&other, b"").unwrap();
    let other = format!("--stage1-path={}", other.display());
    for (flag, needle) in [
        (typo.as_str(), "is not a file"),
        (other.as_str(), "does not name a stage1"),
        (
            "--stage1-name=coreos.com/rkt/stage1-kvn:1.30.0",
            "does not name a stage1",
        ),
        ("--stage1-name=example.com/mykvm", "does not name a stage1"),
        (
            "--stage1-from-dir=stage1-typo.aci",
            "does not name a stage1",
        ),
        (
            "--stage1-url=https://example.com/stage1.tar",
            "does not name a stage1",
        ),
        ("--stage1-hash=sha512-0123", "built in"),
    ] {
        let out = env.rkt(&[
            "--insecure-options=image",
            "run",
            flag,
            "--net=none",
            &img,
            "--exec",
            "/bin/echo",
            "--",
            "must-not-run",
        ]);
        refused_in_one_line(&out, needle);
        assert!(!out.stdout.contains("must-not-run"), "{flag}: {out}");
    }
    assert_eq!(pods(&env), Vec::<String>::new());
    // A file with a flavour's release name selects that flavour (coreos: namespaces).
    let out = env.rkt(&[
        "--insecure-options=image",
        "run",
        &format!("--stage1-path={}", real.display()),
        "--net=none",
        &img,
        "--exec",
        "/bin/echo",
        "--",
        "ran-on-ns",
    ]);
    out.assert_ok().assert_stdout_contains("ran-on-ns");
}

/// `--net=host` on kvm is refused before the pod is prepared or measured, for `run` and for
/// `run-prepared`.
#[test]
fn flavour_flag_conflicts_are_refused_before_anything_is_written() {
    require_root();
    let tpm = Swtpm::start();
    let env = RktEnv::new();
    let tcti = format!("--tpm-tcti={}", tpm.tcti());
    let img = busybox();
    let out = env.rkt(&[
        &tcti,
        "--insecure-options=image",
        "run",
        "--stage1=kvm",
        "--tpm=required",
        "--net=host",
        &img,
    ]);
    refused_in_one_line(&out, "--net=host");
    assert_eq!(pods(&env), Vec::<String>::new());
    let logs: Vec<_> = std::fs::read_dir(env.dir.join("tpm"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        logs.iter()
            .all(|p| !p.to_string_lossy().contains("eventlog")),
        "measured: {logs:?}"
    );

    let prep = env.rkt(&[
        "--insecure-options=image",
        "prepare",
        "--quiet",
        "--stage1=kvm",
        &img,
    ]);
    prep.assert_ok();
    let uuid = prep.stdout.trim().to_string();
    let out = env.rkt(&["run-prepared", "--net=host", &uuid]);
    refused_in_one_line(&out, "--net=host");
    assert!(env.dir.join("pods/prepared").join(&uuid).is_dir());
}

/// Applied to the app (and to `rkt enter` commands, as the app runs); kvm's half is in
/// `kvm_ready_means_enter_works`, on the same boot.
#[test]
fn oom_score_adj_reaches_the_app_on_ns() {
    require_root();
    let env = RktEnv::new();
    let out = env.rkt(&[
        "--insecure-options=image",
        "run",
        "--stage1=ns",
        "--net=none",
        &busybox(),
        "--oom-score-adj=517",
        "--exec",
        "/inspect",
        "--",
        "--print-oom-score-adj",
    ]);
    out.assert_ok().assert_stdout_contains("OOM_SCORE_ADJ=517");
}

/// One kvm boot: `rkt enter` during the boot waits (saying so) and works; `status --wait-ready`
/// returns only when enter works at once; `--oom-score-adj` reaches the app and entered
/// commands; `rkt stop` ends the pod.
#[test]
fn kvm_ready_means_enter_works() {
    let f = Flavor::Kvm;
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let mut pod = env.spawn(&[
        "--insecure-options=image",
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &busybox(),
        "--oom-score-adj=321",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "echo app-oom=$(cat /proc/self/oom_score_adj); exec sleep 600",
    ]);
    wait_for_file(&uuid_file, 60);
    let uuid = read_uuid(&uuid_file);
    // At once: the guest has not even booted.
    let mut early = env.spawn(&["enter", &uuid, "/bin/echo", "entered-during-boot"]);
    let ready = env.rkt_timeout(f.start_secs(), &["status", "--wait-ready", &uuid]);
    ready.assert_ok().assert_stdout_contains("state=running");
    let now = env.rkt(&["enter", &uuid, "/bin/echo", "entered-when-ready"]);
    now.assert_ok().assert_stdout_contains("entered-when-ready");
    let early = early.wait_timeout(60);
    early
        .assert_ok()
        .assert_stdout_contains("entered-during-boot");
    early.assert_stderr_contains("waiting for the pod's VM to boot");
    assert!(
        pod.wait_for_stdout("app-oom=321", 30),
        "{}",
        pod.output_so_far()
    );
    env.rkt(&["enter", &uuid, "/bin/cat", "/proc/self/oom_score_adj"])
        .assert_ok()
        .assert_stdout_contains("321");
    env.rkt(&["stop", &uuid]).assert_ok();
    let out = pod.wait_timeout(60);
    assert_ne!(out.code, 0, "{out}");
    env.rkt(&["status", &uuid])
        .assert_ok()
        .assert_stdout_contains("state=exited");
}

/// `rkt stop` the moment `rkt run` saved the UUID stops the pod (on kvm before the VM booted).
fn stop_right_after_start(f: Flavor) {
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let mut pod = env.spawn(&[
        "--insecure-options=image",
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &busybox(),
        "--exec",
        "/bin/sleep",
        "--",
        "600",
    ]);
    wait_for_file(&uuid_file, 60);
    let uuid = read_uuid(&uuid_file);
    env.rkt(&["stop", &uuid]).assert_ok();
    let out = pod.wait_timeout(60);
    assert_ne!(out.code, 0, "{out}");
    env.rkt(&["status", &uuid])
        .assert_ok()
        .assert_stdout_contains("state=exited");
}

flavours!(stop_right_after_start);

/// skopeo's `oci:PATH:REFERENCE`: the path ends at the first colon, so a reference such as
/// buildah's `busybox:1.36` works.
#[test]
fn oci_reference_with_a_colon() {
    require_root();
    let env = RktEnv::new();
    let layout = env.scratch.join("bb");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&images().busybox_oci)
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let index = layout.join("index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    v["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] =
        serde_json::json!("busybox:1.36");
    std::fs::write(&index, serde_json::to_vec(&v).unwrap()).unwrap();
    let id = env.fetch_id(&[
        "--insecure-options=image",
        &format!("oci:{}:busybox:1.36", layout.display()),
    ]);
    assert!(
        id.starts_with("sha256-") || id.starts_with("sha512-"),
        "{id}"
    );
}

/// README's two commands work as written for a user: the scripts re-run themselves through
/// sudo (a stand-in here that only records how it was called); without sudo they say so.
#[test]
fn setup_and_test_scripts_escalate_with_sudo() {
    require_root();
    let env = RktEnv::new();
    let bin = env.scratch.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let sudo = bin.join("sudo");
    std::fs::write(&sudo, "#!/bin/sh\necho \"SUDO $*\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        env.scratch.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let root = rkt_tests::workspace_root();
    for script in ["scripts/setup.sh", "scripts/test.sh"] {
        let as_nobody = |path: &str| {
            std::process::Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .args(["env", "-i", &format!("PATH={path}"), "HOME=/nonexistent"])
                .arg(script)
                .arg("--some-arg")
                .current_dir(&root)
                .output()
                .unwrap()
        };
        let out = as_nobody(&format!("{}:/usr/bin:/bin", bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{script}: {out:?}");
        assert!(
            stdout.starts_with("SUDO env PATH=")
                && stdout.trim_end().ends_with(&format!("{script} --some-arg")),
            "{script}: {stdout}"
        );
        // No sudo on the machine: one clear line, no attempt to run anything.
        let out = as_nobody("/usr/bin:/bin");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !std::path::Path::new("/usr/bin/sudo").exists() {
            assert_eq!(out.status.code(), Some(1), "{script}: {out:?}");
            assert!(
                stderr.contains("sudo is not installed"),
                "{script}: {stderr}"
            );
        }
    }
}
