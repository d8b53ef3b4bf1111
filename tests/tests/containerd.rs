//! containerd-shim-rkt-v2 under a real containerd (Debian's 1.6), started by each test with its
//! own root, state, socket and config; driven with `ctr`. Needs `cargo build -p rkt -p rkt-shim`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rkt_tests::{cleanup_tree, containerd, images, mounts_under, require_root, rkt_bin, Registry};

const IMAGE: &str = "docker.io/library/busybox:latest";
const NS: &str = "io.containerd.rkt-ns.v2";
const KVM: &str = "io.containerd.rkt.v2";
/// A kvm sandbox boots a kernel whose code this host's nested PVM emulates: minutes, not
/// milliseconds (docs/containerd.md).
const KVM_SECS: u64 = 900;

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// The local `docker-registry` the image is pulled from.
    _reg: Registry,
}

impl Containerd {
    fn start() -> Containerd {
        require_root();
        let dir = containerd::temp_root("rkt-ctd-");
        let d = dir.path();
        let child = containerd::spawn(
            d,
            &format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n",
                d.display()
            ),
        );
        let reg = Registry::start();
        reg.push(&images().busybox_oci_ref(), "ctr/busybox:1");
        let c = Containerd {
            dir,
            child,
            _reg: reg,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Pulled from the local registry as from any, then named as the tests run it.
        let pulled = format!("{}/ctr/busybox:1", c._reg.addr);
        let pull = c.ctr(&["image", "pull", "--plain-http", &pulled]);
        assert!(pull.status.success(), "{}", text(&pull));
        let tag = c.ctr(&["image", "tag", &pulled, IMAGE]);
        assert!(tag.status.success(), "{}", text(&tag));
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_timeout(120, args)
    }

    fn ctr_cmd_timeout(&self, secs: u64, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg(secs.to_string())
            .arg("ctr")
            .arg("--address")
            .arg(self.path().join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().unwrap()
    }

    fn rkt(&self, args: &[&str]) -> Output {
        Command::new(rkt_bin())
            .arg(format!("--dir={}", self.path().join("rkt").display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// Pod directories left in rkt's data directory (any state).
    fn pods(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in [
            "embryo",
            "prepare",
            "prepared",
            "run",
            "exited-garbage",
            "garbage",
        ] {
            if let Ok(rd) = std::fs::read_dir(self.path().join("rkt/pods").join(d)) {
                v.extend(rd.flatten().map(|e| e.path()));
            }
        }
        v
    }

    fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn task_status(&self, id: &str) -> String {
        let out = String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout).into_owned();
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    }

    /// `ctr task exec -t` of `script` in `id` under script(1), which gives ctr a terminal of
    /// its own. `exec` and --foreground keep ctr in the terminal's foreground group whatever
    /// $SHELL is: under dash, timeout would make its own background group and ctr's raw mode
    /// would stop it with SIGTTOU (CI has no $SHELL).
    fn exec_tty(&self, secs: u64, id: &str, exec_id: &str, script: &str) -> Output {
        Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "exec timeout --foreground {secs} ctr --address {} task exec -t --exec-id {exec_id} {id} /bin/sh -c '{script}'",
                self.path().join("containerd.sock").display()
            ))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr task ps`: the task's pids, with ctr's output for messages.
    fn task_pids(&self, id: &str) -> (Vec<String>, String) {
        let ps = self.ctr(&["task", "ps", id]);
        let pids = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        (pids, text(&ps))
    }

    /// `memory.usage_in_bytes` of `ctr task metrics`.
    fn memory_usage(&self, id: &str) -> u64 {
        let metrics = self.ctr(&["task", "metrics", id]);
        String::from_utf8_lossy(&metrics.stdout)
            .lines()
            .find(|l| l.starts_with("memory.usage_in_bytes"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no memory figure: {}", text(&metrics)))
    }

    /// Nothing left behind: no pod, no mount below the test's directory but containerd's own
    /// snapshotter bookkeeping.
    fn assert_clean(&self) {
        self.wait_until("the pods to be removed", 30, || self.pods().is_empty());
        let left: Vec<_> = mounts_under(self.path())
            .into_iter()
            .filter(|m| !m.starts_with(self.path().join("root")))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test's pods still run; their processes live in the pod's root (not below the
        // test directory), out of cleanup_tree's reach: stopped and collected first.
        for p in self.pods() {
            if p.parent().is_some_and(|d| d.ends_with("run")) {
                let uuid = p.file_name().unwrap().to_string_lossy().into_owned();
                let _ = self.rkt(&["stop", "--force", &uuid]);
            }
        }
        if !self.pods().is_empty() {
            std::thread::sleep(Duration::from_secs(1));
            let _ = self.rkt(&["gc", "--grace-period=0s"]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims run with their bundle as cwd: cleanup_tree ends them too.
        cleanup_tree(self.dir.path());
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn ctr_run_output_exit_code_and_process_spec_ns() {
    let c = Containerd::start();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        NS,
        "--env",
        "GREETING=hello from rkt",
        "--cwd",
        "/tmp",
        IMAGE,
        "c1",
        "/bin/sh",
        "-c",
        "echo \"$GREETING\"; pwd; cat /proc/1/comm; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello from rkt", "{}", text(&out));
    assert_eq!(lines[1], "/tmp", "{}", text(&out));
    // PID 1 of the container's PID namespace is the rkt pod's supervisor, not the app: the
    // container runs as an rkt app.
    assert_ne!(lines[2], "sh", "{}", text(&out));
    c.assert_clean();

    // The root the app saw is containerd's snapshot: a file written there is in the container's
    // snapshot (kept without --rm) and not in the image.
    let out = c.ctr(&[
        "run",
        "--runtime",
        NS,
        IMAGE,
        "c2",
        "/bin/sh",
        "-c",
        "echo x > /marker",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mounts = c.ctr(&["snapshot", "mounts", "/tmp/unused", "c2"]);
    let m = String::from_utf8_lossy(&mounts.stdout);
    let upper = m
        .split(|ch: char| ch == ',' || ch.is_whitespace())
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {m}"));
    assert_eq!(
        std::fs::read_to_string(Path::new(upper).join("marker")).unwrap(),
        "x\n"
    );
    // ctr run deletes the task when it exits (the container stays without --rm).
    assert!(c.ctr(&["container", "rm", "c2"]).status.success());
    c.assert_clean();
}

#[test]
fn ctr_exec_kill_delete_ps_metrics_ns() {
    let c = Containerd::start();
    // An id that is not an rkt app name (upper case, underscore) still runs.
    let id = "Long_Runner";
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        NS,
        IMAGE,
        id,
        "/bin/sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    c.wait_until("the task to run", 30, || c.task_status(id) == "RUNNING");

    let ex = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "/bin/sh",
        "-c",
        "echo in exec; exit 5",
    ]);
    assert_eq!(ex.status.code(), Some(5), "{}", text(&ex));
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "in exec\n");

    // With a terminal: ctr needs one itself, script(1) gives it a pty.
    let tty = c.exec_tty(60, id, "e2", "tty; exit 4");
    let tty_out = String::from_utf8_lossy(&tty.stdout);
    assert!(tty_out.contains("/dev/pts/"), "{}", text(&tty));
    assert_eq!(tty.status.code(), Some(4), "{}", text(&tty));

    let (pids, ps) = c.task_pids(id);
    assert_eq!(pids.len(), 1, "{ps}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).unwrap();
    assert_eq!(comm.trim(), "sleep");

    assert!(c.memory_usage(id) > 0);

    // Deleting a running task is refused; kill reaches the app.
    assert!(!c.ctr(&["task", "rm", id]).status.success());
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", id])
        .status
        .success());
    c.wait_until("the task to stop", 30, || c.task_status(id) == "STOPPED");
    let rm = c.ctr(&["task", "rm", id]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(c.ctr(&["container", "rm", id]).status.success());
    c.assert_clean();
}

#[test]
fn shim_sigkill_leaves_nothing_gc_cannot_clean_ns() {
    shim_sigkill_leaves_nothing_gc_cannot_clean(NS, 30);
}

/// On kvm the pod is a VM: the shim's death stops its VMM (PDEATHSIG) and `shim delete`
/// removes the pod.
#[test]
fn shim_sigkill_leaves_nothing_gc_cannot_clean_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the stage1 kvm tests cannot run on this machine"
    );
    shim_sigkill_leaves_nothing_gc_cannot_clean(KVM, KVM_SECS);
}

fn shim_sigkill_leaves_nothing_gc_cannot_clean(runtime: &str, secs: u64) {
    let c = Containerd::start();
    let out = c
        .ctr_cmd_timeout(
            secs,
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                IMAGE,
                "k1",
                "/bin/sleep",
                "1000",
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    c.wait_until("the task to run", secs, || c.task_status("k1") == "RUNNING");
    assert_eq!(c.pods().len(), 1);
    let sock = c.path().join("containerd.sock");
    let shim = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim-rkt-v2")
                && cmd.contains(sock.to_str().unwrap())
                && cmd.contains("\0k1\0")
        })
        .expect("the shim process")
        .file_name();
    let pid: i32 = shim.to_str().unwrap().parse().unwrap();
    let bundle = c
        .path()
        .join("state/io.containerd.runtime.v2.task/default/k1");
    assert!(
        bundle.join("rootfs").is_dir(),
        "no bundle at {}",
        bundle.display()
    );
    // SAFETY: plain kill(2) of the shim this test's containerd started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // containerd notices, runs `shim delete` (which stops and removes the pod), then unmounts the
    // rootfs and removes the bundle. The task shows as not running as soon as the shim is gone,
    // so the bundle is what says containerd has finished.
    c.wait_until("containerd to remove the bundle", 60, || !bundle.exists());
    let gc = c.rkt(&["gc", "--grace-period=0s"]);
    assert!(gc.status.success(), "{}", text(&gc));
    c.assert_clean();
    let _ = c.ctr(&["task", "rm", "k1"]);
    assert!(c.ctr(&["container", "rm", "k1"]).status.success());
}

#[test]
fn bad_command_fails_and_cleans_up_ns() {
    let c = Containerd::start();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        NS,
        IMAGE,
        "b1",
        "/no/such/binary",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let _ = c.ctr(&["task", "rm", "-f", "b1"]);
    let _ = c.ctr(&["container", "rm", "b1"]);
    c.assert_clean();
}

/// With no stdio wanted (`--null-io`, as CRI's pause container), rkt's one-line error for an app
/// that cannot start still reaches containerd's log (the shim logs the last line of the app's
/// unread stderr).
#[test]
fn null_io_start_error_reaches_containerds_log_ns() {
    let c = Containerd::start();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--null-io",
        "--runtime",
        NS,
        IMAGE,
        "n1",
        "/no/such/binary",
    ]);
    let log = || std::fs::read_to_string(c.path().join("containerd.log")).unwrap_or_default();
    c.wait_until("the app's error in containerd's log", 30, || {
        log().contains("last line of its unread stderr")
    });
    let line = log()
        .lines()
        .find(|l| l.contains("last line of its unread stderr"))
        .unwrap()
        .to_string();
    assert!(line.contains("container n1"), "{line}\n{}", text(&out));
    assert!(line.contains("/no/such/binary"), "{line}");
    let _ = c.ctr(&["task", "rm", "-f", "n1"]);
    let _ = c.ctr(&["container", "rm", "n1"]);
    c.assert_clean();
}

/// The kvm runtime, one sandbox boot for all of it: the container's output and input go
/// through the FIFOs to the app in the VM, an exec runs in the VM (its kernel is the guest's),
/// `task ps` and `metrics` show the VM (its VMM process, its cgroup), a signal from `ctr task
/// kill` reaches the app in the guest and its exit code comes back; nothing is left.
#[test]
fn ctr_run_stdio_exec_kill_in_the_vm_kvm() {
    use std::io::{BufRead, BufReader, Write};
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the stage1 kvm tests cannot run on this machine"
    );
    let c = Containerd::start();
    let id = "vm1";
    let mut run = c
        .ctr_cmd_timeout(
            KVM_SECS,
            &[
                "run",
                "--rm",
                "--runtime",
                KVM,
                "--env",
                "GREETING=hello from the VM",
                IMAGE,
                id,
                "/bin/sh",
                "-c",
                "trap 'echo got TERM; exit 7' TERM; echo \"$GREETING\"; read l; echo \"read $l\"; \
                 cat >/dev/null; echo input ended; while :; do sleep 1; done",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = run.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(KVM_SECS))
            .unwrap_or_else(|_| panic!("no {what} from the container"))
    };
    assert_eq!(next("greeting"), "hello from the VM");
    let mut stdin = run.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    assert_eq!(next("echo of its input"), "read ping");
    // ctr's input ends (CloseIO): the app in the guest reads EOF.
    drop(stdin);
    assert_eq!(next("the end of its input"), "input ended");
    assert_eq!(c.task_status(id), "RUNNING");

    // An exec with a terminal gets one in the guest.
    let tty = c.exec_tty(KVM_SECS, id, "e2", "tty; exit 4");
    assert!(
        String::from_utf8_lossy(&tty.stdout).contains("/dev/pts/"),
        "{}",
        text(&tty)
    );
    assert_eq!(tty.status.code(), Some(4), "{}", text(&tty));

    let ex = c
        .ctr_cmd_timeout(
            KVM_SECS,
            &[
                "task",
                "exec",
                "--exec-id",
                "e1",
                id,
                "/bin/sh",
                "-c",
                "uname -r; exit 5",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(ex.status.code(), Some(5), "{}", text(&ex));
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let guest = String::from_utf8_lossy(&ex.stdout);
    assert!(
        !guest.trim().is_empty() && guest.trim() != host.trim(),
        "the exec ran on the host's kernel {host:?}: {}",
        text(&ex)
    );

    // The VM stands for the container on the host: its VMM is the one process.
    let (pids, ps) = c.task_pids(id);
    assert_eq!(pids.len(), 1, "{ps}");
    let uuid = c.pods()[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("sandbox"),
        "pid {} is not the VMM of pod {uuid}",
        pids[0]
    );
    let usage = c.memory_usage(id);
    // The VMM's charge: a VM restored from a template maps the template's memory file and is
    // charged only for what it touched (8.4 MiB seen), so no more than a MiB is asserted.
    assert!(usage > 1 << 20, "{usage}");
    // Deleting a running task is refused.
    assert!(!c.ctr(&["task", "rm", id]).status.success());

    assert!(c
        .ctr(&["task", "kill", "-s", "SIGTERM", id])
        .status
        .success());
    assert_eq!(next("the trap's line"), "got TERM");
    let st = run.wait().unwrap();
    assert_eq!(st.code(), Some(7));
    c.assert_clean();
}
