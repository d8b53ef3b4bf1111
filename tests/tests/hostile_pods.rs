//! Hostile apps against the runtime privileges of a pod (issue 9, `--stage1=ns`, and one kvm
//! pod for the policies the guest applies too): host device
//! nodes, `rkt enter`'s privileges, namespaces from clone/unshare, what PID 1 (the supervisor)
//! shows to the apps, and the pod's cgroups below the caller's. Each test asserts the refusal
//! as the app sees it (errno names printed by `/inspect`), as root and as uid 65534.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rkt_tests::{images, Flavor, RktEnv, RktOutput};

/// `rkt run --stage1=ns --net=none [POD_FLAGS] busybox --name=main [APP_FLAGS] --exec /inspect -- INSPECT`.
fn run(env: &RktEnv, pod_flags: &[&str], app_flags: &[&str], inspect: &[&str]) -> RktOutput {
    env.rkt(&args(pod_flags, app_flags, inspect))
}

fn args<'a>(pod_flags: &[&'a str], app_flags: &[&'a str], inspect: &[&'a str]) -> Vec<&'a str> {
    args_on(Flavor::Ns, pod_flags, app_flags, inspect)
}

fn args_on<'a>(
    f: Flavor,
    pod_flags: &[&'a str],
    app_flags: &[&'a str],
    inspect: &[&'a str],
) -> Vec<&'a str> {
    let img: &'static str = Box::leak(images().busybox_oci_ref().into_boxed_str());
    let mut a = vec!["run", f.flag(), "--net=none"];
    a.extend_from_slice(pod_flags);
    a.extend([img, "--name=main"]);
    a.extend_from_slice(app_flags);
    a.extend(["--exec", "/inspect", "--"]);
    a.extend_from_slice(inspect);
    a
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // mknod's mode goes through the umask.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
}

/// A host directory holding world-writable device nodes, mounted into the app at /nodes: the
/// nodes are already there when the app starts, as an image's would be.
fn node_volume(env: &RktEnv) -> String {
    let d = env.scratch.join("nodes");
    std::fs::create_dir(&d).unwrap();
    mknod(&d.join("loop0"), libc::S_IFBLK, 7, 0);
    mknod(&d.join("kvm"), libc::S_IFCHR, 10, 232);
    mknod(&d.join("loop-control"), libc::S_IFCHR, 10, 237);
    mknod(&d.join("null"), libc::S_IFCHR, 1, 3);
    format!("--volume=nodes,kind=host,source={}", d.display())
}

fn result_of<'a>(values: &'a [String], path: &str) -> &'a str {
    values
        .iter()
        .find_map(|v| v.strip_prefix(path).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no result for {path} in {values:?}"))
}

/// The device probes every app runs: pre-existing nodes and nodes it makes itself.
const DEVICE_PROBES: &[&str] = &[
    "--open-dev=/nodes/loop0",
    "--open-dev=/nodes/kvm",
    "--open-dev=/nodes/loop-control",
    "--open-dev=/nodes/null",
    "--open-dev=/dev/null",
    "--open-dev=/dev/zero",
    "--open-dev=/dev/full",
    "--open-dev=/dev/urandom",
    "--open-dev=/dev/ptmx",
    "--mknod=/dev/myloop:b:7:0",
    "--mknod=/dev/mykvm:c:10:232",
    "--mknod=/dev/mynull:c:1:3",
    "--open-dev=/dev/myloop",
    "--open-dev=/dev/mynull",
];

fn assert_device_policy(out: &RktOutput, who: &str) {
    out.assert_ok();
    let open = out.values("OPEN");
    let mk = out.values("MKNOD");
    for blocked in ["/nodes/loop0", "/nodes/kvm", "/nodes/loop-control"] {
        assert_eq!(
            result_of(&open, blocked),
            "EPERM",
            "{who}: {blocked}\n{out}"
        );
    }
    for allowed in [
        "/nodes/null",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/urandom",
        "/dev/ptmx",
    ] {
        assert_eq!(result_of(&open, allowed), "OK", "{who}: {allowed}\n{out}");
    }
    // CAP_MKNOD stays in the default set; the devices cgroup decides which nodes can be made.
    assert_eq!(result_of(&mk, "/dev/myloop"), "EPERM", "{who}\n{out}");
    assert_eq!(result_of(&mk, "/dev/mykvm"), "EPERM", "{who}\n{out}");
    assert_eq!(result_of(&mk, "/dev/mynull"), "OK", "{who}\n{out}");
    assert_eq!(result_of(&open, "/dev/myloop"), "ENOENT", "{who}\n{out}");
    assert_eq!(result_of(&open, "/dev/mynull"), "OK", "{who}\n{out}");
}

/// Host device nodes cannot be opened or made, by root or by uid 65534 (which keeps the default
/// capabilities, CAP_MKNOD included, as ambient ones); the devices of the app's /dev work.
#[test]
fn apps_cannot_open_or_make_host_devices() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    let vol = node_volume(&env);
    let mount = "--mount=volume=nodes,target=/nodes";
    let out = run(&env, &[&vol], &[mount], DEVICE_PROBES);
    assert_device_policy(&out, "root");
    let out = run(
        &env,
        &[&vol],
        &[mount, "--user=65534", "--group=65534"],
        DEVICE_PROBES,
    );
    assert_device_policy(&out, "uid 65534");
}

/// The same device allow-list and namespace refusals hold for an app in a kvm pod (the guest
/// init applies them with stage2's code, devices through a cgroup2 BPF program): one boot, as
/// root, host device nodes arriving through a volume and nodes the app makes.
#[test]
fn kvm_apps_get_the_same_device_and_namespace_policy() {
    rkt_tests::require_root();
    let env = Flavor::Kvm.env();
    let vol = node_volume(&env);
    let mut probes = DEVICE_PROBES.to_vec();
    probes.push("--try-userns");
    let out = env.rkt(&args_on(
        Flavor::Kvm,
        &[&vol],
        &["--mount=volume=nodes,target=/nodes"],
        &probes,
    ));
    assert_device_policy(&out, "kvm root");
    assert_eq!(out.expect_value("CLONE_NEWUSER"), "EPERM", "{out}");
    assert_eq!(out.expect_value("CLONE3"), "ENOSYS", "{out}");
    assert_eq!(out.expect_value("UNSHARE_NEWUSER"), "EPERM", "{out}");
}

/// An app's very first instruction already sees a hardened PID 1: its mount table holds only the
/// supervisor's empty root, not the host's. The reader is the first of eight apps (a static
/// binary, no shell start-up), which makes the launch window as wide as it gets.
#[test]
fn the_first_thing_an_app_reads_of_pid1_is_not_the_host() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut a: Vec<String> = ["run", Flavor::Ns.flag(), "--net=none"]
        .map(String::from)
        .to_vec();
    for i in 0..8 {
        if i > 0 {
            a.push("---".into());
        }
        let read = if i == 0 {
            "--read-file=/proc/1/mountinfo"
        } else {
            "--exit-code=0"
        };
        a.extend([
            img.clone(),
            format!("--name=app{i}"),
            "--exec=/inspect".into(),
            "--".into(),
            read.into(),
        ]);
    }
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = env.rkt(&args);
    out.assert_ok();
    let mounts: Vec<&str> = out.stdout.lines().filter(|l| l.contains(" - ")).collect();
    assert_eq!(mounts.len(), 1, "{out}");
    assert!(mounts[0].contains(" - tmpfs "), "{out}");
}

/// A device node given as a volume is the user's explicit choice (rkt v1 allowed those too):
/// it opens read-write, and read-only when the volume is.
#[test]
fn device_volumes_are_allowed_as_given() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    let d = env.scratch.join("dev");
    std::fs::create_dir(&d).unwrap();
    // loop-control: opening it needs no capability (only its ioctls do).
    mknod(&d.join("loop-control"), libc::S_IFCHR, 10, 237);
    let out = run(
        &env,
        &[&format!(
            "--volume=k,kind=host,source={}",
            d.join("loop-control").display()
        )],
        &["--mount=volume=k,target=/k"],
        &["--open-dev=/k"],
    );
    out.assert_ok();
    assert_eq!(result_of(&out.values("OPEN"), "/k"), "OK", "{out}");
}

/// clone with namespace flags and unshare(CLONE_NEWUSER) are refused (EPERM), clone3 answers
/// ENOSYS so that libcs fall back to clone; unless the app keeps CAP_SYS_ADMIN (as Docker).
#[test]
fn default_seccomp_refuses_new_namespaces() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    for user in [&["--user=0"][..], &["--user=65534", "--group=65534"][..]] {
        let out = run(&env, &[], user, &["--try-userns"]);
        out.assert_ok();
        assert_eq!(out.expect_value("CLONE_NEWUSER"), "EPERM", "{out}");
        assert_eq!(out.expect_value("CLONE_NEWNS"), "EPERM", "{out}");
        assert_eq!(out.expect_value("CLONE3"), "ENOSYS", "{out}");
        assert_eq!(out.expect_value("UNSHARE_NEWUSER"), "EPERM", "{out}");
    }
    // With CAP_SYS_ADMIN the filter leaves clone's flags alone (EINVAL: clone3's bad size).
    let out = run(
        &env,
        &[],
        &["--caps-retain=CAP_SYS_ADMIN"],
        &["--try-userns"],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("CLONE_NEWNS"), "OK", "{out}");
    assert_eq!(out.expect_value("CLONE3"), "ENOSYS", "{out}");
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn pod_dir(env: &RktEnv) -> PathBuf {
    let d = env.dir.join("pods/run");
    let mut found = None;
    wait_for("the pod directory", 30, || {
        found = std::fs::read_dir(&d)
            .ok()
            .and_then(|mut r| r.next())
            .map(|e| e.unwrap().path());
        found.is_some()
    });
    found.unwrap()
}

/// rkt's default capability set as /proc/self/status prints it.
const DEFAULT_CAPS: &str = "00000000a80425fb";

const MARKER: &str = "RKT_HOSTILE_MARKER=host-secret-1234";

/// `rkt enter` runs the command as the app runs: the app's user, capabilities, seccomp filter
/// and no_new_privs; mount(2) and host devices are refused; PID 1's environment and command
/// line are not the host caller's. PID 1 itself keeps only CAP_KILL, no_new_privs and seccomp,
/// and shows no host mount in its mountinfo.
#[test]
fn enter_gets_the_apps_privileges_and_pid1_shows_nothing_of_the_host() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    let vol = node_volume(&env);
    let a = args(
        &[&vol],
        &[
            "--mount=volume=nodes,target=/nodes",
            "--user=65534",
            "--group=65534",
        ],
        &["--echo=started", "--sleep=120"],
    );
    let (k, v) = MARKER.split_once('=').unwrap();
    let mut cmd = env.command(&a);
    cmd.env(k, v);
    let mut child = rkt_tests::RktChild::spawn_command(cmd, &env.scratch);
    assert!(
        child.wait_for_stdout("started", 60),
        "{}",
        child.output_so_far()
    );
    let pod = pod_dir(&env);
    let uuid = pod.file_name().unwrap().to_str().unwrap().to_string();
    // Sanity: the caller's marker is where the host can see it.
    let sup: i32 = std::fs::read_to_string(pod.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let host_env = std::fs::read(format!("/proc/{sup}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&host_env).contains(MARKER),
        "PID 1 environ still the caller's"
    );
    let cmdline = std::fs::read(format!("/proc/{sup}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert_eq!(cmdline, "rkt-pod\0", "{cmdline:?}");

    let out = env.rkt(&[
        "enter",
        &uuid,
        "/inspect",
        "--print-user",
        "--print-caps",
        "--print-seccomp",
        "--print-no-new-privs",
        "--check-syscall=mount",
        "--open-dev=/nodes/loop0",
        "--read-file=/proc/1/environ",
        "--read-file=/proc/1/cmdline",
        "--read-file=/proc/1/mountinfo",
        "--read-file=/proc/1/status",
    ]);
    // --read-file of a refused file makes inspect exit 1; everything else is in the output.
    assert!(out.code == 0 || out.code == 1, "{out}");
    assert_eq!(out.expect_value("UID"), "65534", "{out}");
    assert_eq!(out.expect_value("EUID"), "65534", "{out}");
    // rkt's default set in every set, as the app itself has it (see the app test in stage1_matrix).
    for set in ["CAP_EFF", "CAP_PRM", "CAP_BND", "CAP_INH", "CAP_AMB"] {
        assert_eq!(out.expect_value(set), DEFAULT_CAPS, "{set}\n{out}");
    }
    assert_eq!(out.expect_value("SECCOMP"), "2", "{out}");
    assert_eq!(out.expect_value("NO_NEW_PRIVS"), "1", "{out}");
    assert_eq!(out.expect_value("SYSCALL_mount"), "EPERM", "{out}");
    assert_eq!(
        result_of(&out.values("OPEN"), "/nodes/loop0"),
        "EPERM",
        "{out}"
    );
    assert!(!out.stdout.contains(MARKER), "{out}");
    let contents = out.values("CONTENT");
    let errnos = out.values("READ_ERRNO");
    // environ: unreadable (PID 1 is not dumpable); cmdline: rkt-pod, not `rkt run ...`.
    assert!(
        errnos.iter().any(|e| e == "EACCES" || e == "EPERM"),
        "{out}"
    );
    assert!(!out.stdout.contains("--stage1"), "{out}");
    assert!(
        !out.stdout.contains(env.dir.to_str().unwrap()),
        "host paths in PID 1's files\n{out}"
    );
    // /proc/1/status (multi-line: its lines follow CONTENT=Name:...): CAP_KILL only.
    assert!(
        contents
            .iter()
            .any(|c| c.trim_end_matches('\0') == "rkt-pod"),
        "{out}"
    );
    for line in [
        "CapEff:\t0000000000000020",
        "CapBnd:\t0000000000000020",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(out.stdout.lines().any(|l| l == line), "{line}\n{out}");
    }

    // The same from the app itself, as root with the default capabilities.
    let out = run(
        &env,
        &[],
        &[],
        &[
            "--sleep=1",
            "--read-file=/proc/1/environ",
            "--read-file=/proc/1/mountinfo",
            "--read-file=/proc/1/cmdline",
            "--stat=/proc/1/root/etc",
        ],
    );
    assert!(!out.stdout.contains(MARKER), "{out}");
    assert!(!out.stdout.contains(env.dir.to_str().unwrap()), "{out}");
    assert!(!out.stdout.contains("STAT_TYPE"), "{out}");
    child.kill();
    env.rkt(&["gc", "--grace-period=0s"]);
}

/// The pod's cgroups live below the cgroup of the process that ran `rkt run`, so a service
/// manager killing its unit's cgroup tree after `rkt run` was SIGKILLed kills the apps too.
#[test]
fn pod_cgroups_are_below_the_callers_cgroup() {
    rkt_tests::require_root();
    let env = RktEnv::new();
    let name = format!("rkt-test-{}", std::process::id());
    let unit = Path::new("/sys/fs/cgroup/pids").join(&name);
    if !Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        eprintln!("skipped: needs the cgroup v1 pids hierarchy");
        return;
    }
    std::fs::create_dir(&unit).unwrap();
    let a = args(&[], &[], &["--echo=started", "--sleep=120"]);
    // The shell moves itself into the "unit" and execs rkt there.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        unit.display()
    );
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(script).arg(rkt_tests::rkt_bin());
    cmd.arg(format!("--dir={}", env.dir.display()));
    cmd.args(rkt_tests::insecure_image(&a));
    let mut child = rkt_tests::RktChild::spawn_command(cmd, &env.scratch);
    let ok = child.wait_for_stdout("started", 60);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ok, "{}", child.output_so_far());
        let pod = pod_dir(&env);
        let uuid = pod.file_name().unwrap().to_str().unwrap().to_string();
        let app_pid: i32 = std::fs::read_to_string(pod.join("apps/main/pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let own = std::fs::read_to_string(format!("/proc/{app_pid}/cgroup")).unwrap();
        let pids_line = own.lines().find(|l| l.contains(":pids:")).unwrap();
        assert!(
            pids_line.ends_with(&format!(":/{name}/rkt/{uuid}/main")),
            "{pids_line}"
        );
        // SIGKILL rkt run: the pod keeps running (by design), inside the unit.
        child.signal(libc::SIGKILL);
        child.wait_timeout(30);
        assert!(Path::new(&format!("/proc/{app_pid}")).exists());
        // The service manager stops the unit: every process in its cgroup tree.
        kill_tree(&unit);
        wait_for("the app to die", 10, || {
            !Path::new(&format!("/proc/{app_pid}")).exists()
        });
        env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
        assert!(!unit.join("rkt").join(&uuid).exists());
    }));
    kill_tree(&unit);
    remove_tree(&unit);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn kill_tree(dir: &Path) {
    for _ in 0..20 {
        let mut any = false;
        walk(dir, &mut |d| {
            for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(p) = pid.trim().parse::<i32>() {
                    any = true;
                    // SAFETY: kill(2).
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        });
        if !any {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    f(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), f);
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
