//! stage1 `fly` (rkt's host-tool flavour): the app runs on its image's root in the host's
//! namespaces except the mount namespace, with full privileges; `--net` must be host; `rkt list`,
//! `status`, `enter`, `stop` and `gc` work; the TPM log names the stage1 `fly`.

mod tpm_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rkt_tests::{images, require_root, RktEnv, RktOutput};

const FLY: &str = "--stage1=fly";

/// `rkt [GLOBAL] run --net=host [EXTRA] busybox [APP FLAGS] --exec /inspect -- INSPECT`.
fn run_fly(
    env: &RktEnv,
    global: &[&str],
    extra: &[&str],
    app_flags: &[&str],
    inspect: &[&str],
) -> RktOutput {
    let img = images().busybox_oci_ref();
    let mut a = global.to_vec();
    a.extend(["--insecure-options=image", "run", "--net=host"]);
    a.extend_from_slice(extra);
    a.push(&img);
    a.extend_from_slice(app_flags);
    a.extend_from_slice(&["--exec", "/inspect", "--"]);
    a.extend_from_slice(inspect);
    env.rkt(&a)
}

fn own_ns(name: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{name}"))
        .unwrap()
        .display()
        .to_string()
}

/// The only pod under `--dir`, wherever its state put it.
fn the_pod(env: &RktEnv) -> PathBuf {
    let mut found = Vec::new();
    for s in ["run", "exited-garbage", "garbage", "prepared"] {
        if let Ok(r) = std::fs::read_dir(env.dir.join("pods").join(s)) {
            found.extend(r.map(|e| e.unwrap().path()));
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

fn no_pods(env: &RktEnv) -> Vec<PathBuf> {
    let Ok(states) = std::fs::read_dir(env.dir.join("pods")) else {
        return Vec::new();
    };
    states
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn app_runs_on_its_image_in_the_hosts_namespaces_with_full_privileges() {
    require_root();
    let env = RktEnv::new();
    assert!(!Path::new("/inspect").exists(), "the host has /inspect");
    let vol = env.scratch.join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "from-the-host").unwrap();
    let volume = format!("--volume=v,kind=host,source={}", vol.display());
    // rkt v1's image name for the flavour selects it too.
    let out = run_fly(
        &env,
        &[],
        &["--stage1-name=coreos.com/rkt/stage1-fly:1.30.0", &volume],
        &["--mount=volume=v,target=/vol", "--set-env=FLY_ENV=set"],
        &[
            "--echo=fly-hello",
            "--print-ns",
            "--print-caps",
            "--stat=/inspect",
            "--print-env=FLY_ENV",
            "--read-file=/vol/f",
            "--write-file=/vol/back",
            "--content=from-the-app",
            "--exit-code=7",
        ],
    );
    out.assert_code(7);
    out.assert_stdout_contains("fly-hello");
    // Host network, PID, IPC, UTS and cgroup namespaces; a mount namespace of its own.
    for ns in ["net", "pid", "ipc", "uts", "cgroup"] {
        assert_eq!(
            out.expect_value(&format!("NS_{}", ns.to_uppercase())),
            own_ns(ns),
            "{ns}\n{out}"
        );
    }
    assert_ne!(out.expect_value("NS_MNT"), own_ns("mnt"), "{out}");
    // Its root is the image: /inspect is a file only the image has.
    assert_eq!(out.expect_value("STAT_PATH"), "/inspect", "{out}");
    // Every capability this process holds (no bounding-set cut, no default 14).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    assert_eq!(out.expect_value("CAP_EFF"), own_bnd, "{out}");
    assert_eq!(out.expect_value("FLY_ENV"), "set", "{out}");
    out.assert_stdout_contains("from-the-host");
    assert_eq!(
        std::fs::read_to_string(vol.join("back")).unwrap(),
        "from-the-app"
    );
    let pod = the_pod(&env);
    assert_eq!(
        std::fs::read_to_string(pod.join("stage1-flavor"))
            .unwrap()
            .trim(),
        "fly"
    );
    assert_eq!(
        std::fs::read_to_string(pod.join("status/busybox-oci"))
            .unwrap()
            .trim(),
        "7"
    );
    // The app's mounts lived in its own mount namespace: nothing is left on the host.
    assert!(
        rkt_tests::mounts_under(&env.dir).is_empty(),
        "{:?}",
        rkt_tests::mounts_under(&env.dir)
    );
}

#[test]
fn net_other_than_host_is_refused_before_a_pod_exists_and_no_net_means_host() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    for net in ["--net=default", "--net=none", "--net"] {
        let a = vec![
            "--insecure-options=image",
            "run",
            FLY,
            net,
            img.as_str(),
            "--exec",
            "/bin/true",
        ];
        let out = env.rkt(&a);
        out.assert_code(254);
        out.assert_stderr_contains("stage1 fly");
        out.assert_stderr_contains("--net=host");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(no_pods(&env).is_empty(), "{:?}", no_pods(&env));
    }
    // Without --net, fly gets the host's network, as in rkt v1.
    let out = env.rkt(&[
        "--insecure-options=image",
        "run",
        FLY,
        img.as_str(),
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "readlink /proc/self/ns/net",
    ]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), own_ns("net"), "{out}");
}

#[test]
fn list_status_enter_stop_and_gc() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let uuid_file = env.scratch.join("uuid");
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let mut child = env.spawn(&[
        "--insecure-options=image",
        "run",
        FLY,
        "--net=host",
        &save,
        &img,
        "--name=long",
        "--set-env=FLY_ENV=in-enter",
        "--exec",
        "/inspect",
        "--",
        "--echo=started",
        "--sleep=120",
    ]);
    assert!(
        child.wait_for_stdout("started", 60),
        "{}",
        child.output_so_far()
    );
    let uuid = std::fs::read_to_string(&uuid_file)
        .unwrap()
        .trim()
        .to_string();
    env.rkt(&["status", "--wait-ready=30s", &uuid]).assert_ok();

    let list = env.rkt(&["list", "--no-legend", "--full"]);
    list.assert_ok();
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&uuid))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("running") && line.contains("long"), "{line}");

    // enter: in the app's root (the image's /inspect), the host's namespaces but the app's mount
    // namespace, the app's environment.
    let e = env.rkt(&[
        "enter",
        &uuid,
        "/bin/sh",
        "-c",
        "test -x /inspect && echo ROOT=image; echo ENV=$FLY_ENV; readlink /proc/self/ns/net; exit 3",
    ]);
    e.assert_code(3);
    e.assert_stdout_contains("ROOT=image");
    e.assert_stdout_contains("ENV=in-enter");
    e.assert_stdout_contains(&own_ns("net"));

    let st = env.rkt(&["status", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "running", "{st}");
    let pod = the_pod(&env);
    let app_pid: i32 = std::fs::read_to_string(pod.join("apps/long/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The app is a plain host process: its pid is in our PID namespace.
    assert!(Path::new(&format!("/proc/{app_pid}")).exists());

    env.rkt(&["stop", &uuid]).assert_ok();
    let out = child.wait_timeout(30);
    out.assert_code(143);
    assert!(!Path::new(&format!("/proc/{app_pid}")).exists());
    let st = env.rkt(&["status", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    assert_eq!(st.expect_value("app-long"), "143", "{st}");

    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(no_pods(&env).is_empty(), "{:?}", no_pods(&env));
    assert!(rkt_tests::mounts_under(&env.dir).is_empty());
}

#[test]
fn stop_force_kills_the_supervisor_and_the_app() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let uuid_file = env.scratch.join("uuid");
    let save = format!("--uuid-file-save={}", uuid_file.display());
    let mut child = env.spawn(&[
        "--insecure-options=image",
        "run",
        FLY,
        "--net=host",
        &save,
        &img,
        "--name=stubborn",
        "--exec",
        "/inspect",
        "--",
        "--ignore-signals",
        "--echo=started",
        "--sleep=120",
    ]);
    assert!(
        child.wait_for_stdout("started", 60),
        "{}",
        child.output_so_far()
    );
    let uuid = std::fs::read_to_string(&uuid_file)
        .unwrap()
        .trim()
        .to_string();
    env.rkt(&["status", "--wait-ready=30s", &uuid]).assert_ok();
    let pod = the_pod(&env);
    let app_pid = std::fs::read_to_string(pod.join("apps/stubborn/pid")).unwrap();
    let app_proc = PathBuf::from(format!("/proc/{}", app_pid.trim()));
    env.rkt(&["stop", "--force", &uuid]).assert_ok();
    child.wait_timeout(30).assert_code(137);
    // The app dies with its supervisor (parent-death signal). Orphaned, it is reaped by
    // whatever init is: gone or a zombie both mean dead.
    let dead = || {
        std::fs::read_to_string(app_proc.join("status"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(true)
    };
    for _ in 0..100 {
        if dead() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead(), "the app outlived rkt stop --force");
}

#[test]
fn several_apps_each_get_their_own_root_and_status() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "--insecure-options=image",
        "run",
        FLY,
        "--net=host",
        &img,
        "--name=a",
        "--exec",
        "/inspect",
        "--",
        "--echo=from-a",
        "---",
        &img,
        "--name=b",
        "--exec",
        "/inspect",
        "--",
        "--echo=from-b",
        "--exit-code=5",
    ]);
    out.assert_code(5);
    out.assert_stdout_contains("from-a");
    out.assert_stdout_contains("from-b");
    let pod = the_pod(&env);
    for (app, code) in [("a", "0"), ("b", "5")] {
        assert_eq!(
            std::fs::read_to_string(pod.join("status").join(app))
                .unwrap()
                .trim(),
            code
        );
    }
}

#[test]
fn measured_as_fly_in_execution_order() {
    require_root();
    let tpm = tpm_support::Swtpm::start();
    let env = RktEnv::new();
    let tcti = format!("--tpm-tcti={}", tpm.tcti());
    let out = run_fly(
        &env,
        &[&tcti],
        &[FLY, "--tpm=required"],
        &[],
        &["--echo=measured-fly"],
    );
    out.assert_ok();
    out.assert_stdout_contains("measured-fly");
    let uuid = the_pod(&env)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let json = env.rkt(&[&tcti, "tpm", "log", "--pod", &uuid, "--format=json"]);
    json.assert_ok();
    let events: Vec<serde_json::Value> = serde_json::from_str(json.stdout.trim()).unwrap();
    let data: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let labels: Vec<&str> = data.iter().map(|d| d.split(' ').next().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "rkt/stage0",
            "rkt/stage1/fly",
            "rkt/pod-manifest",
            "rkt/app"
        ],
        "{json}"
    );
    let stage1: serde_json::Value =
        serde_json::from_str(data[1].split_once(' ').unwrap().1).unwrap();
    assert_eq!(stage1["settings"]["flavor"], "fly", "{stage1}");
    assert_eq!(stage1["settings"]["net"], "host", "{stage1}");
    assert!(!json.stdout.contains("rkt/stage1/ns"), "{json}");
    env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid])
        .assert_ok()
        .assert_stdout_contains("matches the TPM");
}
