//! stage1 `kvm`: every pod is a microVM. The `rkt run` process becomes the VMM (so the pod's pid is
//! the VMM's and the pod lock stays held); the guest init (`guest-init/`) is PID 1 inside and runs
//! the apps with the same stage2 code as the ns flavour. Design and numbers: docs/kvm.md.
//!
//! Host side, in order: refuse what the VM cannot do, find the guest kernel and init, pack the
//! initramfs (cached by the init's digest), enter a private mount namespace, mount every app's root
//! under the pod directory (the only thing shared with the guest, over virtio-fs), write the guest
//! copy of the spec, boot, and serve the control connection (app stdio, exit codes, stop).

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
pub fn run(pod_dir: &Path, spec: &PodSpec, measure: PodMeasurement) -> Result<i32> {
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
    let store_dir = pod_dir.ancestors().nth(3).unwrap_or(pod_dir);
    let initrd = initramfs(&store_dir.join("cas/stage1-kvm"), &init).map_err(err_prefix)?;
    let mut plan = plan(pod_dir, spec).map_err(err_prefix)?;
    // Known only now: whether the interactive app gets a pty (our stdin is a terminal) or a pipe.
    plan.guest.tty = spec.interactive && super::term::is_tty(0);
    enter_private_mount_ns().map_err(err_prefix)?;
    plan.apply().map_err(err_prefix)?;
    std::fs::create_dir_all(share_dir(pod_dir))?;
    let guest_spec = share_dir(pod_dir).join(proto::GUEST_SPEC_FILE);
    rkt_stage2::supervisor::write_atomic(&guest_spec, &serde_json::to_string_pretty(&plan.guest)?)?;
    let layout = confine_devices(pod_dir, &spec.uuid).map_err(err_prefix)?;
    let code = boot(pod_dir, spec, &kernel, &initrd, measure);
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

// ---------------------------------------------------------------------------------------------
// Artefacts

/// The guest kernel: `$RKT_STAGE1_KVM_KERNEL`, else the newest `vmlinux` in the kernel cache
/// (`$RKT_KERNEL_CACHE`, default /var/cache/rkt/kernel, as kernel-config/build.sh writes it).
pub fn find_kernel() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RKT_STAGE1_KVM_KERNEL") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "stage1 kvm: RKT_STAGE1_KVM_KERNEL={} is not a file",
                p.display()
            );
        }
        return Ok(p);
    }
    let cache = std::env::var_os("RKT_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/rkt/kernel".into());
    newest_vmlinux(&cache)
        .ok_or_else(|| anyhow!("stage1 kvm: no guest kernel found (run kernel-config/build.sh)"))
}

fn newest_vmlinux(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// The static guest init: `$RKT_STAGE1_KVM_INIT`, else the cargo build next to this `rkt`
/// (`<target>/x86_64-unknown-linux-gnu/{release,debug}/guest-init`), else
/// /usr/lib/rkt/stage1-kvm/guest-init.
pub fn find_guest_init() -> Result<PathBuf> {
    let found = if let Some(p) = std::env::var_os("RKT_STAGE1_KVM_INIT") {
        PathBuf::from(p)
    } else {
        let mut cands = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            if let (Some(dir), Some(target)) = (exe.parent(), exe.parent().and_then(Path::parent)) {
                let profile = dir.file_name().unwrap_or(OsStr::new("debug"));
                let t = target.join("x86_64-unknown-linux-gnu");
                cands.push(t.join(profile).join("guest-init"));
                cands.extend(["release", "debug"].map(|p| t.join(p).join("guest-init")));
            }
        }
        cands.push("/usr/lib/rkt/stage1-kvm/guest-init".into());
        cands.into_iter().find(|p| p.is_file()).ok_or_else(|| {
            anyhow!(
                "stage1 kvm: no guest init found (build it: RUSTFLAGS=\"-C target-feature=+crt-static\" \
                 cargo build -p rkt-guest-init --target x86_64-unknown-linux-gnu)"
            )
        })?
    };
    let bytes = std::fs::read(&found)
        .with_context(|| format!("stage1 kvm: reading {}", found.display()))?;
    match elf_has_interpreter(&bytes) {
        Some(false) => Ok(found),
        Some(true) => bail!(
            "stage1 kvm: {} is dynamically linked; the guest init must be static (RUSTFLAGS=\"-C target-feature=+crt-static\")",
            found.display()
        ),
        None => bail!("stage1 kvm: {} is not an x86-64 ELF executable", found.display()),
    }
}

/// Whether an ELF64 file asks for a program interpreter (is dynamically linked); None: not ELF64.
pub fn elf_has_interpreter(b: &[u8]) -> Option<bool> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let ty = u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?);
        if ty == 3 {
            return Some(true);
        }
    }
    Some(false)
}

/// The initramfs for `init`, packed at first use and cached as `<cache>/initramfs-<sha256>.cpio`.
pub fn initramfs(cache: &Path, init: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let out = cache.join(format!("initramfs-{digest}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache)?;
    rkt_guest_init::initramfs::write_newc(&mut io::BufWriter::new(tmp.as_file_mut()), &bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// vCPUs (`--cpu` summed over the apps, rounded up, at least 1, at most the host's CPUs) and guest
/// RAM in MiB (sum of `--memory` + [`GUEST_OVERHEAD_MIB`], or [`DEFAULT_MEM_MIB`]).
pub fn vm_size(spec: &PodSpec) -> (u8, u64) {
    let millis: u64 = spec.apps.iter().filter_map(|a| a.cpu_millis).sum();
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let vcpus = millis.div_ceil(1000).clamp(1, host.min(8)) as u8;
    let limits: Vec<u64> = spec.apps.iter().filter_map(|a| a.memory_limit).collect();
    let mem = if limits.is_empty() {
        DEFAULT_MEM_MIB
    } else {
        (limits.iter().sum::<u64>().div_ceil(1 << 20) + GUEST_OVERHEAD_MIB).max(DEFAULT_MEM_MIB)
    };
    (vcpus, mem)
}

// ---------------------------------------------------------------------------------------------
// Host mounts and the guest spec

/// What the host mounts before boot, and the spec the guest reads.
#[derive(Debug)]
pub struct Plan {
    /// App roots to assemble on the host: (how, where under the pod directory).
    pub roots: Vec<(RootfsSpec, PathBuf)>,
    /// Bind mounts of host volumes outside the pod directory into `<pod>/volumes/<n>`.
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub guest: PodSpec,
}

/// The one directory the guest sees (virtio-fs): the app roots, volumes and the guest spec,
/// rkt's `stage1/rootfs`. Not the whole pod directory: its `pid` file is what `rkt stop` signals
/// and its manifest, lock and sockets are stage0's, none of which a guest may rewrite.
pub fn share_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("stage1/rootfs")
}

/// Maps a host path under the share to the guest's view of it.
fn guest_path(pod_dir: &Path, p: &Path) -> Option<PathBuf> {
    let rel = p.strip_prefix(share_dir(pod_dir)).ok()?;
    Some(Path::new(proto::SHARE_MOUNT).join(rel))
}

/// Computes the host mounts and the guest spec (no side effects).
pub fn plan(pod_dir: &Path, spec: &PodSpec) -> Result<Plan> {
    let mut guest = spec.clone();
    let mut roots = Vec::new();
    let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
    for app in &mut guest.apps {
        let at = pod_dir
            .join("stage1/rootfs/opt/stage2")
            .join(&app.name)
            .join("rootfs");
        let needs_mount = match &app.rootfs {
            RootfsSpec::Dir(d) => d != &at,
            RootfsSpec::Overlay { .. } => true,
        };
        if needs_mount {
            roots.push((app.rootfs.clone(), at.clone()));
        }
        app.rootfs = RootfsSpec::Dir(guest_path(pod_dir, &at).unwrap());
        for m in &mut app.mounts {
            let MountSpec { source, .. } = m;
            let host = source.clone();
            let shared = match guest_path(pod_dir, &host) {
                Some(g) => g,
                None => {
                    let n = match binds.iter().position(|(s, _)| *s == host) {
                        Some(n) => n,
                        None => {
                            binds.push((
                                host.clone(),
                                share_dir(pod_dir)
                                    .join("volumes")
                                    .join(binds.len().to_string()),
                            ));
                            binds.len() - 1
                        }
                    };
                    guest_path(pod_dir, &binds[n].1).unwrap()
                }
            };
            *source = shared;
        }
    }
    Ok(Plan {
        roots,
        binds,
        guest,
    })
}

impl Plan {
    /// Performs the mounts (in the caller's private mount namespace).
    pub fn apply(&self) -> Result<()> {
        for (how, at) in &self.roots {
            rkt_stage2::fs::mount_rootfs(how, at)?;
        }
        for (src, dst) in &self.binds {
            let md = std::fs::metadata(src)
                .with_context(|| format!("volume source {}", src.display()))?;
            if md.is_dir() {
                std::fs::create_dir_all(dst)?;
            } else {
                std::fs::create_dir_all(dst.parent().unwrap())?;
                std::fs::write(dst, b"")?;
            }
            nix::mount::mount(
                Some(src),
                dst,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {} on {}", src.display(), dst.display()))?;
        }
        Ok(())
    }
}

fn enter_private_mount_ns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare mount namespace")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")
}

// ---------------------------------------------------------------------------------------------
// The control connection

/// How the guest's side of the pod ended, as seen over the control connection.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub code: Option<i32>,
    pub error: Option<String>,
    pub started: usize,
}

/// Serves one control connection from the guest init: relays app output to `out`/`err`, writes
/// `status/<app>` and (when every app started) [`READY_FILE`], until PodDone or the end of
/// the connection. Distrusts the guest: bad frames or app numbers end the pod with an error.
/// `on_hello` runs once the handshake is done: only then may other threads write to the guest.
pub fn serve_control<S: Read + Write>(
    conn: &mut S,
    pod_dir: &Path,
    spec: &PodSpec,
    out: &mut dyn Write,
    err: &mut dyn Write,
    on_hello: &mut dyn FnMut(),
) -> Outcome {
    let mut o = Outcome::default();
    if let Err(e) = proto::handshake(conn) {
        o.error = Some(format!("guest handshake: {e}"));
        return o;
    }
    on_hello();
    let n = spec.apps.len();
    let name = |i: u32| spec.apps.get(i as usize).map(|a| a.name.as_str());
    loop {
        let m = match proto::read_msg(conn) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                o.error = Some(format!("control connection: {e}"));
                break;
            }
        };
        match m {
            Msg::Data { chan, stream, data } if (chan as usize) < n => {
                let w: &mut dyn Write = if stream == Stream::Stderr { err } else { out };
                let _ = w.write_all(&data);
                let _ = w.flush();
            }
            Msg::Eof { chan, .. } if (chan as usize) < n => {}
            Msg::AppStarted { app, .. } if (app as usize) < n => {
                // The guest reports an app once it exec'd (its root is in place): enter works.
                o.started += 1;
                if o.started == n {
                    let _ = rkt_stage2::supervisor::write_atomic(&pod_dir.join(READY_FILE), "");
                }
            }
            Msg::AppExited { app, code } if (app as usize) < n => {
                let p = rkt_stage2::app_status_path(pod_dir, name(app).unwrap());
                if let Err(e) = rkt_stage2::supervisor::write_atomic(&p, &format!("{code}")) {
                    o.error = Some(format!("{e:#}"));
                }
            }
            Msg::PodDone { code } => {
                o.code = Some(code);
                break;
            }
            Msg::Error { message } => {
                // One line: the guest does not get to paint the user's terminal.
                let line: String = message
                    .chars()
                    .take(500)
                    .filter(|c| !c.is_control())
                    .collect();
                o.error = Some(format!("guest: {line}"));
            }
            other => {
                o.error = Some(format!(
                    "unexpected message from the guest: {}",
                    describe(&other)
                ));
                break;
            }
        }
    }
    o
}

fn describe(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.chars().take(120).collect()
}

// ---------------------------------------------------------------------------------------------
// Boot

fn boot(
    pod_dir: &Path,
    spec: &PodSpec,
    kernel: &Path,
    initrd: &Path,
    mut measure: PodMeasurement,
) -> Result<i32> {
    let uds = pod_dir.join(VSOCK_UDS);
    let ctl_path = PathBuf::from(format!("{}_{}", uds.display(), proto::CONTROL_PORT));
    if ctl_path.as_os_str().len() > 107 {
        bail!(
            "stage1 kvm: pod directory path too long for a unix socket ({})",
            ctl_path.display()
        );
    }
    for p in [&uds, &ctl_path] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::create_dir_all(uds.parent().unwrap())?;
    let listener = UnixListener::bind(&ctl_path)
        .with_context(|| format!("stage1 kvm: listening on {}", ctl_path.display()))?;
    std::fs::set_permissions(&ctl_path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;

    // Signals are taken by one thread; `run` blocked them before any other thread existed.
    let tty = spec.interactive && super::term::is_tty(0);
    let sigs = vmm_signals();

    let (vcpus, mem_mib) = vm_size(spec);
    let (vm, plan) = template_build(
        spec, pod_dir, kernel, initrd, &uds, vcpus, mem_mib, &measure,
    )?;
    // The command line is final only now: measure the VMM (rkt itself), kernel, initramfs and
    // command line, then the pod manifest and apps, before any vCPU runs.
    let measured = measure
        .stage1_kvm(Path::new("/proc/self/exe"), kernel, initrd, &vm.cmdline)
        .and_then(|()| measure.finish());
    if let Err(e) = measured {
        for p in [&uds, &ctl_path] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.context("stage1 kvm: measuring the VM"));
    }
    let handle = vm.handle();
    // The app owns the terminal until the VM ends; restored on every way out of here.
    let _raw = if tty {
        Some(super::term::RawTerminal::new(0)?)
    } else {
        None
    };
    let ended = Arc::new(AtomicBool::new(false));
    let writer: Arc<Mutex<Option<UnixStream>>> = Arc::default();
    let stopped_by_signal = Arc::new(AtomicBool::new(false));
    {
        let (writer, handle, stopped) = (writer.clone(), handle.clone(), stopped_by_signal.clone());
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else {
                continue;
            };
            if sig == nix::sys::signal::SIGWINCH {
                if tty {
                    send_size(&writer, 0);
                }
                continue;
            }
            stopped.store(true, Ordering::SeqCst);
            let sent = writer
                .lock()
                .ok()
                .and_then(|mut w| {
                    w.as_mut()
                        .map(|s| proto::write_msg(s, &Msg::Stop { timeout_ms: 10_000 }).is_ok())
                })
                .unwrap_or(false);
            if !sent {
                handle.stop();
                continue;
            }
            let h = handle.clone();
            std::thread::spawn(move || {
                std::thread::sleep(STOP_GRACE);
                h.stop();
            });
        });
    }
    let server = {
        let (ended, writer, handle, pod_dir, spec) = (
            ended.clone(),
            writer.clone(),
            handle.clone(),
            pod_dir.to_path_buf(),
            spec.clone(),
        );
        std::thread::spawn(move || -> Outcome {
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            && !ended.load(Ordering::SeqCst) =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => return Outcome::default(),
                }
            };
            let _ = conn.set_nonblocking(false);
            let mut clone = conn.try_clone().ok();
            let mut on_hello = || {
                *writer.lock().unwrap() = clone.take();
                if spec.interactive {
                    if tty {
                        send_size(&writer, 0);
                    }
                    // Detached: it may stay blocked reading our stdin after the pod ended.
                    let writer = writer.clone();
                    std::thread::spawn(move || relay_stdin(io::stdin(), 0, &writer));
                }
            };
            let o = serve_control(
                &mut conn,
                &pod_dir,
                &spec,
                &mut io::stdout(),
                &mut io::stderr(),
                &mut on_hello,
            );
            // Closing tells the guest it may reset; if it does not within a few seconds, end it.
            *writer.lock().unwrap() = None;
            drop(conn);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !ended.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            handle.stop();
            o
        })
    };
    let reason = super::kvm_template::run(vm, plan, &uds);
    ended.store(true, Ordering::SeqCst);
    let outcome = server.join().unwrap_or_default();
    for p in [&uds, &ctl_path] {
        let _ = std::fs::remove_file(p);
    }
    let reason = reason.context("stage1 kvm: running the VM")?;
    if let Some(code) = outcome.code {
        if let Some(e) = outcome.error {
            eprintln!("rkt: stage1 kvm: {e}");
        }
        return Ok(code);
    }
    if let Some(e) = outcome.error {
        bail!("stage1 kvm: {e}");
    }
    if stopped_by_signal.load(Ordering::SeqCst) {
        return Ok(128 + libc::SIGTERM);
    }
    bail!(
        "stage1 kvm: the VM ended ({reason:?}) before the pod finished; see {}",
        pod_dir.join(CONSOLE_LOG).display()
    )
}

/// The pod's VM, restored from a template or booted cold (kvm_template.rs, issue 12).
#[allow(clippy::too_many_arguments)]
fn template_build(
    spec: &PodSpec,
    pod_dir: &Path,
    kernel: &Path,
    initrd: &Path,
    uds: &Path,
    vcpus: u8,
    mem_mib: u64,
    measure: &PodMeasurement,
) -> Result<(rkt_vmm::Vm, super::kvm_template::Plan)> {
    super::kvm_template::build(
        || vmm::config(spec, pod_dir, kernel, initrd, uds, vcpus, mem_mib),
        vmm::DEVICES,
        measure.active(),
    )
}

/// Sends our terminal's size for channel `chan` to the guest, if connected.
fn send_size<S: Write>(writer: &Mutex<Option<S>>, chan: u32) {
    if let Some((rows, cols)) = super::term::size(0) {
        if let Some(w) = writer.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = proto::write_msg(w, &Msg::Resize { chan, rows, cols });
        }
    }
}

/// Copies `input` to the guest as channel `chan`'s stdin until it ends (then Eof) or the
/// connection goes away. One frame per read, under the writer's lock: frames never interleave
/// with the other writers (stop, window sizes).
fn relay_stdin<S: Write>(mut input: impl Read, chan: u32, writer: &Mutex<Option<S>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.as_mut() else {
            return;
        };
        let m = if n == 0 {
            Msg::Eof {
                chan,
                stream: Stream::Stdin,
            }
        } else {
            Msg::Data {
                chan,
                stream: Stream::Stdin,
                data: buf[..n].to_vec(),
            }
        };
        if proto::write_msg(w, &m).is_err() || n == 0 {
            return;
        }
    }
}

/// The glue to rkt-vmm: which devices the pod's VM gets.
mod vmm {
    use super::*;

    pub fn config(
        spec: &PodSpec,
        pod_dir: &Path,
        kernel: &Path,
        initrd: &Path,
        uds: &Path,
        vcpus: u8,
        mem_mib: u64,
    ) -> Result<rkt_vmm::VmConfig> {
        let mut cfg = rkt_vmm::VmConfig::new(kernel);
        cfg.initrd = Some(initrd.to_path_buf());
        cfg.vcpus = vcpus;
        cfg.mem_mib = mem_mib;
        cfg.debug = spec.debug;
        // Debugging aid (e.g. `loglevel=7` to see the guest kernel's segfault reports in the
        // console log); measured with the rest of the command line like any other setting.
        if let Some(extra) = std::env::var_os("RKT_STAGE1_KVM_CMDLINE_EXTRA") {
            cfg.cmdline_extra = extra.to_string_lossy().into_owned();
        }
        let log = pod_dir.join(CONSOLE_LOG);
        cfg.serial_out = if spec.debug {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            rkt_vmm::SerialOut::Writer(Box::new(rkt_vmm::devices::legacy::Tee(io::stderr(), f)))
        } else {
            rkt_vmm::SerialOut::File(log)
        };
        // Only the pod directory is shared: app roots and volumes were mounted under it.
        cfg.devices.push(rkt_vmm::DeviceConfig::Fs {
            tag: proto::SHARE_TAG.into(),
            shared_dir: share_dir(pod_dir),
        });
        cfg.devices.push(rkt_vmm::DeviceConfig::Vsock {
            guest_cid: GUEST_CID as u64,
            uds_path: uds.to_path_buf(),
        });
        cfg.devices.push(rkt_vmm::DeviceConfig::Rng);
        Ok(cfg)
    }

    /// The device list above, for the VM template key (kvm_template.rs).
    pub const DEVICES: &str = "fs,vsock,rng";
}

// ---------------------------------------------------------------------------------------------
// rkt enter

/// Opens a host-initiated vsock connection to `port` in the guest (Firecracker's protocol:
/// `CONNECT <port>\n` on the VM's unix socket, answered by `OK <host port>\n`).
pub fn vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(uds).with_context(|| format!("connecting to {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut r = BufReader::new(s.try_clone()?).take(64);
    r.read_until(b'\n', &mut line)?;
    if !line.starts_with(b"OK ") {
        bail!(
            "the VM refused a connection to guest port {port}: {:?}",
            String::from_utf8_lossy(&line).trim()
        );
    }
    // BufReader may have read past the line only if the guest spoke first; it does not (the
    // guest init answers our Hello), so nothing is lost.
    Ok(s)
}

/// Runs `cmd` in `app` of a running kvm pod; returns its exit code. When our stdin is a terminal
/// the command gets a pty in the guest (as it would get our terminal on ns).
pub fn enter(pod_dir: &Path, _spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
    wait_ready(pod_dir, ENTER_BOOT_WAIT)?;
    let uds = pod_dir.join(VSOCK_UDS);
    let tty = super::term::is_tty(0);
    let mut conn = vsock_connect(&uds, proto::ENTER_PORT).map_err(err_prefix)?;
    proto::handshake(&mut conn).context("stage1 kvm: enter")?;
    proto::write_msg(
        &mut conn,
        &Msg::Enter {
            app: app.to_string(),
            cmd: cmd.to_vec(),
            env: Vec::new(),
            tty,
        },
    )?;
    let _raw = if tty {
        // Taken by the resize thread below; blocked before it exists.
        let mut winch = nix::sys::signal::SigSet::empty();
        winch.add(nix::sys::signal::SIGWINCH);
        winch.thread_block().context("blocking SIGWINCH")?;
        Some(super::term::RawTerminal::new(0)?)
    } else {
        None
    };
    enter_relay(
        conn,
        Box::new(io::stdin()),
        &mut io::stdout(),
        &mut io::stderr(),
        tty,
    )
}

/// Waits (bounded, saying so once on stderr) until a booting pod's apps run.
fn wait_ready(pod_dir: &Path, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut said = false;
    while !pod_dir.join(READY_FILE).exists() {
        if !crate::pod::Lock::is_held(pod_dir).unwrap_or(false) {
            bail!("stage1 kvm: the pod exited before its apps were up");
        }
        if start.elapsed() >= limit {
            bail!(
                "stage1 kvm: the pod's apps were not up after {}s (see {})",
                limit.as_secs(),
                pod_dir.join(CONSOLE_LOG).display()
            );
        }
        if !said {
            eprintln!(
                "rkt: waiting for the pod's VM to boot and start its apps (up to {}s)",
                limit.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Relays an enter session: `input` to the command, its output to `out`/`err`; returns its code.
/// With `tty`, our terminal's size is sent now and on every SIGWINCH (which the caller blocked).
/// The stdin thread is detached: it may stay blocked reading a terminal after the command ended.
pub fn enter_relay<S>(
    conn: S,
    input: Box<dyn Read + Send>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: bool,
) -> Result<i32>
where
    S: Read + Write + TryCloneStream + 'static,
{
    let writer = Arc::new(Mutex::new(Some(conn.try_clone_stream()?)));
    let mut r = conn;
    if tty {
        send_size(&writer, 0);
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut winch = nix::sys::signal::SigSet::empty();
            winch.add(nix::sys::signal::SIGWINCH);
            while winch.wait().is_ok() {
                send_size(&writer, 0);
            }
        });
    }
    {
        let writer = writer.clone();
        std::thread::spawn(move || relay_stdin(input, 0, &writer));
    }
    loop {
        match proto::read_msg(&mut r) {
            Ok(Some(Msg::Data {
                stream: Stream::Stdout,
                data,
                ..
            })) => {
                let _ = out.write_all(&data);
                let _ = out.flush();
            }
            Ok(Some(Msg::Data {
                stream: Stream::Stderr,
                data,
                ..
            })) => {
                let _ = err.write_all(&data);
                let _ = err.flush();
            }
            Ok(Some(Msg::Eof { .. })) => {}
            Ok(Some(Msg::Exited { code })) => {
                r.shutdown_stream();
                return Ok(code);
            }
            Ok(Some(Msg::Error { message })) => {
                r.shutdown_stream();
                let line: String = message
                    .chars()
                    .take(500)
                    .filter(|c| !c.is_control())
                    .collect();
                bail!("stage1 kvm: enter: {line}");
            }
            Ok(Some(other)) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: unexpected message {}", describe(&other))
            }
            Ok(None) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: the guest closed the session without an exit code")
            }
            Err(e) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: {e}")
            }
        }
    }
}

/// Streams an enter session can run over (a unix socket to the VMM; a socketpair in tests).
pub trait TryCloneStream: Sized + Send {
    fn try_clone_stream(&self) -> io::Result<Self>;
    /// Unblocks the stdin relay thread's writes.
    fn shutdown_stream(&self);
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// Nothing outlives a kvm pod's VMM process: its mounts were in its private mount namespace.
/// Only the vsock sockets may be left behind by a killed VMM.
pub fn gc(pod_dir: &Path) -> Result<()> {
    // The VMM's cgroups, if it died before removing them.
    let record = std::fs::read(super::ns::cgroups_record(pod_dir)).ok();
    let layout = record.and_then(|b| serde_json::from_slice::<Layout>(&b).ok());
    if let (Some(l), Ok(spec)) = (layout, PodSpec::load(pod_dir)) {
        cgroup::remove_pod(&l, &spec.uuid)?;
    }
    let uds = pod_dir.join(VSOCK_UDS);
    for p in [
        uds.clone(),
        PathBuf::from(format!("{}_{}", uds.display(), proto::CONTROL_PORT)),
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
        // An app number out of range ends the pod with an error, nothing is written.
        let (mut host, _g) = fake_guest(vec![
            Msg::AppExited { app: 7, code: 0 },
            Msg::PodDone { code: 0 },
        ]);
        let o = serve_control(
            &mut host,
            d.path(),
            &p,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut || {},
        );
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
        assert!(serve_control(
            &mut host,
            d.path(),
            &p,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut || {}
        )
        .error
        .is_some());
        // An oversized frame header: error, no allocation, no panic.
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            proto::handshake(&mut guest).unwrap();
            guest.write_all(&u32::MAX.to_le_bytes()).unwrap();
        });
        let o = serve_control(
            &mut host,
            d.path(),
            &p,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut || {},
        );
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
        let o = serve_control(
            &mut host,
            d.path(),
            &p,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut || {},
        );
        t.join().unwrap();
        assert!(o.error.unwrap().contains("version 99"));
        // Control characters in a guest error do not reach the terminal.
        let (mut host, _g) = fake_guest(vec![Msg::Error {
            message: "bad\x1b[2J\nthing".into(),
        }]);
        let o = serve_control(
            &mut host,
            d.path(),
            &p,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut || {},
        );
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
