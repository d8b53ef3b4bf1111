//! A pod's life seen from outside, on both stage1 flavours (`flavours!` makes `NAME::ns` and
//! `NAME::kvm`): exit codes, `rkt status`/`list`/`gc`/`rm` around a pod that exits by itself,
//! run-prepared, `--pod-manifest`, and an owner killed mid-run. What the app sees inside is in
//! stage1_matrix.rs. One kvm pod = one VM boot (30-50 s here), so each test checks a whole story.

use std::path::Path;
use std::time::{Duration, Instant};

use rkt_tests::{flavours, images, Flavor, RktEnv};

fn busybox() -> String {
    images().busybox_oci_ref()
}

fn only_pod(env: &RktEnv, state: &str) -> String {
    let rd: Vec<String> = std::fs::read_dir(env.dir.join("pods").join(state))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rd.len(), 1, "pods in {state}: {rd:?}");
    rd[0].clone()
}

fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&p))
        .collect()
}

/// Waits until `rkt status --wait-ready` says the pod runs.
fn wait_running(env: &RktEnv, f: Flavor, uuid_file: &Path) -> String {
    let start = Instant::now();
    while !uuid_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no uuid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let uuid = std::fs::read_to_string(uuid_file).unwrap();
    let st = env.rkt(&[
        "status",
        &format!("--wait-ready={}s", f.start_secs()),
        &uuid,
    ]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "running", "{st}");
    uuid
}

flavours!(
    pod_that_exits_by_itself_status_list_gc_and_rm,
    run_prepared_runs_a_prepared_pod_with_its_start_flags,
    pod_manifest_runs_the_apps_it_describes,
    pod_whose_owner_was_killed_is_exited_and_gc_cleans_it,
);

/// `--uuid-file-save`; `rkt status --wait-ready`, `--wait=100ms` timing out and `--wait` returning
/// when the pod exits; rkt run's exit code is the app's; status and list afterwards; gc keeps the
/// exited pod within the grace period (moved to garbage); rm removes it.
fn pod_that_exits_by_itself_status_list_gc_and_rm(f: Flavor) {
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--",
        "--sleep=3",
        "--exit-code=7",
    ]);
    let uuid = wait_running(&env, f, &uuid_file);
    assert_eq!(uuid, only_pod(&env, "run"));
    let short = env.rkt(&["status", "--wait=100ms", &uuid]);
    short.assert_code(254);
    short.assert_stderr_contains("timed out");
    let st = env.rkt(&["status", "--wait", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited");
    assert_eq!(st.expect_value("exited"), "true");
    assert_eq!(st.expect_value("app-busybox"), "7");
    assert!(st.expect_value("started").ends_with("+0000 UTC"), "{st}");
    st.expect_value("pid");
    child.wait_timeout(60).assert_code(7);
    let list = env.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("\texited\t"), "{list}");
    if f == Flavor::Kvm {
        let pod = env.dir.join("pods/run").join(&uuid);
        assert!(
            !pod.join("stage1/vsock").exists(),
            "the VMM removed its vsock socket"
        );
    }

    let out = env.rkt(&["gc"]);
    out.assert_ok();
    out.assert_stderr_contains(&format!("moving pod \"{uuid}\" to garbage"));
    out.assert_stderr_contains("still within grace period (30m0s)");
    assert_eq!(only_pod(&env, "exited-garbage"), uuid);
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited garbage");
    env.rkt(&["rm", &uuid]).assert_ok();
    assert!(std::fs::read_dir(env.dir.join("pods/exited-garbage"))
        .unwrap()
        .next()
        .is_none());
}

/// The prepared pod keeps its stage1 (from `prepare`) and takes start flags from run-prepared.
fn run_prepared_runs_a_prepared_pod_with_its_start_flags(f: Flavor) {
    let env = f.env();
    let img = busybox();
    let out = env.rkt(&[
        "prepare",
        f.flag(),
        "--quiet",
        &img,
        "--exec=/inspect",
        "--",
        "--print-hostname",
        "--exit-code=4",
    ]);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    let flavor_file = env
        .dir
        .join("pods/prepared")
        .join(&uuid)
        .join("stage1-flavor");
    assert_eq!(std::fs::read_to_string(flavor_file).unwrap(), f.name());
    let out = env.rkt(&["run-prepared", "--net=none", "--hostname=prep", &uuid[..8]]);
    out.assert_code(4);
    assert_eq!(out.expect_value("HOSTNAME"), "prep");
    assert_eq!(only_pod(&env, "run"), uuid);
    let again = env.rkt(&["run-prepared", &uuid]);
    again.assert_code(254);
    again.assert_stderr_contains("is not prepared");
}

fn pod_manifest_runs_the_apps_it_describes(f: Flavor) {
    let env = f.env();
    // Import the image, then describe the pod by image ID.
    let img = busybox();
    let out = env.rkt(&["prepare", f.flag(), "--quiet", &img]);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    let manifest = env.rkt(&["cat-manifest", &uuid]).stdout;
    let id = manifest
        .split("\"id\": \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let pm = format!(
        r#"{{"acKind":"PodManifest","acVersion":"0.8.11","apps":[{{"name":"from-manifest","image":{{"name":"busybox","id":"{id}"}},"app":{{"exec":["/inspect","--print-env=X","--exit-code=9"],"user":"0","group":"0","environment":[{{"name":"X","value":"y"}}]}}}}]}}"#
    );
    let file = env.scratch.join("pod.json");
    std::fs::write(&file, pm).unwrap();
    let out = env.rkt(&[
        "run",
        f.flag(),
        "--net=none",
        &format!("--pod-manifest={}", file.display()),
    ]);
    out.assert_code(9);
    assert_eq!(out.expect_value("X"), "y");
}

/// The owner of a running pod is SIGKILLed with everything it started (on kvm that owner is the
/// VMM): the pod shows as exited (its lock went with it), and gc removes it and every mount it
/// left, but not the files of its host volume.
fn pod_whose_owner_was_killed_is_exited_and_gc_cleans_it(f: Flavor) {
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let host = env.scratch.join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep"), "precious").unwrap();
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &format!("--volume=v,kind=host,source={}", host.display()),
        &img,
        "--exec=/inspect",
        "--mount=volume=v,target=/v",
        "--",
        "--sleep=900",
    ]);
    let uuid = wait_running(&env, f, &uuid_file);
    child.kill();
    let st = env.rkt(&["status", "--wait=30s", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited");
    let list = env.rkt(&["list", "--no-legend"]);
    assert!(list.stdout.contains("\texited\t"), "{list}");
    env.rkt(&["gc", "--mark-only"]).assert_ok();
    assert_eq!(only_pod(&env, "exited-garbage"), uuid);
    let out = env.rkt(&["gc", "--grace-period=0s"]);
    out.assert_ok();
    out.assert_stdout_contains(&format!("Garbage collecting pod \"{uuid}\""));
    assert!(std::fs::read_dir(env.dir.join("pods/exited-garbage"))
        .unwrap()
        .next()
        .is_none());
    let left = mounts_under(&env.dir);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(host.join("keep")).unwrap(),
        "precious"
    );
}

/// ns only: the pod's supervisor outlives a SIGKILLed `rkt run` and keeps the pod running until
/// `rkt stop`. On kvm `rkt run` is the VMM, so killing it ends the pod (the owner-killed test).
#[test]
fn ns_pod_outlives_its_killed_rkt_process_until_stopped() {
    let f = Flavor::Ns;
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let img = busybox();
    let mut child = env.spawn(&[
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &img,
        "--name=busybox",
        "--exec=/inspect",
        "--",
        "--sleep=60",
    ]);
    let uuid = wait_running(&env, f, &uuid_file);
    child.signal(libc::SIGKILL);
    child.wait_timeout(30);
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "running", "{st}");
    env.rkt(&["stop", &uuid]).assert_ok();
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    assert_eq!(st.expect_value("app-busybox"), "143");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    let left = mounts_under(&env.dir);
    assert!(left.is_empty(), "{left:?}");
}
