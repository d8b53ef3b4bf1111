//! stage1 `kvm`: every pod is a microVM. The `rkt run` process becomes the VMM (so the pod's pid is
//! the VMM's and the pod lock stays held); the guest init (`guest-init/`) is PID 1 inside and runs
//! the apps with the same stage2 code as the ns flavour. Design and numbers: docs/kvm.md.
//!
//! Host side, in order (one file each): refuse what the VM cannot do, find the guest kernel and
//! init and pack the initramfs (`artefacts`), enter a private mount namespace and mount every app's
//! root and volume under `<pod>/stage1/rootfs`, the only directory shared with the guest (`plan`),
//! write the guest copy of the spec, confine the VMM's devices (here), boot or restore from a VM
//! template (`boot`, `template`), and serve the control connection (`control`: app stdio, exit
//! codes, stop); `rkt enter` is a vsock session with the guest init (`enter`).

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rkt_guest_init::proto::{self, Msg, Stream};
use rkt_stage2::cgroup::{self, DeviceRule, Layout};
use rkt_stage2::{MountSpec, NetMode, PodSpec, RootfsSpec};

use crate::measure::PodMeasurement;
use sha2::{Digest, Sha256};

pub mod app;
mod artefacts;
mod boot;
mod control;
mod enter;
mod plan;
pub mod template;

pub use artefacts::*;
use boot::*;
pub use control::*;
pub use enter::*;
pub use plan::*;

/// Guest RAM without `--memory`, MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// Added to the sum of the apps' `--memory` for the guest kernel, init and page cache, MiB.
pub const GUEST_OVERHEAD_MIB: u64 = 128;
/// Firecracker-style vsock: host side of the guest's vsock, `<pod>/<VSOCK_UDS>`; a guest connect
/// to host port P arrives on the listener `<pod>/<VSOCK_UDS>_P`.
pub const VSOCK_UDS: &str = "stage1/vsock";
/// The guest's vsock context id (2 is the host).
pub const GUEST_CID: u32 = 3;
/// Serial console log of the VM.
pub const CONSOLE_LOG: &str = "console.log";
/// How long the guest gets to stop its apps after `rkt stop` before the VM is ended.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Written by the host (`<pod>/kvm-ready`) once the guest reported every app exec'd: from then on
/// `rkt enter` works, and `rkt status --wait-ready` returns.
pub const READY_FILE: &str = "kvm-ready";
/// How long `rkt enter` waits for a booting pod to become ready.
const ENTER_BOOT_WAIT: Duration = Duration::from_secs(300);

/// The signals the VMM turns into a graceful stop (and SIGWINCH, a resize).
fn vmm_signals() -> nix::sys::signal::SigSet {
    let mut sigs = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGHUP,
        nix::sys::signal::SIGWINCH,
    ] {
        sigs.add(s);
    }
    sigs
}

fn err_prefix(e: anyhow::Error) -> anyhow::Error {
    e.context("stage1 kvm")
}

/// Runs the pod in a VM in the foreground; returns `rkt run`'s exit code. `measure` gets the
/// VM's artefacts and final command line, and is finished before any vCPU runs.
pub fn run(ctx: &super::PodContext, spec: &PodSpec, measure: PodMeasurement) -> Result<i32> {
    let pod_dir = ctx.pod_dir;
    check_supported(spec)?;
    // `rkt stop` works from the moment the pod is in run/: our pid (the VMM's) is known now, and
    // a stop before the signal thread exists stays pending (blocked here, before any thread
    // of ours exists) until it takes it and ends the VM.
    vmm_signals().thread_block().context("blocking signals")?;
    rkt_stage2::supervisor::write_atomic(
        &rkt_stage2::pod_pid_path(pod_dir),
        &format!("{}\n", std::process::id()),
    )?;
    // kvm is the default flavour: say what to do on a host without KVM.
    if !Path::new("/dev/kvm").exists() {
        bail!("stage1 kvm: /dev/kvm does not exist (no KVM on this host); use --stage1=ns");
    }
    let kernel = find_kernel()?;
    let init = find_guest_init()?;
    let initrd = initramfs(&ctx.data_dir.join("cas/stage1-kvm"), &init).map_err(err_prefix)?;
    // CNI networks as on ns (docs/networking.md), while we are still in the host's mount
    // namespace: the pod's network namespace is bound under /run/netns, where gc and `ip netns`
    // must see it. Torn down once the VM has ended (gc does it for a killed `rkt run`).
    let netns = crate::net::setup(pod_dir, &spec.uuid, spec.debug)?;
    let code = run_vm(pod_dir, spec, &kernel, &initrd, measure, netns.as_ref());
    drop(netns);
    if let Err(e) = crate::net::teardown(pod_dir) {
        crate::print_error(&format!("network teardown: {}", crate::one_line(&e)));
    }
    code
}

/// The part of `run` between the networks' set-up and teardown.
fn run_vm(
    pod_dir: &Path,
    spec: &PodSpec,
    kernel: &Path,
    initrd: &Path,
    measure: PodMeasurement,
    netns: Option<&std::os::fd::OwnedFd>,
) -> Result<i32> {
    let (nics, interfaces) = match netns {
        Some(ns) => crate::net::kvm::wire_vm(pod_dir, ns).map_err(err_prefix)?,
        None => Default::default(),
    };
    let mut plan = plan(pod_dir, spec).map_err(err_prefix)?;
    // Known only now: whether the interactive app gets a pty (our stdin is a terminal) or a pipe.
    plan.guest.tty = spec.interactive && super::term::is_tty(0);
    plan.guest.interfaces = interfaces;
    // Apps that speak sd_notify get a socket in the guest (docs/systemd.md).
    super::notify::guest_sockets(pod_dir, &mut plan.guest);
    // Without --dns, the DNS settings of a CNI result become the pod's resolv.conf (rkt v1).
    if let Some(r) = crate::net::resolv_conf(pod_dir) {
        plan.guest.resolv_conf = Some(r);
    }
    enter_private_mount_ns().map_err(err_prefix)?;
    plan.apply().map_err(err_prefix)?;
    std::fs::create_dir_all(share_dir(pod_dir))?;
    let guest_spec = share_dir(pod_dir).join(proto::GUEST_SPEC_FILE);
    rkt_stage2::supervisor::write_atomic(&guest_spec, &serde_json::to_string_pretty(&plan.guest)?)?;
    let layout = confine_devices(pod_dir, &spec.uuid).map_err(err_prefix)?;
    let code = boot(pod_dir, spec, kernel, initrd, measure, &nics);
    // Back to the caller's cgroups so the pod's can go (gc removes them if we die first).
    if cgroup::join(&layout, Path::new(""), 0).is_ok() {
        let _ = cgroup::remove_pod(&layout, &spec.uuid);
    }
    code
}

/// The host devices the VMM process may open: the ones it uses and the harmless ones. The guest
/// reaches the host file system through virtio-fs, where FUSE MKNOD makes real device nodes in
/// the pod's overlay; opening one of those (say 8:0, a host disk) must fail in the VMM as it
/// would in an ns app.
const VMM_DEVICES: &[DeviceRule] = &[
    vmm_dev(1, 3),    // null
    vmm_dev(1, 5),    // zero
    vmm_dev(1, 7),    // full
    vmm_dev(1, 8),    // random
    vmm_dev(1, 9),    // urandom
    vmm_dev(10, 232), // kvm
    vmm_dev(10, 200), // net/tun, for virtio-net
];

const fn vmm_dev(major: u32, minor: u32) -> DeviceRule {
    DeviceRule {
        kind: 'c',
        major: Some(major),
        minor: Some(minor),
        access: "rw",
    }
}

/// Moves this process (the VMM) into `rkt/<uuid>/vmm` below the caller's cgroups, as ns pods
/// are, restricted to [`VMM_DEVICES`]; records the layout for `gc`.
fn confine_devices(pod_dir: &Path, uuid: &str) -> Result<Layout> {
    let host = cgroup::detect().context(
        "no cgroup file system is mounted; the VMM's device access cannot be restricted",
    )?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let layout = host.nested_in(&own);
    let rel = cgroup::pod_path(uuid).join("vmm");
    for d in layout.dirs(&rel) {
        std::fs::create_dir_all(&d).with_context(|| format!("creating cgroup {}", d.display()))?;
    }
    rkt_stage2::supervisor::write_atomic(
        &super::ns::cgroups_record(pod_dir),
        &serde_json::to_string(&layout)?,
    )?;
    cgroup::restrict_devices(&layout, &rel, VMM_DEVICES)?;
    cgroup::join(&layout, &rel, 0)?;
    Ok(layout)
}

/// What the VM cannot offer yet, refused with one line before anything is touched.
pub fn check_supported(spec: &PodSpec) -> Result<()> {
    check_net(&spec.net)
}

/// `--net` modes the VM cannot offer (checked by stage0 before the pod is written, too).
pub fn check_net(net: &NetMode) -> Result<()> {
    if *net == NetMode::Host {
        bail!(
            "stage1 kvm: --net=host is not supported (the pod has its own kernel); use --net=none"
        );
    }
    Ok(())
}

/// `rkt stage1 template build`: makes the VM template that a kvm pod of the default size
/// without CNI networks restores from (docs/kvm-template.md). Returns its key and whether it
/// was made now. The VM's share and sockets live in a throw-away directory; it never gets a pod.
pub fn build_template(data_dir: &Path, debug: bool) -> Result<(String, bool)> {
    let kernel = find_kernel()?;
    let init = find_guest_init()?;
    let initrd = initramfs(&data_dir.join("cas/stage1-kvm"), &init).map_err(err_prefix)?;
    let work = std::env::temp_dir().join(format!("rkt-template-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(share_dir(&work))?;
    let spec: PodSpec = serde_json::from_value(serde_json::json!({
        "uuid": "template", "hostname": "template", "net": NetMode::None,
        "resolv_conf": null, "hosts": null, "interactive": false,
        "insecure": rkt_stage2::InsecureRun::default(), "debug": debug, "apps": [],
    }))?;
    let (vcpus, mem_mib) = vm_size(&spec);
    let uds = work.join(VSOCK_UDS);
    let r = template::make_ahead(
        || boot::vmm::config(&spec, &work, &kernel, &initrd, &uds, vcpus, mem_mib, &[]),
        boot::vmm::DEVICES,
    );
    let _ = std::fs::remove_dir_all(&work);
    r.map_err(err_prefix)
}

/// Nothing outlives a kvm pod's VMM process: its mounts were in its private mount namespace.
/// Only the vsock sockets may be left behind by a killed VMM.
pub fn gc(pod_dir: &Path) -> Result<()> {
    // The VMM's cgroups, if it died before removing them.
    let record = std::fs::read(crate::stage1::ns::cgroups_record(pod_dir)).ok();
    let layout = record.and_then(|b| serde_json::from_slice::<Layout>(&b).ok());
    if let (Some(l), Ok(spec)) = (layout, PodSpec::load(pod_dir)) {
        cgroup::remove_pod(&l, &spec.uuid)?;
    }
    crate::net::teardown(pod_dir).context("releasing the pod's networks")?;
    let uds = pod_dir.join(VSOCK_UDS);
    for p in [
        uds.clone(),
        PathBuf::from(format!("{}_{}", uds.display(), proto::CONTROL_PORT)),
        pod_dir.join(app::APP_SOCKET),
    ] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkt_stage2::{AppSpec, InsecureRun, SeccompSpec};

    fn app(name: &str, rootfs: RootfsSpec) -> AppSpec {
        AppSpec {
            name: name.into(),
            image_id: "sha512-x".into(),
            rootfs,
            exec: vec!["/inspect".into()],
            env: vec![],
            user: "0".into(),
            group: "0".into(),
            supplementary_gids: vec![],
            working_dir: "/".into(),
            readonly_rootfs: false,
            mounts: vec![],
            capabilities: vec![],
            seccomp: SeccompSpec::Default,
            memory_limit: None,
            cpu_millis: None,
            cpu_shares: None,
            oom_score_adj: None,
        }
    }

    fn pod(apps: Vec<AppSpec>) -> PodSpec {
        PodSpec {
            uuid: "u".into(),
            hostname: "h".into(),
            net: NetMode::None,
            resolv_conf: None,
            hosts: None,
            interactive: false,
            tty: false,
            insecure: InsecureRun::default(),
            debug: false,
            apps,
            interfaces: vec![],
        }
    }

    #[test]
    fn refuses_host_networking_in_one_line() {
        let mut p = pod(vec![]);
        p.net = NetMode::Host;
        let e = check_supported(&p).unwrap_err().to_string();
        assert!(e.contains("--net=host") && !e.contains('\n'), "{e}");
        p.net = NetMode::None;
        p.interactive = true;
        check_supported(&p).unwrap();
    }

    #[test]
    fn sizes_the_vm_from_the_apps_limits() {
        let mut p = pod(vec![
            app("a", RootfsSpec::Dir("/x".into())),
            app("b", RootfsSpec::Dir("/y".into())),
        ]);
        assert_eq!(vm_size(&p), (1, DEFAULT_MEM_MIB));
        p.apps[0].memory_limit = Some(300 << 20);
        p.apps[1].memory_limit = Some((100 << 20) + 1);
        p.apps[0].cpu_millis = Some(1);
        let host = std::thread::available_parallelism().unwrap().get().min(8) as u8;
        assert_eq!(vm_size(&p), (1, 300 + 101 + GUEST_OVERHEAD_MIB));
        p.apps[1].cpu_millis = Some(1500);
        assert_eq!(vm_size(&p).0, 2.min(host));
    }

    #[test]
    fn detects_dynamic_and_static_elf() {
        let ls = std::fs::read("/bin/ls").unwrap();
        assert_eq!(elf_has_interpreter(&ls), Some(true));
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(elf_has_interpreter(&ls[..40]), None);
        // busybox-static is installed on the test machines.
        let bb = std::fs::read("/bin/busybox").unwrap();
        assert_eq!(elf_has_interpreter(&bb), Some(false));
        // A header whose program headers point past the end is "not ELF", not a panic.
        let mut bad = ls[..64].to_vec();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_has_interpreter(&bad), None);
    }

    #[test]
    fn initramfs_is_a_newc_archive_cpio_reads_and_is_cached() {
        let d = tempfile::tempdir().unwrap();
        let init = d.path().join("guest-init");
        std::fs::write(&init, b"\x7fELF pretend init, odd length").unwrap();
        let cache = d.path().join("cas/stage1-kvm");
        let out = initramfs(&cache, &init).unwrap();
        assert!(out
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("initramfs-"));
        let mtime = out.metadata().unwrap().modified().unwrap();
        assert_eq!(initramfs(&cache, &init).unwrap(), out);
        assert_eq!(
            out.metadata().unwrap().modified().unwrap(),
            mtime,
            "cached, not rewritten"
        );
        let list = std::process::Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::fs::File::open(&out).unwrap())
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let text = String::from_utf8(list.stdout).unwrap();
        let names: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "run",
                "tmp",
                "rkt",
                "dev/console",
                "init"
            ]
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("crw") && l.contains("5,") && l.ends_with("dev/console")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.contains(" 29 ") && l.ends_with("init")),
            "{text}"
        );
        // Extracting gives back the init byte for byte.
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("cpio")
            .args(["-id", "--quiet", "init"])
            .current_dir(&x)
            .stdin(std::fs::File::open(&out).unwrap())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read(x.join("init")).unwrap(),
            std::fs::read(&init).unwrap()
        );
    }

    #[test]
    fn plan_maps_roots_and_volumes_into_the_share() {
        let podd = Path::new("/var/lib/rkt/pods/run/u");
        let own = podd.join("stage1/rootfs/opt/stage2/b/rootfs");
        let mut a = app(
            "a",
            RootfsSpec::Overlay {
                lower: "/var/lib/rkt/cas/tree/x/rootfs".into(),
                upper: podd.join("overlay/x/upper/a"),
                work: podd.join("overlay/x/work/a"),
            },
        );
        let vol = |s: &str, t: &str| MountSpec {
            source: s.into(),
            target: t.into(),
            read_only: false,
            recursive: true,
        };
        a.mounts = vec![
            vol("/srv/data", "/data"),
            vol("/var/lib/rkt/pods/run/u/sharedVolumes/e", "/e"),
        ];
        let mut b = app("b", RootfsSpec::Dir(own.clone()));
        b.mounts = vec![vol("/srv/data", "/d2"), vol("/etc/hostname", "/f")];
        let p = plan(podd, &pod(vec![a.clone(), b])).unwrap();
        // Only the overlay needs a host mount; the --no-overlay copy is already in place.
        assert_eq!(
            p.roots,
            vec![(
                a.rootfs.clone(),
                podd.join("stage1/rootfs/opt/stage2/a/rootfs")
            )]
        );
        assert_eq!(
            p.binds,
            vec![
                ("/srv/data".into(), podd.join("stage1/rootfs/volumes/0")),
                (
                    "/var/lib/rkt/pods/run/u/sharedVolumes/e".into(),
                    podd.join("stage1/rootfs/volumes/1")
                ),
                ("/etc/hostname".into(), podd.join("stage1/rootfs/volumes/2"))
            ]
        );
        let g = &p.guest.apps;
        assert_eq!(
            g[0].rootfs,
            RootfsSpec::Dir("/rkt/opt/stage2/a/rootfs".into())
        );
        assert_eq!(
            g[1].rootfs,
            RootfsSpec::Dir("/rkt/opt/stage2/b/rootfs".into())
        );
        let srcs: Vec<_> = g
            .iter()
            .flat_map(|a| a.mounts.iter().map(|m| m.source.clone()))
            .collect();
        assert_eq!(
            srcs,
            [
                "/rkt/volumes/0",
                "/rkt/volumes/1",
                "/rkt/volumes/0",
                "/rkt/volumes/2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(g[0].mounts[0].target, "/data");
    }

    #[test]
    fn the_share_holds_none_of_stage0s_files() {
        let podd = Path::new("/var/lib/rkt/pods/run/u");
        let share = share_dir(podd);
        for stage0 in ["pid", "pod", "stage1-spec.json", "kvm-ready", "console.log"] {
            assert!(!podd.join(stage0).starts_with(&share), "{stage0} is shared");
        }
        assert!(
            !podd.join(VSOCK_UDS).starts_with(&share),
            "the vsock socket is shared"
        );
        assert_eq!(
            guest_path(podd, &podd.join("pid")),
            None,
            "a path outside the share has no guest view"
        );
    }

    /// A guest init stand-in speaking the real protocol over a real socket.
    fn fake_guest(msgs: Vec<Msg>) -> (UnixStream, std::thread::JoinHandle<Vec<Msg>>) {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            proto::handshake(&mut guest).unwrap();
            for m in msgs {
                proto::write_msg(&mut guest, &m).unwrap();
            }
            let _ = guest.shutdown(std::net::Shutdown::Write);
            let mut got = Vec::new();
            while let Ok(Some(m)) = proto::read_msg(&mut guest) {
                got.push(m);
            }
            got
        });
        (host, t)
    }

    #[test]
    fn control_relays_output_and_records_statuses_and_readiness() {
        let d = tempfile::tempdir().unwrap();
        let p = pod(vec![
            app("a", RootfsSpec::Dir("/x".into())),
            app("b", RootfsSpec::Dir("/y".into())),
        ]);
        let (mut host, g) = fake_guest(vec![
            Msg::AppStarted { app: 0, pid: 10 },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdout,
                data: b"hello ".to_vec(),
            },
            Msg::AppStarted { app: 1, pid: 11 },
            Msg::Data {
                chan: 1,
                stream: Stream::Stderr,
                data: b"oops\n".to_vec(),
            },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdout,
                data: b"world\n".to_vec(),
            },
            Msg::Eof {
                chan: 0,
                stream: Stream::Stdout,
            },
            Msg::AppExited { app: 0, code: 0 },
            Msg::AppExited { app: 1, code: 3 },
            Msg::PodDone { code: 3 },
        ]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let o = serve_control(&mut host, d.path(), &p, &mut out, &mut err, &mut || {});
        assert_eq!(
            o,
            Outcome {
                code: Some(3),
                error: None,
                started: 2
            }
        );
        assert_eq!(out, b"hello world\n");
        assert_eq!(err, b"oops\n");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(rkt_stage2::app_status_path(d.path(), "a")), "0");
        assert_eq!(read(rkt_stage2::app_status_path(d.path(), "b")), "3");
        assert!(d.path().join(READY_FILE).exists());
        drop(host);
        assert_eq!(g.join().unwrap(), Vec::<Msg>::new());
    }

    #[test]
    fn control_distrusts_the_guest() {
        let d = tempfile::tempdir().unwrap();
        let p = pod(vec![app("a", RootfsSpec::Dir("/x".into()))]);
        // Output and the ready hook do not matter here, only the outcome.
        let serve = |host: &mut UnixStream| {
            serve_control(
                host,
                d.path(),
                &p,
                &mut Vec::new(),
                &mut Vec::new(),
                &mut || {},
            )
        };
        // An app number out of range ends the pod with an error, nothing is written.
        let (mut host, _g) = fake_guest(vec![
            Msg::AppExited { app: 7, code: 0 },
            Msg::PodDone { code: 0 },
        ]);
        let o = serve(&mut host);
        assert_eq!(o.code, None);
        assert!(o.error.unwrap().contains("unexpected message"));
        assert!(!d.path().join("status").exists());
        // A host-only message from the guest is refused too.
        let (mut host, _g) = fake_guest(vec![Msg::Enter {
            app: "a".into(),
            cmd: vec![],
            env: vec![],
            tty: false,
        }]);
        assert!(serve(&mut host).error.is_some());
        // An oversized frame header: error, no allocation, no panic.
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            proto::handshake(&mut guest).unwrap();
            guest.write_all(&u32::MAX.to_le_bytes()).unwrap();
        });
        let o = serve(&mut host);
        t.join().unwrap();
        assert!(
            o.error.unwrap().contains("exceeds"),
            "too-large frame reported"
        );
        // Another protocol version.
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            proto::write_msg(&mut guest, &Msg::Hello { version: 99 }).unwrap();
            let _ = proto::read_msg(&mut guest);
        });
        let o = serve(&mut host);
        t.join().unwrap();
        assert!(o.error.unwrap().contains("version 99"));
        // Control characters in a guest error do not reach the terminal.
        let (mut host, _g) = fake_guest(vec![Msg::Error {
            message: "bad\x1b[2J\nthing".into(),
        }]);
        let o = serve(&mut host);
        assert_eq!(o.error.unwrap(), "guest: bad[2Jthing");
    }

    #[test]
    fn enter_relays_stdin_and_output_and_returns_the_code() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let g = std::thread::spawn(move || {
            proto::handshake(&mut guest).unwrap();
            // Echo stdin to stdout until its EOF, then exit 5.
            loop {
                match proto::read_msg(&mut guest).unwrap().unwrap() {
                    Msg::Data {
                        stream: Stream::Stdin,
                        data,
                        ..
                    } => proto::write_msg(
                        &mut guest,
                        &Msg::Data {
                            chan: 0,
                            stream: Stream::Stdout,
                            data,
                        },
                    )
                    .unwrap(),
                    Msg::Eof {
                        stream: Stream::Stdin,
                        ..
                    } => break,
                    m => panic!("unexpected {m:?}"),
                }
            }
            proto::write_msg(
                &mut guest,
                &Msg::Data {
                    chan: 0,
                    stream: Stream::Stderr,
                    data: b"e".to_vec(),
                },
            )
            .unwrap();
            proto::write_msg(&mut guest, &Msg::Exited { code: 5 }).unwrap();
        });
        let mut host = host;
        proto::handshake(&mut host).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = enter_relay(host, Box::new(&b"ping\n"[..]), &mut out, &mut err, false).unwrap();
        g.join().unwrap();
        assert_eq!((code, out, err), (5, b"ping\n".to_vec(), b"e".to_vec()));

        // A refusal from the guest is one error line.
        let (host, mut guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            proto::write_msg(
                &mut guest,
                &Msg::Error {
                    message: "no app \"x\" in the pod".into(),
                },
            )
            .unwrap();
        });
        let e = enter_relay(
            host,
            Box::new(io::empty()),
            &mut Vec::new(),
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "stage1 kvm: enter: no app \"x\" in the pod");
    }

    #[test]
    fn vsock_connect_speaks_firecrackers_handshake() {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("v");
        let l = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            for answer in ["OK 1073741824\n", "NO\n"] {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert_eq!(line, "CONNECT 1025\n");
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        vsock_connect(&uds, 1025).unwrap();
        assert!(vsock_connect(&uds, 1025)
            .unwrap_err()
            .to_string()
            .contains("refused"));
        t.join().unwrap();
    }
}
