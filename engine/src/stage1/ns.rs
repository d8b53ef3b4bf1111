//! stage1 `ns`: runs a pod's apps in Linux namespaces on this host.
//!
//! `run` clones the pod supervisor into new PID, UTS, IPC and mount namespaces (plus a network
//! namespace with only `lo` unless `--net=host`); the supervisor is PID 1 of the pod and its host
//! pid is `<pod>/pid`. Each app is a child of the supervisor with its own mount namespace (rootfs
//! mounted on `<pod>/stage1/rootfs/opt/stage2/<app>/rootfs`, then pivot_root), its own cgroup
//! `rkt/<uuid>/<app>` and a cgroup namespace rooted there. The set-up inside the app is
//! `rkt_stage2::app`, shared with the kvm guest init.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use rkt_stage2::cgroup::{self, Layout};
use rkt_stage2::supervisor::{self, write_atomic, Relay};
use rkt_stage2::{app_pid_path, app_status_path, pod_pid_path, AppSpec, NetMode, PodSpec};

/// Where `run` records the pod's cgroup layout (below the caller's cgroups) for `enter` and `gc`.
pub fn cgroups_record(pod_dir: &Path) -> PathBuf {
    pod_dir.join("stage1-cgroups.json")
}

/// The layout `run` recorded for the pod, else the host's (pods started before the record).
pub fn pod_layout(pod_dir: &Path) -> Result<Layout> {
    match std::fs::read(cgroups_record(pod_dir)) {
        Ok(b) => serde_json::from_slice(&b).context("reading the pod's cgroup record"),
        Err(_) => cgroup::detect(),
    }
}

/// Runs the pod described by `spec` (already written to `<pod_dir>/stage1-spec.json`) in the
/// foreground; returns the exit code for `rkt run`.
pub fn run(pod_dir: &Path, spec: &PodSpec) -> Result<i32> {
    // A mutable pod (`rkt app sandbox`) starts empty; apps are added while it runs.
    if spec.apps.is_empty() && !crate::pod::app::is_mutable(pod_dir) {
        bail!("the pod has no apps");
    }
    // Overlay roots are mounted here, in the host's mount namespace, so that their teardown (and
    // the sync of the host's file system it does) waits for gc instead of the app's exit.
    let mut spec = spec.clone();
    for app in &mut spec.apps {
        app.rootfs = rkt_stage2::fs::mount_rootfs_outside(
            &app.rootfs,
            &rkt_stage2::app_root_path(pod_dir, &app.name),
        )
        .with_context(|| format!("app {:?}: root file system", app.name))?;
    }
    // Output pipes and systemd notification, made before the supervisor (it inherits them).
    let io = super::output::HostIo::new(pod_dir, &mut spec)?;
    let spec = &spec;
    // Without cgroups nothing restricts the apps' device access: refuse rather than run open.
    let host = cgroup::detect().context(
        "no cgroup file system is mounted; the pod's device access cannot be restricted",
    )?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let nested = host.nested_in(&own);
    let layout = match create_cgroups(&nested, spec) {
        Ok(()) => nested,
        // v2: a cgroup holding processes (ours) cannot enable controllers for children, which
        // `--memory`/`--cpu` need; then the pod goes where it went before, below the root.
        Err(e) if matches!(host, Layout::V2 { .. }) && nested != host => {
            create_cgroups(&host, spec).map_err(|e2| e2.context(format!("{e:#}")))?;
            host
        }
        Err(e) => return Err(e),
    };
    let result = serde_json::to_string(&layout)
        .map_err(anyhow::Error::from)
        .and_then(|j| write_atomic(&cgroups_record(pod_dir), &j))
        .and_then(|()| run_with_networks(pod_dir, spec, &layout, io));
    let _ = cgroup::remove_pod(&layout, &spec.uuid);
    result
}

/// The pod's CNI networks (if any) are set up in a namespace of their own before the supervisor
/// starts, and torn down once it has exited (gc does it for a killed `rkt run`).
fn run_with_networks(
    pod_dir: &Path,
    spec: &PodSpec,
    layout: &Layout,
    io: super::output::HostIo,
) -> Result<i32> {
    let netns = crate::net::setup(pod_dir, &spec.uuid, spec.debug)?;
    // Without --dns, the DNS settings of a CNI result become the pod's resolv.conf (rkt v1).
    let with_dns;
    let spec = match crate::net::resolv_conf(pod_dir) {
        Some(r) => {
            with_dns = PodSpec {
                resolv_conf: Some(r),
                ..spec.clone()
            };
            &with_dns
        }
        None => spec,
    };
    let r = run_supervisor(pod_dir, spec, Some(layout), netns.as_ref(), io);
    if let Err(e) = crate::net::teardown(pod_dir) {
        crate::print_error(&format!("network teardown: {}", crate::one_line(&e)));
    }
    r
}

fn create_cgroups(layout: &Layout, spec: &PodSpec) -> Result<()> {
    for app in &spec.apps {
        if let Err(e) = cgroup::create_app(layout, &spec.uuid, app) {
            let _ = cgroup::remove_pod(layout, &spec.uuid);
            return Err(e).with_context(|| format!("app {:?}: cgroup", app.name));
        }
    }
    Ok(())
}

fn run_supervisor(
    pod_dir: &Path,
    spec: &PodSpec,
    layout: Option<&Layout>,
    netns: Option<&OwnedFd>,
    io: super::output::HostIo,
) -> Result<i32> {
    // The terminal goes raw while an interactive app owns it through our pty relay; whatever
    // happens to the supervisor, the caller's terminal is restored here.
    let tty = spec.interactive && super::term::is_tty(0);
    let saved = if tty {
        Some(super::term::RawTerminal::new(0)?)
    } else {
        None
    };

    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.net != NetMode::Host && netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // The parent forwards stop requests; block them before the child exists so none is lost.
    let fwd = super::stop_signals();
    let old_mask = fwd.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    // Pages of the stack are only allocated when touched.
    let mut stack = vec![0u8; 8 << 20];
    let cb = Box::new(|| -> isize {
        let joined = match netns {
            Some(fd) => nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                .context("joining the pod's network namespace"),
            None => Ok(()),
        };
        io.supervisor_side();
        match joined.and_then(|()| supervisor_main(pod_dir, spec, layout, tty, &io)) {
            Ok(code) => code as isize,
            Err(e) => {
                crate::print_error(&format!("stage1: {}", crate::one_line(&e)));
                crate::EXIT_RKT_ERROR as isize
            }
        }
    });
    // SAFETY: the child gets a copy of our address space (no CLONE_VM) and its own stack; it
    // runs the supervisor and exits without returning into our frames.
    let child = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) };
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = old_mask.thread_set_mask();
            drop(saved);
            return Err(e).context("creating the pod's namespaces");
        }
    };
    // Started with our stop signals blocked, as they must stay for wait_forwarding.
    let relay = io.start(pod_dir, spec);
    let status = wait_forwarding(child, &fwd);
    super::notify::stopping();
    let _ = old_mask.thread_set_mask();
    drop(saved);
    match relay {
        Ok(Some(r)) => r.finish(),
        Ok(None) => {}
        Err(e) => crate::print_error(&format!("app output: {}", crate::one_line(&e))),
    }
    match status? {
        WaitStatus::Exited(_, c) => Ok(c),
        WaitStatus::Signaled(_, s, _) => Ok(128 + s as i32),
        st => bail!("unexpected supervisor status {st:?}"),
    }
}

/// Waits for the supervisor, turning SIGTERM, SIGHUP and SIGINT into a graceful stop of the pod
/// (a terminal's Ctrl-C also reaches the supervisor directly; stopping twice is harmless).
pub(crate) fn wait_forwarding(child: Pid, set: &SigSet) -> Result<WaitStatus> {
    loop {
        match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => {}
            st => return Ok(st),
        }
        match set.wait()? {
            Signal::SIGTERM | Signal::SIGHUP | Signal::SIGINT => {
                super::notify::stopping();
                let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
            }
            _ => {}
        }
    }
}

/// PID 1 of the pod.
fn supervisor_main(
    pod_dir: &Path,
    spec: &PodSpec,
    layout: Option<&Layout>,
    tty: bool,
    io: &super::output::HostIo,
) -> Result<i32> {
    use nix::mount::{mount, MsFlags};
    // First: as PID 1 of a namespace we would drop a SIGTERM whose disposition is still default.
    let sfd = supervisor::take_signals()?;
    // Our argv and environment are `rkt run`'s, i.e. the host caller's: apps see PID 1's.
    supervisor::scrub_cmdline("rkt-pod")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the pod's mounts private")?;
    nix::unistd::sethostname(&spec.hostname).context("setting the hostname")?;
    if spec.net != NetMode::Host {
        rkt_stage2::loopback_up()?;
    }
    // Statuses are written through this descriptor: once the apps run, we no longer see the
    // host's file system.
    let status_dir = app_status_path(pod_dir, "x");
    let status_dir = status_dir.parent().context("status directory")?;
    std::fs::create_dir_all(status_dir)
        .with_context(|| format!("creating {}", status_dir.display()))?;
    let status_fd: OwnedFd = std::fs::File::open(status_dir)
        .with_context(|| format!("opening {}", status_dir.display()))?
        .into();
    let relay = Relay::default();
    let relay = tty.then_some(&relay);
    let gate = Gate::new()?;
    let mut launch =
        |app: &AppSpec| -> Result<Pid> { launch_app(pod_dir, spec, app, layout, relay, &gate, io) };
    let mut on_exit = |name: &str, code: i32| {
        if let Err(e) = supervisor::write_atomic_at(&status_fd, name, &format!("{code}\n")) {
            eprintln!("rkt: {e:#}");
        }
    };
    // The supervisor's host pid, through the host's /proc still mounted here.
    let host_pid = std::fs::read_link("/proc/self").context("reading /proc/self")?;
    let mut on_started = || {
        io.all_launched();
        let p = pod_pid_path(pod_dir);
        let r = write_atomic(&p, &format!("{}\n", host_pid.display()))
            .and_then(|()| leave_host_fs(pod_dir))
            .and_then(|()| supervisor::drop_privileges(supervisor::SUPERVISOR_CAPS));
        if r.is_ok() {
            gate.open();
        }
        if let Err(e) = r {
            // Without the pid file nobody can stop the pod, and a supervisor that could not
            // shed its privileges must not watch over the apps: give up on the pod.
            eprintln!("rkt: {e:#}");
            let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
    };
    // `rkt app`'s channel, bound while we still see the pod directory.
    let control = match crate::pod::app::is_mutable(pod_dir) {
        true => Some(rkt_stage2::control::Control::new(
            rkt_stage2::control::bind(pod_dir)?,
        )),
        false => None,
    };
    Ok(supervisor::supervise_with(
        spec,
        &sfd,
        &mut launch,
        &mut on_exit,
        &mut on_started,
        relay,
        supervisor::STOP_TIMEOUT,
        control.as_ref(),
    ))
}

/// Once every app has its own mount namespace, the supervisor's needs no host file system: it
/// pivots into an empty read-only tmpfs and detaches the rest, so that `/proc/1/mountinfo`,
/// `/proc/1/root` and `/proc/1/cwd` in the pod show nothing of the host.
fn leave_host_fs(pod_dir: &Path) -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // A mount namespace of our own first: an app child still setting up may not have left the
    // one we share yet.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("unshare")?;
    let d = pod_dir.join("stage1/supervisor-root");
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let fl = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &d,
        Some("tmpfs"),
        fl,
        Some("size=4k,mode=0500"),
    )
    .context("mounting the supervisor's root")?;
    nix::unistd::chdir(&d).context("chdir")?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching "." drops it.
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the host's file system")?;
    nix::unistd::chdir("/").context("chdir")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | fl,
        None::<&str>,
    )
    .context("remounting the supervisor's root read-only")
}

/// Holds every app back, set up but not yet exec'd, until the supervisor has left the host's file
/// system and shed its privileges: an app that ran at once could read `/proc/1/mountinfo` (the
/// host's mount table) or `/proc/1/environ` in that window. A pipe: the supervisor drops the
/// write end, each app child drops its inherited copy and reads until EOF.
struct Gate {
    r: OwnedFd,
    w: std::cell::RefCell<Option<OwnedFd>>,
}

impl Gate {
    fn new() -> Result<Gate> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        Ok(Gate {
            r,
            w: std::cell::RefCell::new(Some(w)),
        })
    }

    /// In the supervisor: lets the apps go.
    fn open(&self) {
        self.w.borrow_mut().take();
    }

    /// In an app child: drops our copy of the write end, then waits for the supervisor's.
    fn wait(&self) {
        self.w.borrow_mut().take();
        let mut b = [0u8; 1];
        while let Err(nix::errno::Errno::EINTR) | Ok(1..) =
            nix::unistd::read(self.r.as_raw_fd(), &mut b)
        {}
    }
}

fn launch_app(
    pod_dir: &Path,
    spec: &PodSpec,
    app: &AppSpec,
    layout: Option<&Layout>,
    relay: Option<&Relay>,
    gate: &Gate,
    io: &super::output::HostIo,
) -> Result<Pid> {
    let root = rkt_stage2::app_root_path(pod_dir, &app.name);
    // Interactive: the app allocates its terminal in its own devpts and hands us the master.
    let pair = match relay {
        Some(_) => Some(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .context("socketpair")?,
        ),
        None => None,
    };
    // SAFETY: the supervisor is single-threaded; the child only runs the set-up and execs.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            if let (Some(r), Some((ours, theirs))) = (relay, pair) {
                drop(theirs);
                if let Some(master) = supervisor::recv_fd(&ours)? {
                    r.set_master(master);
                }
            }
            Ok(child)
        }
        ForkResult::Child => {
            supervisor::reset_signals_in_child();
            let sock = pair.map(|(ours, theirs)| {
                drop(ours);
                theirs
            });
            let index = spec.apps.iter().position(|a| a.name == app.name);
            let attached = io.attach(index.unwrap_or(usize::MAX));
            let err = match attached
                .and_then(|()| app_child(pod_dir, spec, app, layout, sock, &root, gate))
            {
                Ok(never) => match never {},
                Err(e) => e,
            };
            crate::print_error(&format!("app {:?}: {}", app.name, crate::one_line(&err)));
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(crate::EXIT_RKT_ERROR) }
        }
    }
}

fn app_child(
    pod_dir: &Path,
    spec: &PodSpec,
    app: &AppSpec,
    layout: Option<&Layout>,
    tty_sock: Option<OwnedFd>,
    root: &Path,
    gate: &Gate,
) -> Result<std::convert::Infallible> {
    // Our /proc is still the host's, so /proc/self names our host pid: `rkt enter` needs it.
    let host_pid = std::fs::read_link("/proc/self").context("reading /proc/self")?;
    write_atomic(
        &app_pid_path(pod_dir, &app.name),
        &format!("{}\n", host_pid.display()),
    )?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if let Some(l) = layout {
        cgroup::join(l, &cgroup::app_path(&spec.uuid, &app.name), 0)?;
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    nix::sched::unshare(flags).context("unshare")?;
    let mut before_pivot = |root: &Path| -> Result<()> {
        if let Some(sock) = &tty_sock {
            supervisor::hand_over_pty(&root.join("dev/pts"), sock)?;
        }
        // After the pty hand-over, which the supervisor waits for while launching.
        gate.wait();
        Ok(())
    };
    Err(rkt_stage2::app::setup_and_exec_with(
        app,
        spec,
        root,
        layout,
        &mut before_pivot,
    ))
}

/// Runs `cmd` (default `/bin/sh`) in the namespaces, root and cgroup of `app` in the running pod,
/// as the app runs (its user, capabilities, seccomp filter, no_new_privs, environment; see
/// `rkt_stage2::app::entered_app`); returns its exit code.
pub fn enter(pod_dir: &Path, spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
    let (a, pid) = super::started_app(pod_dir, spec, app)?;
    let proc_ = PathBuf::from(format!("/proc/{pid}"));
    let open = |p: &str| -> Result<OwnedFd> {
        let f = std::fs::File::open(proc_.join(p))
            .with_context(|| format!("app {app:?} is not running (pid {pid}: {p})"))?;
        Ok(OwnedFd::from(f))
    };
    // Open everything first: after the mount namespace switch the host's /proc is gone.
    let mut nss = Vec::new();
    for (name, flag) in [
        ("ns/cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ns/ipc", CloneFlags::CLONE_NEWIPC),
        ("ns/uts", CloneFlags::CLONE_NEWUTS),
        ("ns/net", CloneFlags::CLONE_NEWNET),
        ("ns/pid", CloneFlags::CLONE_NEWPID),
        ("ns/mnt", CloneFlags::CLONE_NEWNS),
    ] {
        nss.push((open(name)?, flag));
    }
    let rootfd = open("root")?;
    // The app's cgroup carries its device allow-list: never enter without it.
    let layout = pod_layout(pod_dir)?;
    cgroup::join(&layout, &cgroup::app_path(&spec.uuid, app), 0)
        .context("joining the app's cgroup")?;
    for (fd, flag) in &nss {
        nix::sched::setns(fd, *flag)
            .with_context(|| format!("joining the app's {flag:?} namespace"))?;
    }
    nix::unistd::fchdir(rootfd.as_raw_fd()).context("entering the app's root")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/")?;
    let entered = rkt_stage2::app::entered_app(a, Path::new("/"), cmd, vec![]);
    super::run_entered(&entered, spec)
}

/// Releases what an exited pod left: its cgroups (killing stray processes in them) and mounts
/// under the pod directory in this mount namespace.
pub fn gc(pod_dir: &Path) -> Result<()> {
    // CNI DEL for a pod whose `rkt run` did not get to it (killed).
    crate::net::teardown(pod_dir).context("releasing the pod's networks")?;
    let uuid = match rkt_stage2::PodSpec::load(pod_dir) {
        Ok(s) => s.uuid,
        Err(_) => pod_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if !uuid.is_empty() {
        if let Ok(l) = pod_layout(pod_dir) {
            cgroup::remove_pod(&l, &uuid)?;
        }
    }
    crate::pod::unmount_all_under(pod_dir)?;
    Ok(())
}
