//! stage1 `ns`: starting and releasing an app of a running mutable pod (`rkt app start|rm`).
//!
//! The pod's supervisor has left the host's file system and shed its privileges, so it cannot
//! set an app up itself. `rkt app start` (root on the host) does what the supervisor's launch
//! does for the first apps — root mounted outside, cgroup, the pod's namespaces, the app's own
//! mount and cgroup namespaces, `rkt_stage2::app` — from a process in the pod's PID namespace
//! whose parent then exits, so that the app is re-parented to the supervisor (PID 1 of that
//! namespace). The app waits until the supervisor has registered it over its control channel
//! (`rkt_stage2::control`), then execs; from then on the supervisor reaps it, records its exit
//! code and stops it, as any other app of the pod.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::unistd::ForkResult;
use rkt_stage2::cgroup;
use rkt_stage2::control::{self, Request};
use rkt_stage2::{AppSpec, PodSpec};

/// Starts `app` (already in `spec`, the pod's `stage1-spec.json`) in the running pod.
pub fn start(pod_dir: &Path, spec: &PodSpec, app: &AppSpec) -> Result<()> {
    start_with_stdio(pod_dir, spec, app, None)
}

/// [`start`] with the app's stdin, stdout and stderr given by the caller (the containerd shim
/// passes containerd's FIFOs) instead of /dev/null and the supervisor's output.
pub fn start_with_stdio(
    pod_dir: &Path,
    spec: &PodSpec,
    app: &AppSpec,
    own_stdio: Option<[OwnedFd; 3]>,
) -> Result<()> {
    let sup: i32 = std::fs::read_to_string(rkt_stage2::pod_pid_path(pod_dir))
        .context("reading the pod's pid")?
        .trim()
        .parse()
        .context("bad pod pid")?;
    let layout = super::ns::pod_layout(pod_dir)?;
    let mut app = app.clone();
    app.rootfs = rkt_stage2::fs::mount_rootfs_outside(
        &app.rootfs,
        &rkt_stage2::app_root_path(pod_dir, &app.name),
    )
    .with_context(|| format!("app {:?}: root file system", app.name))?;
    cgroup::create_app(&layout, &spec.uuid, &app)
        .with_context(|| format!("app {:?}: cgroup", app.name))?;
    let stdio = match own_stdio {
        Some(fds) => fds.into(),
        None => {
            let null = OwnedFd::from(std::fs::File::open("/dev/null").context("/dev/null")?);
            // The pod's output and logs, through the sandbox's `rkt run` as for its first apps.
            if let Some([o, e]) = super::output::hand_over(pod_dir, &app.name)
                .with_context(|| format!("app {:?}: output", app.name))?
            {
                vec![null, o, e]
            } else {
                // A pod started without the output socket (an older rkt): the supervisor's stdout
                // and stderr, unlogged.
                let mut fds = control::request(pod_dir, &Request::Stdio)?;
                if fds.len() != 2 {
                    bail!("the pod's supervisor sent no output descriptors");
                }
                fds.insert(0, null);
                fds
            }
        }
    };
    let nss = ["net", "uts", "ipc", "pid"]
        .iter()
        .map(|n| {
            let p = format!("/proc/{sup}/ns/{n}");
            std::fs::File::open(&p)
                .map(OwnedFd::from)
                .with_context(|| format!("the pod's supervisor is gone ({p})"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child only runs set-up code and execs or exits.
    let first = match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Child => {
            drop(report_r);
            let code = match into_pod(&nss) {
                Ok(()) => spawn_app(
                    pod_dir, spec, &app, &layout, &stdio, report_w, gate_r, gate_w,
                ),
                Err(e) => {
                    crate::print_error(&format!("app {:?}: {}", app.name, crate::one_line(&e)));
                    crate::EXIT_RKT_ERROR
                }
            };
            // SAFETY: leaving the forked child without the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(report_w);
    drop(gate_r);
    drop(stdio);
    let _ = nix::sys::wait::waitpid(first, None);
    // "<pid in the pod> <pid on the host>" from the app, or nothing if its set-up failed.
    let mut buf = [0u8; 64];
    let n = read_all(&report_r, &mut buf);
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut it = text.split_whitespace().map(|s| s.parse::<i32>());
    let (Some(Ok(pod_pid)), Some(Ok(host_pid))) = (it.next(), it.next()) else {
        bail!("app {:?} could not be started", app.name);
    };
    let registered = control::request(
        pod_dir,
        &Request::Register {
            app: app.name.clone(),
            pid: pod_pid,
        },
    );
    if let Err(e) = registered {
        // Held at the gate: it never ran. The supervisor reaps it.
        // SAFETY: plain kill(2).
        unsafe { libc::kill(host_pid, libc::SIGKILL) };
        return Err(e.context(format!("app {:?}", app.name)));
    }
    rkt_stage2::supervisor::write_atomic(
        &rkt_stage2::app_pid_path(pod_dir, &app.name),
        &format!("{host_pid}\n"),
    )?;
    drop(gate_w);
    Ok(())
}

fn read_all(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    n
}

/// In the first child: the pod's network, UTS and IPC namespaces, and its PID namespace for
/// the children to come.
fn into_pod(nss: &[OwnedFd]) -> Result<()> {
    for (fd, flag) in nss.iter().zip([
        CloneFlags::CLONE_NEWNET,
        CloneFlags::CLONE_NEWUTS,
        CloneFlags::CLONE_NEWIPC,
        CloneFlags::CLONE_NEWPID,
    ]) {
        nix::sched::setns(fd, flag).with_context(|| format!("joining the pod's {flag:?}"))?;
    }
    Ok(())
}

/// In the first child, in the pod's namespaces: forks a process in the pod's PID namespace,
/// which forks the app and exits, so that the app's parent becomes the pod's supervisor. Returns
/// the first child's exit code.
#[allow(clippy::too_many_arguments)]
fn spawn_app(
    pod_dir: &Path,
    spec: &PodSpec,
    app: &AppSpec,
    layout: &cgroup::Layout,
    stdio: &[OwnedFd],
    report: OwnedFd,
    gate_r: OwnedFd,
    gate_w: OwnedFd,
) -> i32 {
    // SAFETY: single-threaded child; the grandchild only forks once more and exits.
    match unsafe { nix::unistd::fork() } {
        Err(_) => crate::EXIT_RKT_ERROR,
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
            0
        }
        Ok(ForkResult::Child) => {
            // SAFETY: as above; the middle process exits at once.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {}
                // SAFETY: leaving the forked child.
                _ => unsafe { libc::_exit(0) },
            }
            drop(gate_w);
            let err = match app_child(pod_dir, spec, app, layout, stdio, report, gate_r) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            crate::print_error(&format!("app {:?}: {}", app.name, crate::one_line(&err)));
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(crate::EXIT_RKT_ERROR) }
        }
    }
}

/// The app's process: reports its pids, waits for the supervisor to own it, then sets the app
/// up as the supervisor's own launch does and execs it.
fn app_child(
    pod_dir: &Path,
    spec: &PodSpec,
    app: &AppSpec,
    layout: &cgroup::Layout,
    stdio: &[OwnedFd],
    report: OwnedFd,
    gate: OwnedFd,
) -> Result<std::convert::Infallible> {
    use nix::mount::{mount, MsFlags};
    for (fd, to) in [
        (stdio[0].as_raw_fd(), 0),
        (stdio[1].as_raw_fd(), 1),
        (stdio[2].as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 onto a standard descriptor; the source is open.
        if unsafe { libc::dup2(fd, to) } < 0 {
            return Err(std::io::Error::last_os_error()).context("dup2");
        }
    }
    // Our /proc is the host's: /proc/self is our host pid (`rkt enter` needs it); getpid()
    // answers in the pod's PID namespace (the supervisor's view).
    let host_pid = std::fs::read_link("/proc/self").context("reading /proc/self")?;
    let line = format!("{} {}\n", nix::unistd::getpid(), host_pid.display());
    nix::unistd::write(&report, line.as_bytes()).context("reporting the app's pid")?;
    drop(report);
    // Until rkt app start has handed us to the supervisor: EOF.
    let mut b = [0u8; 1];
    while let Err(nix::errno::Errno::EINTR) | Ok(1..) = nix::unistd::read(gate.as_raw_fd(), &mut b)
    {
    }
    drop(gate);
    // The app must not outlive a supervisor that died meanwhile (it then reaps nobody).
    if nix::unistd::getppid().as_raw() != 1 {
        bail!("the pod's supervisor did not take the app over");
    }
    cgroup::join(layout, &cgroup::app_path(&spec.uuid, &app.name), 0)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
        .context("unshare")?;
    // Nothing the app's set-up mounts may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the app's mounts private")?;
    let root = rkt_stage2::app_root_path(pod_dir, &app.name);
    Err(rkt_stage2::app::setup_and_exec_with(
        app,
        spec,
        &root,
        Some(layout),
        &mut |_| Ok(()),
    ))
}

/// What an app of a running pod leaves on the host once it exited: its cgroup and the mount
/// of its root.
pub fn release(pod_dir: &Path, uuid: &str, name: &str) -> Result<()> {
    if let Ok(layout) = super::ns::pod_layout(pod_dir) {
        for d in layout.dirs(&cgroup::app_path(uuid, name)) {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing cgroup {}", d.display()))
                }
            }
        }
    }
    let root = rkt_stage2::app_root_path(pod_dir, name);
    crate::pod::unmount_all_under(&root)
}
