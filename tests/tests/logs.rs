//! App logs: what the apps write still reaches `rkt run`'s stdout/stderr, and is kept in the pod
//! directory in the CRI log format (bounded, rotated) until gc; `rkt logs` reads it back.

use std::path::PathBuf;
use std::time::Duration;

use rkt_tests::{flavours, images, require_root, Flavor, RktEnv};

fn pod_dir(env: &RktEnv, uuid: &str) -> PathBuf {
    for d in ["run", "exited-garbage"] {
        let p = env.dir.join("pods").join(d).join(uuid);
        if p.exists() {
            return p;
        }
    }
    panic!("pod {uuid} not found");
}

fn uuid_of(env: &RktEnv, file: &std::path::Path) -> String {
    let _ = env;
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// `2016-10-06T00:17:09.669794202Z stdout F text`
fn assert_cri_line(line: &str) {
    let mut p = line.splitn(4, ' ');
    let t = p.next().unwrap();
    assert!(
        t.len() == 30 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
        "time stamp {t:?} in {line:?}"
    );
    assert!(matches!(p.next(), Some("stdout" | "stderr")), "{line:?}");
    assert!(matches!(p.next(), Some("F" | "P")), "{line:?}");
}

fn logs_are_streamed_kept_and_served(f: Flavor) {
    let env = f.env();
    let uuid_file = env.scratch.join("uuid");
    let out = env.rkt(&[
        "run",
        f.flag(),
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--name=app",
        "--exec=/inspect",
        "--",
        "--echo=hello out",
        "--echo-stderr=oops err",
        "--echo=second",
    ]);
    out.assert_ok();
    // Still streamed to rkt run's own stdout and stderr.
    assert!(out.stdout.contains("hello out\n"), "{out}");
    assert!(out.stderr.contains("oops err\n"), "{out}");
    let uuid = uuid_of(&env, &uuid_file);
    let raw = std::fs::read_to_string(pod_dir(&env, &uuid).join("logs/app.log")).unwrap();
    for l in raw.lines() {
        assert_cri_line(l);
    }
    assert!(raw.contains(" stdout F hello out\n"), "{raw}");
    assert!(raw.contains(" stderr F oops err\n"), "{raw}");

    let logs = env.rkt(&["logs", &uuid]);
    logs.assert_ok();
    assert_eq!(logs.stdout, "hello out\nsecond\n", "{logs}");
    assert_eq!(logs.stderr, "oops err\n", "{logs}");
    // --tail counts lines of both streams (stdout and stderr are separate pipes: their
    // relative order is the order rkt read them in).
    let logs = env.rkt(&["logs", "--tail=3", "--app=app", &uuid]);
    assert_eq!(
        (logs.stdout.as_str(), logs.stderr.as_str()),
        ("hello out\nsecond\n", "oops err\n")
    );
    let logs = env.rkt(&["logs", "--tail=0", &uuid]);
    assert_eq!(
        (logs.stdout.as_str(), logs.stderr.as_str()),
        ("", ""),
        "{logs}"
    );
    let logs = env.rkt(&["logs", "--timestamps", &uuid]);
    for l in logs.stdout.lines() {
        let (t, rest) = l.split_once(' ').unwrap();
        assert!(t.len() == 30 && t.ends_with('Z'), "{logs}");
        assert!(rest == "hello out" || rest == "second", "{logs}");
    }
    // Hostile: an app that does not exist, a bad --tail.
    env.rkt(&["logs", "--app=nope", &uuid]).assert_code(254);
    env.rkt(&["logs", "--tail=-5", &uuid]).assert_code(254);
    // Until gc: then the pod and its logs are gone.
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    env.rkt(&["gc", "--grace-period=0s"]).assert_ok();
    env.rkt(&["logs", &uuid]).assert_code(254);
}

flavours!(logs_are_streamed_kept_and_served);

#[test]
fn logs_on_fly() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let out = env.rkt(&[
        "run",
        "--stage1=fly",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--name=tool",
        "--exec=/inspect",
        "--",
        "--echo=from fly",
        "--echo-stderr=fly err",
    ]);
    out.assert_ok();
    assert!(out.stdout.contains("from fly"), "{out}");
    let uuid = uuid_of(&env, &uuid_file);
    let logs = env.rkt(&["logs", &uuid]);
    logs.assert_ok();
    assert_eq!(logs.stdout, "from fly\n", "{logs}");
    assert_eq!(logs.stderr, "fly err\n", "{logs}");
}

#[test]
fn several_apps_are_prefixed_and_one_can_be_picked() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let img = images().busybox_oci_ref();
    env.rkt(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &img,
        "--name=a",
        "--exec=/inspect",
        "--",
        "--echo=from a",
        "---",
        &img,
        "--name=b",
        "--exec=/inspect",
        "--",
        "--echo=from b",
    ])
    .assert_ok();
    let uuid = uuid_of(&env, &uuid_file);
    let logs = env.rkt(&["logs", &uuid]);
    logs.assert_ok();
    let mut lines: Vec<&str> = logs.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["a: from a", "b: from b"], "{logs}");
    let logs = env.rkt(&["logs", "--app=b", &uuid]);
    assert_eq!(logs.stdout, "from b\n", "{logs}");
}

#[test]
fn logs_are_bounded_and_rotated() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let mut cmd = env.command(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--name=seq",
        "--exec=/bin/busybox",
        "--",
        "seq",
        "1",
        "20000",
    ]);
    cmd.env("RKT_LOG_MAX_SIZE", "65536");
    let out = rkt_tests::run_command(cmd, 120);
    out.assert_ok();
    assert_eq!(
        out.stdout.lines().count(),
        20000,
        "every line still streamed"
    );
    let uuid = uuid_of(&env, &uuid_file);
    let dir = pod_dir(&env, &uuid).join("logs");
    let cur = std::fs::metadata(dir.join("seq.log")).unwrap().len();
    let old = std::fs::metadata(dir.join("seq.log.1")).unwrap().len();
    assert!(cur <= 65536 && old <= 65536, "{cur} {old}");
    assert!(!dir.join("seq.log.2").exists());
    let logs = env.rkt(&["logs", "--tail=2", &uuid]);
    assert_eq!(logs.stdout, "19999\n20000\n", "{logs}");
    // The newest lines are all there, oldest dropped.
    let logs = env.rkt(&["logs", &uuid]);
    let n: Vec<u32> = logs.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1) && *n.last().unwrap() == 20000);
    assert!(n.len() > 1000 && n[0] > 1, "{}", n.len());
}

#[test]
fn a_long_line_without_newline_is_kept_whole() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    // 40000 bytes without a newline, then the app exits: P pieces, then an F.
    let long = "x".repeat(40000);
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--name=long",
        "--exec=/bin/busybox",
        "--",
        "printf",
        "%s\\033[2J\\001",
        &long,
    ]);
    out.assert_ok();
    let uuid = uuid_of(&env, &uuid_file);
    let raw = std::fs::read_to_string(pod_dir(&env, &uuid).join("logs/long.log")).unwrap();
    let tags: Vec<&str> = raw.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(tags, vec!["P", "P", "F"], "{}", raw.len());
    let logs = env.rkt(&["logs", &uuid]);
    // The app's bytes, escape sequences included, and rkt's newline at the end.
    assert_eq!(logs.stdout, format!("{long}\x1b[2J\x01\n"));
}

#[test]
fn follow_prints_new_output_until_the_pod_exits() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let mut run = env.spawn(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--exec=/bin/sh",
        "--",
        "-c",
        "echo one; sleep 3; echo two",
    ]);
    assert!(run.wait_for_stdout("one", 60), "rkt run printed nothing");
    let uuid = uuid_of(&env, &uuid_file);
    let start = std::time::Instant::now();
    let logs = env.rkt(&["logs", "--follow", &uuid]);
    logs.assert_ok();
    assert_eq!(logs.stdout, "one\ntwo\n", "{logs}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "returned before the pod ended"
    );
    run.wait_timeout(60).assert_ok();
}

#[test]
fn interactive_pods_are_not_logged() {
    require_root();
    let env = RktEnv::new();
    let uuid_file = env.scratch.join("uuid");
    let out = env.rkt_with_stdin(
        b"typed\n",
        &[
            "run",
            "--stage1=ns",
            "--net=none",
            "--interactive",
            &format!("--uuid-file-save={}", uuid_file.display()),
            &images().busybox_oci_ref(),
            "--exec=/inspect",
            "--",
            "--read-stdin",
        ],
    );
    out.assert_ok();
    assert!(out.stdout.contains("typed"), "{out}");
    let uuid = uuid_of(&env, &uuid_file);
    let logs = env.rkt(&["logs", &uuid]);
    logs.assert_ok();
    assert_eq!(logs.stdout, "", "{logs}");
}
