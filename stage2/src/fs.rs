//! The app's filesystem: root (overlay or directory), /proc, /sys, /dev, cgroups, masked paths,
//! volumes, /etc files, then pivot_root.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// Symlinks followed while resolving one path before giving up (the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;

/// What [`resolve`] does when a component is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing component is an error (ENOENT).
    No,
    /// Every missing component becomes a directory (mkdir -p).
    Dir,
    /// Missing parents become directories, a missing final component an empty file.
    File,
}

/// A path resolved inside a root: `fd` is the final object (O_PATH unless it was just created),
/// `parent` the directory it was found in and its name there (None when it is the root itself).
#[derive(Debug)]
pub struct Resolved {
    pub fd: OwnedFd,
    parent: Option<(OwnedFd, CString)>,
}

impl Resolved {
    /// `/proc/self/fd/N`: mounting on this path mounts on exactly the object resolved, so a
    /// symlink swapped in after the resolution cannot redirect the mount.
    pub fn proc_path(&self) -> PathBuf {
        fd_path(self.fd.as_fd())
    }

    /// The object now at the resolved place, looked up again without following a symlink (after a
    /// mount on it, this is the mount's root rather than the covered directory).
    fn reopen(&self) -> std::io::Result<OwnedFd> {
        match &self.parent {
            Some((dir, name)) => open_at(dir.as_fd(), name, libc::O_PATH),
            None => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

fn fd_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn cstr(b: &[u8]) -> std::io::Result<CString> {
    CString::new(b).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// openat(2) that never follows a symlink in the final component and never leaks into an exec.
fn open_at(dir: BorrowedFd, name: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: valid dirfd and NUL-terminated name; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, writable stat buffer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn fstat(fd: BorrowedFd) -> std::io::Result<libc::stat> {
    // SAFETY: as in lstat_at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd (O_PATH fds may be fstat'ed), writable buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn readlink_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn mkdir_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }).map(drop)
}

fn unlink_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Opens a root directory for [`resolve`].
pub fn open_root(root: &Path) -> anyhow::Result<OwnedFd> {
    let c = cstr(root.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated path; the fd is owned by us.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
    .with_context(|| format!("opening {}", root.display()))?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves `path` (as the app will see it) inside the directory `root` as if `root` were `/`:
/// one component at a time with O_NOFOLLOW, symlinks read and followed by hand relative to
/// `root`, `..` stopping at `root`, so no symlink or `..` in an image can lead outside it (what
/// openat2's RESOLVE_IN_ROOT does, without needing Linux 5.6 in the kvm guest). Missing
/// components are created per `create`, always inside the directory just resolved.
pub fn resolve(root: BorrowedFd, path: &str, create: Create) -> std::io::Result<Resolved> {
    fn top<'a>(s: &'a [OwnedFd], root: BorrowedFd<'a>) -> BorrowedFd<'a> {
        s.last().map(|f| f.as_fd()).unwrap_or(root)
    }
    fn comps(p: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
        p.split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
    }
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut pending: Vec<Vec<u8>> = comps(path.as_bytes()).rev().map(<[u8]>::to_vec).collect();
    let mut hops = 0u32;
    let mut tries = 0u32;
    while let Some(c) = pending.pop() {
        if c == b".." {
            stack.pop();
            continue;
        }
        let name = cstr(&c)?;
        let dir = top(&stack, root);
        let last = pending.is_empty();
        match lstat_at(dir, &name) {
            Ok(st) if is_kind(&st, libc::S_IFLNK) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink_at(dir, &name)?;
                if target.starts_with(b"/") {
                    stack.clear();
                }
                pending.extend(comps(&target).rev().map(<[u8]>::to_vec));
            }
            Ok(st) => {
                let dir_now = is_kind(&st, libc::S_IFDIR);
                if !last && !dir_now {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
                }
                let flags = libc::O_PATH | if dir_now { libc::O_DIRECTORY } else { 0 };
                let fd = open_at(dir, &name, flags)?;
                if last {
                    let parent = dir.try_clone_to_owned()?;
                    return Ok(Resolved {
                        fd,
                        parent: Some((parent, name)),
                    });
                }
                stack.push(fd);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create != Create::No => {
                // Someone racing us (a shared volume) can make this loop; bound it.
                tries += 1;
                if tries > 1000 {
                    return Err(e);
                }
                if last && create == Create::File {
                    let fd =
                        match open_at(dir, &name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY) {
                            Ok(fd) => fd,
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                                pending.push(c);
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                    let parent = dir.try_clone_to_owned()?;
                    return Ok(Resolved {
                        fd,
                        parent: Some((parent, name)),
                    });
                }
                match mkdir_at(dir, &name) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                pending.push(c);
            }
            Err(e) => return Err(e),
        }
    }
    // The path named the root itself, or a directory reached through `..` or a symlink.
    Ok(Resolved {
        fd: top(&stack, root).try_clone_to_owned()?,
        parent: None,
    })
}

/// [`resolve`] below `root` with the app's path in the error.
fn resolve_in(root: BorrowedFd, path: &str, create: Create) -> anyhow::Result<Resolved> {
    resolve(root, path, create).with_context(|| format!("resolving {path} inside the app's root"))
}

/// A top-level directory rkt mounts over (proc, sys, dev): an image's symlink or file there is
/// replaced by a directory, so later path lookups below it (the terminal set-up, masked paths)
/// stay in the filesystem rkt mounted.
fn system_dir(root: BorrowedFd, name: &str) -> anyhow::Result<OwnedFd> {
    let c = cstr(name.as_bytes())?;
    let what = || format!("preparing /{name} in the app's root");
    match lstat_at(root, &c) {
        Ok(st) if is_kind(&st, libc::S_IFDIR) => {}
        Ok(_) => {
            unlink_at(root, &c).with_context(what)?;
            mkdir_at(root, &c).with_context(what)?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            mkdir_at(root, &c).with_context(what)?
        }
        Err(e) => return Err(e).with_context(what),
    }
    open_at(root, &c, libc::O_PATH | libc::O_DIRECTORY).with_context(what)
}

/// Mounts an overlay root on `root` in the caller's mount namespace (the host's: stage1 ns calls
/// this before it makes the pod's namespaces) and returns what the app then assembles instead, a
/// bind of that mount. Why: the kernel tears an overlay down when its last mount goes, and that
/// syncs the whole upper file system (`ovl_sync_fs` -> `sync_filesystem` of the host's `/`, with
/// every process's dirty data: 5 to 300 ms on a busy disk). Mounted only in the app's mount
/// namespace, that happened in the app's exit, before the supervisor saw it die and before
/// `rkt run` could return. Held here it lasts until `rkt gc`/`rm` unmount it (as the kvm flavour's
/// roots and rkt v1's overlays do), and the sync is theirs. (`volatile` would skip the sync too,
/// but it makes the app's own fsyncs no-ops.) A directory root is returned unchanged.
pub fn mount_rootfs_outside(spec: &RootfsSpec, root: &Path) -> anyhow::Result<RootfsSpec> {
    match spec {
        RootfsSpec::Overlay { .. } => {
            mount_rootfs(spec, root)?;
            Ok(RootfsSpec::Dir(root.to_path_buf()))
        }
        RootfsSpec::Dir(_) => Ok(spec.clone()),
    }
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

fn mount_volume(root: BorrowedFd, m: &MountSpec) -> anyhow::Result<()> {
    if !m.target.starts_with('/') {
        bail!("mount target {:?} is not an absolute path", m.target);
    }
    let src_md = std::fs::metadata(&m.source)
        .with_context(|| format!("volume source {}", m.source.display()))?;
    let create = if src_md.is_dir() {
        Create::Dir
    } else {
        Create::File
    };
    let target = resolve_in(root, &m.target, create)?;
    if target.parent.is_none() {
        bail!("mount target {} is the app's root directory", m.target);
    }
    let shown = Path::new(&m.target);
    let at = target.proc_path();
    let mut f = MsFlags::MS_BIND;
    if m.recursive {
        f |= MsFlags::MS_REC;
    }
    mount(Some(&m.source), &at, None::<&str>, f, None::<&str>)
        .with_context(|| format!("bind-mounting {} on {}", m.source.display(), m.target))?;
    if m.read_only {
        // The remount must hit the new mount, not the directory it covers: look the target up
        // again and check that it is the volume's root before making it read-only.
        let now = target
            .reopen()
            .with_context(|| format!("reopening {}", m.target))?;
        let st = fstat(now.as_fd())?;
        if st.st_dev != src_md.dev() || st.st_ino != src_md.ino() {
            bail!("{} changed while it was being mounted", m.target);
        }
        remount_ro(&fd_path(now.as_fd()), MsFlags::empty())
            .with_context(|| format!("remounting {} read-only", shown.display()))?;
    }
    Ok(())
}

pub const HOSTS_STUB: &str = "127.0.0.1 localhost localhost.localdomain localhost4 localhost4.localdomain4\n::1 localhost localhost.localdomain localhost6 localhost6.localdomain6\n";

/// Writes `/etc/<name>` inside the root: /etc is resolved inside the root (created if missing)
/// and a symlink at `name` is replaced rather than followed, so nothing is written elsewhere.
fn write_etc(root: BorrowedFd, name: &str, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let what = || format!("writing /etc/{name}");
    let etc = resolve_in(root, "/etc", Create::Dir).with_context(what)?;
    let c = cstr(name.as_bytes())?;
    // A symlink, fifo or device node there is replaced (a fifo would block us, a symlink lead
    // anywhere); O_NONBLOCK covers one swapped in after the check.
    match lstat_at(etc.fd.as_fd(), &c) {
        Ok(st) if !is_kind(&st, libc::S_IFREG) && !is_kind(&st, libc::S_IFDIR) => {
            unlink_at(etc.fd.as_fd(), &c).with_context(what)?
        }
        _ => {}
    }
    let fd = open_at(
        etc.fd.as_fd(),
        &c,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK,
    )
    .with_context(what)?;
    if !is_kind(&fstat(fd.as_fd())?, libc::S_IFREG) {
        bail!("/etc/{name} in the image is not a regular file");
    }
    std::fs::File::from(fd)
        .write_all(content.as_bytes())
        .with_context(what)
}

/// Everything before pivot_root: the root is mounted on `root` in the caller's (private) mount
/// namespace. `cgroups`: the layout to mount at /sys/fs/cgroup (None: leave it empty).
///
/// Every path inside the root comes from the image, so each is resolved with [`resolve`] and
/// mounted through its descriptor; `root` itself (rkt's pod directory) is trusted.
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
    let rootfd = open_root(root)?;
    let rfd = rootfd.as_fd();
    let proc_ = system_dir(rfd, "proc")?;
    mount(
        Some("proc"),
        &fd_path(proc_.as_fd()),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting proc on /proc")?;
    let sys = system_dir(rfd, "sys")?;
    let mut sysflags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !pod.insecure.paths {
        sysflags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some("sysfs"),
        &fd_path(sys.as_fd()),
        Some("sysfs"),
        sysflags,
        None::<&str>,
    )
    .context("mounting sysfs on /sys")?;
    // From here on root/proc, root/sys and root/dev are real directories with rkt's mounts on
    // them, so the paths below them are the kernel's or rkt's, not the image's.
    if let Some(layout) = cgroups {
        mount_cgroups(root, layout)?;
    }
    drop(system_dir(rfd, "dev")?);
    mount_dev(root)?;
    if !pod.insecure.paths {
        protect_paths(root)?;
    }
    for m in &app.mounts {
        mount_volume(rfd, m).with_context(|| format!("volume at {}", m.target))?;
    }
    write_etc(rfd, "hostname", &format!("{}\n", pod.hostname))?;
    match &pod.hosts {
        Some(h) => write_etc(rfd, "hosts", h)?,
        // rkt gave images without /etc/hosts a localhost stub.
        None if resolve(rfd, "/etc/hosts", Create::No).is_err() => {
            write_etc(rfd, "hosts", HOSTS_STUB)?
        }
        None => {}
    }
    if let Some(r) = &pod.resolv_conf {
        write_etc(rfd, "resolv.conf", r)?;
    }
    let etc = resolve_in(rfd, "/etc", Create::Dir)?;
    let mtab = cstr(b"mtab")?;
    if lstat_at(etc.fd.as_fd(), &mtab).is_err() {
        let target = cstr(b"../proc/self/mounts")?;
        // SAFETY: valid dirfd and NUL-terminated strings.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), etc.fd.as_raw_fd(), mtab.as_ptr()) })
            .context("creating /etc/mtab")?;
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

    /// Where `path` resolves below `r`, as a path (through /proc/self/fd).
    fn at(r: &Path, path: &str, create: Create) -> std::io::Result<PathBuf> {
        let root = open_root(r).unwrap();
        let res = resolve(root.as_fd(), path, create)?;
        Ok(std::fs::read_link(res.proc_path()).unwrap())
    }

    #[test]
    fn resolve_stays_inside_root() {
        let d = tempfile::tempdir().unwrap();
        let r = &d.path().canonicalize().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.join("real/dir")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("escape")).unwrap();
        symlink("dir", r.join("real/rel")).unwrap();
        symlink(outside.path(), r.join("host")).unwrap();
        assert_eq!(at(r, "/abs/dir", Create::No).unwrap(), r.join("real/dir"));
        assert_eq!(at(r, "/escape", Create::No).unwrap(), r.join("etc"));
        assert_eq!(at(r, "/real/rel", Create::No).unwrap(), r.join("real/dir"));
        assert_eq!(at(r, "/../../real", Create::No).unwrap(), r.join("real"));
        assert_eq!(at(r, "/abs/../..", Create::No).unwrap(), *r);
        // Created where the symlink leads when read inside the root, never on the host.
        assert_eq!(
            at(r, "/host/a/b", Create::Dir).unwrap(),
            r.join(outside.path().strip_prefix("/").unwrap())
                .join("a/b")
        );
        assert_eq!(
            at(r, "/escape/new", Create::File).unwrap(),
            r.join("etc/new")
        );
        assert!(r.join("etc/new").is_file());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        symlink("loop", r.join("loop")).unwrap();
        let e = at(r, "/loop/x", Create::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        std::fs::write(r.join("file"), "").unwrap();
        let e = at(r, "/file/x", Create::Dir).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(
            at(r, "/missing", Create::No).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
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
        let root = open_root(r).unwrap();
        write_etc(root.as_fd(), "resolv.conf", "nameserver 10.0.0.1\n").unwrap();
        assert!(!outside.path().join("resolv.conf").exists());
        assert_eq!(
            std::fs::read_to_string(r.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        // /etc itself pointing at a host directory: written inside the root.
        std::fs::remove_dir_all(r.join("etc")).unwrap();
        symlink(outside.path(), r.join("etc")).unwrap();
        write_etc(root.as_fd(), "hostname", "pod\n").unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let inside = r.join(outside.path().strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read_to_string(inside.join("hostname")).unwrap(),
            "pod\n"
        );
    }
}
