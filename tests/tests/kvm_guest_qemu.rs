//! The stage1 kvm guest init, booted for real: the guest kernel from kernel-config/, the static
//! guest-init packed by the same initramfs code rkt uses, a pod directory shared over virtio-fs
//! (qemu's virtiofsd) and qemu under TCG (no vsock device there, so the init reports on the serial
//! console — the vsock path is covered by the `rkt run --stage1=kvm` tests once rkt-vmm boots).
//! One boot checks: the share, stage2's app set-up (user from the image's passwd, env, working
//! dir, hostname, cgroup namespace, volumes written through to the host, read-only rootfs),
//! stdout/stderr, exit codes, and "the first failure stops the rest".
//!
//! Needs: root, qemu-system-x86_64, /usr/lib/qemu/virtiofsd, `kernel-config/build.sh`, and the
//! static guest init (`RUSTFLAGS="-C target-feature=+crt-static" cargo build -p rkt-guest-init
//! --target x86_64-unknown-linux-gnu`). Missing pieces fail the test, loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rkt_tests::{require_root, run_command, target_dir, workspace_root};

/// `$RKT_STAGE1_KVM_KERNEL` (as rkt honours it), else the kernel-config/ build.
fn guest_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("RKT_STAGE1_KVM_KERNEL") {
        return PathBuf::from(k);
    }
    let out = Command::new(workspace_root().join("kernel-config/build.sh"))
        .arg("--print-path")
        .output()
        .expect("running kernel-config/build.sh --print-path");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&path).is_file(),
        "no guest kernel at {path:?}: run kernel-config/build.sh first"
    );
    PathBuf::from(path)
}

fn guest_init() -> PathBuf {
    let t = target_dir().join("x86_64-unknown-linux-gnu");
    ["debug", "release"]
        .iter()
        .map(|p| t.join(p).join("guest-init"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().unwrap().modified().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "no static guest-init under {}: build it with RUSTFLAGS=\"-C target-feature=+crt-static\" \
                 cargo build -p rkt-guest-init --target x86_64-unknown-linux-gnu",
                t.display()
            )
        })
}

/// A busybox root with a non-root user, like the busybox test image.
fn busybox_root(root: &Path) {
    for d in ["bin", "etc", "tmp", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for c in [
        "sh", "echo", "id", "hostname", "cat", "pwd", "sleep", "touch", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:u:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guest_init_runs_a_pod_under_qemu_with_virtio_fs() {
    require_root();
    let kernel = guest_kernel();
    let init = std::fs::read(guest_init()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pod = tmp.path().join("pod");
    let initrd = tmp.path().join("initrd.cpio");
    let mut f = std::fs::File::create(&initrd).unwrap();
    rkt_guest_init::initramfs::write_newc(&mut f, &init).unwrap();
    drop(f);

    for app in ["main", "sleeper"] {
        busybox_root(
            &pod.join("stage1/rootfs/opt/stage2")
                .join(app)
                .join("rootfs"),
        );
    }
    // A host volume as stage1 kvm presents it: bound under <pod>/volumes/<n>.
    let vol = pod.join("volumes/0");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("hello"), "from the host\n").unwrap();
    // The app runs as uid 1000.
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script =
        "echo USER=$(id -u):$(id -g); echo HOST=$(hostname); echo FOO=$FOO; echo CWD=$(pwd); \
                  echo VOL=$(cat /data/hello); echo written > /data/out; \
                  touch /ro-test 2>/dev/null && echo ROOT=rw || echo ROOT=ro; \
                  echo CGROUP=$(cat /proc/self/cgroup); echo to-stderr >&2; exit 3";
    let spec = serde_json::json!({
        "uuid": "11111111-2222-3333-4444-555555555555",
        "hostname": "rkt-11111111",
        "net": "none",
        "resolv_conf": null,
        "hosts": null,
        "interactive": false,
        "insecure": {"capabilities": false, "paths": false, "seccomp": false},
        "debug": false,
        "apps": [
            {
                "name": "main", "image_id": "x",
                "rootfs": {"dir": "/rkt/stage1/rootfs/opt/stage2/main/rootfs"},
                "exec": ["/bin/sh", "-c", script],
                "env": [["AC_APP_NAME", "main"], ["FOO", "bar baz"]],
                "user": "user", "group": "1000", "supplementary_gids": [],
                "working_dir": "/work", "readonly_rootfs": true,
                "mounts": [{"source": "/rkt/volumes/0", "target": "/data", "read_only": false, "recursive": true}],
                "capabilities": ["CAP_CHOWN"], "seccomp": "Default",
                "memory_limit": 67108864, "cpu_millis": null, "cpu_shares": null
            },
            {
                "name": "sleeper", "image_id": "x",
                "rootfs": {"dir": "/rkt/stage1/rootfs/opt/stage2/sleeper/rootfs"},
                // Outlives main: the first failure must stop it.
                "exec": ["/bin/sleep", "1000"],
                "env": [["AC_APP_NAME", "sleeper"]],
                "user": "0", "group": "0", "supplementary_gids": [],
                "working_dir": "/", "readonly_rootfs": false, "mounts": [],
                "capabilities": [], "seccomp": "Default",
                "memory_limit": null, "cpu_millis": null, "cpu_shares": null
            }
        ]
    });
    std::fs::write(
        pod.join(rkt_guest_init::proto::GUEST_SPEC_FILE),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();

    let sock = tmp.path().join("vfs.sock");
    let _virtiofsd = Kill(
        Command::new("/usr/lib/qemu/virtiofsd")
            .arg(format!("--socket-path={}", sock.display()))
            .args([
                "-o",
                &format!("source={}", pod.display()),
                "-o",
                "cache=none",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting /usr/lib/qemu/virtiofsd"),
    );
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "virtiofsd did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm,acpi=off,memory-backend=mem",
        "-global",
        "virtio-mmio.force-legacy=false",
    ])
    .args(["-accel", "tcg", "-m", "256M", "-cpu", "max", "-smp", "1"])
    .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 reboot=k panic=-1 quiet"])
    .args([
        "-chardev",
        &format!("socket,id=vfs,path={}", sock.display()),
    ])
    .args(["-device", "vhost-user-fs-device,chardev=vfs,tag=rkt"]);
    let t0 = Instant::now();
    let out = run_command(qemu, 300);
    eprintln!(
        "guest boot + pod under qemu TCG: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The guest init resets the VM when the pod is done; -no-reboot turns that into a clean exit.
    out.assert_ok();
    for line in [
        "USER=1000:1000",
        "HOST=rkt-11111111",
        "FOO=bar baz",
        "CWD=/work",
        "VOL=from the host",
        "ROOT=ro",
        "CGROUP=0::/",
        "to-stderr",
        "rkt-guest: app main exited 3",
        "rkt-guest: app sleeper exited 143",
        "rkt-guest: pod done 3",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim_end() == line),
            "missing {line:?} in:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("guest-init: mounting"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "written\n",
        "volume write reached the host"
    );
}
