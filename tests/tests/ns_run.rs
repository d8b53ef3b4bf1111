//! stage1 `ns` end to end: `rkt run --stage1=ns` with the busybox image and its `/inspect` app,
//! one behaviour per test, asserting what the app sees from inside the pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rkt_tests::{images, require_root, RktEnv, RktOutput};

/// `rkt run --stage1=ns --net=none IMAGE <app flags> --exec /inspect -- <inspect args>`.
fn run(env: &RktEnv, pod_flags: &[&str], app_flags: &[&str], inspect: &[&str]) -> RktOutput {
    let img = images().busybox_oci_ref();
    let mut a: Vec<&str> = vec![
        "run",
        "--insecure-options=image",
        "--stage1=ns",
        "--net=none",
    ];
    a.extend_from_slice(pod_flags);
    a.push(&img);
    a.push("--name=main");
    a.extend_from_slice(app_flags);
    a.extend_from_slice(&["--exec", "/inspect", "--"]);
    a.extend_from_slice(inspect);
    env.rkt(&a)
}

fn run_ok(env: &RktEnv, pod_flags: &[&str], app_flags: &[&str], inspect: &[&str]) -> RktOutput {
    let out = run(env, pod_flags, app_flags, inspect);
    out.assert_ok();
    out
}

fn uuid_of(pod: &Path) -> String {
    pod.file_name().unwrap().to_string_lossy().into_owned()
}

fn cgroup_dirs(uuid: &str) -> Vec<PathBuf> {
    ["memory", "cpu", "pids", "unified"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("rkt").join(uuid))
        .chain(std::iter::once(Path::new("/sys/fs/cgroup/rkt").join(uuid)))
        .filter(|p| p.exists())
        .collect()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn exit_code_is_the_apps() {
    require_root();
    let env = RktEnv::new();
    let out = run(&env, &[], &[], &["--echo=bye", "--exit-code=42"]);
    out.assert_code(42);
    out.assert_stdout_contains("bye");
    let pod = pod_dir_any(&env);
    assert_eq!(
        std::fs::read_to_string(pod.join("status/main")).unwrap(),
        "42\n"
    );
}

#[test]
fn environment_and_working_dir() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &["--set-env=FROM_SET_ENV=1"],
        &["--environment=FOO=bar baz", "--working-dir=/home/user"],
        &[
            "--print-env=FOO",
            "--print-env=FROM_SET_ENV",
            "--print-env=AC_APP_NAME",
            "--print-env=PATH",
            "--print-cwd",
        ],
    );
    assert_eq!(out.expect_value("FOO"), "bar baz");
    assert_eq!(out.expect_value("FROM_SET_ENV"), "1");
    assert_eq!(out.expect_value("AC_APP_NAME"), "main");
    assert!(out.expect_value("PATH").contains("/bin"), "{out}");
    assert_eq!(out.expect_value("CWD"), "/home/user");
}

#[test]
fn user_and_group_by_number() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[],
        &["--user=4242", "--group=4343"],
        &["--print-user", "--print-groups"],
    );
    assert_eq!(out.expect_value("UID"), "4242");
    assert_eq!(out.expect_value("EUID"), "4242");
    assert_eq!(out.expect_value("GID"), "4343");
    assert_eq!(out.expect_value("GROUPS"), "");
}

#[test]
fn user_and_group_by_name_and_supplementary_gids() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[],
        &["--user=user", "--group=staff", "--supplementary-gids=10,29"],
        &["--print-user", "--print-groups", "--print-env=HOME"],
    );
    assert_eq!(out.expect_value("UID"), "1000");
    assert_eq!(out.expect_value("GID"), "50");
    assert_eq!(out.expect_value("GROUPS"), "10,29");
    assert_eq!(out.expect_value("HOME"), "/home/user");
}

#[test]
fn unknown_user_fails_the_app_with_one_line() {
    require_root();
    let env = RktEnv::new();
    let out = run(&env, &[], &["--user=nosuchuser"], &["--print-user"]);
    out.assert_code(254);
    out.assert_stderr_contains("nosuchuser");
    assert!(out.value("UID").is_none(), "{out}");
}

#[test]
fn readonly_rootfs() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &[],
        &["--readonly-rootfs=true"],
        &[
            "--write-file=/etc/x",
            "--content=1",
            "--write-file=/tmp/y",
            "--content=1",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.values("WRITE_ERRNO"), vec!["EROFS", "EROFS"], "{out}");
    let out = run_ok(&env, &[], &[], &["--write-file=/etc/x", "--content=1"]);
    assert_eq!(out.expect_value("WROTE"), "/etc/x");
}

#[test]
fn no_overlay_root_is_a_private_copy() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &["--no-overlay"],
        &[],
        &["--write-file=/written", "--content=1", "--print-mounts"],
    );
    assert_eq!(out.expect_value("WROTE"), "/written");
    let root = out
        .values("MOUNT")
        .into_iter()
        .find(|m| m.starts_with("/ "))
        .unwrap();
    assert!(!root.contains("overlay"), "{root}");
    let pod = pod_dir_any(&env);
    assert!(pod
        .join("stage1/rootfs/opt/stage2/main/rootfs/written")
        .is_file());
    let out = run(
        &env,
        &["--no-overlay"],
        &["--readonly-rootfs=true"],
        &["--write-file=/x", "--content=1"],
    );
    out.assert_code(1);
    assert_eq!(out.expect_value("WRITE_ERRNO"), "EROFS");
}

#[test]
fn volumes_host_and_empty_read_only() {
    require_root();
    let env = RktEnv::new();
    let host = env.scratch.join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "from the host\n").unwrap();
    let out = run(
        &env,
        &[
            &format!(
                "--volume=data,kind=host,source={},readOnly=true",
                host.display()
            ),
            "--volume=scratch,kind=empty",
        ],
        &[
            "--mount=volume=data,target=/mnt/data",
            "--mount=volume=scratch,target=/new/dir",
        ],
        &[
            "--read-file=/mnt/data/f",
            "--write-file=/mnt/data/g",
            "--content=x",
            "--write-file=/new/dir/h",
            "--content=written",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("CONTENT"), "from the host");
    assert_eq!(out.expect_value("WRITE_ERRNO"), "EROFS");
    assert_eq!(out.expect_value("WROTE"), "/new/dir/h");
    assert!(!host.join("g").exists());
}

#[test]
fn hostname_hosts_and_resolv_conf() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[
            "--hostname=podhost",
            "--dns=192.0.2.53",
            "--hosts-entry=192.0.2.7=db.example",
        ],
        &[],
        &[
            "--print-hostname",
            "--read-file=/etc/hostname",
            "--read-file=/etc/resolv.conf",
            "--read-file=/etc/hosts",
            "--stat=/etc/mtab",
        ],
    );
    assert_eq!(out.expect_value("HOSTNAME"), "podhost");
    let contents = out.stdout.clone();
    assert!(contents.contains("CONTENT=podhost"), "{out}");
    assert!(contents.contains("nameserver 192.0.2.53"), "{out}");
    assert!(
        contents.contains("192.0.2.7") && contents.contains("db.example"),
        "{out}"
    );
    assert_eq!(out.expect_value("STAT_LINK"), "../proc/self/mounts");
}

#[test]
fn default_hostname_and_hosts_stub() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[],
        &[],
        &["--print-hostname", "--read-file=/etc/hosts"],
    );
    let pod = pod_dir_any(&env);
    assert_eq!(
        out.expect_value("HOSTNAME"),
        format!("rkt-{}", uuid_of(&pod))
    );
    out.assert_stdout_contains("127.0.0.1 localhost");
}

#[test]
fn proc_and_sys_are_restricted() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &[],
        &[],
        &[
            "--write-file=/proc/sys/kernel/domainname",
            "--content=x",
            "--write-file=/sys/kernel/uevent_helper",
            "--content=x",
            "--print-mounts",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.values("WRITE_ERRNO"), vec!["EROFS", "EROFS"], "{out}");
    let mounts = out.values("MOUNT");
    let has = |prefix: &str| mounts.iter().any(|m| m.starts_with(prefix));
    assert!(has("/proc/sys proc ro,"), "{mounts:#?}");
    assert!(has("/sys sysfs ro,"), "{mounts:#?}");
    assert!(has("/sys/firmware tmpfs ro,"), "{mounts:#?}");
    assert!(has("/proc/keys "), "{mounts:#?}");
    assert!(has("/dev/pts devpts "), "{mounts:#?}");
    assert!(has("/dev/shm tmpfs "), "{mounts:#?}");
}

#[test]
fn insecure_paths_leaves_proc_and_sys_writable() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let out2 = env.rkt(&[
        "run",
        "--insecure-options=image,paths",
        "--stage1=ns",
        "--net=none",
        &img,
        "--exec",
        "/inspect",
        "--",
        "--print-mounts",
    ]);
    out2.assert_ok();
    let m = out2.values("MOUNT");
    assert!(m.iter().any(|l| l.starts_with("/sys sysfs rw,")), "{m:#?}");
    assert!(!m.iter().any(|l| l.starts_with("/proc/sys ")), "{m:#?}");
    assert!(!m.iter().any(|l| l.starts_with("/sys/firmware ")), "{m:#?}");
}

/// rkt's default capability set, as /proc/self/status names them.
const DEFAULT_CAPS: &str = "cap_chown,cap_dac_override,cap_fowner,cap_fsetid,cap_kill,cap_setgid,cap_setuid,cap_setpcap,cap_net_bind_service,cap_net_raw,cap_sys_chroot,cap_mknod,cap_audit_write,cap_setfcap";

#[test]
fn capabilities_default_for_root_and_other_users() {
    require_root();
    let env = RktEnv::new();
    for user in ["0", "1000"] {
        let out = run_ok(&env, &[], &[&format!("--user={user}")], &["--print-caps"]);
        for k in ["CAP_EFF_NAMES", "CAP_PRM_NAMES", "CAP_BND_NAMES"] {
            assert_eq!(out.expect_value(k), DEFAULT_CAPS, "user {user} {k}\n{out}");
        }
    }
}

#[test]
fn capabilities_retain_and_remove() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[],
        &["--caps-retain=CAP_NET_ADMIN,CAP_KILL"],
        &["--print-caps"],
    );
    assert_eq!(out.expect_value("CAP_EFF_NAMES"), "cap_kill,cap_net_admin");
    assert_eq!(out.expect_value("CAP_BND_NAMES"), "cap_kill,cap_net_admin");
    let out = run_ok(
        &env,
        &[],
        &["--caps-remove=CAP_CHOWN,CAP_MKNOD"],
        &["--print-caps"],
    );
    let eff = out.expect_value("CAP_EFF_NAMES");
    assert!(
        !eff.contains("cap_chown") && !eff.contains("cap_mknod"),
        "{eff}"
    );
    assert!(eff.contains("cap_kill"), "{eff}");
}

#[test]
fn insecure_capabilities_keeps_everything() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image,capabilities",
        "--stage1=ns",
        "--net=none",
        &img,
        "--exec",
        "/inspect",
        "--",
        "--print-caps",
    ]);
    out.assert_ok();
    assert!(
        out.expect_value("CAP_EFF_NAMES").contains("cap_sys_admin"),
        "{out}"
    );
}

#[test]
fn seccomp_default_blocks_dangerous_syscalls_with_eperm() {
    require_root();
    let env = RktEnv::new();
    // CAP_SYS_ADMIN kept: mount fails with EPERM only because of the filter.
    let out = run(
        &env,
        &[],
        &["--caps-retain=CAP_SYS_ADMIN,CAP_SYS_BOOT"],
        &[
            "--print-seccomp",
            "--check-syscall=mount",
            "--check-syscall=reboot",
            "--check-syscall=uname",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("SECCOMP"), "2");
    assert_eq!(out.expect_value("SYSCALL_mount"), "EPERM");
    assert_eq!(out.expect_value("SYSCALL_reboot"), "EPERM");
    assert_eq!(out.expect_value("SYSCALL_uname"), "OK");
}

#[test]
fn seccomp_remove_and_retain_sets() {
    require_root();
    let env = RktEnv::new();
    let out = run(
        &env,
        &[],
        &["--seccomp=mode=remove,errno=ENOSYS,uname"],
        &[
            "--check-syscall=uname",
            "--check-syscall=getpid",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("SYSCALL_uname"), "ENOSYS");
    assert_eq!(out.expect_value("SYSCALL_getpid"), "OK");
    let out = run(
        &env,
        &[],
        &["--seccomp=mode=retain,errno=EACCES,@rkt/default-whitelist"],
        &[
            "--check-syscall=uname",
            "--check-syscall=unshare",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("SYSCALL_uname"), "OK");
    assert_eq!(out.expect_value("SYSCALL_unshare"), "EACCES");
}

#[test]
fn insecure_seccomp_installs_no_filter_and_no_new_privs() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(&env, &[], &[], &["--print-seccomp", "--print-no-new-privs"]);
    assert_eq!(out.expect_value("SECCOMP"), "2");
    // The filter without CAP_SYS_ADMIN needs no_new_privs.
    assert_eq!(out.expect_value("NO_NEW_PRIVS"), "1");
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image,seccomp",
        "--stage1=ns",
        "--net=none",
        &img,
        "--exec",
        "/inspect",
        "--",
        "--print-seccomp",
        "--print-no-new-privs",
    ]);
    out.assert_ok();
    assert_eq!(out.expect_value("SECCOMP"), "0");
    assert_eq!(out.expect_value("NO_NEW_PRIVS"), "0");
}

#[test]
fn memory_and_cpu_limits_are_visible_in_the_app() {
    require_root();
    let env = RktEnv::new();
    let out = run_ok(
        &env,
        &[],
        &["--memory=64Mi", "--cpu=250m", "--cpu-shares=512"],
        &["--print-cgroup-limits"],
    );
    assert_eq!(
        out.expect_value("MEMORY_LIMIT"),
        (64u64 << 20).to_string(),
        "{out}"
    );
    assert_eq!(out.expect_value("CPU_QUOTA"), "25000", "{out}");
    assert_eq!(out.expect_value("CPU_PERIOD"), "100000", "{out}");
    if out.expect_value("CGROUP_VERSION") == "1" {
        assert_eq!(out.expect_value("CPU_SHARES"), "512", "{out}");
    }
    // The pod's cgroups are gone once `rkt run` returned.
    let pod = pod_dir_any(&env);
    assert!(
        cgroup_dirs(&uuid_of(&pod)).is_empty(),
        "{:?}",
        cgroup_dirs(&uuid_of(&pod))
    );
}

#[test]
fn pid_uts_ipc_and_net_namespaces_are_the_pods() {
    require_root();
    let env = RktEnv::new();
    let ns = ["net", "uts", "ipc", "pid", "mnt", "cgroup"];
    let args: Vec<String> = std::iter::once("--print-pid".to_string())
        .chain(ns.iter().map(|n| format!("--stat=/proc/self/ns/{n}")))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut args = args;
    args.extend([
        "--read-file=/sys/class/net/lo/flags",
        "--stat=/sys/class/net/eth0",
    ]);
    let out = run(&env, &[], &[], &args);
    out.assert_code(1);
    // Only lo, and it is up (IFF_UP|IFF_LOOPBACK).
    assert_eq!(out.expect_value("CONTENT"), "0x9", "{out}");
    assert_eq!(out.expect_value("STAT_ERRNO"), "ENOENT", "{out}");
    // The app is the first child of the pod's PID 1 (the supervisor).
    assert_eq!(out.expect_value("PID"), "2", "{out}");
    let links = out.values("STAT_LINK");
    assert_eq!(links.len(), ns.len(), "{out}");
    for (n, inside) in ns.iter().zip(&links) {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            inside,
            &host.to_string_lossy(),
            "{n} namespace is the host's"
        );
    }
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
        "--net=host",
        &images().busybox_oci_ref(),
        "--exec",
        "/inspect",
        "--",
        "--stat=/proc/self/ns/net",
    ]);
    out.assert_ok();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(out.expect_value("STAT_LINK"), host.to_string_lossy());
}

#[test]
fn first_failure_stops_the_other_apps_and_is_the_pods_code() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let start = Instant::now();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
        "--net=none",
        &img,
        "--name=sleeper",
        "--exec",
        "/inspect",
        "--",
        "--sleep=60",
        "---",
        &img,
        "--name=failer",
        "--exec",
        "/inspect",
        "--",
        "--sleep=0.5",
        "--exit-code=7",
        "---",
        &img,
        "--name=good",
        "--exec",
        "/inspect",
        "--",
        "--exit-code=0",
    ]);
    out.assert_code(7);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let pod = pod_dir_any(&env);
    let status = |app: &str| {
        std::fs::read_to_string(pod.join("status").join(app))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(status("failer"), "7");
    assert_eq!(status("good"), "0");
    assert_eq!(status("sleeper"), "143");
}

#[test]
fn enter_runs_in_the_apps_namespaces_and_stop_stops_the_pod() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
        "--net=none",
        "--hostname=entered",
        &img,
        "--name=main",
        "--environment=MARK=inside",
        "--memory=32Mi",
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
    let pod = pod_dir_any(&env);
    let uuid = uuid_of(&pod);
    let out = env.rkt(&[
        "enter",
        &uuid,
        "/inspect",
        "--print-hostname",
        "--print-env=MARK",
        "--print-cgroup-limits",
        "--exit-code=3",
    ]);
    out.assert_code(3);
    assert_eq!(out.expect_value("HOSTNAME"), "entered");
    assert_eq!(out.expect_value("MARK"), "inside");
    assert_eq!(out.expect_value("MEMORY_LIMIT"), (32u64 << 20).to_string());
    // Default command: a shell in the app's root.
    let out = env.rkt_with_stdin(b"cat /etc/hostname; exit 4\n", &["enter", &uuid]);
    out.assert_code(4);
    out.assert_stdout_contains("entered");
    assert!(!cgroup_dirs(&uuid).is_empty());

    let t = Instant::now();
    env.rkt(&["stop", &uuid]).assert_ok();
    let out = child.wait_timeout(30);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    out.assert_code(143);
    let app_status = pod_dir_any(&env).join("status/main");
    assert_eq!(std::fs::read_to_string(app_status).unwrap().trim(), "143");
    assert!(cgroup_dirs(&uuid).is_empty());
}

/// The pod directory wherever its state put it.
fn pod_dir_any(env: &RktEnv) -> PathBuf {
    for s in ["run", "exited-garbage", "garbage"] {
        let d = env.dir.join("pods").join(s);
        if let Some(e) = std::fs::read_dir(&d).ok().and_then(|mut r| r.next()) {
            return e.unwrap().path();
        }
    }
    panic!("no pod directory");
}

#[test]
fn gc_after_sigkill_removes_cgroups_and_mounts() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
        "--net=none",
        &img,
        "--name=main",
        "--memory=32Mi",
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
    let pod = pod_dir_any(&env);
    let uuid = uuid_of(&pod);
    let app_pid: i32 = std::fs::read_to_string(pod.join("apps/main/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sup: i32 = std::fs::read_to_string(pod.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Kill both rkt and the supervisor: nothing is left to clean up but gc.
    // SAFETY: kill(2).
    unsafe {
        libc::kill(child.pid() as i32, libc::SIGKILL);
        libc::kill(sup, libc::SIGKILL);
    }
    child.wait_timeout(30);
    wait_for("the app to die with its PID namespace", 10, || {
        !Path::new(&format!("/proc/{app_pid}")).exists()
    });
    let out = env.rkt(&["gc", "--grace-period=0s"]);
    out.assert_ok();
    assert!(cgroup_dirs(&uuid).is_empty(), "{:?}", cgroup_dirs(&uuid));
    assert!(
        rkt_tests::mounts_under(&env.dir).is_empty(),
        "{:?}",
        rkt_tests::mounts_under(&env.dir)
    );
}

#[test]
fn interactive_app_gets_a_terminal() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    // script(1) gives rkt a terminal on stdin/stdout and passes the shell's exit code back.
    let rkt = format!(
        "{} --dir={} run --insecure-options=image --stage1=ns --net=none --interactive {img} --exec /bin/sh",
        rkt_tests::rkt_bin().display(),
        env.dir.display()
    );
    let mut c = std::process::Command::new("script");
    c.args(["-q", "-e", "-c", &rkt, "/dev/null"]);
    let out = rkt_tests::run_command_with_stdin(
        c,
        b"test -t 0 && echo stdin-is-a-tty-$((40+2))\necho name=$(tty)\nexit 5\n",
        60,
    );
    out.assert_code(5);
    out.assert_stdout_contains("stdin-is-a-tty-42");
    // The terminal comes from the app's own devpts, so it has a name there.
    out.assert_stdout_contains("name=/dev/pts/0");
}

#[test]
fn stop_kills_apps_that_ignore_sigterm_after_the_timeout() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
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
        child.wait_for_stdout("started", 60),
        "{}",
        child.output_so_far()
    );
    let t = Instant::now();
    // SIGTERM to `rkt run` itself is forwarded to the pod like `rkt stop`.
    child.signal(libc::SIGTERM);
    let out = child.wait_timeout(40);
    let took = t.elapsed();
    out.assert_code(137);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "took {took:?}"
    );
}

#[test]
fn each_app_has_its_own_root_and_enter_picks_one() {
    require_root();
    let env = RktEnv::new();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        "--insecure-options=image",
        "--stage1=ns",
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
        "--sleep=120",
        "---",
        &img,
        "--name=b",
        "--environment=WHO=b",
        "--exec",
        "/inspect",
        "--",
        "--sleep=120",
    ]);
    assert!(
        child.wait_for_stdout("a-started", 60),
        "{}",
        child.output_so_far()
    );
    let uuid = uuid_of(&pod_dir_any(&env));
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
    // Both apps share the pod's hostname and PID namespace: b sees a's process.
    let out = env.rkt(&[
        "enter",
        "--app=b",
        &uuid,
        "/bin/sh",
        "-c",
        "ps -o args | grep -c '^/inspect --write-file=/only-in-a'",
    ]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "1");
    env.rkt(&["stop", &uuid]).assert_ok();
    child.wait_timeout(30).assert_code(143);
}
