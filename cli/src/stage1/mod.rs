//! The stage1 flavour boundary: stage0 hands a prepared pod (its directory, with
//! `stage1-spec.json` written) to the flavour recorded in the pod, and asks it to enter, stop or
//! clean up after that pod. Flavours: `ns` (namespaces, runs in the `rkt run` process and its
//! children) and `kvm` (a microVM per pod; the `rkt run` process is its VMM).

pub mod kvm;
pub mod ns;
mod term;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use rkt_stage2::PodSpec;

/// File, in the pod directory, naming the flavour the pod was prepared for.
pub const FLAVOR_FILE: &str = "stage1-flavor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Ns,
    Kvm,
}

impl FromStr for Flavor {
    type Err = anyhow::Error;

    /// Accepts the flavour names, and rkt-style stage1 image names that contain one
    /// (`coreos.com/rkt/stage1-kvm`, `stage1-fly`...). `fly` and `coreos` map to `ns`, the only
    /// host-namespace flavour we have.
    fn from_str(s: &str) -> Result<Flavor> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "ns" | "fly" | "coreos" | "src" | "host" => return Ok(Flavor::Ns),
            "kvm" => return Ok(Flavor::Kvm),
            _ => {}
        }
        let base = t.rsplit('/').next().unwrap_or(&t);
        let base = base.split(':').next().unwrap_or(base);
        if base.contains("kvm") {
            Ok(Flavor::Kvm)
        } else if base.starts_with("stage1-") || base.ends_with(".aci") {
            Ok(Flavor::Ns)
        } else {
            bail!("unknown stage1 {s:?} (available: ns, kvm)")
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Ns => "ns",
            Flavor::Kvm => "kvm",
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
    /// `lock_fd` is the pod directory's exclusive flock; it is inherited (not close-on-exec) and
    /// advertised as `RKT_LOCK_FD`, so a flavour that execs a helper keeps the pod marked running.
    pub fn run(self, pod_dir: &Path, spec: &PodSpec, lock_fd: i32) -> Result<i32> {
        keep_across_exec(lock_fd)?;
        std::env::set_var("RKT_LOCK_FD", lock_fd.to_string());
        match self {
            Flavor::Ns => ns::run(pod_dir, spec),
            Flavor::Kvm => kvm::run(pod_dir, spec),
        }
    }

    /// Runs `cmd` inside `app` of a running pod, returning the command's exit code.
    pub fn enter(self, pod_dir: &Path, spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
        match self {
            Flavor::Ns => ns::enter(pod_dir, spec, app, cmd),
            Flavor::Kvm => kvm::enter(pod_dir, spec, app, cmd),
        }
    }

    /// Releases what the flavour left behind for an exited pod (mounts, cgroups, netns). Called by
    /// `rkt gc`/`rkt rm` with the pod exclusively locked, before the directory is removed.
    pub fn gc(self, pod_dir: &Path) -> Result<()> {
        match self {
            Flavor::Ns => ns::gc(pod_dir),
            Flavor::Kvm => kvm::gc(pod_dir),
        }
    }
}

/// Stops a running pod the same way for every flavour: SIGTERM to the pid the flavour wrote in
/// `pid` (its supervisor stops the apps with a timeout), or SIGKILL with `force`.
pub fn stop(pod_dir: &Path, force: bool) -> Result<()> {
    let pid_path = rkt_stage2::pod_pid_path(pod_dir);
    let text = std::fs::read_to_string(&pid_path)
        .with_context(|| format!("the pod has no pid file yet ({})", pid_path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_names() {
        assert_eq!("ns".parse::<Flavor>().unwrap(), Flavor::Ns);
        assert_eq!("KVM".parse::<Flavor>().unwrap(), Flavor::Kvm);
        assert_eq!(
            "coreos.com/rkt/stage1-kvm:1.30.0"
                .parse::<Flavor>()
                .unwrap(),
            Flavor::Kvm
        );
        assert_eq!(
            "coreos.com/rkt/stage1-fly".parse::<Flavor>().unwrap(),
            Flavor::Ns
        );
        assert!("bogus".parse::<Flavor>().is_err());
    }
}
