//! The app's filesystem: root (overlay or directory), /proc, /sys, /dev, cgroups, masked paths,
//! volumes, /etc files, then pivot_root.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::cgroup::Layout;
use crate::spec::{AppSpec, MountSpec, PodSpec, RootfsSpec};

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "mounting {} on {}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        )
    })
}

fn bind(src: &Path, target: &Path, recursive: bool) -> anyhow::Result<()> {
    let mut f = MsFlags::MS_BIND;
    if recursive {
        f |= MsFlags::MS_REC;
    }
    mount(Some(src), target, None::<&str>, f, None::<&str>)
        .with_context(|| format!("bind-mounting {} on {}", src.display(), target.display()))
}

fn remount_ro(target: &Path, extra: MsFlags) -> anyhow::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
        None::<&str>,
    )
    .with_context(|| format!("remounting {} read-only", target.display()))
}

/// Resolves `path` (absolute, as the app sees it) inside `root` without leaving it: symlinks are
/// followed relative to `root` and `..` stops at `root`. Missing trailing components are kept.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let mut cur = root.to_path_buf();
        cur.extend(&parts);
        cur.push(&c);
        match std::fs::read_link(&cur) {
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    parts.clear();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => parts.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    out
}

/// Assembles the app's root filesystem on `root` (a directory, created if missing).
pub fn mount_rootfs(spec: &RootfsSpec, root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    match spec {
        RootfsSpec::Overlay { lower, upper, work } => {
            for d in [upper, work] {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            mnt(
                Some("overlay"),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )
        }
        // pivot_root needs a mount point: bind the private copy onto the root directory.
        RootfsSpec::Dir(dir) => bind(dir, root, true),
    }
}

fn mkdir_p(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

fn mknod_char(path: &Path, major: u64, minor: u64) -> anyhow::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major as u32, minor as u32),
        )
    };
    if rc != 0 {
        // Without CAP_MKNOD (e.g. a restricted guest) bind the host node instead.
        let host = Path::new("/dev").join(path.file_name().unwrap());
        std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
        return bind(&host, path, false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(())
}

/// A minimal /dev: device nodes, devpts (own instance), shm, mqueue and the usual links.
pub fn mount_dev(root: &Path) -> anyhow::Result<()> {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, maj, min) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        mknod_char(&dev.join(name), maj, min)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts)?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    mnt(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let mq = dev.join("mqueue");
    mkdir_p(&mq)?;
    // mqueue needs an IPC namespace of our own; a missing one is not fatal.
    let _ = mount(
        Some("mqueue"),
        &mq,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// /sys/fs/cgroup inside the app, read-only. The caller already entered a cgroup namespace rooted
/// at the app's own cgroup, so the app sees its own limits at the top of each hierarchy.
pub fn mount_cgroups(root: &Path, layout: &Layout) -> anyhow::Result<()> {
    let cg = root.join("sys/fs/cgroup");
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    match layout {
        Layout::V2 { .. } => mnt(Some("cgroup2"), &cg, Some("cgroup2"), ro, None),
        Layout::V1 {
            hierarchies,
            unified,
        } => {
            mnt(
                Some("tmpfs"),
                &cg,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=755"),
            )?;
            for h in hierarchies {
                let Some(name) = h.mountpoint.file_name() else {
                    continue;
                };
                let d = cg.join(name);
                mkdir_p(&d)?;
                mnt(
                    Some("cgroup"),
                    &d,
                    Some("cgroup"),
                    ro,
                    Some(&h.controllers.join(",")),
                )?;
                // cpu,cpuacct style hierarchies are also reachable by each controller's name.
                if h.controllers.len() > 1 {
                    for c in &h.controllers {
                        let l = cg.join(c);
                        if !l.exists() {
                            symlink(name, &l)?;
                        }
                    }
                }
            }
            if let Some(u) = unified {
                if let Some(name) = u.file_name() {
                    let d = cg.join(name);
                    mkdir_p(&d)?;
                    mnt(Some("cgroup2"), &d, Some("cgroup2"), ro, None)?;
                }
            }
            remount_ro(
                &cg,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )
        }
    }
}

/// Paths rkt made read-only or hid from apps (skipped with `--insecure-options=paths`).
pub const READ_ONLY_PATHS: &[&str] =
    &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];
pub const MASKED_PATHS: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/sys/firmware",
];

fn protect_paths(root: &Path) -> anyhow::Result<()> {
    for p in READ_ONLY_PATHS {
        let t = root.join(&p[1..]);
        if t.exists() {
            bind(&t, &t, true)?;
            remount_ro(
                &t,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?;
        }
    }
    for p in MASKED_PATHS {
        let t = root.join(&p[1..]);
        match std::fs::metadata(&t) {
            Ok(m) if m.is_dir() => mnt(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )?,
            Ok(_) => bind(&root.join("dev/null"), &t, false)?,
            Err(_) => {}
        }
    }
    Ok(())
}

fn mount_volume(root: &Path, m: &MountSpec) -> anyhow::Result<()> {
    if !m.target.starts_with('/') {
        bail!("mount target {:?} is not an absolute path", m.target);
    }
    let target = resolve_in_root(root, &m.target);
    let src_md = std::fs::metadata(&m.source)
        .with_context(|| format!("volume source {}", m.source.display()))?;
    if !target.exists() {
        if src_md.is_dir() {
            mkdir_p(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir_p(parent)?;
            }
            std::fs::write(&target, b"")
                .with_context(|| format!("creating {}", target.display()))?;
        }
    }
    bind(&m.source, &target, m.recursive)?;
    if m.read_only {
        remount_ro(&target, MsFlags::empty())?;
    }
    Ok(())
}

pub const HOSTS_STUB: &str = "127.0.0.1 localhost localhost.localdomain localhost4 localhost4.localdomain4\n::1 localhost localhost.localdomain localhost6 localhost6.localdomain6\n";

/// Writes a file inside the root, replacing a symlink rather than following it out of the root.
fn write_etc(root: &Path, path: &str, content: &str) -> anyhow::Result<()> {
    let etc = resolve_in_root(root, "/etc");
    mkdir_p(&etc)?;
    let f = etc.join(Path::new(path).file_name().unwrap());
    if f.symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        std::fs::remove_file(&f)?;
    }
    std::fs::write(&f, content).with_context(|| format!("writing {path}"))
}

/// Everything before pivot_root: the root is mounted on `root` in the caller's (private) mount
/// namespace. `cgroups`: the layout to mount at /sys/fs/cgroup (None: leave it empty).
pub fn prepare_root(
    pod: &PodSpec,
    app: &AppSpec,
    root: &Path,
    cgroups: Option<&Layout>,
) -> anyhow::Result<()> {
    // Nothing we mount may propagate back to the host (or the guest's other apps).
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_rootfs(&app.rootfs, root)?;
    let proc_ = root.join("proc");
    mkdir_p(&proc_)?;
    mnt(
        Some("proc"),
        &proc_,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let sys = root.join("sys");
    mkdir_p(&sys)?;
    let mut sysflags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !pod.insecure.paths {
        sysflags |= MsFlags::MS_RDONLY;
    }
    mnt(Some("sysfs"), &sys, Some("sysfs"), sysflags, None)?;
    if let Some(layout) = cgroups {
        mount_cgroups(root, layout)?;
    }
    mount_dev(root)?;
    if !pod.insecure.paths {
        protect_paths(root)?;
    }
    for m in &app.mounts {
        mount_volume(root, m).with_context(|| format!("volume at {}", m.target))?;
    }
    write_etc(root, "/etc/hostname", &format!("{}\n", pod.hostname))?;
    match &pod.hosts {
        Some(h) => write_etc(root, "/etc/hosts", h)?,
        // rkt gave images without /etc/hosts a localhost stub.
        None if resolve_in_root(root, "/etc/hosts")
            .symlink_metadata()
            .is_err() =>
        {
            write_etc(root, "/etc/hosts", HOSTS_STUB)?
        }
        None => {}
    }
    if let Some(r) = &pod.resolv_conf {
        write_etc(root, "/etc/resolv.conf", r)?;
    }
    let mtab = resolve_in_root(root, "/etc").join("mtab");
    if mtab.symlink_metadata().is_err() {
        symlink("../proc/self/mounts", &mtab)?;
    }
    Ok(())
}

/// Makes `root` the process's `/` and detaches the old root.
pub fn pivot(root: &Path, readonly: bool) -> anyhow::Result<()> {
    std::env::set_current_dir(root).with_context(|| format!("entering {}", root.display()))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached next,
    // so no put_old directory is needed inside the image.
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
        }
        // The initramfs root (the kvm guest's) cannot be pivoted away from: move the new root
        // over it and chroot, as switch_root does.
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .context("moving the app's root over /")?;
            nix::unistd::chroot(".").context("chroot")?;
        }
        Err(e) => return Err(e).context("pivot_root"),
    }
    std::env::set_current_dir("/")?;
    if readonly {
        remount_ro(Path::new("/"), MsFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("real/dir")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("escape")).unwrap();
        symlink("dir", r.join("real/rel")).unwrap();
        assert_eq!(resolve_in_root(r, "/abs/dir/x"), r.join("real/dir/x"));
        assert_eq!(resolve_in_root(r, "/escape/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in_root(r, "/real/rel/new"), r.join("real/dir/new"));
        assert_eq!(resolve_in_root(r, "/../../x"), r.join("x"));
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "/loop"), r.join("loop"));
    }

    #[test]
    fn etc_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        symlink(
            outside.path().join("resolv.conf"),
            r.join("etc/resolv.conf"),
        )
        .unwrap();
        write_etc(r, "/etc/resolv.conf", "nameserver 10.0.0.1\n").unwrap();
        assert!(!outside.path().join("resolv.conf").exists());
        assert_eq!(
            std::fs::read_to_string(r.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
    }
}
