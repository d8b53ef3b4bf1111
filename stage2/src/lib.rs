//! stage2: what both stage1 flavours need to run a pod's apps with the same semantics.
//!
//! `spec` is the resolved, flavour-independent description of a pod that stage0 writes at run time
//! (`<pod>/stage1-spec.json`); the `ns` flavour reads it on the host, the `kvm` guest init reads it
//! inside the VM. The app set-up code (mounts, users, env, caps, seccomp) lives here so that a flag
//! behaves the same on both flavours.

pub mod app;
pub mod atomic;
pub mod caps;
pub mod cgroup;
pub mod control;
pub mod fs;
pub mod mountinfo;
pub mod passwd;
pub mod seccomp;
pub mod spec;
pub mod supervisor;

pub use spec::*;

use std::path::{Path, PathBuf};

/// Where a stage1 records the host pid of an app's first process (used by `rkt enter`).
pub fn app_pid_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join("apps").join(app).join("pid")
}

/// Brings up the loopback interface of the calling process's network namespace (a new one has
/// `lo` down): the pod's apps on both flavours talk to each other over it.
pub fn loopback_up() -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for lo")?;
    // SAFETY: ifreq is plain data (all zeroes valid); SIOC[GS]IFFLAGS read and write one ifreq.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading lo's flags");
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(std::io::Error::last_os_error()).context("bringing lo up");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn test_app() -> AppSpec {
    AppSpec {
        name: "a".into(),
        image_id: String::new(),
        rootfs: RootfsSpec::Dir("/".into()),
        exec: vec!["/bin/true".into()],
        env: vec![],
        user: "0".into(),
        group: "0".into(),
        supplementary_gids: vec![],
        working_dir: "/".into(),
        readonly_rootfs: false,
        mounts: vec![],
        capabilities: vec![],
        seccomp: SeccompSpec::Default,
        memory_limit: Some(64 << 20),
        cpu_millis: Some(500),
        cpu_shares: Some(512),
        oom_score_adj: None,
    }
}
