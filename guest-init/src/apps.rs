//! Running the pod's apps: their stdio relays, host input, exit statuses and the stop request.

use crate::*;

pub(crate) fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")
}

/// Copies one app stream to the host until EOF, then reports the end on `done`.
pub(crate) fn relay(fd: OwnedFd, chan: u32, stream: Stream, ctl: Control, done: mpsc::Sender<()>) {
    let mut f = File::from(fd);
    let mut buf = vec![0u8; 32 * 1024];
    let mut first = true;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if std::mem::take(&mut first) {
                    trace("first output read");
                }
                ctl.send(&Msg::Data {
                    chan,
                    stream,
                    data: buf[..n].to_vec(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    ctl.send(&Msg::Eof { chan, stream });
    let _ = done.send(());
}

/// Host input for the apps of an interactive pod. Each app's input has its own writer thread, so
/// an app that does not read cannot block the control connection (and with it `rkt stop`).
#[derive(Default)]
pub(crate) struct Inputs {
    pub(crate) apps: HashMap<u32, Input>,
    /// The last terminal size the host sent per channel: it may arrive before the app started.
    pub(crate) sizes: HashMap<u32, (u16, u16)>,
    /// Input that arrived before its app started (typed ahead while the VM booted), bounded by
    /// [`EARLY_INPUT_MAX`]; `true` once the host's input ended.
    pub(crate) early: HashMap<u32, (Vec<u8>, bool)>,
}

pub(crate) const EARLY_INPUT_MAX: usize = 1 << 20;

pub(crate) struct Input {
    pub(crate) tx: mpsc::Sender<Vec<u8>>,
    /// The app's pty master, to apply window sizes to.
    pub(crate) master: Option<OwnedFd>,
}

pub(crate) type SharedInputs = Arc<Mutex<Inputs>>;

pub(crate) fn set_winsize(fd: &OwnedFd, (rows, cols): (u16, u16)) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

impl Inputs {
    /// Host input for `chan` goes to `sink` (the app's stdin pipe, or its pty master).
    pub(crate) fn register(&mut self, chan: u32, mut sink: File, master: Option<OwnedFd>) {
        if let (Some(m), Some(size)) = (&master, self.sizes.get(&chan)) {
            set_winsize(m, *size);
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            for d in rx {
                if sink.write_all(&d).is_err() {
                    break;
                }
            }
        });
        let (early, ended) = self.early.remove(&chan).unwrap_or_default();
        if !early.is_empty() {
            let _ = tx.send(early);
        }
        if !ended {
            self.apps.insert(chan, Input { tx, master });
        }
    }

    /// Stdin bytes, stdin's end (closes a pipe; a pty stays), or a window size.
    pub(crate) fn handle(&mut self, m: &Msg) {
        match m {
            Msg::Data {
                chan,
                stream: Stream::Stdin,
                data,
            } => {
                if let Some(i) = self.apps.get(chan) {
                    let _ = i.tx.send(data.clone());
                } else {
                    let (buf, _) = self.early.entry(*chan).or_default();
                    let room = EARLY_INPUT_MAX.saturating_sub(buf.len());
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // Removing a started app's input closes it; an app not started yet learns it later.
            Msg::Eof {
                chan,
                stream: Stream::Stdin,
            } if self.apps.remove(chan).is_none() => {
                self.early.entry(*chan).or_default().1 = true;
            }
            Msg::Resize { chan, rows, cols } => {
                self.sizes.insert(*chan, (*rows, *cols));
                if let Some(m) = self.apps.get(chan).and_then(|i| i.master.as_ref()) {
                    set_winsize(m, (*rows, *cols));
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn supervise_pod(pod: &PodSpec, ctl: &Control) -> anyhow::Result<()> {
    set_hostname_and_lo(pod)?;
    trace("hostname, lo");
    let layout = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Some(Layout::V2 {
            root: "/sys/fs/cgroup".into(),
        })
    } else {
        None
    };
    let sfd = supervisor::take_signals()?;
    let (closed_tx, closed_rx) = mpsc::channel();
    let inputs: SharedInputs = Arc::default();
    if let Some(s) = &ctl.sock {
        let reader = s
            .lock()
            .unwrap()
            .try_clone()
            .context("cloning the control socket")?;
        let inputs = inputs.clone();
        std::thread::spawn(move || control_reader(reader, inputs, closed_tx));
    }
    let pod_arc = Arc::new(pod.clone());
    let pids: Arc<Mutex<HashMap<String, i32>>> = Arc::default();
    {
        let (pod_arc, pids, layout) = (pod_arc.clone(), pids.clone(), layout.clone());
        std::thread::spawn(move || {
            if let Err(e) = enter_listener(&pod_arc, &pids, layout.as_ref()) {
                log(&format!("rkt enter is unavailable: {e:#}"));
            }
        });
    }
    // Per app: the end-of-relay channel and how many relays report on it.
    let drains: std::cell::RefCell<HashMap<String, (mpsc::Receiver<()>, usize)>> =
        Default::default();
    // Per app: the thread that reports it started once it exec'd.
    let started: std::cell::RefCell<HashMap<String, std::thread::JoinHandle<()>>> =
        Default::default();
    let index = |name: &str| pod.apps.iter().position(|a| a.name == name).unwrap_or(0) as u32;
    // Only an interactive pod (one app) reads host input; without a host there is none.
    let interactive = pod.interactive && ctl.sock.is_some();
    let mut launch = |a: &AppSpec| -> anyhow::Result<Pid> {
        let chan = index(&a.name);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdin = if interactive && !pod.tty {
            Some(pipe()?)
        } else {
            None
        };
        // With a terminal the app allocates its pty in its own devpts and hands us the master.
        let pair = if interactive && pod.tty {
            Some(
                socket::socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .context("socketpair")?,
            )
        } else {
            None
        };
        // Close-on-exec: its end-of-file tells us the app exec'd (or died setting up).
        let (exec_r, exec_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
        trace("forking an app");
        // SAFETY: the child only sets itself up and execs (or _exits).
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                supervisor::reset_signals_in_child();
                drop(exec_r);
                let io = AppIo {
                    stdin: stdin.as_ref().map(|(r, _)| r),
                    out: &out_w,
                    err: &err_w,
                    tty: pair.map(|(_, theirs)| theirs),
                };
                let e = app_child(pod, a, io, layout.as_ref());
                let _ = writeln!(std::io::stderr(), "rkt: app {:?}: {e:#}", a.name);
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(SETUP_FAILED) }
            }
            ForkResult::Parent { child } => {
                drop((out_w, err_w, exec_w));
                let (tx, rx) = mpsc::channel();
                let mut relays = 0;
                let mut start_relay = |fd: OwnedFd, stream: Stream| {
                    let (c, tx) = (ctl.clone(), tx.clone());
                    std::thread::spawn(move || relay(fd, chan, stream, c, tx));
                    relays += 1;
                };
                start_relay(out_r, Stream::Stdout);
                start_relay(err_r, Stream::Stderr);
                if let Some((stdin_r, stdin_w)) = stdin {
                    drop(stdin_r);
                    inputs
                        .lock()
                        .unwrap()
                        .register(chan, File::from(stdin_w), None);
                }
                if let Some((ours, theirs)) = pair {
                    drop(theirs);
                    // None: the app failed before its terminal existed (its error is on stderr).
                    if let Some(master) = supervisor::recv_fd(&ours)? {
                        let sink = File::from(master.try_clone()?);
                        let size = master.try_clone()?;
                        start_relay(master, Stream::Stdout);
                        inputs.lock().unwrap().register(chan, sink, Some(size));
                    }
                }
                drains.borrow_mut().insert(a.name.clone(), (rx, relays));
                // Started means enterable: the app's root is in place once it exec'd. Waited
                // for aside, so the apps set up side by side.
                let (c, pids, name) = (ctl.clone(), pids.clone(), a.name.clone());
                let t = std::thread::spawn(move || {
                    wait_exec(&exec_r, child);
                    trace("app exec'd");
                    pids.lock().unwrap().insert(name, child.as_raw());
                    c.send(&Msg::AppStarted {
                        app: chan,
                        pid: child.as_raw() as u32,
                    });
                });
                started.borrow_mut().insert(a.name.clone(), t);
                Ok(child)
            }
        }
    };
    let mut on_exit = |name: &str, code: i32| {
        trace("app exited");
        if crate::apps_dynamic::on_exit(name, code) {
            return;
        }
        // A crash signal in the console log tells a guest problem (e.g. vector state lost on a
        // context switch shows as SIGSEGV) from an app's own exit code.
        if let Some(sig) = crash_signal(code) {
            log(&format!("app {name:?} ended with {code} ({sig})"));
        }
        // Its start is reported before its exit (the child is gone: the wait ends at once).
        if let Some(t) = started.borrow_mut().remove(name) {
            let _ = t.join();
        }
        pids.lock().unwrap().remove(name);
        inputs.lock().unwrap().apps.remove(&index(name));
        // The app's last output must reach the host before its exit does; a daemon it left
        // holding the pipes must not hold the pod up, hence the bound.
        if let Some((rx, n)) = drains.borrow_mut().remove(name) {
            for _ in 0..n {
                if rx.recv_timeout(Duration::from_secs(2)).is_err() {
                    break;
                }
            }
        }
        ctl.send(&Msg::AppExited {
            app: index(name),
            code,
        });
    };
    // A pod booted without apps is a mutable one (`rkt app sandbox`): it waits for the host's.
    let mutable = match pod.apps.is_empty() && ctl.sock.is_some() {
        true => Some(crate::apps_dynamic::init(
            pod,
            layout.as_ref(),
            ctl,
            &pids,
            &inputs,
        )?),
        false => None,
    };
    let code = supervisor::supervise_with(
        pod,
        &sfd,
        &mut launch,
        &mut on_exit,
        // The host writes the pod's pid file when every AppStarted arrived.
        &mut || {},
        None,
        supervisor::STOP_TIMEOUT,
        mutable.as_ref(),
    );
    finish(ctl, Some((code, closed_rx)));
    Ok(())
}

/// Waits until `child` exec'd or exited: `exec_r`'s write end is close-on-exec and only the child
/// holds it, so end-of-file means either. An enter session forked meanwhile may hold a copy of
/// the write end too, hence the look at the child itself (without reaping it: the supervisor
/// does that).
pub(crate) fn wait_exec(exec_r: &OwnedFd, child: Pid) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(exec_r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(n) if n > 0 => return, // end-of-file: nothing is ever written
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid fills the siginfo we own; WNOWAIT leaves the child to the supervisor.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.as_raw() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set by waitid (0 while the child runs).
        if r != 0 || unsafe { info.si_pid() } != 0 {
            return;
        }
    }
}

/// Reports the pod's end and waits (bounded) until the host has read it, so the reset that follows
/// cannot lose the last frames.
pub(crate) fn finish(ctl: &Control, done: Option<(i32, mpsc::Receiver<()>)>) {
    let code = done.as_ref().map(|(c, _)| *c).unwrap_or(SETUP_FAILED);
    // The host ends the VM as soon as it reads PodDone: what the apps wrote must be out of
    // the guest's caches first (virtio-fs writes through, but shared mappings may be dirty).
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    ctl.send(&Msg::PodDone { code });
    trace("pod done sent");
    if let Some(s) = &ctl.sock {
        let f = s.lock().unwrap_or_else(|p| p.into_inner());
        let _ = socket::shutdown(f.as_raw_fd(), socket::Shutdown::Write);
    }
    if let (Some(_), Some((_, rx))) = (&ctl.sock, done) {
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}

/// Host -> guest messages on the control connection. A Stop becomes a SIGTERM to ourselves, which
/// the stage2 supervisor turns into the graceful stop (SIGKILL after its timeout).
pub(crate) fn control_reader(mut sock: File, inputs: SharedInputs, closed: mpsc::Sender<()>) {
    loop {
        match proto::read_msg(&mut sock) {
            Ok(Some(Msg::Stop { .. })) => {
                let _ = kill(Pid::from_raw(1), Signal::SIGTERM);
            }
            Ok(Some(m @ (Msg::AppStart { .. } | Msg::AppStop { .. } | Msg::AppSignal { .. }))) => {
                crate::apps_dynamic::handle(m)
            }
            Ok(Some(m)) => inputs.lock().unwrap_or_else(|p| p.into_inner()).handle(&m),
            Ok(None) => break,
            Err(e) => {
                log(&format!("control connection: {e}"));
                break;
            }
        }
    }
    let _ = closed.send(());
}

/// An app's standard streams as its child process gets them.
pub(crate) struct AppIo<'a> {
    /// Host input (interactive without a terminal); /dev/null otherwise.
    pub(crate) stdin: Option<&'a OwnedFd>,
    pub(crate) out: &'a OwnedFd,
    pub(crate) err: &'a OwnedFd,
    /// Interactive with a terminal: where to send the pty master. Until the pty is attached,
    /// set-up errors still go to `err`.
    pub(crate) tty: Option<OwnedFd>,
}

/// In the app's child process: stdio, own mount namespace, cgroup, then stage2 sets up the root
/// and execs the app. Returns only on failure.
pub(crate) fn app_child(
    pod: &PodSpec,
    a: &AppSpec,
    io: AppIo,
    layout: Option<&Layout>,
) -> anyhow::Error {
    trace("app child: forked");
    let r = (|| -> anyhow::Result<()> {
        // attach_tty makes its own session.
        if io.tty.is_none() {
            nix::unistd::setsid().context("setsid")?;
        }
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        )?;
        let stdin = io.stdin.map(|f| f.as_raw_fd()).unwrap_or(null);
        // SAFETY: dup2 onto the standard descriptors.
        unsafe {
            libc::dup2(stdin, 0);
            libc::dup2(io.out.as_raw_fd(), 1);
            libc::dup2(io.err.as_raw_fd(), 2);
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .context("unshare mount namespace")?;
        if let Some(l) = layout {
            cgroup::create_app(l, &pod.uuid, a)?;
            cgroup::join(l, &cgroup::app_path(&pod.uuid, &a.name), 0)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
                .context("unshare cgroup namespace")?;
        } else if a.memory_limit.is_some() || a.cpu_millis.is_some() || a.cpu_shares.is_some() {
            bail!("the guest kernel has no cgroup2 filesystem for --memory/--cpu");
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    trace("app child: namespaces, cgroup");
    let root = PathBuf::from("/run/rkt/apps").join(&a.name);
    let tty = io.tty;
    // As on ns: the terminal comes from the app's own devpts, so `tty` names it inside the app.
    app::setup_and_exec_with(a, pod, &root, layout, &mut |root| {
        trace("app child: root prepared");
        if let Some(sock) = &tty {
            supervisor::hand_over_pty(&root.join("dev/pts"), sock)?;
        }
        Ok(())
    })
}
