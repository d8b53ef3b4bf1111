//! stage1 `fly`: rkt's flavour for host tools shipped as images (a kubelet, a CNI daemon).
//!
//! Each app runs on its image's root (pivot_root in a mount namespace of its own, the only
//! namespace it does not share with the host), with every capability, no seccomp filter, no
//! masked paths, the host's `/dev` and `/sys`, and no cgroup limits: what rkt v1's `stage1-fly`
//! gave. `run` forks a supervisor (a child subreaper whose pid is `<pod>/pid`) that starts the
//! apps with stage2's set-up and watches them with stage2's supervisor, as `ns` does.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid};
use rkt_stage2::supervisor::{self, write_atomic, Relay};
use rkt_stage2::{
    app_pid_path, app_status_path, pod_pid_path, AppSpec, InsecureRun, NetMode, PodSpec,
};

use super::ns::wait_forwarding;

/// The app shares the host's network namespace: anything but `--net=host` is refused.
pub fn check_net(net: &NetMode) -> Result<()> {
    if *net != NetMode::Host {
        bail!("stage1 fly runs apps in the host's network namespace: use --net=host");
    }
    Ok(())
}

/// The spec as fly applies it: full privileges, and the host's hostname in `/etc/hostname` (the
/// app is in the host's UTS namespace).
fn privileged(spec: &PodSpec) -> PodSpec {
    let mut s = spec.clone();
    s.insecure = InsecureRun {
        capabilities: true,
        paths: true,
        seccomp: true,
    };
    if let Ok(h) = nix::unistd::gethostname() {
        s.hostname = h.to_string_lossy().into_owned();
    }
    s
}

/// Runs the pod in the foreground; returns the exit code for `rkt run`.
pub fn run(pod_dir: &Path, spec: &PodSpec) -> Result<i32> {
    if spec.apps.is_empty() {
        bail!("the pod has no apps");
    }
    let mut fly = privileged(spec);
    // Output pipes and systemd notification, made before the supervisor (it inherits them).
    let io = super::output::HostIo::new(pod_dir, &mut fly)?;
    let tty = spec.interactive && super::term::is_tty(0);
    let saved = tty.then(|| super::term::RawTerminal::new(0)).transpose()?;
    // Blocked before the supervisor exists, so no stop request is lost (it inherits the mask).
    let fwd = super::stop_signals();
    let old_mask = fwd.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    // A forked supervisor rather than this process: `rkt run` may have other threads, which a
    // process-wide signal could land on.
    // SAFETY: the child runs the supervisor and leaves with _exit, never returning into our frames.
    let status = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            io.supervisor_side();
            let code = supervisor_main(pod_dir, &fly, tty, &io).unwrap_or_else(|e| {
                crate::print_error(&format!("stage1: {}", crate::one_line(&e)));
                crate::EXIT_RKT_ERROR
            });
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Started with our stop signals blocked, as they must stay for wait_forwarding.
            let relay = io.start(pod_dir, &fly);
            let st = wait_forwarding(child, &fwd);
            super::notify::stopping();
            match relay {
                Ok(Some(r)) => r.finish(),
                Ok(None) => {}
                Err(e) => crate::print_error(&format!("app output: {}", crate::one_line(&e))),
            }
            st
        }
        Err(e) => Err(e).context("forking the pod's supervisor"),
    };
    let _ = old_mask.thread_set_mask();
    drop(saved);
    match status? {
        WaitStatus::Exited(_, c) => Ok(c),
        WaitStatus::Signaled(_, s, _) => Ok(128 + s as i32),
        st => bail!("unexpected supervisor status {st:?}"),
    }
}

fn supervisor_main(
    pod_dir: &Path,
    fly: &PodSpec,
    tty: bool,
    io: &super::output::HostIo,
) -> Result<i32> {
    let sfd = supervisor::take_signals()?;
    // Not PID 1 of anything: become the reaper of what the apps leave behind.
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
    }
    let relay = Relay::default();
    let relay = tty.then_some(&relay);
    let mut launch = |app: &AppSpec| launch_app(pod_dir, fly, app, relay, io);
    let mut on_exit = |name: &str, code: i32| {
        if let Err(e) = write_atomic(&app_status_path(pod_dir, name), &format!("{code}\n")) {
            eprintln!("rkt: {e:#}");
        }
    };
    let mut on_started = || {
        io.all_launched();
        let me = std::process::id();
        if let Err(e) = write_atomic(&pod_pid_path(pod_dir), &format!("{me}\n")) {
            // Nobody could stop the pod: give up on it.
            eprintln!("rkt: {e:#}");
            let _ = nix::sys::signal::raise(Signal::SIGKILL);
        }
    };
    Ok(supervisor::supervise(
        fly,
        &sfd,
        &mut launch,
        &mut on_exit,
        &mut on_started,
        relay,
        supervisor::STOP_TIMEOUT,
    ))
}

/// Starts one app and returns once it exec'd (or died): its root is in place by then, so
/// `apps/<app>/pid` (what `rkt enter` joins) is written only for a set-up app.
fn launch_app(
    pod_dir: &Path,
    fly: &PodSpec,
    app: &AppSpec,
    relay: Option<&Relay>,
    io: &super::output::HostIo,
) -> Result<Pid> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let pair = relay
        .map(|_| {
            socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
        })
        .transpose()
        .context("socketpair")?;
    // The write end is close-on-exec: EOF on the read end means the app exec'd or died.
    let (exec_r, exec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let me = nix::unistd::getpid();
    // SAFETY: the supervisor is single-threaded; the child only sets up the app and execs.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            drop(exec_w);
            if let (Some(r), Some((ours, theirs))) = (relay, pair) {
                drop(theirs);
                if let Some(master) = supervisor::recv_fd(&ours)? {
                    r.set_master(master);
                }
            }
            let _ = nix::unistd::read(exec_r.as_raw_fd(), &mut [0u8; 1]);
            write_atomic(&app_pid_path(pod_dir, &app.name), &format!("{child}\n"))?;
            Ok(child)
        }
        ForkResult::Child => {
            supervisor::reset_signals_in_child();
            drop(exec_r);
            // An app left without its supervisor (`rkt stop --force` SIGKILLs it) dies with it.
            // The kernel clears this when the app's uid changes: a non-root app would outlive it.
            // SAFETY: plain prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let index = fly.apps.iter().position(|a| a.name == app.name);
            let err = if nix::unistd::getppid() != me {
                anyhow::anyhow!("the pod's supervisor is gone")
            } else if let Err(e) = io.attach(index.unwrap_or(usize::MAX)) {
                e
            } else {
                let sock = pair.map(|(_, theirs)| theirs);
                app_child(
                    fly,
                    app,
                    sock,
                    &rkt_stage2::app_root_path(pod_dir, &app.name),
                )
            };
            crate::print_error(&format!("app {:?}: {}", app.name, crate::one_line(&err)));
            drop(exec_w);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(crate::EXIT_RKT_ERROR) }
        }
    }
}

fn app_child(
    fly: &PodSpec,
    app: &AppSpec,
    tty_sock: Option<OwnedFd>,
    root: &Path,
) -> anyhow::Error {
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS) {
        return anyhow::Error::from(e).context("unshare");
    }
    let mut before_pivot = |root: &Path| -> Result<()> {
        // The host's devices and sysfs (with its cgroup hierarchies) over the ones stage2 made.
        for d in ["dev", "sys"] {
            let (src, dst) = (Path::new("/").join(d), root.join(d));
            let fl = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
            nix::mount::mount(Some(&src), &dst, None::<&str>, fl, None::<&str>)
                .with_context(|| format!("bind-mounting the host's /{d}"))?;
        }
        if let Some(sock) = &tty_sock {
            supervisor::hand_over_pty(&root.join("dev/pts"), sock)?;
        }
        Ok(())
    };
    rkt_stage2::app::setup_and_exec_with(app, fly, root, None, &mut before_pivot)
}

/// Runs `cmd` in `app`'s mount namespace and root, as the app runs (its user, environment and
/// working directory, full privileges); returns its exit code.
pub fn enter(pod_dir: &Path, spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
    let (a, pid) = super::started_app(pod_dir, spec, app)?;
    let open = |p: &str| -> Result<std::fs::File> {
        std::fs::File::open(format!("/proc/{pid}/{p}"))
            .with_context(|| format!("app {app:?} is not running (pid {pid}: {p})"))
    };
    let (mnt, root) = (open("ns/mnt")?, open("root")?);
    nix::sched::setns(&mnt, CloneFlags::CLONE_NEWNS)
        .context("joining the app's mount namespace")?;
    nix::unistd::fchdir(root.as_raw_fd()).context("entering the app's root")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/")?;
    let entered = rkt_stage2::app::entered_app(a, Path::new("/"), cmd, vec![]);
    super::run_entered(&entered, &privileged(spec))
}

/// Nothing outlives a fly pod outside its directory: its mounts lived in the apps' own mount
/// namespaces and it has no cgroups or network namespace.
pub fn gc(_pod_dir: &Path) -> Result<()> {
    Ok(())
}
