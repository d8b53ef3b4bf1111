//! The stage1 flavour boundary: stage0 hands a prepared pod (its directory, with
//! `stage1-spec.json` written) to the flavour recorded in the pod, and asks it to enter, stop or
//! clean up after that pod. Flavours: `ns` (namespaces, runs in the `rkt run` process and its
//! children), `kvm` (a microVM per pod; the `rkt run` process is its VMM) and `fly` (host tools:
//! the host's namespaces but the mount namespace, full privileges).

pub mod fly;
pub mod kvm;

pub mod notify;
pub mod ns;
pub mod ns_app;
pub mod output;
mod term;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rkt_stage2::{NetMode, PodSpec};

use crate::measure::PodMeasurement;

/// File, in the pod directory, naming the flavour the pod was prepared for.
pub const FLAVOR_FILE: &str = "stage1-flavor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Ns,
    Kvm,
    Fly,
}

impl FromStr for Flavor {
    type Err = anyhow::Error;

    /// A flavour's name as `--stage1=` and the pod's `stage1-flavor` file spell it; rkt v1's
    /// systemd-nspawn flavour names (`coreos`, `src`, `host`) map to `ns`.
    fn from_str(s: &str) -> Result<Flavor> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ns" | "coreos" | "src" | "host" => Ok(Flavor::Ns),
            "kvm" => Ok(Flavor::Kvm),
            "fly" => Ok(Flavor::Fly),
            _ => bail!("unknown stage1 {s:?} (available: ns, kvm, fly)"),
        }
    }
}

/// rkt's stage1 image name prefix (`coreos.com/rkt/stage1-kvm:1.30.0`).
const RKT_STAGE1_NAME: &str = "coreos.com/rkt/stage1-";

impl Flavor {
    /// The flavour a stage1 flag names, refused (one line) unless it plainly names one we have:
    /// `--stage1=ns|kvm|fly`, `--stage1-name=coreos.com/rkt/stage1-kvm[:VERSION]` (or a flavour
    /// name), and for `--stage1-path/-url/-from-dir` an image file named `stage1-<flavour>.aci`
    /// (rkt's release names, `stage1-<flavour>-<anything>.aci` too) that exists when it is a
    /// local path. Our stage1s are built in, so such a file is not read: it only names one.
    pub fn from_flag(flag: &str, value: &str) -> Result<Flavor> {
        let refuse = || {
            anyhow::anyhow!(
                "--{flag}={value:?} does not name a stage1 we have (available: --stage1=ns, --stage1=kvm, --stage1=fly)"
            )
        };
        // `stage1-kvm.aci` / `stage1-kvm-1.30.0.aci` -> kvm.
        let from_file_name = |name: &str| -> Result<Flavor> {
            let rest = name
                .strip_suffix(".aci")
                .and_then(|n| n.strip_prefix("stage1-"))
                .ok_or_else(refuse)?;
            let f = rest.split('-').next().unwrap_or_default();
            f.parse().map_err(|_| refuse())
        };
        let local_file = |p: &Path| -> Result<Flavor> {
            if !p.is_file() {
                bail!("--{flag}: {} is not a file", p.display());
            }
            from_file_name(&p.file_name().unwrap_or_default().to_string_lossy())
        };
        match flag {
            "stage1" => value.parse().map_err(|_| refuse()),
            "stage1-name" => {
                let name = value.split(':').next().unwrap_or_default();
                match name.strip_prefix(RKT_STAGE1_NAME) {
                    Some(f) => f.parse().map_err(|_| refuse()),
                    None => value.parse().map_err(|_| refuse()),
                }
            }
            "stage1-path" => local_file(Path::new(value)),
            "stage1-from-dir" => {
                if value.contains('/') {
                    bail!("--{flag} takes an image file name, not a path: use --stage1-path");
                }
                from_file_name(value)
            }
            "stage1-url" => {
                if let Some(p) = value.strip_prefix("file://") {
                    return local_file(Path::new(p));
                }
                let rest = ["http://", "https://", "docker://"]
                    .iter()
                    .find_map(|s| value.strip_prefix(s))
                    .ok_or_else(refuse)?;
                let path = rest.split(['?', '#']).next().unwrap_or_default();
                from_file_name(path.rsplit('/').next().unwrap_or_default())
            }
            "stage1-hash" => bail!(
                "--{flag}: our stage1s are built in, not images in the store; use --stage1=ns, kvm or fly"
            ),
            _ => Err(refuse()),
        }
    }

    /// What this flavour cannot do with the pod's flags, refused with one line before anything
    /// of the pod is written or measured.
    pub fn check(self, net: &NetMode) -> Result<()> {
        match self {
            Flavor::Ns => Ok(()),
            Flavor::Kvm => kvm::check_net(net),
            Flavor::Fly => fly::check_net(net),
        }
    }

    /// Whether the pod's apps are up (`rkt status --wait-ready`): `rkt enter` works from now on.
    pub fn is_ready(self, pod_dir: &Path) -> bool {
        match self {
            // The supervisor writes its pid once every app was started (fly: exec'd).
            Flavor::Ns | Flavor::Fly => rkt_stage2::pod_pid_path(pod_dir).exists(),
            // The pid is the VMM's, known from the start; readiness is the guest's word.
            Flavor::Kvm => pod_dir.join(kvm::READY_FILE).exists(),
        }
    }
}

/// What stage0 hands a flavour besides the resolved spec: where things are, and the lock that
/// keeps the pod marked running. No flavour derives one path from another.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// rkt's data directory (`--dir`): caches a flavour keeps beside the store live in `cas/`.
    pub data_dir: &'a Path,
    /// `<data_dir>/pods/run/<uuid>`.
    pub pod_dir: &'a Path,
    /// The pod directory's exclusive flock.
    pub lock_fd: i32,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Ns => "ns",
            Flavor::Kvm => "kvm",
            Flavor::Fly => "fly",
        })
    }
}

impl Flavor {
    /// The flavour recorded in a pod (`ns` for pods prepared before the file existed).
    pub fn of_pod(pod_dir: &Path) -> Result<Flavor> {
        match std::fs::read_to_string(pod_dir.join(FLAVOR_FILE)) {
            Ok(s) => s.parse(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Flavor::Ns),
            Err(e) => Err(e).context("reading the pod's stage1 flavour"),
        }
    }

    /// Runs the pod in the foreground and returns the exit code `rkt run` exits with.
    /// `measure` has stage0 measured; the flavour adds its stage1, then finishes it before any
    /// app runs.
    pub fn run(self, ctx: &PodContext, spec: &PodSpec, mut measure: PodMeasurement) -> Result<i32> {
        // The pod directory's exclusive flock marks the pod running for as long as any process
        // of the pod holds it, including one that execs a helper.
        keep_across_exec(ctx.lock_fd)?;
        let pod_dir = ctx.pod_dir;
        match self {
            Flavor::Ns => {
                measure.stage1_ns(spec)?;
                measure.finish()?;
                ns::run(pod_dir, spec)
            }
            Flavor::Kvm => kvm::run(ctx, spec, measure),
            Flavor::Fly => {
                measure.stage1_fly(spec)?;
                measure.finish()?;
                fly::run(pod_dir, spec)
            }
        }
    }

    /// Runs `cmd` inside `app` of a running pod, returning the command's exit code.
    pub fn enter(self, pod_dir: &Path, spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
        match self {
            Flavor::Ns => ns::enter(pod_dir, spec, app, cmd),
            Flavor::Kvm => kvm::enter(pod_dir, spec, app, cmd),
            Flavor::Fly => fly::enter(pod_dir, spec, app, cmd),
        }
    }

    /// Releases what the flavour left behind for an exited pod (mounts, cgroups, netns). Called by
    /// `rkt gc`/`rkt rm` with the pod exclusively locked, before the directory is removed.
    pub fn gc(self, pod_dir: &Path) -> Result<()> {
        match self {
            Flavor::Ns => ns::gc(pod_dir),
            Flavor::Kvm => kvm::gc(pod_dir),
            Flavor::Fly => fly::gc(pod_dir),
        }
    }
}

/// How long `rkt stop` waits for a just-started pod's stage1 to write its pid.
const PID_WAIT: Duration = Duration::from_secs(10);

/// Stops a running pod the same way for every flavour: SIGTERM to the pid the flavour wrote in
/// `pid` (its supervisor stops the apps with a timeout), or SIGKILL with `force`. A pod started a
/// moment ago may not have written it yet: wait for it while the pod runs (bounded).
pub fn stop(pod_dir: &Path, force: bool) -> Result<()> {
    let pid_path = rkt_stage2::pod_pid_path(pod_dir);
    let start = Instant::now();
    let text = loop {
        match std::fs::read_to_string(&pid_path) {
            Ok(t) => break t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", pid_path.display())),
        }
        if !crate::pod::Lock::is_held(pod_dir).unwrap_or(false) {
            return Ok(()); // it ended on its own meanwhile
        }
        if start.elapsed() >= PID_WAIT {
            bail!(
                "the pod has no pid file after {}s ({})",
                PID_WAIT.as_secs(),
                pid_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("bad pid {:?} in {}", text.trim(), pid_path.display()))?;
    if pid <= 1 {
        bail!("bad pid {pid} in {}", pid_path.display());
    }
    let sig = if force { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e).with_context(|| format!("signalling pid {pid}"));
        }
    }
    Ok(())
}

fn keep_across_exec(fd: i32) -> Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFD/F_SETFD take and return plain ints.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error()).context("keeping the pod lock open");
        }
    }
    Ok(())
}

/// What `rkt run` of a host-process pod (ns, fly) waits for and forwards to its supervisor: the
/// stop requests, and the supervisor's end. Blocked before the supervisor exists (it inherits
/// the mask), so no stop request is lost.
pub(crate) fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The app `name` of a host-process pod (ns, fly) and the host pid its stage1 recorded for it,
/// once that process runs the app's own program. The pid is recorded before the app's mounts,
/// root and privileges are set up; entering it then would land in the stage1's view (its root,
/// mounts and /proc), not the app's, so wait until it has exec'd (bounded).
pub(crate) fn started_app<'a>(
    pod_dir: &Path,
    spec: &'a PodSpec,
    name: &str,
) -> Result<(&'a rkt_stage2::AppSpec, i32)> {
    let a = spec
        .apps
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("the pod has no app {name:?}"))?;
    let pid_file = rkt_stage2::app_pid_path(pod_dir, name);
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("app {name:?} has not started (no {})", pid_file.display()))?;
    let pid = text
        .trim()
        .parse()
        .with_context(|| format!("bad pid in {}", pid_file.display()))?;
    wait_for_exec(pid, Duration::from_secs(30))
        .with_context(|| format!("app {name:?} has not started"))?;
    Ok((a, pid))
}

/// Waits until process `pid` no longer runs this very binary (the stage1 or shim that forked
/// it): it has exec'd the app's program. Compared by device and inode, so it holds across mount
/// namespaces and for deleted files. Polls from 0.5 ms up to 10 ms: app start waits on it.
pub fn wait_for_exec(pid: i32, timeout: Duration) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/exe").context("/proc/self/exe")?;
    let me = (me.dev(), me.ino());
    let deadline = Instant::now() + timeout;
    let mut tick = Duration::from_micros(500);
    loop {
        let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
            .with_context(|| format!("process {pid} is gone"))?;
        if (exe.dev(), exe.ino()) != me {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("process {pid} is still setting the app up after {timeout:?}");
        }
        std::thread::sleep(tick);
        tick = (tick * 2).min(Duration::from_millis(10));
    }
}

/// Forks `entered` (built by `rkt_stage2::app::entered_app`) into the app's namespaces this
/// process has already joined, exec'd under `rules` (the pod's spec: its capability, seccomp and
/// user rules), and waits for it; Ctrl-C belongs to the entered command. Returns its exit code.
pub(crate) fn run_entered(entered: &rkt_stage2::AppSpec, rules: &PodSpec) -> Result<i32> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::ForkResult;
    // A fork is needed to land in a PID namespace joined with setns.
    // SAFETY: single-threaded; the child only execs.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Child => {
            let e = match rkt_stage2::app::exec_as_app(entered, rules, Path::new("/")) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            crate::print_error(&format!("enter: {}", crate::one_line(&e)));
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(crate::EXIT_RKT_ERROR) }
        }
        ForkResult::Parent { child } => {
            let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
            // SAFETY: ignoring SIGINT/SIGQUIT in this process only.
            unsafe {
                let _ = sigaction(Signal::SIGINT, &ign);
                let _ = sigaction(Signal::SIGQUIT, &ign);
            }
            loop {
                match waitpid(child, None) {
                    Ok(st) => {
                        if let Some(c) = rkt_stage2::supervisor::exit_code(&st) {
                            return Ok(c);
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e).context("waiting for the entered command"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entering_waits_until_the_app_runs_its_own_program() {
        let prog = std::ffi::CString::new("/bin/sleep").unwrap();
        let args = [prog.clone(), std::ffi::CString::new("5").unwrap()];
        // SAFETY: the child only sleeps and execs (async-signal-safe).
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                std::thread::sleep(Duration::from_millis(300));
                let _ = nix::unistd::execv(&prog, &args);
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(127) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let t = Instant::now();
        // Still this binary for a while: a short wait times out.
        assert!(wait_for_exec(child.as_raw(), Duration::from_millis(50)).is_err());
        wait_for_exec(child.as_raw(), Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(250));
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.as_raw())).unwrap();
        assert!(exe.ends_with("sleep"), "{exe:?}");
        nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(child, None).unwrap();
        // A process that is gone is an error, not a wait.
        assert!(wait_for_exec(child.as_raw(), Duration::from_secs(10)).is_err());
    }

    #[test]
    fn flavour_names() {
        assert_eq!("ns".parse::<Flavor>().unwrap(), Flavor::Ns);
        assert_eq!("KVM".parse::<Flavor>().unwrap(), Flavor::Kvm);
        assert!("bogus".parse::<Flavor>().is_err());
        assert!("stage1-kvm".parse::<Flavor>().is_err());
    }

    #[test]
    fn stage1_flags_name_a_flavour_or_are_refused() {
        let ok = |f: &str, v: &str| Flavor::from_flag(f, v).unwrap();
        let refused = |f: &str, v: &str| {
            let e = Flavor::from_flag(f, v).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        assert_eq!(ok("stage1", "kvm"), Flavor::Kvm);
        assert_eq!(
            ok("stage1-name", "coreos.com/rkt/stage1-kvm:1.30.0"),
            Flavor::Kvm
        );
        assert_eq!(
            ok("stage1-name", "coreos.com/rkt/stage1-coreos"),
            Flavor::Ns
        );
        assert_eq!(ok("stage1-name", "ns"), Flavor::Ns);
        // rkt's third flavour is its own, no longer ns.
        assert_eq!(ok("stage1", "fly"), Flavor::Fly);
        assert_eq!(
            ok("stage1-name", "coreos.com/rkt/stage1-fly:1.30.0"),
            Flavor::Fly
        );
        assert_eq!(ok("stage1-name", "coreos.com/rkt/stage1-fly"), Flavor::Fly);
        assert_eq!(ok("stage1-from-dir", "stage1-fly.aci"), Flavor::Fly);
        assert_eq!(
            ok(
                "stage1-url",
                "https://example.com/rkt/stage1-fly-1.30.0.aci"
            ),
            Flavor::Fly
        );
        assert_eq!(
            Flavor::Fly.to_string().parse::<Flavor>().unwrap(),
            Flavor::Fly
        );
        refused("stage1-name", "example.com/xen-stage1");
        refused("stage1-name", "coreos.com/rkt/stage1-kvn");
        // Once guessed from "contains kvm" / "ends with .aci".
        refused("stage1-name", "example.com/mykvm-thing");
        refused("stage1", "stage1-ns.aci");
        let d = tempfile::tempdir().unwrap();
        let aci = d.path().join("stage1-kvm.aci");
        std::fs::write(&aci, b"").unwrap();
        assert_eq!(ok("stage1-path", aci.to_str().unwrap()), Flavor::Kvm);
        let typo = d.path().join("stage1-kvm.acii");
        assert!(refused("stage1-path", typo.to_str().unwrap()).contains("not a file"));
        let other = d.path().join("my-stage1.aci");
        std::fs::write(&other, b"").unwrap();
        refused("stage1-path", other.to_str().unwrap());
        assert_eq!(ok("stage1-from-dir", "stage1-coreos.aci"), Flavor::Ns);
        assert_eq!(ok("stage1-from-dir", "stage1-kvm-1.30.0.aci"), Flavor::Kvm);
        refused("stage1-from-dir", "stage1-kvn.aci");
        refused("stage1-from-dir", "/abs/stage1-kvm.aci");
        assert_eq!(
            ok("stage1-url", "https://example.com/rkt/stage1-kvm.aci?x=1"),
            Flavor::Kvm
        );
        refused("stage1-url", "https://example.com/rkt/stage1.tar");
        refused("stage1-url", "ftp://example.com/stage1-kvm.aci");
        assert_eq!(
            ok("stage1-url", &format!("file://{}", aci.display())),
            Flavor::Kvm
        );
        refused("stage1-url", &format!("file://{}", typo.display()));
        refused("stage1-hash", "sha512-abc");
    }
}
