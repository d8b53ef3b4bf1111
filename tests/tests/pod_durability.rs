//! Which disk flushes a pod costs (docs/pods.md, "Durability"), seen through `strace`:
//! `rkt run` (a pod prepared and started at once, garbage after a host crash) flushes nothing and
//! never parks its pod in `prepared/`; `rkt prepare` fsyncs its pod's files and the move to
//! `prepared/`; `run-prepared` fsyncs the move to `run/` (a pod whose apps may have run must not
//! come back as prepared). ns only: the pod files are stage0's, the same for both flavours.

use std::path::Path;
use std::process::Command;

use rkt_tests::{images, require_root, rkt_bin, RktEnv};

/// Runs `rkt --dir=… ARGS` under `strace -f` (flushes and renames, fds shown as paths) and
/// returns the trace; panics unless rkt exits 0.
fn traced(env: &RktEnv, name: &str, args: &[&str]) -> (String, String) {
    let log = env.scratch.join(format!("{name}.strace"));
    let out = Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=fsync,fdatasync,sync,syncfs,sync_file_range,msync,rename,renameat,renameat2",
        ])
        .arg(rkt_bin())
        .arg(format!("--dir={}", env.dir.display()))
        .args(rkt_tests::insecure_image(args))
        .output()
        .expect("running strace (apt-get install strace)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rkt {args:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read_to_string(&log).unwrap(), stdout)
}

fn flushes(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter(|l| {
            [
                "fsync(",
                "fdatasync(",
                "sync(",
                "syncfs(",
                "sync_file_range(",
                "msync(",
            ]
            .iter()
            .any(|s| l.contains(s))
        })
        .collect()
}

/// Renames whose destination (the last quoted path) is directly in `dir`.
fn moves_into<'a>(trace: &'a str, dir: &Path) -> Vec<&'a str> {
    let d = format!("{}/", dir.display());
    trace
        .lines()
        .filter(|l| l.contains("rename"))
        .filter(|l| {
            let quoted: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            quoted
                .last()
                .and_then(|p| p.strip_prefix(&d))
                .is_some_and(|rest| !rest.contains('/'))
        })
        .collect()
}

#[test]
fn run_flushes_nothing_prepare_and_run_prepared_keep_their_fsyncs() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    env.fetch_id(&[&img]);
    let pods = env.dir.join("pods");

    // rkt run of an image already in the store: no flush at all (pod files, index, store).
    let (trace, out) = traced(
        &env,
        "run",
        &[
            "run",
            "--stage1=ns",
            "--net=none",
            "--tpm=off",
            &img,
            "--exec=/bin/echo",
            "--",
            "hi",
        ],
    );
    assert_eq!(out, "hi\n");
    let f = flushes(&trace);
    assert!(f.is_empty(), "rkt run flushed:\n{}", f.join("\n"));
    let parked = moves_into(&trace, &pods.join("prepared"));
    assert!(
        parked.is_empty(),
        "rkt run parked its pod in prepared/:\n{}",
        parked.join("\n")
    );
    assert_eq!(moves_into(&trace, &pods.join("run")).len(), 1, "{trace}");

    // rkt prepare: the pod must survive a reboot, so its files and its move are fsynced.
    let (trace, out) = traced(&env, "prepare", &["prepare", "--stage1=ns", &img]);
    let uuid = out.trim().to_string();
    let f = flushes(&trace);
    let in_pod = format!("/pods/prepare/{uuid}/");
    let files = f.iter().filter(|l| l.contains(&in_pod)).count();
    // pod, pod-created, stage1-flavor, tpm-mode, appsinfo/*/{treeStoreID,manifest}, overlay-prepared.
    assert!(
        files >= 7,
        "rkt prepare fsynced {files} pod files:\n{}",
        f.join("\n")
    );
    let prepared_dir = format!("{}>", pods.join("prepared").display());
    assert!(
        f.iter().any(|l| l.contains(&prepared_dir)),
        "rkt prepare did not fsync pods/prepared:\n{}",
        f.join("\n")
    );

    // run-prepared: the move to run/ is fsynced, its runtime files are not.
    let (trace, _) = traced(&env, "run-prepared", &["run-prepared", "--net=none", &uuid]);
    let f = flushes(&trace);
    let run_dir = format!("{}>", pods.join("run").display());
    assert!(
        f.iter().any(|l| l.contains(&run_dir)),
        "run-prepared did not fsync pods/run:\n{}",
        f.join("\n")
    );
    let in_run = format!("/pods/run/{uuid}/");
    let runtime: Vec<_> = f.iter().filter(|l| l.contains(&in_run)).collect();
    assert!(
        runtime.is_empty(),
        "run-prepared fsynced runtime files: {runtime:?}"
    );
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
}

/// An app's overlay root is torn down by gc, not by the app's exit: the teardown syncs the upper
/// file system (the host's), which cost `rkt run` 5 to 300 ms. After `rkt run` returns the
/// overlay is still mounted below the exited pod, with what the app wrote; gc unmounts it and
/// removes the pod.
#[test]
fn ns_overlay_outlives_the_app_until_gc() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--net=none",
        "--tpm=off",
        &img,
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo written > /by-app",
    ]);
    out.assert_ok();
    let run = env.dir.join("pods/run");
    let uuid = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .next()
        .expect("a pod in run/")
        .file_name();
    let pod = run.join(&uuid);
    let root = pod.join("stage1/rootfs/opt/stage2/busybox-oci/rootfs");
    assert_eq!(rkt_tests::mounts_under(&pod), vec![root.clone()]);
    assert_eq!(
        std::fs::read_to_string(root.join("by-app")).unwrap(),
        "written\n"
    );
    let st = env.rkt(&["status", &uuid.to_string_lossy()]);
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(rkt_tests::mounts_under(&env.dir).is_empty());
    assert!(!pod.exists());
    assert!(!env.dir.join("pods/exited-garbage").join(&uuid).exists());
}
