//! Hostile inputs to rkt itself (issue 9, `--stage1=ns`): images whose symlinks, `..` chains and
//! loops try to make rkt write outside the pod's root; ids that mean "unchanged" to the kernel;
//! endless flag files; closed pipes; overflowing durations; failed runs; raw bytes in errors. Each
//! asserts the refusal (one line, exit 254) or the harmless outcome, and that a sentinel host
//! directory the image points at stays empty.

use std::ffi::OsStr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rkt_tests::hostile_images::{busybox_plus_layer, HostileImage};
use rkt_tests::{images, require_root, RktEnv, RktOutput};

/// `rkt run --stage1=ns --net=none POD_FLAGS IMAGE APP_FLAGS --exec /inspect -- INSPECT`.
fn run(
    env: &RktEnv,
    image: &str,
    pod_flags: &[&str],
    app_flags: &[&str],
    inspect: &[&str],
) -> RktOutput {
    let mut a = vec![
        "run",
        "--stage1=ns",
        "--net=none",
        "--insecure-options=image",
    ];
    a.extend_from_slice(pod_flags);
    a.push(image);
    a.extend_from_slice(app_flags);
    a.extend(["--exec", "/inspect", "--"]);
    a.extend_from_slice(inspect);
    env.rkt_timeout(120, &a)
}

/// An empty host directory hostile images point their symlinks at.
fn sentinel(env: &RktEnv) -> PathBuf {
    let s = env.scratch.join("sentinel");
    std::fs::create_dir(&s).unwrap();
    s
}

#[track_caller]
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "rkt wrote outside the pod root: {left:?}");
}

/// rkt's own error: exit 254 and exactly one line on stderr containing `needle`.
#[track_caller]
fn assert_refused(out: &RktOutput, needle: &str) {
    out.assert_code(254);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line\n{out}");
    assert!(lines[0].starts_with("rkt: "), "{out}");
    assert!(
        lines[0].contains(needle),
        "no {needle:?} in the error\n{out}"
    );
    assert!(!out.stderr.contains("panicked"), "{out}");
}

/// A pod whose app could not be set up: the stage1 reports it and the pod fails (never exit 0),
/// without a panic.
#[track_caller]
fn assert_app_refused(out: &RktOutput, needle: &str) {
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains(needle),
        "no {needle:?} in stderr\n{out}"
    );
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(!out.stdout.contains("CONTENT="), "the app ran\n{out}");
}

fn image(env: &RktEnv, name: &str, workdir: Option<&str>, f: impl FnOnce(&Path)) -> HostileImage {
    busybox_plus_layer(&env.scratch, name, workdir, f)
}

/// A `..` chain to `to` (absolute) for a symlink `depth` directories below the image root: as
/// many `..` as reach the root, then `hop/..` pairs through [`add_hop`]'s link to `/`. rkt's
/// extractor refuses targets that climb above the tree lexically, but at run time this one
/// climbs out of any root that a path is resolved in naively (`hop` is the host's `/` then).
fn dotdots(to: &Path, depth: usize) -> PathBuf {
    Path::new(&format!("{}{}", "../".repeat(depth), "hop/../".repeat(20)))
        .join(to.strip_prefix("/").unwrap())
}

/// `/hop -> /` in the layer tree `t`, for [`dotdots`].
fn add_hop(t: &Path) {
    symlink("/", t.join("hop")).unwrap();
}

/// Volume targets through an absolute symlink to a host directory, a `..` chain and a symlink as
/// the final component land inside the pod root (the app sees the volume where it asked);
/// through a loop or a chain longer than the kernel's 40 hops they are refused.
#[test]
fn mount_targets_through_image_symlinks_stay_in_the_pod_root() {
    require_root();
    let env = RktEnv::new();
    let s = sentinel(&env);
    let vol = env.scratch.join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "from the host").unwrap();
    let file_vol = env.scratch.join("file-vol");
    std::fs::write(&file_vol, "a file volume").unwrap();
    let im = image(&env, "links", None, |t| {
        add_hop(t);
        symlink(&s, t.join("host")).unwrap();
        symlink(dotdots(&s, 0), t.join("up")).unwrap();
        std::fs::create_dir(t.join("mnt")).unwrap();
        symlink(s.join("final"), t.join("mnt/final")).unwrap();
        symlink(s.join("file"), t.join("mnt/file")).unwrap();
        symlink("loop", t.join("loop")).unwrap();
        // 45 hops, the last one to the host: more than the kernel (and rkt) follow.
        for i in 0..45 {
            symlink(format!("l{}", i + 1), t.join(format!("l{i}"))).unwrap();
        }
        symlink(&s, t.join("l45")).unwrap();
    });
    let volume = format!("--volume=v,kind=host,source={}", vol.display());
    let fvolume = format!("--volume=fv,kind=host,source={}", file_vol.display());
    let out = run(
        &env,
        &im.oci_ref(),
        &[&volume, &fvolume],
        &[
            "--mount=volume=v,target=/host/newfile/deep",
            "--mount=volume=v,target=/up/dd",
            "--mount=volume=v,target=/mnt/final",
            "--mount=volume=fv,target=/mnt/file",
        ],
        &[
            "--read-file=/host/newfile/deep/f",
            "--read-file=/up/dd/f",
            "--read-file=/mnt/final/f",
            "--read-file=/mnt/file",
        ],
    );
    out.assert_ok();
    assert_eq!(
        out.values("CONTENT"),
        [
            "from the host",
            "from the host",
            "from the host",
            "a file volume"
        ],
        "{out}"
    );
    assert_empty(&s);

    // The reproduction: /tmp -> a host directory below /tmp, so inside the root the link
    // leads back to itself.
    let tmp = image(&env, "tmp-link", None, |t| {
        symlink(&s, t.join("tmp")).unwrap();
    });
    for (im, target) in [(&tmp, "/tmp/newfile"), (&im, "/loop/x"), (&im, "/l0/x")] {
        let env2 = RktEnv::new();
        let out = run(
            &env2,
            &im.oci_ref(),
            &[&volume],
            &[&format!("--mount=volume=v,target={target}")],
            &["--read-file=/etc/hostname"],
        );
        assert_app_refused(&out, "symbolic links");
        assert_empty(&s);
    }
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf as symlinks to host files (directly and through
/// a `..` chain) or as a fifo, and /etc itself as a symlink to a host directory: rkt writes its
/// files inside the pod root, the app reads them, the host directory stays empty.
#[test]
fn etc_files_through_image_symlinks_stay_in_the_pod_root() {
    require_root();
    let env = RktEnv::new();
    let s = sentinel(&env);
    let pod_flags = [
        "--hostname=hostile",
        "--dns=192.0.2.1",
        "--hosts-entry=192.0.2.2=db",
    ];
    let inspect = [
        "--read-file=/etc/hostname",
        "--read-file=/etc/resolv.conf",
        "--read-file=/etc/hosts",
    ];
    let check = |out: &RktOutput| {
        out.assert_ok();
        assert_eq!(out.values("CONTENT")[0], "hostile", "{out}");
        out.assert_stdout_contains("\nnameserver 192.0.2.1\n");
        out.assert_stdout_contains("\n192.0.2.2 db\n");
    };

    let files = image(&env, "etc-links", None, |t| {
        add_hop(t);
        std::fs::create_dir(t.join("etc")).unwrap();
        symlink(s.join("hostname"), t.join("etc/hostname")).unwrap();
        symlink(
            dotdots(&s.join("resolv.conf"), 1),
            t.join("etc/resolv.conf"),
        )
        .unwrap();
        let fifo = std::ffi::CString::new(t.join("etc/hosts").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    });
    check(&run(&env, &files.oci_ref(), &pod_flags, &[], &inspect));
    assert_empty(&s);

    let etc = image(&env, "etc-dir-link", None, |t| {
        symlink(&s, t.join("etc")).unwrap();
    });
    check(&run(&env, &etc.oci_ref(), &pod_flags, &[], &inspect));
    assert_empty(&s);
}

/// /proc, /sys and /dev as symlinks to host directories: rkt mounts its own there (the symlinks
/// are replaced in the pod's private root), creating nothing on the host.
#[test]
fn system_dirs_as_image_symlinks_stay_in_the_pod_root() {
    require_root();
    let env = RktEnv::new();
    let s = sentinel(&env);
    let im = image(&env, "sys-links", None, |t| {
        add_hop(t);
        symlink(s.join("proc"), t.join("proc")).unwrap();
        symlink(dotdots(&s.join("sys"), 0), t.join("sys")).unwrap();
        symlink(s.join("dev"), t.join("dev")).unwrap();
    });
    let out = run(
        &env,
        &im.oci_ref(),
        &[],
        &[],
        &[
            "--read-file=/proc/self/comm",
            "--stat=/dev/null",
            "--stat=/sys/kernel",
        ],
    );
    out.assert_ok();
    assert_eq!(out.values("CONTENT"), ["inspect"], "{out}");
    assert_empty(&s);
}

/// Working directories through symlinks resolve inside the root (a `..` chain ends at an image
/// directory, an absolute link to a host directory does not reach it); loops are refused.
#[test]
fn working_dirs_through_image_symlinks_stay_in_the_pod_root() {
    require_root();
    let env = RktEnv::new();
    let s = sentinel(&env);
    let host = env.scratch.join("host-only");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret"), "host").unwrap();
    let im = image(&env, "wd-links", Some("/wloop"), |t| {
        add_hop(t);
        symlink(dotdots(Path::new("/bin"), 0), t.join("wrel")).unwrap();
        symlink(&host, t.join("whost")).unwrap();
        symlink("wloop", t.join("wloop")).unwrap();
    });
    let out = run(
        &env,
        &im.oci_ref(),
        &[],
        &["--working-dir=/wrel"],
        &["--print-cwd"],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("CWD"), "/bin");
    let out = run(
        &env,
        &im.oci_ref(),
        &[],
        &["--working-dir=/../../../.."],
        &["--print-cwd"],
    );
    out.assert_ok();
    assert_eq!(out.expect_value("CWD"), "/");
    let out = run(
        &env,
        &im.oci_ref(),
        &[],
        &["--working-dir=/whost"],
        &["--print-cwd", "--read-file=secret"],
    );
    assert_app_refused(&out, "working directory");
    // The image's own working directory is a loop.
    let out = run(&env, &im.oci_ref(), &[], &[], &["--print-cwd"]);
    assert_app_refused(&out, "working directory");
    assert_empty(&s);
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 1);
}

/// uid/gid 4294967295 is (uid_t)-1, "leave unchanged" to setresuid: it must not run the app as
/// root. Refused on the command line and when an image's /etc/passwd names it.
#[test]
fn user_and_group_minus_one_are_refused() {
    require_root();
    let env = RktEnv::new();
    let im = images().busybox_oci_ref();
    for flag in [
        "--user=4294967295",
        "--group=4294967295",
        "--user=-1",
        "--supplementary-gids=4294967295",
    ] {
        let out = run(&env, &im, &[], &[flag], &["--print-user"]);
        assert_refused(&out, "not an id");
        assert!(!out.stdout.contains("UID="), "{out}");
    }
    let evil = image(&env, "evil-passwd", None, |t| {
        std::fs::create_dir(t.join("etc")).unwrap();
        std::fs::write(
            t.join("etc/passwd"),
            "evil:x:4294967295:4294967295::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(t.join("etc/group"), "evil:x:4294967295:\n").unwrap();
    });
    for flag in ["--user=evil", "--group=evil"] {
        let out = run(&env, &evil.oci_ref(), &[], &[flag], &["--print-user"]);
        assert_ne!(out.code, 0, "{out}");
        assert!(out.stderr.contains("not an id"), "{out}");
        assert!(!out.stdout.contains("UID="), "{out}");
    }
}

/// Files named by flags are read up to a documented limit: /dev/zero is refused quickly with one
/// line instead of being read until memory runs out.
#[test]
fn endless_flag_files_are_refused() {
    require_root();
    let env = RktEnv::new();
    let im = images().busybox_oci_ref();
    let out = env.rkt_timeout(
        60,
        &[
            "run",
            "--stage1=ns",
            "--set-env-file=/dev/zero",
            &im,
            "--exec=/inspect",
        ],
    );
    assert_refused(&out, "larger than");
    let out = env.rkt_timeout(60, &["run", "--stage1=ns", "--pod-manifest=/dev/zero"]);
    assert_refused(&out, "larger than");
    let out = env.rkt_timeout(60, &["prepare", "--pod-manifest=/dev/zero"]);
    assert_refused(&out, "larger than");
    let out = env.rkt_timeout(60, &["status", "--uuid-file=/dev/zero"]);
    assert_refused(&out, "larger than");
    let d = env.local_config.join("stage1.d");
    std::fs::create_dir_all(&d).unwrap();
    symlink("/dev/zero", d.join("zero.json")).unwrap();
    let out = env.rkt_timeout(60, &[&env.config_flags()[0], "config"]);
    assert_refused(&out, "larger than");
}

/// Durations too long for Go's time.Duration are an error, not an overflow panic.
#[test]
fn overflowing_durations_are_refused() {
    require_root();
    let env = RktEnv::new();
    let out = env.rkt(&["gc", "--grace-period=99999999999999999h"]);
    assert_refused(&out, "too long");
    let out = env.rkt(&["gc", "--expire-prepared=1e400s"]);
    assert_refused(&out, "--expire-prepared");
    let out = env.rkt(&["status", "--wait=99999999999999999h", "abc"]);
    assert_refused(&out, "too long");
}

/// Runs `rkt --dir=… ARGS` with stdout a pipe whose reading end is already closed, as in
/// `rkt list | head -0`: rkt must end quietly (killed by SIGPIPE, like other CLI tools), never
/// with a panic.
#[track_caller]
fn closed_stdout(env: &RktEnv, args: &[&str]) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    let out = env
        .command(args)
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "rkt {args:?}: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "rkt {args:?} printed on stderr:\n{stderr}"
    );
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    require_root();
    let env = RktEnv::new();
    let im = images().busybox_oci_ref();
    let out = env.rkt(&[
        "prepare",
        "--stage1=ns",
        "--insecure-options=image",
        &im,
        "--exec=/inspect",
    ]);
    out.assert_ok();
    let uuid = out.stdout.trim().to_string();
    let id = env.fetch_id(&["--insecure-options=image", &im]);
    for args in [
        vec!["list"],
        vec!["list", "--format=json"],
        vec!["status", &uuid],
        vec!["cat-manifest", &uuid],
        vec!["completion", "bash"],
        vec!["version"],
        vec!["config"],
        vec!["image", "list"],
        vec!["image", "cat-manifest", &id],
    ] {
        closed_stdout(&env, &args);
    }
}

/// A `rkt run` that fails after its pod directory exists (here: the UUID file cannot be written)
/// removes the pod: nothing prepared is left for gc to keep for a day.
#[test]
fn failed_run_leaves_no_pod() {
    require_root();
    let env = RktEnv::new();
    let im = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--uuid-file-save=/nonexistent/dir/f",
        "--insecure-options=image",
        &im,
        "--exec=/inspect",
    ]);
    assert_refused(&out, "--uuid-file-save");
    let mut left = Vec::new();
    for d in std::fs::read_dir(env.dir.join("pods")).unwrap() {
        for p in std::fs::read_dir(d.unwrap().path()).unwrap() {
            left.push(p.unwrap().path());
        }
    }
    assert!(left.is_empty(), "pods left: {left:?}");
    let out = env.rkt(&["list", "--no-legend"]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "", "{out}");
}

/// Error lines carry no raw control bytes (a NUL, an escape sequence, newlines from a file's
/// content) and are cut when huge (a 4 KB path).
#[test]
fn errors_are_escaped_and_cut() {
    require_root();
    let env = RktEnv::new();
    let check = |out: &std::process::Output, needle: &str| {
        assert_eq!(out.status.code(), Some(254), "{out:?}");
        let e = &out.stderr;
        assert!(e.ends_with(b"\n"), "{out:?}");
        let line = &e[..e.len() - 1];
        assert!(
            !line.iter().any(|b| *b < 0x20 || *b == 0x7f),
            "control bytes in {:?}",
            String::from_utf8_lossy(e)
        );
        let s = std::str::from_utf8(line).expect("UTF-8");
        assert!(s.starts_with("rkt: ") && s.contains(needle), "{s}");
        assert!(s.chars().count() < 1200, "{} characters", s.chars().count());
    };
    // A path with an escape sequence and a newline.
    let mut bad = b"/nonexistent/\x1b[31mred\nline".to_vec();
    bad.splice(0..0, b"--pod-manifest=".iter().copied());
    let out = env
        .command(&["prepare"])
        .arg(OsStr::from_bytes(&bad))
        .output()
        .unwrap();
    check(&out, "\\x1b[31mred\\nline");
    // A file's content in an error: a pod manifest that is binary, not JSON.
    let f = env.scratch.join("binary.json");
    std::fs::write(&f, b"\x00\x01\x1b]0;title\x07{").unwrap();
    let out = env
        .command(&["prepare", &format!("--pod-manifest={}", f.display())])
        .output()
        .unwrap();
    check(&out, "binary.json");
    // `rkt run FILE` of a text file: the tar reader's error quotes the file's first bytes.
    let f = env.scratch.join("passwd");
    std::fs::write(
        &f,
        "root:x:0:0:\x1b[2J\x1b]0;owned\x07:/root\nsecond:x:1:1::/:\n".repeat(20),
    )
    .unwrap();
    let out = env
        .command(&["run", "--stage1=ns", "--insecure-options=image"])
        .arg(&f)
        .output()
        .unwrap();
    check(&out, "not an ACI");
    // A 4 KB path.
    let long = format!("/{}", "d/".repeat(2000));
    let out = env
        .command(&["prepare", &format!("--pod-manifest={long}")])
        .output()
        .unwrap();
    check(&out, "characters cut");
}
