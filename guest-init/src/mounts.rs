//! The guest's own file systems, leaving the initramfs root, the host connection, hostname and lo.

use crate::*;

/// pivot_root(2) refuses to move the initramfs (the namespace's root mount), and stage2 pivots
/// every app. So first mount an empty tmpfs over `/` and chroot into it, like switch_root does
/// (nothing from the initramfs is needed once we run); the apps' mount namespaces then have a root mount that can be pivoted.
pub(crate) fn leave_initramfs_root() -> anyhow::Result<()> {
    let new = Path::new("/newroot");
    mkdir(new)?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("tmpfs root")?;
    std::env::set_current_dir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

pub(crate) fn mkdir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

/// (source, target, fs type, flags, data, required)
pub(crate) type MountRow = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    Option<&'static str>,
    bool,
);

pub(crate) fn mount_basics() -> anyhow::Result<()> {
    let nsd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let table: [MountRow; 7] = [
        (
            "proc",
            "/proc",
            "proc",
            nsd | MsFlags::MS_NOEXEC,
            None,
            true,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nsd | MsFlags::MS_NOEXEC,
            None,
            true,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
            true,
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
            true,
        ),
        ("shm", "/dev/shm", "tmpfs", nsd, Some("mode=1777"), true),
        ("tmpfs", "/run", "tmpfs", nsd, Some("mode=0755"), true),
        // Without cgroup2 the pod still runs; only --memory/--cpu limits then fail.
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nsd | MsFlags::MS_NOEXEC,
            None,
            false,
        ),
    ];
    for (src, dst, fstype, flags, data, required) in table {
        let _ = std::fs::create_dir_all(dst);
        match mount(Some(src), dst, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) if required => bail!("mounting {fstype} on {dst}: {e}"),
            Err(e) => log(&format!("mounting {fstype} on {dst}: {e} (continuing)")),
        }
    }
    Ok(())
}

pub(crate) fn connect_host(debug: bool) -> Option<File> {
    let attempt = || -> nix::Result<File> {
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::connect(
            fd.as_raw_fd(),
            &VsockAddr::new(proto::HOST_CID, proto::CONTROL_PORT),
        )?;
        Ok(File::from(fd))
    };
    match attempt() {
        Ok(mut f) => match proto::handshake(&mut f) {
            Ok(()) => Some(f),
            Err(e) => {
                log(&format!("host handshake: {e}"));
                None
            }
        },
        Err(e) => {
            if debug {
                log(&format!(
                    "no vsock connection to the host ({e}); reporting on the console"
                ));
            }
            None
        }
    }
}

/// Hostname, `lo`, and the pod's network cards (stage1 kvm with CNI networks: the host copied
/// each CNI interface's MAC, MTU, addresses and routes into the spec), before any app starts.
pub(crate) fn set_hostname_and_lo(pod: &PodSpec) -> anyhow::Result<()> {
    nix::unistd::sethostname(&pod.hostname).context("sethostname")?;
    rkt_stage2::loopback_up()?;
    rkt_guest_init::net::configure(&pod.interfaces).context("pod network")
}

/// Before the template point: turn on the controllers stage2 uses (`cgroup::create_app`) at the
/// root and make `rkt/` with them on too, so a restored pod creates only its own two levels.
/// Each cgroup level costs about a second of emulated kernel work under PVM (memory controller
/// state, one kernfs file per control file), and none of this is pod-specific.
pub(crate) fn prepare_cgroups() {
    let root = Path::new("/sys/fs/cgroup");
    let Ok(avail) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return;
    };
    let want: Vec<String> = ["memory", "cpu", "pids"]
        .iter()
        .filter(|c| avail.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    let _ = std::fs::write(root.join("cgroup.subtree_control"), want.join(" "));
    let rkt = root.join("rkt");
    if std::fs::create_dir_all(&rkt).is_ok() {
        let _ = std::fs::write(rkt.join("cgroup.subtree_control"), want.join(" "));
    }
}
