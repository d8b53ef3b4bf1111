//! Scripts written for rkt v1 keep working: Nomad's rkt driver (its `rkt version` fingerprint,
//! its prepare / run-prepared argv, `status --format=json`, `stop --force=true`), pflag's
//! `--flag=true|false` on every boolean, help and usage errors, and systemd's notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use rkt_tests::{images, require_root, Flavor, RktEnv};

/// Nomad's `reRktVersion` / `reAppcVersion` (`rkt [vV]ersion[:]? (\d[.\d]+)`), by hand: the
/// first match's number.
fn nomad_version(out: &str, tool: &str) -> Option<String> {
    for (i, _) in out.match_indices(tool) {
        let rest = &out[i + tool.len()..];
        let rest = rest
            .strip_prefix(" Version")
            .or_else(|| rest.strip_prefix(" version"));
        let Some(rest) = rest else { continue };
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(' ') else {
            continue;
        };
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        if n.starts_with(|c: char| c.is_ascii_digit()) && n.len() >= 2 {
            return Some(n);
        }
    }
    None
}

fn at_least(v: &str, min: &[u32]) -> bool {
    let parts: Vec<u32> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    for (i, m) in min.iter().enumerate() {
        let p = parts.get(i).copied().unwrap_or(0);
        if p != *m {
            return p > *m;
        }
    }
    true
}

#[test]
fn version_passes_nomads_fingerprint() {
    let env = RktEnv::new();
    let out = env.rkt(&["version"]);
    out.assert_ok();
    let rkt = nomad_version(&out.stdout, "rkt").expect("Nomad's regex finds no rkt version");
    assert!(
        at_least(&rkt, &[1, 27, 0]),
        "rkt version {rkt} < 1.27.0\n{out}"
    );
    let appc = nomad_version(&out.stdout, "appc").expect("Nomad's regex finds no appc version");
    assert!(at_least(&appc, &[0, 8]), "{appc}");
    // Our own version is there too, on a line of its own that Nomad's regex does not take.
    assert!(
        out.stdout
            .lines()
            .any(|l| l == format!("rkt-rs Version: {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(!at_least("1.26.9", &[1, 27, 0]) && at_least("1.30.0", &[1, 27, 0]));
    // The compiler's version where rkt v1 had Go's, and TPM measurement as a feature.
    let rust = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Rust Version: "))
        .unwrap_or_else(|| panic!("no Rust Version line\n{out}"));
    assert!(at_least(rust, &[1, 88]), "{out}");
    out.assert_stdout_contains("Features: +TPM");
}

#[test]
fn every_boolean_takes_pflag_values() {
    let env = RktEnv::new();
    let out = env.rkt(&["--debug=false", "list", "--no-legend=true"]);
    out.assert_ok();
    assert!(!out.stdout.contains("UUID"), "{out}");
    let out = env.rkt(&["--debug=0", "list", "--no-legend=false"]);
    out.assert_ok();
    assert!(out.stdout.contains("UUID"), "{out}");
    let out = env.rkt(&["image", "list", "--no-legend=T", "--full=f"]);
    out.assert_ok();
    assert!(!out.stdout.contains("IMPORT TIME"), "{out}");
    let out = env.rkt(&["gc", "--mark-only=true"]);
    out.assert_ok();
    // Hostile: not a boolean; one line, rkt's exit code.
    let out = env.rkt(&["--debug=maybe", "list"]);
    out.assert_code(254);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("maybe"), "{out}");
    // pflag never takes the next word as a boolean's value.
    let out = env.rkt(&["stop", "--force", "false"]);
    out.assert_code(254);
    assert!(out.stderr.contains("\"false\""), "{out}");
}

#[test]
fn usage_errors_name_what_is_missing() {
    let env = RktEnv::new();
    let out = env.rkt(&["enter"]);
    out.assert_code(254);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{out}");
    assert!(
        err.contains("<UUID>") && err.contains("not provided"),
        "{out}"
    );
    let out = env.rkt(&["no-such-command"]);
    out.assert_code(254);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
}

#[test]
fn run_family_help_lists_every_flag_with_its_description() {
    let env = RktEnv::new();
    for args in [
        &["run", "--help"][..],
        &["run", "--net=host", "--help"],
        &["help", "run"],
    ] {
        let out = env.rkt(args);
        out.assert_ok();
        for (flag, words) in [
            ("--exec", "instead of the image's"),
            ("--mount", "every app"),
            ("--uuid-file-save", "UUID"),
            ("--net", "networks"),
            ("--memory", "memory limit"),
            ("--stage1", "flavour"),
        ] {
            let line = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{args:?}: no {flag}\n{out}"));
            assert!(
                out.stdout.contains(words),
                "{args:?}: {flag}: {line}\n{out}"
            );
        }
    }
    let out = env.rkt(&["prepare", "-h"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("--quiet") && !out.stdout.contains("--hostname"),
        "{out}"
    );
    let out = env.rkt(&["run-prepared", "--help"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("--dns") && !out.stdout.contains("--exec"),
        "{out}"
    );
    // Arguments after `--` are the app's, even --help.
    let out = env.rkt(&["help", "no-such-command"]);
    out.assert_code(254);

    let out = env.rkt(&["completion", "bash"]);
    out.assert_ok();
    for f in [
        "--uuid-file-save",
        "--mount",
        "--exec",
        "--no-legend",
        "--follow",
    ] {
        assert!(out.stdout.contains(f), "bash completion lacks {f}");
    }

    let man = env.scratch.join("man");
    let out = env.rkt(&["man", &format!("--dir={}", man.display())]);
    out.assert_ok();
    let run = std::fs::read_to_string(man.join("rkt-run.1")).expect("rkt-run.1");
    assert!(run.contains("uuid\\-file\\-save") || run.contains("uuid-file-save"));
    assert!(man.join("rkt.1").is_file() && man.join("rkt-image-list.1").is_file());
    assert!(
        !man.join("rkt-man.1").exists(),
        "the hidden man command has no page"
    );
}

/// The pods' root directory, for files a test checks on disk.
fn pod_path(env: &RktEnv, uuid: &str) -> std::path::PathBuf {
    for d in ["run", "exited-garbage", "prepared"] {
        let p = env.dir.join("pods").join(d).join(uuid);
        if p.exists() {
            return p;
        }
    }
    panic!("pod {uuid} not found under {}", env.dir.display());
}

#[test]
fn nomads_driver_argv() {
    require_root();
    let env = RktEnv::new();
    let im = images();
    let alloc = env.scratch.join("alloc");
    std::fs::create_dir_all(&alloc).unwrap();
    std::fs::write(alloc.join("data"), "from the host").unwrap();
    let local = env.scratch.join("local");
    std::fs::create_dir_all(&local).unwrap();
    // What Nomad 0.9's rkt driver runs (globals first, --mount before the image, the isolators
    // after it; --stage1 because the tests name their flavour).
    let img = im.busybox_oci_ref();
    let prep = env.rkt(&[
        "--insecure-options=all",
        "--debug=false",
        "prepare",
        "--stage1=ns",
        &format!("--volume=t-alloc,kind=host,source={}", alloc.display()),
        "--mount=volume=t-alloc,target=/alloc",
        &format!("--volume=t-local,kind=host,source={}", local.display()),
        "--mount=volume=t-local,target=/local",
        "--set-env=NOMAD_TASK_NAME=web",
        &img,
        "--exec=/inspect",
        "--memory=268435456",
        "--cpu=500",
        "--",
        "--read-file=/alloc/data",
        "--print-env=NOMAD_TASK_NAME",
        "--write-file=/local/out",
        "--content=written",
        "--print-cgroup-limits",
    ]);
    prep.assert_ok();
    let uuid = prep.stdout.trim().lines().last().unwrap().to_string();
    let run = env.rkt(&[
        "--debug=false",
        "run-prepared",
        "--dns=host",
        "--net=host",
        &uuid,
    ]);
    run.assert_ok();
    assert_eq!(run.expect_value("CONTENT"), "from the host", "{run}");
    assert_eq!(run.expect_value("NOMAD_TASK_NAME"), "web", "{run}");
    assert_eq!(
        std::fs::read_to_string(local.join("out")).unwrap(),
        "written"
    );
    assert_eq!(run.expect_value("MEMORY_LIMIT"), "268435456", "{run}");

    // Nomad's status poll: rkt's JSON.
    let st = env.rkt(&["status", "--format=json", &uuid]);
    st.assert_ok();
    let v: serde_json::Value = serde_json::from_str(st.stdout.trim()).expect("status JSON");
    assert_eq!(v["name"], uuid.as_str(), "{st}");
    assert_eq!(v["state"], "exited", "{st}");
    assert!(pod_path(&env, &uuid).join("logs").is_dir());

    // Nomad's kill: a running pod, stop --force=true.
    let prep = env.rkt(&[
        "--insecure-options=all",
        "prepare",
        "--stage1=ns",
        &img,
        "--exec=/inspect",
        "--",
        "--sleep=600",
    ]);
    prep.assert_ok();
    let uuid = prep.stdout.trim().lines().last().unwrap().to_string();
    let mut child = env.spawn(&["run-prepared", "--dns=host", "--net=host", &uuid]);
    let st = env.rkt(&["status", "--wait-ready=60s", &uuid]);
    st.assert_ok();
    let stop = env.rkt(&["stop", "--force=true", &uuid]);
    stop.assert_ok();
    let out = child.wait_timeout(60);
    assert_eq!(out.code, 128 + 9, "{out}");
    let st = env.rkt(&["status", "--format=json", &uuid]);
    let v: serde_json::Value = serde_json::from_str(st.stdout.trim()).expect("status JSON");
    assert_eq!(v["state"], "exited", "{st}");
    // rkt's exit code for its own errors: stopping an exited pod.
    env.rkt(&["stop", "--force=true", &uuid]).assert_code(254);
}

#[test]
fn mount_before_the_first_image_is_in_every_app() {
    require_root();
    let env = RktEnv::new();
    let im = images();
    let vol = env.scratch.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), "shared").unwrap();
    let img = im.busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--volume=v,kind=host,source={}", vol.display()),
        "--mount=volume=v,target=/v",
        &img,
        "--name=a",
        "--exec=/inspect",
        "--",
        "--read-file=/v/f",
        "---",
        &img,
        "--name=b",
        "--exec=/inspect",
        "--",
        "--read-file=/v/f",
    ]);
    out.assert_ok();
    assert_eq!(out.values("CONTENT"), vec!["shared", "shared"], "{out}");
    // Hostile: the other per-app flags still need their image.
    let out = env.rkt(&["run", "--stage1=ns", "--exec=/x", &img]);
    out.assert_code(254);
    assert!(out.stderr.contains("--exec must follow an image"), "{out}");
}

// ------------------------------------------------------------------------------------ systemd

/// A socket standing in for systemd's `NOTIFY_SOCKET`.
struct FakeSystemd {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd { sock, path }
    }

    /// Waits (bounded) for a message containing `line`; returns every message seen until then.
    fn wait_for(&self, line: &str, secs: u64) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(secs) {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = m.lines().any(|l| l == line);
                seen.push(m);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {line:?} on NOTIFY_SOCKET within {secs}s; got {seen:?}");
    }
}

#[test]
fn systemd_notify_ready_once_apps_started_and_stopping_on_stop() {
    require_root();
    let env = RktEnv::new();
    let sd = FakeSystemd::new(&env.scratch);
    let uuid_file = env.scratch.join("uuid");
    let mut cmd = env.command(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &format!("--uuid-file-save={}", uuid_file.display()),
        &images().busybox_oci_ref(),
        "--exec=/inspect",
        "--",
        "--sleep=600",
    ]);
    cmd.env("NOTIFY_SOCKET", &sd.path);
    let mut child = rkt_tests::RktChild::spawn_command(cmd, &env.scratch);
    sd.wait_for("READY=1", 60);
    // Ready means started: the app's pid is recorded.
    let uuid = std::fs::read_to_string(&uuid_file).unwrap();
    let pod = pod_path(&env, uuid.trim());
    assert!(pod.join("apps").read_dir().unwrap().count() == 1);
    let st = env.rkt(&["status", uuid.trim()]);
    assert!(st.stdout.contains("state=running"), "{st}");
    // `rkt stop` signals the pod's supervisor: STOPPING=1 once its apps are down.
    env.rkt(&["stop", uuid.trim()]).assert_ok();
    sd.wait_for("STOPPING=1", 30);
    child.wait_timeout(60);
    // systemd's stop: SIGTERM to `rkt run`, the unit's main process.
    let mut cmd = env.command(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &images().busybox_oci_ref(),
        "--exec=/inspect",
        "--",
        "--sleep=600",
    ]);
    cmd.env("NOTIFY_SOCKET", &sd.path);
    let mut child = rkt_tests::RktChild::spawn_command(cmd, &env.scratch);
    sd.wait_for("READY=1", 60);
    child.signal(libc::SIGTERM);
    sd.wait_for("STOPPING=1", 30);
    let out = child.wait_timeout(60);
    assert_eq!(out.code, 128 + libc::SIGTERM, "{out}");
    // The app's environment does not carry rkt's NOTIFY_SOCKET.
    let mut cmd = env.command(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &images().busybox_oci_ref(),
        "--exec=/inspect",
        "--",
        "--print-env=NOTIFY_SOCKET",
    ]);
    cmd.env("NOTIFY_SOCKET", &sd.path);
    let out = rkt_tests::run_command(cmd, 120);
    out.assert_ok();
    assert_eq!(out.expect_value("ENV_UNSET"), "NOTIFY_SOCKET", "{out}");
}

/// An image with `appc.io/executor/supports-systemd-notify=true` (an OCI label becomes an appc
/// annotation): busybox relabelled with umoci.
fn notify_image(dir: &Path) -> String {
    let layout = dir.join("notify-oci");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&images().busybox_oci)
        .arg(&layout)
        .status()
        .unwrap();
    assert!(cp.success());
    let st = std::process::Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg("--config.label=appc.io/executor/supports-systemd-notify=true")
        .status()
        .unwrap();
    assert!(st.success(), "umoci config");
    format!("oci:{}:latest", layout.display())
}

// On kvm the app's socket is the guest's, relayed over the control connection (Msg::Notify).
rkt_tests::flavours!(systemd_notify_waits_for_an_app_that_speaks_it);

fn systemd_notify_waits_for_an_app_that_speaks_it(flavor: Flavor) {
    let env = flavor.env();
    let sd = FakeSystemd::new(&env.scratch);
    let img = notify_image(&env.scratch);
    let start = Instant::now();
    // The app says READY=1 (with a status) only after 3 s; rkt's READY=1 must wait for it.
    let mut cmd = env.command(&[
        "run",
        flavor.flag(),
        "--net=none",
        &img,
        "--exec=/inspect",
        "--",
        "--sleep=3",
        "--sd-notify=STATUS=warming up\\nREADY=1\\nMAINPID=1",
        "--sleep=1",
    ]);
    cmd.env("NOTIFY_SOCKET", &sd.path);
    let mut child = rkt_tests::RktChild::spawn_command(cmd, &env.scratch);
    let seen = sd.wait_for("READY=1", 60 + flavor.start_secs());
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "READY=1 came before the app's own: {seen:?}"
    );
    // The app's status (sent with its READY=1, after its 3 s) came before rkt's READY=1.
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .any(|m| m.contains("STATUS=warming up")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|m| m.contains("MAINPID")), "{seen:?}");
    // The app exits on its own a second later: STOPPING=1 as the pod is torn down (on kvm the
    // guest's exit and teardown are emulated kernel work: minutes under load, as its boot).
    sd.wait_for("STOPPING=1", 60 + flavor.start_secs());
    let out = child.wait_timeout(60 + flavor.start_secs());
    out.assert_ok();
    assert_eq!(out.expect_value("SD_NOTIFY"), "sent", "{out}");
}
