//! stage1 `kvm` end to end: `rkt run --stage1=kvm` boots the guest kernel from kernel-config/ in
//! rkt's own VMM, with the static guest init, and runs the busybox image's `/inspect`. A boot takes
//! about two minutes on this machine's nested PVM KVM, so each boot checks several behaviours,
//! which must match the ns flavour's. Needs root, /dev/kvm, the kernel (kernel-config/build.sh)
//! and the static guest init (scripts/test.sh builds it); missing pieces FAIL, they never skip.

use std::path::Path;

use rkt_tests::{images, require_root, RktEnv};

/// Boot + pod, generously: the kernel alone takes ~2 min under PVM and the machine is shared.
const BOOT_TIMEOUT: u64 = 600;

fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the stage1 kvm tests cannot run on this machine"
    );
}

#[test]
fn kvm_refuses_host_networking_in_one_line_without_booting() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=host",
        &img,
        "--exec=/inspect",
    ]);
    out.assert_code(254);
    // One line, the last one, names the problem (stage0 may print warnings before it).
    let last = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("--net=host is not supported") && last.starts_with("rkt: "),
        "{out}"
    );
    assert_eq!(out.stderr.matches("--net=host").count(), 1, "{out}");
}

/// One boot: output on stdout and stderr, the exit code, env, user, working directory,
/// hostname, a host volume (read and written through virtio-fs), `rkt status` afterwards.
#[test]
fn kvm_runs_the_pod_with_ns_semantics() {
    require_root();
    require_kvm();
    let mut env = RktEnv::new();
    env.set_timeout(BOOT_TIMEOUT);
    let host = env.scratch.join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from the host").unwrap();
    // The app runs as uid 1000.
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let img = images().busybox_oci_ref();
    let vol = format!("--volume=data,kind=host,source={}", host.display());
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=none",
        "--hostname=kvmhost",
        "--set-env=FROM_SET_ENV=1",
        &vol,
        &img,
        "--name=main",
        "--user=user",
        "--environment=FOO=bar baz",
        "--working-dir=/home/user",
        "--mount=volume=data,target=/mnt/data",
        "--exec",
        "/inspect",
        "--",
        "--print-user",
        "--print-env=FOO",
        "--print-env=FROM_SET_ENV",
        "--print-env=AC_APP_NAME",
        "--print-env=HOME",
        "--print-cwd",
        "--print-hostname",
        "--read-file=/mnt/data/f",
        "--write-file=/mnt/data/g",
        "--content=from the guest",
        "--echo-stderr=to-stderr",
        "--exit-code=7",
    ]);
    out.assert_code(7);
    assert_eq!(out.expect_value("UID"), "1000");
    assert_eq!(out.expect_value("FOO"), "bar baz");
    assert_eq!(out.expect_value("FROM_SET_ENV"), "1");
    assert_eq!(out.expect_value("AC_APP_NAME"), "main");
    assert_eq!(out.expect_value("HOME"), "/home/user");
    assert_eq!(out.expect_value("CWD"), "/home/user");
    assert_eq!(out.expect_value("HOSTNAME"), "kvmhost");
    assert_eq!(out.expect_value("CONTENT"), "from the host");
    assert_eq!(out.expect_value("WROTE"), "/mnt/data/g");
    out.assert_stderr_contains("to-stderr");
    assert_eq!(
        std::fs::read_to_string(host.join("g")).unwrap(),
        "from the guest"
    );
    let list = env.rkt(&["list", "--no-legend", "--full"]);
    list.assert_ok();
    let uuid = list
        .stdout
        .split_whitespace()
        .next()
        .expect("one pod listed")
        .to_string();
    let status = env.rkt(&["status", &uuid]);
    status.assert_ok();
    status.assert_stdout_contains("app-main=7");
}

/// One boot: two apps with their own roots, `rkt enter` into each (output and exit code come
/// back over vsock), then `rkt stop` ends the pod gracefully (143, as on ns).
#[test]
fn kvm_enter_picks_an_app_and_stop_ends_the_pod() {
    require_root();
    require_kvm();
    let mut env = RktEnv::new();
    env.set_timeout(120);
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=none",
        &img,
        "--name=a",
        "--environment=WHO=a",
        "--exec",
        "/inspect",
        "--",
        "--write-file=/only-in-a",
        "--content=1",
        "--echo=a-started",
        "--sleep=900",
        "---",
        &img,
        "--name=b",
        "--environment=WHO=b",
        "--exec",
        "/inspect",
        "--",
        "--sleep=900",
    ]);
    assert!(
        child.wait_for_stdout("a-started", BOOT_TIMEOUT),
        "{}",
        child.output_so_far()
    );
    let run = env.dir.join("pods/run");
    let uuid = std::fs::read_dir(&run)
        .unwrap()
        .next()
        .expect("a running pod")
        .unwrap()
        .file_name();
    let uuid = uuid.to_string_lossy().into_owned();
    let out = env.rkt(&[
        "enter",
        "--app=b",
        &uuid,
        "/inspect",
        "--print-env=WHO",
        "--stat=/only-in-a",
    ]);
    out.assert_code(1);
    assert_eq!(out.expect_value("WHO"), "b");
    assert_eq!(out.expect_value("STAT_ERRNO"), "ENOENT");
    let out = env.rkt(&[
        "enter",
        "--app=a",
        &uuid,
        "/inspect",
        "--print-env=WHO",
        "--stat=/only-in-a",
    ]);
    out.assert_ok();
    assert_eq!(out.expect_value("WHO"), "a");
    env.rkt(&["stop", &uuid]).assert_ok();
    child.wait_timeout(60).assert_code(143);
}

/// One boot: `--no-overlay`, a kind=empty volume, `--memory` and `--cpu` (cgroup limits inside
/// the guest; guest RAM sized from `--memory`), then `rkt gc` removes the exited pod.
#[test]
fn kvm_no_overlay_empty_volume_memory_and_gc() {
    require_root();
    require_kvm();
    let mut env = RktEnv::new();
    env.set_timeout(BOOT_TIMEOUT);
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=none",
        "--no-overlay",
        "--volume=scratch,kind=empty",
        &img,
        "--name=main",
        "--memory=512Mi",
        "--cpu=500m",
        "--mount=volume=scratch,target=/scratch",
        "--exec",
        "/inspect",
        "--",
        "--print-cgroup-limits",
        "--write-file=/scratch/x",
        "--content=in the empty volume",
        "--write-file=/etc/written-in-copy",
        "--content=1",
        "--read-file=/proc/meminfo",
    ]);
    out.assert_ok();
    assert_eq!(out.expect_value("MEMORY_LIMIT"), (512u64 << 20).to_string());
    assert_eq!(out.expect_value("CPU_QUOTA"), "50000", "{out}");
    assert_eq!(out.expect_value("CPU_PERIOD"), "100000", "{out}");
    assert_eq!(out.values("WROTE"), ["/scratch/x", "/etc/written-in-copy"]);
    // Guest RAM = 512 MiB + 128 MiB for the guest kernel and init, minus what the kernel reserves.
    let mem_kb: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CONTENT=MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    assert!(
        (580 * 1024..=640 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB"
    );
    let pods = env.dir.join("pods");
    let pod = ["run", "exited-garbage"]
        .iter()
        .filter_map(|s| std::fs::read_dir(pods.join(s)).ok()?.next())
        .next()
        .expect("the exited pod")
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(pod.join("sharedVolumes/scratch/x")).unwrap(),
        "in the empty volume"
    );
    assert!(!pod.join("stage1/vsock").exists(), "vsock socket removed");
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    assert!(!pod.exists(), "gc removed {}", pod.display());
}

/// SIGTERM to `rkt run` (what `rkt stop` sends) stops the apps gracefully; one that ignores it is
/// SIGKILLed after stage2's 10 s timeout inside the guest: 137, as on ns.
#[test]
fn kvm_stop_kills_apps_that_ignore_sigterm_after_the_timeout() {
    require_root();
    require_kvm();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=kvm",
        "--net=none",
        &img,
        "--name=main",
        "--exec",
        "/bin/sh",
        "--",
        "-c",
        "trap '' TERM; echo started; while true; do sleep 1; done",
    ]);
    assert!(
        child.wait_for_stdout("started", BOOT_TIMEOUT),
        "{}",
        child.output_so_far()
    );
    let t = std::time::Instant::now();
    child.signal(libc::SIGTERM);
    let out = child.wait_timeout(60);
    let took = t.elapsed();
    out.assert_code(137);
    assert!(took.as_secs() >= 9 && took.as_secs() < 25, "took {took:?}");
}
