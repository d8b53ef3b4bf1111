//! What an app sees from inside its pod, on both stage1 flavours (`flavours!` makes `NAME::ns`
//! and `NAME::kvm` of every `fn NAME(f: Flavor)`): `rkt run --stage1=F` with the busybox image and
//! its `/inspect` app. A kvm pod boots a kernel (30-50 s here), so one pod checks several
//! behaviours, and multi-app pods check per-app flags side by side where the apps print different
//! keys. A few tests stay ns-only because what they check lives on the host by nature.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rkt_tests::{flavours, images, Flavor, RktEnv, RktOutput};

/// One app of a pod: `IMAGE --name=NAME APP_FLAGS --exec /inspect -- INSPECT`.
fn app(name: &str, app_flags: &[&str], inspect: &[&str]) -> Vec<String> {
    let mut a = vec![images().busybox_oci_ref(), format!("--name={name}")];
    a.extend(app_flags.iter().map(|s| s.to_string()));
    a.extend(["--exec", "/inspect", "--"].map(String::from));
    a.extend(inspect.iter().map(|s| s.to_string()));
    a
}

/// `rkt run --stage1=F POD_FLAGS APP [--- APP]…`, to completion.
fn run_pod(env: &RktEnv, f: Flavor, pod_flags: &[&str], apps: &[Vec<String>]) -> RktOutput {
    env.rkt(
        &pod_args(f, pod_flags, apps)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
}

fn pod_args(f: Flavor, pod_flags: &[&str], apps: &[Vec<String>]) -> Vec<String> {
    let mut a = vec!["run".to_string(), f.flag().to_string()];
    a.extend(pod_flags.iter().map(|s| s.to_string()));
    for (i, ap) in apps.iter().enumerate() {
        if i > 0 {
            a.push("---".into());
        }
        a.extend(ap.iter().cloned());
    }
    a
}

/// `rkt run --stage1=F --net=none POD_FLAGS IMAGE --name=main APP_FLAGS --exec /inspect -- …`.
fn run(
    env: &RktEnv,
    f: Flavor,
    pod_flags: &[&str],
    app_flags: &[&str],
    inspect: &[&str],
) -> RktOutput {
    let mut p = vec!["--net=none"];
    p.extend_from_slice(pod_flags);
    run_pod(env, f, &p, &[app("main", app_flags, inspect)])
}

fn uuid_of(pod: &Path) -> String {
    pod.file_name().unwrap().to_string_lossy().into_owned()
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

fn status_of(pod: &Path, app: &str) -> String {
    std::fs::read_to_string(pod.join("status").join(app))
        .unwrap_or_else(|e| panic!("status/{app}: {e}"))
        .trim()
        .to_string()
}

/// The host cgroup directories of an ns pod (cgroup v1 controllers, or v2).
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

/// rkt's default capability set, as /proc/self/status names them.
const DEFAULT_CAPS: &str = "cap_chown,cap_dac_override,cap_fowner,cap_fsetid,cap_kill,cap_setgid,cap_setuid,cap_setpcap,cap_net_bind_service,cap_net_raw,cap_sys_chroot,cap_mknod,cap_audit_write,cap_setfcap";

flavours!(
    exit_code_output_and_default_names,
    environment_user_and_working_dir,
    unknown_user_fails_the_app_with_one_line,
    readonly_rootfs_is_per_app,
    no_overlay_root_is_a_private_copy,
    volumes_host_and_empty_with_a_numeric_user,
    hostname_hosts_and_resolv_conf,
    default_pod_restrictions_and_default_network,
    insecure_options_lift_paths_capabilities_and_seccomp,
    capabilities_retained_and_the_default_seccomp_filter,
    capabilities_removed_and_a_seccomp_remove_set,
    memory_and_cpu_limits_are_visible_in_the_app,
    first_failure_stops_the_other_apps_and_is_the_pods_code,
    enter_picks_an_app_and_stop_ends_the_pod,
    stop_kills_apps_that_ignore_sigterm_after_the_timeout,
    interactive_app_gets_a_terminal,
    enter_gives_a_terminal_when_the_caller_has_one,
);

/// The app's exit code is rkt's and `status/<app>`'s; stdout and stderr reach rkt's; without
/// `--hostname` the pod is called `rkt-<uuid>` and /etc/hosts has a localhost stub.
fn exit_code_output_and_default_names(f: Flavor) {
    let env = f.env();
    let out = run(
        &env,
        f,
        &[],
        &[],
        &[
            "--echo=bye",
            "--echo-stderr=to-stderr",
            "--print-hostname",
            "--read-file=/etc/hosts",
            "--exit-code=42",
        ],
    );
    out.assert_code(42);
    out.assert_stdout_contains("bye");
    out.assert_stderr_contains("to-stderr");
    let pod = pod_dir_any(&env);
    assert_eq!(status_of(&pod, "main"), "42");
    assert_eq!(
        out.expect_value("HOSTNAME"),
        format!("rkt-{}", uuid_of(&pod))
    );
    out.assert_stdout_contains("127.0.0.1 localhost");
}

/// Env precedence (host env with --inherit-env < --set-env-file < --set-env < the app's
/// --environment), AC_APP_NAME, the image's PATH, --working-dir, a user and group by name with
/// supplementary gids and the passwd entry's HOME, and a non-root user's capabilities.
fn environment_user_and_working_dir(f: Flavor) {
    let env = f.env();
    let file = env.scratch.join("env");
    std::fs::write(
        &file,
        "# comment\nFROM_FILE=file\nOVER=file\n\nHOST_VAR=file\n",
    )
    .unwrap();
    let file_flag = format!("--set-env-file={}", file.display());
    let args = pod_args(
        f,
        &[
            "--net=none",
            "--inherit-env",
            &file_flag,
            "--set-env=OVER=setenv",
            "--set-env=APPOVER=setenv",
        ],
        &[app(
            "main",
            &[
                "--environment=APPOVER=app",
                "--environment=FOO=bar baz",
                "--working-dir=/home/user",
                "--user=user",
                "--group=staff",
                "--supplementary-gids=10,29",
            ],
            &[
                "--print-env=HOST_ONLY",
                "--print-env=FROM_FILE",
                "--print-env=OVER",
                "--print-env=HOST_VAR",
                "--print-env=APPOVER",
                "--print-env=FOO",
                "--print-env=AC_APP_NAME",
                "--print-env=PATH",
                "--print-env=HOME",
                "--print-cwd",
                "--print-user",
                "--print-groups",
                "--print-caps",
            ],
        )],
    );
    let mut cmd = env.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Without a HOME to inherit, the passwd entry's applies.
    cmd.env("HOST_ONLY", "host")
        .env("HOST_VAR", "host")
        .env_remove("HOME");
    let out = rkt_tests::run_command(cmd, f.start_secs() + 120);
    out.assert_ok();
    assert_eq!(out.expect_value("HOST_ONLY"), "host");
    assert_eq!(out.expect_value("FROM_FILE"), "file");
    assert_eq!(out.expect_value("HOST_VAR"), "file");
    assert_eq!(out.expect_value("OVER"), "setenv");
    assert_eq!(out.expect_value("APPOVER"), "app");
    assert_eq!(out.expect_value("FOO"), "bar baz");
    assert_eq!(out.expect_value("AC_APP_NAME"), "main");
    // The image's PATH wins over the default.
    assert!(out.expect_value("PATH").contains("/bin"), "{out}");
    assert_eq!(out.expect_value("HOME"), "/home/user");
    assert_eq!(out.expect_value("CWD"), "/home/user");
    assert_eq!(out.expect_value("UID"), "1000");
    assert_eq!(out.expect_value("EUID"), "1000");
    assert_eq!(out.expect_value("GID"), "50");
    assert_eq!(out.expect_value("GROUPS"), "10,29");
    // rkt gives non-root users the default set too (ambient), not an empty one.
    for k in ["CAP_EFF_NAMES", "CAP_PRM_NAMES", "CAP_BND_NAMES"] {
        assert_eq!(out.expect_value(k), DEFAULT_CAPS, "{k}\n{out}");
    }
}

fn unknown_user_fails_the_app_with_one_line(f: Flavor) {
    let env = f.env();
    let out = run(&env, f, &[], &["--user=nosuchuser"], &["--print-user"]);
    out.assert_code(254);
    out.assert_stderr_contains("nosuchuser");
    assert!(out.value("UID").is_none(), "{out}");
}

/// `--readonly-rootfs` makes one app's root read-only while its sibling's stays writable.
fn readonly_rootfs_is_per_app(f: Flavor) {
    let env = f.env();
    let out = run_pod(
        &env,
        f,
        &["--net=none"],
        &[
            app(
                "ro",
                &["--readonly-rootfs=true"],
                &[
                    "--write-file=/etc/x",
                    "--content=1",
                    "--write-file=/tmp/y",
                    "--content=1",
                    "--exit-code=0",
                ],
            ),
            app("rw", &[], &["--write-file=/etc/x", "--content=1"]),
        ],
    );
    out.assert_ok();
    assert_eq!(out.values("WRITE_ERRNO"), vec!["EROFS", "EROFS"], "{out}");
    assert_eq!(out.expect_value("WROTE"), "/etc/x");
}

/// `--no-overlay`: every app's root is a private copy in the pod directory (writes land there),
/// still made read-only by `--readonly-rootfs`.
fn no_overlay_root_is_a_private_copy(f: Flavor) {
    let env = f.env();
    let out = run_pod(
        &env,
        f,
        &["--net=none", "--no-overlay"],
        &[
            app(
                "rw",
                &[],
                &[
                    "--write-file=/written",
                    "--content=1",
                    "--read-file=/etc/image-name",
                    "--print-mounts",
                ],
            ),
            app(
                "ro",
                &["--readonly-rootfs=true"],
                &["--write-file=/x", "--content=1", "--exit-code=0"],
            ),
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("WROTE"), "/written");
    assert_eq!(out.expect_value("WRITE_ERRNO"), "EROFS");
    assert_eq!(out.expect_value("CONTENT"), "busybox");
    let root = out
        .values("MOUNT")
        .into_iter()
        .find(|m| m.starts_with("/ "))
        .unwrap_or_else(|| panic!("no / mount\n{out}"));
    // ns: not an overlay. kvm: every root reaches the guest through virtio-fs, overlay or not,
    // so there only the written file below tells the copy apart.
    assert!(!root.contains("overlay"), "{root}");
    let pod = pod_dir_any(&env);
    assert!(pod
        .join("stage1/rootfs/opt/stage2/rw/rootfs/written")
        .is_file());
    assert!(!pod.join("stage1/rootfs/opt/stage2/ro/rootfs/x").exists());
}

/// A read-only host volume, a writable one (the host sees the app's file) and an empty volume
/// owned by a numeric user without a passwd entry, which the app runs as.
fn volumes_host_and_empty_with_a_numeric_user(f: Flavor) {
    let env = f.env();
    let ro = env.scratch.join("ro");
    let rw = env.scratch.join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("f"), "from the host\n").unwrap();
    std::os::unix::fs::chown(&rw, Some(4242), Some(4343)).unwrap();
    let out = run(
        &env,
        f,
        &[
            &format!(
                "--volume=data,kind=host,source={},readOnly=true",
                ro.display()
            ),
            &format!("--volume=out,kind=host,source={}", rw.display()),
            "--volume=scratch,kind=empty,mode=0700,uid=4242,gid=4343",
        ],
        &[
            "--user=4242",
            "--group=4343",
            "--mount=volume=data,target=/mnt/data",
            "--mount=volume=out,target=/mnt/out",
            "--mount=volume=scratch,target=/new/dir",
        ],
        &[
            "--print-user",
            "--print-groups",
            "--read-file=/mnt/data/f",
            "--write-file=/mnt/data/g",
            "--content=x",
            "--write-file=/mnt/out/g",
            "--content=from the app",
            "--write-file=/new/dir/h",
            "--content=written",
            "--stat=/new/dir",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("UID"), "4242");
    assert_eq!(out.expect_value("EUID"), "4242");
    assert_eq!(out.expect_value("GID"), "4343");
    assert_eq!(out.expect_value("GROUPS"), "");
    assert_eq!(out.expect_value("CONTENT"), "from the host");
    assert_eq!(out.expect_value("WRITE_ERRNO"), "EROFS");
    assert_eq!(out.values("WROTE"), ["/mnt/out/g", "/new/dir/h"], "{out}");
    assert_eq!(out.expect_value("STAT_MODE"), "0700");
    assert_eq!(out.expect_value("STAT_UID"), "4242");
    assert_eq!(out.expect_value("STAT_GID"), "4343");
    assert!(!ro.join("g").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("g")).unwrap(),
        "from the app"
    );
    let pod = pod_dir_any(&env);
    assert_eq!(
        std::fs::read_to_string(pod.join("sharedVolumes/scratch/h")).unwrap(),
        "written"
    );
}

fn hostname_hosts_and_resolv_conf(f: Flavor) {
    let env = f.env();
    let out = run(
        &env,
        f,
        &[
            "--hostname=podhost",
            "--dns=8.8.8.8",
            "--dns=4.2.2.2",
            "--dns-search=example.com",
            "--dns-opt=rotate",
            "--dns-domain=example.org",
            "--hosts-entry=198.51.100.1=db,198.51.100.1=db2",
            "--hosts-entry=198.51.100.2=web",
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
    out.assert_ok();
    assert_eq!(out.expect_value("HOSTNAME"), "podhost");
    out.assert_stdout_contains("CONTENT=podhost\n");
    out.assert_stdout_contains(
        "CONTENT=# Generated by rkt run\n\nsearch example.com\nnameserver 8.8.8.8\nnameserver 4.2.2.2\noptions rotate\ndomain example.org\n",
    );
    out.assert_stdout_contains("CONTENT=127.0.0.1 localhost");
    out.assert_stdout_contains("127.0.0.1 podhost\n");
    out.assert_stdout_contains("198.51.100.1 db db2\n198.51.100.2 web");
    assert_eq!(out.expect_value("STAT_LINK"), "../proc/self/mounts");
}

/// A pod without `--net` and without insecure options: the default network (eth0 from CNI on
/// both flavours; on kvm a virtio-net card), /proc and /sys masked read-only, root's default
/// capabilities, the default seccomp filter with no_new_privs.
fn default_pod_restrictions_and_default_network(f: Flavor) {
    let env = f.env();
    let out = run_pod(
        &env,
        f,
        &[],
        &[app(
            "main",
            &[],
            &[
                "--write-file=/proc/sys/kernel/domainname",
                "--content=x",
                "--write-file=/sys/kernel/uevent_helper",
                "--content=x",
                "--print-mounts",
                "--read-file=/sys/class/net/lo/flags",
                "--stat=/sys/class/net/eth0",
                "--print-caps",
                "--print-seccomp",
                "--print-no-new-privs",
                "--exit-code=0",
            ],
        )],
    );
    out.assert_ok();
    // The default CNI network on both flavours (tests/tests/networking.rs), without the warning
    // kvm printed before it had a network card.
    assert!(!out.stderr.contains("not implemented"), "{out}");
    assert_eq!(out.values("WRITE_ERRNO"), vec!["EROFS", "EROFS"], "{out}");
    let mounts = out.values("MOUNT");
    let has = |prefix: &str| mounts.iter().any(|m| m.starts_with(prefix));
    for m in [
        "/proc/sys proc ro,",
        "/sys sysfs ro,",
        "/sys/firmware tmpfs ro,",
        "/dev/pts devpts ",
        "/dev/shm tmpfs ",
    ] {
        assert!(has(m), "no {m:?} mount: {mounts:#?}");
    }
    // kvm: the guest kernel has no keyrings (CONFIG_KEYS off), so no /proc/keys to mask.
    if f == Flavor::Ns {
        assert!(has("/proc/keys "), "{mounts:#?}");
    }
    // lo is up (IFF_UP|IFF_LOOPBACK); eth0 is the default network's.
    assert_eq!(out.expect_value("CONTENT"), "0x9", "{out}");
    assert_eq!(out.value("STAT_ERRNO"), None, "{out}");
    for k in ["CAP_EFF_NAMES", "CAP_PRM_NAMES", "CAP_BND_NAMES"] {
        assert_eq!(out.expect_value(k), DEFAULT_CAPS, "{k}\n{out}");
    }
    assert_eq!(out.expect_value("SECCOMP"), "2");
    // The filter without CAP_SYS_ADMIN needs no_new_privs.
    assert_eq!(out.expect_value("NO_NEW_PRIVS"), "1");
}

/// `--insecure-options=paths,capabilities,seccomp` each lift their restriction.
fn insecure_options_lift_paths_capabilities_and_seccomp(f: Flavor) {
    let env = f.env();
    let out = run_pod(
        &env,
        f,
        &[
            "--net=none",
            "--insecure-options=image,paths,capabilities,seccomp",
        ],
        &[app(
            "main",
            &[],
            &[
                "--print-mounts",
                "--print-caps",
                "--print-seccomp",
                "--print-no-new-privs",
            ],
        )],
    );
    out.assert_ok();
    let m = out.values("MOUNT");
    assert!(m.iter().any(|l| l.starts_with("/sys sysfs rw,")), "{m:#?}");
    assert!(!m.iter().any(|l| l.starts_with("/proc/sys ")), "{m:#?}");
    assert!(!m.iter().any(|l| l.starts_with("/sys/firmware ")), "{m:#?}");
    assert!(
        out.expect_value("CAP_EFF_NAMES").contains("cap_sys_admin"),
        "{out}"
    );
    assert_eq!(out.expect_value("SECCOMP"), "0");
    assert_eq!(out.expect_value("NO_NEW_PRIVS"), "0");
}

/// `--caps-retain` gives exactly the named set; the default seccomp filter still blocks mount and
/// reboot (EPERM) though CAP_SYS_ADMIN and CAP_SYS_BOOT are held. A sibling app with a retain-set
/// filter gets its own errno for what the set leaves out.
fn capabilities_retained_and_the_default_seccomp_filter(f: Flavor) {
    let env = f.env();
    let out = run_pod(
        &env,
        f,
        &["--net=none"],
        &[
            app(
                "retain",
                &["--caps-retain=CAP_NET_ADMIN,CAP_KILL,CAP_SYS_ADMIN,CAP_SYS_BOOT"],
                &[
                    "--print-caps",
                    "--print-seccomp",
                    "--check-syscall=mount",
                    "--check-syscall=reboot",
                    "--check-syscall=uname",
                    "--exit-code=0",
                ],
            ),
            app(
                "allowlist",
                &["--seccomp=mode=retain,errno=EACCES,@rkt/default-whitelist"],
                &[
                    "--check-syscall=getpid",
                    "--check-syscall=unshare",
                    "--exit-code=0",
                ],
            ),
        ],
    );
    out.assert_ok();
    let want = "cap_kill,cap_net_admin,cap_sys_boot,cap_sys_admin";
    let mut got: Vec<String> = out
        .expect_value("CAP_EFF_NAMES")
        .split(',')
        .map(String::from)
        .collect();
    let mut want: Vec<&str> = want.split(',').collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{out}");
    assert_eq!(
        out.expect_value("CAP_BND_NAMES"),
        out.expect_value("CAP_EFF_NAMES")
    );
    assert_eq!(out.expect_value("SECCOMP"), "2");
    assert_eq!(out.expect_value("SYSCALL_mount"), "EPERM");
    assert_eq!(out.expect_value("SYSCALL_reboot"), "EPERM");
    assert_eq!(out.expect_value("SYSCALL_uname"), "OK");
    assert_eq!(out.expect_value("SYSCALL_getpid"), "OK");
    assert_eq!(out.expect_value("SYSCALL_unshare"), "EACCES");
}

/// `--caps-remove` takes names out of the default set; a remove-set filter fails just the named
/// syscalls with the given errno.
fn capabilities_removed_and_a_seccomp_remove_set(f: Flavor) {
    let env = f.env();
    let out = run(
        &env,
        f,
        &[],
        &[
            "--caps-remove=CAP_CHOWN,CAP_MKNOD",
            "--seccomp=mode=remove,errno=ENOSYS,uname",
        ],
        &[
            "--print-caps",
            "--check-syscall=uname",
            "--check-syscall=getpid",
            "--exit-code=0",
        ],
    );
    out.assert_ok();
    let eff: Vec<String> = out
        .expect_value("CAP_EFF_NAMES")
        .split(',')
        .map(String::from)
        .collect();
    let want: Vec<String> = DEFAULT_CAPS
        .split(',')
        .filter(|c| *c != "cap_chown" && *c != "cap_mknod")
        .map(String::from)
        .collect();
    assert_eq!(eff, want, "{out}");
    assert_eq!(out.expect_value("SYSCALL_uname"), "ENOSYS");
    assert_eq!(out.expect_value("SYSCALL_getpid"), "OK");
}

/// `--memory`, `--cpu` and `--cpu-shares` as the app's cgroup shows them (through its cgroup
/// namespace). ns: the pod's host cgroups are gone once `rkt run` returned. kvm: guest RAM is
/// sized from `--memory`.
fn memory_and_cpu_limits_are_visible_in_the_app(f: Flavor) {
    let env = f.env();
    let out = run(
        &env,
        f,
        &[],
        &["--memory=512Mi", "--cpu=250m", "--cpu-shares=512"],
        &["--print-cgroup-limits", "--read-file=/proc/meminfo"],
    );
    out.assert_ok();
    assert_eq!(
        out.expect_value("MEMORY_LIMIT"),
        (512u64 << 20).to_string(),
        "{out}"
    );
    assert_eq!(out.expect_value("CPU_QUOTA"), "25000", "{out}");
    assert_eq!(out.expect_value("CPU_PERIOD"), "100000", "{out}");
    if out.expect_value("CGROUP_VERSION") == "1" {
        assert_eq!(out.expect_value("CPU_SHARES"), "512", "{out}");
    }
    match f {
        Flavor::Ns => {
            let pod = pod_dir_any(&env);
            let left = cgroup_dirs(&uuid_of(&pod));
            assert!(left.is_empty(), "{left:?}");
        }
        Flavor::Kvm => {
            // Guest RAM = 512 MiB + 128 MiB for the guest kernel and init, less what the kernel
            // reserves.
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
        }
    }
}

/// The first app to fail stops the others (SIGTERM: 143) and its code is the pod's; every app's
/// code is in `rkt status`. The failer waits for the good app's marker in a shared volume, so
/// the good one has finished first however slowly a loaded host starts the apps.
fn first_failure_stops_the_other_apps_and_is_the_pods_code(f: Flavor) {
    let env = f.env();
    let f_uuid = env.scratch.join("uuid");
    let start = Instant::now();
    const SHARED: &str = "--mount=volume=shared,target=/shared";
    let out = run_pod(
        &env,
        f,
        &[
            "--net=none",
            "--volume=shared,kind=empty",
            &format!("--uuid-file-save={}", f_uuid.display()),
        ],
        &[
            app("sleeper", &[], &["--sleep=600"]),
            app(
                "failer",
                &[SHARED],
                // The sleep covers the good app's exit after its write.
                &[
                    "--wait-file=/shared/good-done",
                    "--sleep=5",
                    "--exit-code=7",
                ],
            ),
            app(
                "good",
                &[SHARED],
                &["--write-file=/shared/good-done", "--content=1"],
            ),
        ],
    );
    out.assert_code(7);
    // A kvm pod's time is mostly its boot; the sleeper's 143 below shows it was stopped.
    if f == Flavor::Ns {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "took {:?}",
            start.elapsed()
        );
    }
    let pod = pod_dir_any(&env);
    assert_eq!(status_of(&pod, "failer"), "7");
    assert_eq!(status_of(&pod, "good"), "0");
    assert_eq!(status_of(&pod, "sleeper"), "143");
    let uuid = std::fs::read_to_string(&f_uuid).unwrap();
    let st = env.rkt(&["status", &uuid]);
    st.assert_ok();
    assert_eq!(st.expect_value("app-failer"), "7");
    assert_eq!(st.expect_value("app-good"), "0");
    assert_eq!(st.expect_value("app-sleeper"), "143");
}

/// One running two-app pod: `rkt enter` runs in the chosen app's root, env, hostname, cgroup
/// and the pod's PID namespace, returns the command's code, runs a shell by default, refuses an
/// unknown app; `rkt rm` refuses the running pod; `rkt stop` ends it gracefully (143) and quickly;
/// after that stop and enter say the pod is not running, and rm removes it.
fn enter_picks_an_app_and_stop_ends_the_pod(f: Flavor) {
    let env = f.env();
    let args = pod_args(
        f,
        &["--net=none", "--hostname=entered"],
        &[
            app(
                "a",
                &["--environment=WHO=a", "--memory=32Mi"],
                &[
                    "--write-file=/only-in-a",
                    "--content=1",
                    "--echo=a-started",
                    "--sleep=900",
                ],
            ),
            app("b", &["--environment=WHO=b"], &["--sleep=900"]),
        ],
    );
    let mut child = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        child.wait_for_stdout("a-started", f.start_secs()),
        "{}",
        child.output_so_far()
    );
    let pod = pod_dir_any(&env);
    let uuid = uuid_of(&pod);
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
        "--print-hostname",
        "--stat=/only-in-a",
        "--print-cgroup-limits",
        "--exit-code=3",
    ]);
    out.assert_code(3);
    assert_eq!(out.expect_value("WHO"), "a");
    assert_eq!(out.expect_value("HOSTNAME"), "entered");
    assert_eq!(out.expect_value("STAT_PATH"), "/only-in-a");
    assert_eq!(out.expect_value("MEMORY_LIMIT"), (32u64 << 20).to_string());
    // Both apps share the pod's PID namespace: b sees a's process.
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
    // Default command: a shell in the app's root, reading the caller's stdin (a pipe here).
    let out = env.rkt_with_stdin(b"cat /etc/hostname; exit 4\n", &["enter", "--app=a", &uuid]);
    out.assert_code(4);
    out.assert_stdout_contains("entered");
    let bad = env.rkt(&["enter", "--app=nope", &uuid, "/inspect"]);
    bad.assert_code(254);
    bad.assert_stderr_contains("no app named \"nope\"");
    let rm = env.rkt(&["rm", &uuid]);
    rm.assert_code(254);
    rm.assert_stderr_contains("is currently running");
    if f == Flavor::Ns {
        assert!(!cgroup_dirs(&uuid).is_empty());
    }

    let t = Instant::now();
    let st = env.rkt(&["stop", &uuid]);
    st.assert_ok();
    assert_eq!(st.stdout, format!("\"{uuid}\"\n"));
    let out = child.wait_timeout(60);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    out.assert_code(143);
    let pod = pod_dir_any(&env);
    assert_eq!(status_of(&pod, "a"), "143");
    assert_eq!(status_of(&pod, "b"), "143");
    assert_eq!(env.rkt(&["status", &uuid]).expect_value("state"), "exited");
    let again = env.rkt(&["stop", &uuid]);
    again.assert_code(254);
    again.assert_stderr_contains("is not running");
    let after = env.rkt(&["enter", "--app=a", &uuid, "/inspect"]);
    after.assert_code(254);
    after.assert_stderr_contains("is not running");
    if f == Flavor::Ns {
        assert!(cgroup_dirs(&uuid).is_empty());
    }
    env.rkt(&["rm", &uuid]).assert_ok();
    let left = rkt_tests::mounts_under(&env.dir);
    assert!(left.is_empty(), "{left:?}");
}

/// SIGTERM to `rkt run` itself is forwarded to the pod like `rkt stop`; an app that ignores it is
/// SIGKILLed after stage2's 10 s timeout (137).
fn stop_kills_apps_that_ignore_sigterm_after_the_timeout(f: Flavor) {
    let env = f.env();
    let img = images().busybox_oci_ref();
    let mut child = env.spawn(&[
        "run",
        f.flag(),
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
        child.wait_for_stdout("started", f.start_secs()),
        "{}",
        child.output_so_far()
    );
    // kvm: the VMM (rkt run itself) may open only the devices it uses, so a guest that gets
    // virtio-fs to open a device node it made reaches no host device.
    let vmm_devices = (f == Flavor::Kvm).then(|| {
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid())).unwrap();
        let rel = own
            .lines()
            .find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_string()))
            .expect("the VMM is in a devices cgroup");
        assert!(rel.ends_with("/vmm"), "VMM cgroup {rel}");
        let dir = Path::new("/sys/fs/cgroup/devices").join(rel.trim_start_matches('/'));
        let list = std::fs::read_to_string(dir.join("devices.list")).unwrap();
        let mut allowed: Vec<&str> = list.lines().collect();
        allowed.sort();
        assert_eq!(
            allowed,
            [
                "c 10:200 rw",
                "c 10:232 rw",
                "c 1:3 rw",
                "c 1:5 rw",
                "c 1:7 rw",
                "c 1:8 rw",
                "c 1:9 rw"
            ]
        );
        dir
    });
    let t = Instant::now();
    child.signal(libc::SIGTERM);
    let out = child.wait_timeout(60);
    let took = t.elapsed();
    out.assert_code(137);
    // kvm adds the Stop message's trip into the guest and the VM's reset.
    let most = match f {
        Flavor::Ns => 20,
        Flavor::Kvm => 25,
    };
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(most),
        "took {took:?}"
    );
    if let Some(dir) = vmm_devices {
        assert!(!dir.exists(), "the VMM's cgroup {} is left", dir.display());
    }
}

fn interactive_app_gets_a_terminal(f: Flavor) {
    let env = f.env();
    let img = images().busybox_oci_ref();
    // script(1) gives rkt a terminal on stdin/stdout and passes the shell's exit code back.
    let rkt = format!(
        "{} --dir={} --insecure-options=image run {} --net=none --interactive {img} --exec /bin/sh",
        rkt_tests::rkt_bin().display(),
        env.dir.display(),
        f.flag(),
    );
    let mut c = std::process::Command::new("script");
    c.args(["-q", "-e", "-c", &rkt, "/dev/null"]);
    let out = rkt_tests::run_command_with_stdin(
        c,
        b"test -t 0 && echo stdin-is-a-tty-$((40+2))\necho name=$(tty)\nexit 5\n",
        f.start_secs() + 60,
    );
    out.assert_code(5);
    out.assert_stdout_contains("stdin-is-a-tty-42");
    // The terminal comes from the app's own devpts, so it has a name there.
    out.assert_stdout_contains("name=/dev/pts/0");
}

/// `rkt enter UUID` from a terminal (script(1) again) runs the default command, a shell (rkt's
/// /bin/bash, /bin/sh in images without bash), whose stdin is a terminal; its exit code is
/// enter's. Then `rkt stop --force` ends the pod.
fn enter_gives_a_terminal_when_the_caller_has_one(f: Flavor) {
    let env = f.env();
    let mut child = env.spawn(
        &pod_args(
            f,
            &["--net=none"],
            &[app("main", &[], &["--echo=started", "--sleep=900"])],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(
        child.wait_for_stdout("started", f.start_secs()),
        "{}",
        child.output_so_far()
    );
    let uuid = uuid_of(&pod_dir_any(&env));
    let rkt = format!(
        "{} --dir={} enter {uuid}",
        rkt_tests::rkt_bin().display(),
        env.dir.display(),
    );
    let mut c = std::process::Command::new("script");
    c.args(["-q", "-e", "-c", &rkt, "/dev/null"]);
    let out = rkt_tests::run_command_with_stdin(
        c,
        b"test -t 0 && echo stdin-is-a-tty-$((40+2))\nexit 6\n",
        120,
    );
    out.assert_code(6);
    out.assert_stdout_contains("stdin-is-a-tty-42");
    // `stop --force` kills the pod outright (ns: its supervisor; kvm: the VMM).
    env.rkt(&["stop", "--force", &uuid]).assert_ok();
    child.wait_timeout(60);
    let st = env.rkt(&["status", &uuid]);
    assert_eq!(st.expect_value("state"), "exited", "{st}");
    let after = env.rkt(&["enter", &uuid, "/inspect"]);
    after.assert_code(254);
    after.assert_stderr_contains("is not running");
}

/// ns only: compares the app's namespaces with the host's (a kvm app's live in another kernel,
/// whose initial namespaces may carry the same inode numbers), and `--net=host` (refused on kvm).
#[test]
fn ns_namespaces_are_the_pods_not_the_hosts() {
    let f = Flavor::Ns;
    let env = f.env();
    let ns = ["net", "uts", "ipc", "pid", "mnt", "cgroup"];
    let mut args: Vec<String> = vec!["--print-pid".to_string()];
    args.extend(ns.iter().map(|n| format!("--stat=/proc/self/ns/{n}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&env, f, &[], &[], &args);
    out.assert_ok();
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
        f.flag(),
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

/// ns only: the pod's supervisor and its host cgroups and mounts are what gc must clean up after
/// a SIGKILL; a kvm pod has none of them on the host (see pods_run's owner-killed test).
#[test]
fn ns_gc_after_sigkill_removes_cgroups_and_mounts() {
    let f = Flavor::Ns;
    let env = f.env();
    let args = pod_args(
        f,
        &["--net=none"],
        &[app(
            "main",
            &["--memory=32Mi"],
            &["--echo=started", "--sleep=120"],
        )],
    );
    let mut child = env.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        child.wait_for_stdout("started", f.start_secs()),
        "{}",
        child.output_so_far()
    );
    let pod = pod_dir_any(&env);
    let uuid = uuid_of(&pod);
    let read_pid =
        |p: PathBuf| -> i32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    let app_pid = read_pid(pod.join("apps/main/pid"));
    let sup = read_pid(pod.join("pid"));
    assert!(!cgroup_dirs(&uuid).is_empty());
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
    let left = rkt_tests::mounts_under(&env.dir);
    assert!(left.is_empty(), "{left:?}");
}
