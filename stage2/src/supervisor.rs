//! The pod supervisor: PID 1 of the pod (the ns flavour's pod process, the kvm guest init). It
//! starts every app, reaps every child, records exit codes, stops the pod when the first app fails
//! or on SIGTERM (SIGTERM to the apps, SIGKILL after a timeout) and returns the pod's exit code:
//! the first failure's code, else 0 (128+signo for an app killed by a signal).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::spec::{AppSpec, PodSpec};

/// How long apps get between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const HANDLED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGWINCH,
];

extern "C" fn noop(_: libc::c_int) {}

fn handled_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in HANDLED {
        s.add(sig);
    }
    s
}

/// Blocks the supervisor's signals and gives them a handler. A PID-namespace init drops signals
/// whose disposition is SIG_DFL, so blocking alone would lose SIGTERM and SIGCHLD.
pub fn take_signals() -> anyhow::Result<SignalFd> {
    let act = SigAction::new(
        SigHandler::Handler(noop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in HANDLED {
        // SAFETY: installing a handler that does nothing.
        unsafe { sigaction(sig, &act) }.context("sigaction")?;
    }
    handled_set().thread_block().context("blocking signals")?;
    SignalFd::with_flags(
        &handled_set(),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )
    .context("signalfd")
}

/// In a child about to exec: default dispositions and an empty signal mask again.
pub fn reset_signals_in_child() {
    for sig in HANDLED {
        // SAFETY: restoring the default disposition.
        let _ = unsafe {
            sigaction(
                sig,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        };
    }
    for sig in [Signal::SIGPIPE, Signal::SIGTTOU, Signal::SIGTTIN] {
        // SAFETY: as above.
        let _ = unsafe {
            sigaction(
                sig,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        };
    }
    let _ = SigSet::all().thread_unblock();
}

/// Writes `content` to `path` atomically (temp file in the same directory, then rename), so readers
/// never see a partial file. Not fsynced: these are runtime files (pids, exit codes, specs) that are
/// rewritten at every start and mean nothing after a host crash, and each fsync costs pod start time.
pub fn write_atomic(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("path without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::atomic::write(path, content.as_bytes(), crate::atomic::Durability::Runtime)
}

/// [`write_atomic`] relative to an open directory, for a supervisor that no longer sees the host's
/// file system (see [`drop_privileges`]).
pub fn write_atomic_at(dir: &OwnedFd, name: &str, content: &str) -> anyhow::Result<()> {
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::Mode;
    let tmp = format!(".{name}.tmp");
    let fd = openat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o644),
    )
    .with_context(|| format!("creating {tmp}"))?;
    // SAFETY: we own the descriptor just opened.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut f, content.as_bytes())
        .with_context(|| format!("writing {tmp}"))?;
    drop(f);
    renameat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        Some(dir.as_raw_fd()),
        name,
    )
    .with_context(|| format!("renaming to {name}"))
}

/// Overwrites this process's argv and environment strings in place, so that `/proc/<pid>/cmdline`
/// reads `name` and `/proc/<pid>/environ` is empty: a pod's PID 1 is a clone of `rkt run`, whose
/// command line and environment belong to the host caller. No capability needed (PR_SET_MM
/// would want CAP_SYS_RESOURCE). The process's own argv/environ read as empty strings afterwards.
pub fn scrub_cmdline(name: &str) -> anyhow::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the ")" closing comm start at field 3; arg_start..env_end are fields 48-51.
    let f: Vec<usize> = stat
        .rsplit_once(')')
        .context("bad /proc/self/stat")?
        .1
        .split_whitespace()
        .skip(45)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [arg_start, arg_end, env_start, env_end] = f[..] else {
        bail!("/proc/self/stat lacks the argument area");
    };
    if arg_start == 0 || arg_end <= arg_start {
        return Ok(());
    }
    // SAFETY: [arg_start, arg_end) and [env_start, env_end) are this process's own, writable
    // argument and environment strings (on the initial stack), which nothing else references as
    // Rust data; only their bytes change.
    unsafe {
        std::ptr::write_bytes(arg_start as *mut u8, 0, arg_end - arg_start);
        let n = name.len().min(arg_end - arg_start - 1);
        std::ptr::copy_nonoverlapping(name.as_ptr(), arg_start as *mut u8, n);
        // A non-NUL last byte makes the kernel read the area as a setproctitle(3) title, up to
        // the first NUL: `name` without the trailing padding.
        if n + 1 < arg_end - arg_start {
            *((arg_end - 1) as *mut u8) = b' ';
        }
        if env_start != 0 && env_end > env_start {
            std::ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start);
        }
    }
    Ok(())
}

/// Capabilities a running supervisor keeps: signalling apps that run as another user.
pub const SUPERVISOR_CAPS: u64 = 1 << 5; // CAP_KILL

/// Once every app runs, the supervisor only waits, forwards signals, relays a terminal and writes
/// statuses: it drops to `keep` (bounding, effective, permitted; inheritable and ambient empty),
/// turns non-dumpable (its `/proc/<pid>` entries become root-owned and ptrace-protected: an app
/// without CAP_SYS_PTRACE cannot read its environ, fds, root or memory), sets no_new_privs and
/// installs rkt's default seccomp filter.
pub fn drop_privileges(keep: u64) -> anyhow::Result<()> {
    crate::caps::limit_bounding(keep)?;
    crate::caps::set_process_caps_exact(keep, keep, 0)?;
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_DUMPABLE");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
        }
    }
    if let Some(f) = crate::seccomp::build(&crate::spec::SeccompSpec::Default, keep)? {
        crate::seccomp::install(&f)?;
    }
    Ok(())
}

/// Exit code of a wait status as a shell reports it.
pub fn exit_code(st: &WaitStatus) -> Option<i32> {
    match st {
        WaitStatus::Exited(_, c) => Some(*c),
        WaitStatus::Signaled(_, sig, _) => Some(128 + *sig as i32),
        _ => None,
    }
}

/// The pty master the supervisor relays to its own stdin/stdout (interactive pods). `launch` sets
/// it (the master is allocated inside the app's own devpts, so it exists only once the app's
/// /dev is mounted); `supervise` picks it up after launching the apps.
#[derive(Default)]
pub struct Relay {
    master: std::cell::RefCell<Option<OwnedFd>>,
}

impl Relay {
    pub fn set_master(&self, fd: OwnedFd) {
        *self.master.borrow_mut() = Some(fd);
    }
}

/// Starts every app with `launch` (returns the app's pid as the supervisor sees it; it runs in a
/// child process) and supervises them until all exited. `on_exit(app, code)` records a code
/// (the ns flavour writes `app_status_path`); `on_started` runs once every app was launched (the
/// ns flavour writes the pod's pid file then: `rkt status --wait-ready` reads it as "ready"). Must
/// run as the reaper of the apps (PID 1 of their namespace or a subreaper).
pub fn supervise(
    spec: &PodSpec,
    sfd: &SignalFd,
    launch: &mut dyn FnMut(&AppSpec) -> anyhow::Result<Pid>,
    on_exit: &mut dyn FnMut(&str, i32),
    on_started: &mut dyn FnMut(),
    relay: Option<&Relay>,
    stop_timeout: Duration,
) -> i32 {
    supervise_with(
        spec,
        sfd,
        launch,
        on_exit,
        on_started,
        relay,
        stop_timeout,
        None,
    )
}

/// The apps a mutable pod's supervisor watches, and the stops its control channel asked for.
struct Watched {
    live: BTreeMap<i32, String>,
    stops: Vec<i32>,
}

impl crate::control::Apps for Watched {
    fn running(&self, name: &str) -> Option<i32> {
        self.live.running(name)
    }
    fn add(&mut self, name: &str, pid: i32) {
        self.live.insert(pid, name.to_string());
    }
    fn stop(&mut self, pid: i32) {
        self.stops.push(pid);
    }
}

/// [`supervise`], and with `control` a mutable pod (`rkt app`): it runs, with or without apps,
/// until it is stopped; apps come and go through the control channel, and one app's failure
/// does not stop the others. A mutable pod exits with 0.
#[allow(clippy::too_many_arguments)]
pub fn supervise_with(
    spec: &PodSpec,
    sfd: &SignalFd,
    launch: &mut dyn FnMut(&AppSpec) -> anyhow::Result<Pid>,
    on_exit: &mut dyn FnMut(&str, i32),
    on_started: &mut dyn FnMut(),
    relay: Option<&Relay>,
    stop_timeout: Duration,
    control: Option<&crate::control::Control>,
) -> i32 {
    let mutable = control.is_some();
    // Apps stopped one by one (`rkt app stop`): pid and when SIGKILL follows.
    let mut app_deadlines: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut live: BTreeMap<i32, String> = BTreeMap::new();
    let mut first_failure: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    let mut killed = false;
    for app in &spec.apps {
        match launch(app) {
            Ok(pid) => {
                live.insert(pid.as_raw(), app.name.clone());
            }
            Err(e) => {
                eprintln!("rkt: app {:?}: {e:#}", app.name);
                on_exit(&app.name, crate::EXIT_RKT_ERROR);
                first_failure.get_or_insert(crate::EXIT_RKT_ERROR);
            }
        }
    }
    let stop = |live: &BTreeMap<i32, String>, deadline: &mut Option<Instant>| {
        if deadline.is_none() {
            for pid in live.keys() {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
            }
            *deadline = Some(Instant::now() + stop_timeout);
        }
    };
    on_started();
    let relay: Option<OwnedFd> = relay.and_then(|r| r.master.borrow_mut().take());
    if first_failure.is_some() && !mutable {
        stop(&live, &mut deadline);
    }
    // SAFETY: fd 0 stays open for the whole life of the supervisor.
    let stdin_fd = unsafe { BorrowedFd::borrow_raw(0) };
    let mut stdin_open = relay.is_some();
    let mut master_open = relay.is_some();
    let mut buf = [0u8; 8192];
    if let Some(m) = &relay {
        copy_winsize(0, m.as_raw_fd());
    }
    while !live.is_empty() || (mutable && deadline.is_none()) {
        let next = match deadline {
            Some(d) if !killed => Some(d),
            _ => None,
        }
        .into_iter()
        .chain(app_deadlines.values().copied())
        .min();
        let timeout = match next {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(m) = &relay {
            if master_open {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            }
            if stdin_open {
                fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
            }
        }
        if let Some(c) = control {
            fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().map(|r| !r.is_empty()).unwrap_or(false))
            .collect();
        drop(fds);
        let mut idx = 1;
        if let Some(master) = &relay {
            let m = master.as_raw_fd();
            if master_open {
                if ready[idx] {
                    match nix::unistd::read(m, &mut buf) {
                        Ok(n) if n > 0 => write_all(1, &buf[..n]),
                        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                        _ => master_open = false,
                    }
                }
                idx += 1;
            }
            if stdin_open && ready[idx] {
                match nix::unistd::read(0, &mut buf) {
                    Ok(n) if n > 0 => write_all(m, &buf[..n]),
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                    _ => stdin_open = false,
                }
            }
        }
        if let (Some(c), Some(true)) = (control, ready.last()) {
            let mut w = Watched {
                live: std::mem::take(&mut live),
                stops: Vec::new(),
            };
            c.serve(&mut w);
            live = w.live;
            for pid in w.stops {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                app_deadlines
                    .entry(pid)
                    .or_insert_with(|| Instant::now() + stop_timeout);
            }
        }
        if ready[0] {
            while let Ok(Some(si)) = sfd.read_signal() {
                match Signal::try_from(si.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) | Ok(Signal::SIGHUP) => {
                        stop(&live, &mut deadline)
                    }
                    Ok(Signal::SIGWINCH) => {
                        if let Some(m) = &relay {
                            copy_winsize(0, m.as_raw_fd());
                        }
                    }
                    _ => {}
                }
            }
        }
        // Reap everything: apps, and orphans re-parented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => {
                    let (Some(pid), Some(code)) = (st.pid(), exit_code(&st)) else {
                        continue;
                    };
                    app_deadlines.remove(&pid.as_raw());
                    if let Some(name) = live.remove(&pid.as_raw()) {
                        on_exit(&name, code);
                        if code != 0 && first_failure.is_none() && !mutable {
                            first_failure = Some(code);
                            stop(&live, &mut deadline);
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        for (pid, _) in app_deadlines.iter().filter(|(_, d)| now >= **d) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        app_deadlines.retain(|_, d| now < *d);
        if let Some(d) = deadline {
            if !killed && Instant::now() >= d && !live.is_empty() {
                for pid in live.keys() {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                killed = true;
            }
        }
    }
    // Drain what the app printed last.
    if let Some(m) = &relay {
        let _ = nix::fcntl::fcntl(
            m.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        while let Ok(n) = nix::unistd::read(m.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            write_all(1, &buf[..n]);
        }
    }
    if mutable {
        return 0;
    }
    first_failure.unwrap_or(0)
}

fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: fd is open for the supervisor's lifetime.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::unistd::write(fd, b) {
            Ok(n) if n > 0 => b = &b[n..],
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => continue,
            _ => return,
        }
    }
}

fn copy_winsize(from: i32, to: i32) {
    // SAFETY: winsize is plain data; all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write one winsize struct.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Allocates a pty in the devpts instance mounted at `pts` (the app's own, so that `ttyname`
/// works inside the app); returns (master, slave path).
pub fn open_pty_in(pts: &Path) -> anyhow::Result<(OwnedFd, std::path::PathBuf)> {
    use std::os::fd::FromRawFd;
    let ptmx = pts.join("ptmx");
    let fd = nix::fcntl::open(
        &ptmx,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {}", ptmx.display()))?;
    // SAFETY: we own the fd just opened.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut unlock: libc::c_int = 0;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes an unsigned int.
    unsafe {
        if libc::ioctl(fd, libc::TIOCSPTLCK, &mut unlock) != 0
            || libc::ioctl(fd, libc::TIOCGPTN, &mut n) != 0
        {
            return Err(std::io::Error::last_os_error()).context("unlocking the pty");
        }
    }
    Ok((master, pts.join(n.to_string())))
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS).
pub fn send_fd(sock: &OwnedFd, fd: &OwnedFd) -> anyhow::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"f")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("passing the pty to the supervisor")?;
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`]; None if the peer closed without sending one.
pub fn recv_fd(sock: &OwnedFd) -> anyhow::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the pty")?;
    for c in msg.cmsgs().context("reading the control message")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(*fd) }));
            }
        }
    }
    Ok(None)
}

/// In an app's (or entered command's) child, once its `/dev/pts` is the app's own devpts at
/// `pts`: allocates the terminal there, hands the master to the relay over `sock` and makes the
/// slave our controlling terminal and stdio.
pub fn hand_over_pty(pts: &Path, sock: &OwnedFd) -> anyhow::Result<()> {
    let (master, slave) = open_pty_in(pts)?;
    send_fd(sock, &master)?;
    drop(master);
    attach_tty(&slave)
}

/// In the app's child: make the pty slave its controlling terminal and stdio.
pub fn attach_tty(slave: &Path) -> anyhow::Result<()> {
    nix::unistd::setsid().context("setsid")?;
    let fd = nix::fcntl::open(
        slave,
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {}", slave.display()))?;
    // SAFETY: TIOCSCTTY on a terminal fd we just opened.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSCTTY");
    }
    for t in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe { libc::dup2(fd, t) };
    }
    if fd > 2 {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}
