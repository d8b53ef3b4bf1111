//! guest-init: PID 1 of the stage1 kvm VM. Mounts the basics and the virtio-fs pod share, reads
//! the guest pod spec, starts every app with stage2's set-up code (the same code the ns flavour
//! runs), relays the apps' stdio and exit codes to the host over vsock, serves `rkt enter`
//! sessions, and resets the VM when the pod is done. See docs/kvm.md.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use nix::unistd::{fork, ForkResult, Pid};
use rkt_guest_init::proto::{self, Msg, Stream};
use rkt_stage2::cgroup::{self, Layout};
use rkt_stage2::spec::{AppSpec, PodSpec};
use rkt_stage2::{app, supervisor};

/// Exit code of an app whose set-up failed before exec (rkt's own-error code).
const SETUP_FAILED: i32 = 254;

fn log(msg: &str) {
    // PID 1's stderr is the serial console: slow, so only for errors and --debug.
    let _ = writeln!(std::io::stderr(), "guest-init: {msg}");
}

/// The crash signal behind a 128+N exit code, if it is one.
fn crash_signal(code: i32) -> Option<&'static str> {
    match code - 128 {
        libc::SIGSEGV => Some("SIGSEGV"),
        libc::SIGILL => Some("SIGILL"),
        libc::SIGBUS => Some("SIGBUS"),
        libc::SIGFPE => Some("SIGFPE"),
        libc::SIGABRT => Some("SIGABRT"),
        libc::SIGSYS => Some("SIGSYS"),
        _ => None,
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("guest-init: must run as PID 1 inside the stage1 kvm VM");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        log(&format!("{e:#}"));
    }
    power_off();
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers. The kernel runs with reboot=k, so RB_AUTOBOOT
    // resets through the i8042, which the VMM treats as the end of the VM.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Where the guest control connection goes: the host over vsock, or (no vsock device: testing
/// under qemu) the serial console in a human-readable form.
#[derive(Clone)]
struct Control {
    sock: Option<Arc<Mutex<File>>>,
    names: Arc<Vec<String>>,
}

impl Control {
    fn send(&self, m: &Msg) {
        match &self.sock {
            Some(s) => {
                let mut f = s.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = proto::write_msg(&mut *f, m) {
                    log(&format!("writing to the host: {e}"));
                }
            }
            None => match m {
                Msg::Data { stream, data, .. } => {
                    let _ = if *stream == Stream::Stderr {
                        std::io::stderr().write_all(data)
                    } else {
                        std::io::stdout().write_all(data)
                    };
                }
                Msg::AppExited { app, code } => {
                    let name = self
                        .names
                        .get(*app as usize)
                        .map(String::as_str)
                        .unwrap_or("?");
                    println!("rkt-guest: app {name} exited {code}");
                }
                Msg::PodDone { code } => println!("rkt-guest: pod done {code}"),
                Msg::Error { message } => println!("rkt-guest: error {message}"),
                _ => {}
            },
        }
    }
}

fn run() -> anyhow::Result<()> {
    leave_initramfs_root().context("moving off the initramfs root")?;
    mount_basics()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == proto::HANDOVER_ARG) {
        wait_for_pod().context("waiting for the pod")?;
    }
    let spec_path = Path::new(proto::SHARE_MOUNT).join(proto::GUEST_SPEC_FILE);
    if !spec_path.exists() {
        mkdir(Path::new(proto::SHARE_MOUNT))?;
        mount(
            Some(proto::SHARE_TAG),
            proto::SHARE_MOUNT,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting the virtio-fs pod share")?;
    }
    let text =
        std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    let pod: PodSpec = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", spec_path.display()))?;
    let ctl = Control {
        sock: connect_host(pod.debug).map(|f| Arc::new(Mutex::new(f))),
        names: Arc::new(pod.apps.iter().map(|a| a.name.clone()).collect()),
    };
    match supervise_pod(&pod, &ctl) {
        Ok(()) => Ok(()),
        Err(e) => {
            ctl.send(&Msg::Error {
                message: format!("{e:#}"),
            });
            finish(&ctl, None);
            Err(e)
        }
    }
}

/// The template point: nothing pod-specific has happened yet (no share mounted, no hostname,
/// no host connection, no randomness drawn that outlives this). Listen on `POD_PORT`, say so on
/// the console (the VMM may pause and snapshot the VM right here), and wait for the host's
/// `Handover`; then set the wall clock and reseed the CRNG with the host's entropy, so each
/// copy restored from a template has its own clock, random numbers and boot_id.
fn wait_for_pod() -> anyhow::Result<()> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("vsock socket")?;
    socket::bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, proto::POD_PORT),
    )
    .context("bind")?;
    socket::listen(&fd, socket::Backlog::new(1).unwrap()).context("listen")?;
    let _ = writeln!(std::io::stderr(), "{}", proto::WAITING_MARKER);
    loop {
        let c = match socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(c) => c,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("accept: {e}"),
        };
        // SAFETY: accept4 returned a new fd we own.
        let mut conn = unsafe { File::from_raw_fd(c) };
        let mut b = [0u8; proto::Handover::LEN];
        // After a restore the VMM resets the vsock transport, which also resets a connection
        // accepted before the guest saw the reset: then the host tries again.
        let Some(h) = conn
            .read_exact(&mut b)
            .ok()
            .and_then(|()| proto::Handover::decode(&b))
        else {
            continue;
        };
        apply_handover(&h)?;
        let _ = conn.write_all(&[proto::Handover::ACK]);
        return Ok(());
    }
}

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` from <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

fn apply_handover(h: &proto::Handover) -> anyhow::Result<()> {
    let ts = libc::timespec {
        tv_sec: (h.realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (h.realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the wall clock");
    }
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 32],
    }
    let info = RandPoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: h.entropy,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .context("opening /dev/urandom")?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of buf_size bytes; RNDRESEEDCRNG takes none.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, &info) != 0 {
            return Err(std::io::Error::last_os_error()).context("RNDADDENTROPY");
        }
        if libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) != 0 {
            return Err(std::io::Error::last_os_error()).context("RNDRESEEDCRNG");
        }
    }
    Ok(())
}

/// pivot_root(2) refuses to move the initramfs (the namespace's root mount), and stage2 pivots
/// every app. So first mount an empty tmpfs over `/` and chroot into it, like switch_root does
/// (nothing from the initramfs is needed once we run); the apps' mount namespaces then have a root mount that can be pivoted.
fn leave_initramfs_root() -> anyhow::Result<()> {
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

fn mkdir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

/// (source, target, fs type, flags, data, required)
type MountRow = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    Option<&'static str>,
    bool,
);

fn mount_basics() -> anyhow::Result<()> {
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

fn connect_host(debug: bool) -> Option<File> {
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

fn set_hostname_and_lo(pod: &PodSpec) -> anyhow::Result<()> {
    nix::unistd::sethostname(&pod.hostname).context("sethostname")?;
    let s = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for lo")?;
    // SAFETY: ifreq is plain data; SIOC[GS]IFFLAGS read/write one ifreq.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading lo flags");
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(std::io::Error::last_os_error()).context("bringing lo up");
        }
    }
    Ok(())
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")
}

/// Copies one app stream to the host until EOF, then reports the end on `done`.
fn relay(fd: OwnedFd, chan: u32, stream: Stream, ctl: Control, done: mpsc::Sender<()>) {
    let mut f = File::from(fd);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ctl.send(&Msg::Data {
                chan,
                stream,
                data: buf[..n].to_vec(),
            }),
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
struct Inputs {
    apps: HashMap<u32, Input>,
    /// The last terminal size the host sent per channel: it may arrive before the app started.
    sizes: HashMap<u32, (u16, u16)>,
    /// Input that arrived before its app started (typed ahead while the VM booted), bounded by
    /// [`EARLY_INPUT_MAX`]; `true` once the host's input ended.
    early: HashMap<u32, (Vec<u8>, bool)>,
}

const EARLY_INPUT_MAX: usize = 1 << 20;

struct Input {
    tx: mpsc::Sender<Vec<u8>>,
    /// The app's pty master, to apply window sizes to.
    master: Option<OwnedFd>,
}

type SharedInputs = Arc<Mutex<Inputs>>;

fn set_winsize(fd: &OwnedFd, (rows, cols): (u16, u16)) {
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
    fn register(&mut self, chan: u32, mut sink: File, master: Option<OwnedFd>) {
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
    fn handle(&mut self, m: &Msg) {
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

fn supervise_pod(pod: &PodSpec, ctl: &Control) -> anyhow::Result<()> {
    set_hostname_and_lo(pod)?;
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
    let code = supervisor::supervise(
        pod,
        &sfd,
        &mut launch,
        &mut on_exit,
        // The host writes the pod's pid file when every AppStarted arrived.
        &mut || {},
        None,
        supervisor::STOP_TIMEOUT,
    );
    finish(ctl, Some((code, closed_rx)));
    Ok(())
}

/// Waits until `child` exec'd or exited: `exec_r`'s write end is close-on-exec and only the child
/// holds it, so end-of-file means either. An enter session forked meanwhile may hold a copy of
/// the write end too, hence the look at the child itself (without reaping it: the supervisor
/// does that).
fn wait_exec(exec_r: &OwnedFd, child: Pid) {
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
fn finish(ctl: &Control, done: Option<(i32, mpsc::Receiver<()>)>) {
    let code = done.as_ref().map(|(c, _)| *c).unwrap_or(SETUP_FAILED);
    ctl.send(&Msg::PodDone { code });
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
fn control_reader(mut sock: File, inputs: SharedInputs, closed: mpsc::Sender<()>) {
    loop {
        match proto::read_msg(&mut sock) {
            Ok(Some(Msg::Stop { .. })) => {
                let _ = kill(Pid::from_raw(1), Signal::SIGTERM);
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
struct AppIo<'a> {
    /// Host input (interactive without a terminal); /dev/null otherwise.
    stdin: Option<&'a OwnedFd>,
    out: &'a OwnedFd,
    err: &'a OwnedFd,
    /// Interactive with a terminal: where to send the pty master. Until the pty is attached,
    /// set-up errors still go to `err`.
    tty: Option<OwnedFd>,
}

/// In the app's child process: stdio, own mount namespace, cgroup, then stage2 sets up the root
/// and execs the app. Returns only on failure.
fn app_child(pod: &PodSpec, a: &AppSpec, io: AppIo, layout: Option<&Layout>) -> anyhow::Error {
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
    let root = PathBuf::from("/run/rkt/apps").join(&a.name);
    let tty = io.tty;
    // As on ns: the terminal comes from the app's own devpts, so `tty` names it inside the app.
    app::setup_and_exec_with(a, pod, &root, layout, &mut |root| {
        if let Some(sock) = &tty {
            supervisor::hand_over_pty(&root.join("dev/pts"), sock)?;
        }
        Ok(())
    })
}

fn enter_listener(
    pod: &Arc<PodSpec>,
    pids: &Arc<Mutex<HashMap<String, i32>>>,
    layout: Option<&Layout>,
) -> anyhow::Result<()> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("vsock socket")?;
    socket::bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, proto::ENTER_PORT),
    )
    .context("bind")?;
    socket::listen(&fd, socket::Backlog::new(8).unwrap()).context("listen")?;
    loop {
        let c = match socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(c) => c,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("accept: {e}"),
        };
        // SAFETY: accept4 returned a new fd we own.
        let conn = unsafe { File::from_raw_fd(c) };
        // A session is its own process: it is the parent of the command and so can wait for its
        // exit code, while PID 1's supervisor merely reaps the session process.
        let snapshot = pids.lock().unwrap().clone();
        // SAFETY: the child runs the session to completion and _exits.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = match enter_session(conn, pod, &snapshot, layout) {
                    Ok(()) => 0,
                    Err(e) => {
                        log(&format!("enter session: {e:#}"));
                        1
                    }
                };
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { .. }) => drop(conn),
            Err(e) => log(&format!("fork for enter: {e}")),
        }
    }
}

fn enter_session(
    mut conn: File,
    pod: &PodSpec,
    pids: &HashMap<String, i32>,
    layout: Option<&Layout>,
) -> anyhow::Result<()> {
    proto::handshake(&mut conn)?;
    let (name, cmd, env, tty) = match proto::read_msg(&mut conn)? {
        Some(Msg::Enter { app, cmd, env, tty }) => (app, cmd, env, tty),
        other => bail!("expected Enter, got {other:?}"),
    };
    let refuse = |conn: &mut File, m: String| -> anyhow::Result<()> {
        proto::write_msg(conn, &Msg::Error { message: m.clone() })?;
        bail!(m)
    };
    let Some(a) = pod.apps.iter().find(|a| a.name == name) else {
        return refuse(&mut conn, format!("no app {name:?} in the pod"));
    };
    let Some(&pid) = pids.get(&name) else {
        return refuse(&mut conn, format!("app {name:?} is not running"));
    };
    if cmd.is_empty() {
        return refuse(&mut conn, "no command to run".into());
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pair = if tty {
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
    // SAFETY: the child sets itself up and execs (or _exits).
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            supervisor::reset_signals_in_child();
            let io = AppIo {
                stdin: Some(&in_r),
                out: &out_w,
                err: &err_w,
                tty: pair.map(|(_, theirs)| theirs),
            };
            let e = enter_child(pod, a, pid, cmd, env, io, layout);
            let _ = writeln!(std::io::stderr(), "rkt: enter: {e:#}");
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((in_r, out_w, err_w));
    // With a terminal, input goes to the pty master and its output comes back as stdout; the
    // pipes carry only what the child says before its terminal is attached.
    let master = match pair {
        Some((ours, theirs)) => {
            drop(theirs);
            supervisor::recv_fd(&ours)?
        }
        None => None,
    };
    relay_session(&mut conn, child, in_w, out_r, err_r, master)
}

fn enter_child(
    pod: &PodSpec,
    a: &AppSpec,
    pid: i32,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    io: AppIo,
    layout: Option<&Layout>,
) -> anyhow::Error {
    let r = (|| -> anyhow::Result<()> {
        // attach_tty makes its own session.
        if io.tty.is_none() {
            nix::unistd::setsid().context("setsid")?;
        }
        let stdin = io.stdin.context("enter needs a stdin")?;
        for (i, fd) in [stdin, io.out, io.err].iter().enumerate() {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(fd.as_raw_fd(), i as i32) };
        }
        if let Some(l) = layout {
            cgroup::join(l, &cgroup::app_path(&pod.uuid, &a.name), 0)?;
        }
        let ns = File::open(format!("/proc/{pid}/ns/mnt"))
            .context("opening the app's mount namespace")?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).context("setns")?;
        // setns moved us to the app's root: its /dev/pts is the app's own devpts.
        if let Some(sock) = &io.tty {
            supervisor::hand_over_pty(Path::new("/dev/pts"), sock)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    // As the app runs (`runc exec`): its user, groups, capabilities, seccomp filter,
    // no_new_privs, working directory and environment (plus the caller's additions); shared
    // with stage1 ns. We are in the app's mount namespace, so "/" is the app's root.
    let entered = app::entered_app(a, Path::new("/"), &cmd, env);
    match app::exec_as_app(&entered, pod, Path::new("/")) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Relays an enter session: host stdin to the command, its stdout/stderr to the host, then its
/// exit status. Single-threaded (we are a freshly forked process).
fn relay_session(
    conn: &mut File,
    child: Pid,
    in_w: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    master: Option<OwnedFd>,
) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let mut outs: Vec<(Option<File>, Stream)> = vec![
        (Some(File::from(out_r)), Stream::Stdout),
        (Some(File::from(err_r)), Stream::Stderr),
    ];
    let mut stdin = Some(File::from(in_w));
    let mut size_fd = None;
    if let Some(m) = master {
        stdin = Some(File::from(m.try_clone()?));
        size_fd = Some(m.try_clone()?);
        outs.push((Some(File::from(m)), Stream::Stdout));
    }
    let mut conn_open = true;
    let mut status = None;
    let mut after_exit = 0;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if status.is_none() {
            if let Ok(st) = waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                status = supervisor::exit_code(&st);
            }
        }
        let outs_open = outs.iter().any(|(f, _)| f.is_some());
        // After the exit, give output a short while (a background child may hold the pipes).
        if status.is_some() && (!outs_open || after_exit >= 10) {
            break;
        }
        if status.is_some() {
            after_exit += 1;
        }
        let conn_dup = conn.try_clone()?;
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which = Vec::new();
        for (i, (f, _)) in outs.iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(std::os::fd::AsFd::as_fd(f), PollFlags::POLLIN));
                which.push(i as i32);
            }
        }
        if conn_open {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(&conn_dup),
                PollFlags::POLLIN,
            ));
            which.push(-1);
        }
        let _ = poll(&mut fds, PollTimeout::from(100u8));
        let ready: Vec<(i32, bool)> = fds
            .iter()
            .zip(&which)
            .map(|(f, w)| (*w, f.revents().map(|r| !r.is_empty()).unwrap_or(false)))
            .collect();
        drop(fds);
        for (w, r) in ready {
            if !r {
                continue;
            }
            if w < 0 {
                match proto::read_msg(conn) {
                    Ok(Some(Msg::Data {
                        stream: Stream::Stdin,
                        data,
                        ..
                    })) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&data).is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Ok(Some(Msg::Eof {
                        stream: Stream::Stdin,
                        ..
                    })) => stdin = None,
                    Ok(Some(Msg::Stop { .. })) => {
                        let _ = kill(child, Signal::SIGTERM);
                    }
                    Ok(Some(Msg::Resize { rows, cols, .. })) => {
                        if let Some(m) = &size_fd {
                            set_winsize(m, (rows, cols));
                        }
                    }
                    Ok(Some(_)) => {}
                    // The host went away: nobody reads the output any more.
                    Ok(None) | Err(_) => {
                        conn_open = false;
                        stdin = None;
                        let _ = kill(child, Signal::SIGKILL);
                    }
                }
            } else {
                let (f, stream) = &mut outs[w as usize];
                let n = f.as_mut().map(|f| f.read(&mut buf)).unwrap_or(Ok(0));
                match n {
                    Ok(n) if n > 0 => {
                        if conn_open {
                            proto::write_msg(
                                conn,
                                &Msg::Data {
                                    chan: 0,
                                    stream: *stream,
                                    data: buf[..n].to_vec(),
                                },
                            )?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => {
                        *f = None;
                        if conn_open {
                            proto::write_msg(
                                conn,
                                &Msg::Eof {
                                    chan: 0,
                                    stream: *stream,
                                },
                            )?;
                        }
                    }
                }
            }
        }
    }
    let code = status.unwrap_or(SETUP_FAILED);
    if conn_open {
        proto::write_msg(conn, &Msg::Exited { code })?;
    }
    Ok(())
}

#[cfg(test)]
// The children are reaped by relay_session's waitpid, which clippy cannot see.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    /// The guest half of an enter session against a real child process and a real socket.
    #[test]
    fn enter_session_relays_stdin_output_and_exit_code() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read line; echo got:$line; echo oops >&2; exit 4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let in_w = OwnedFd::from(child.stdin.take().unwrap());
        let out_r = OwnedFd::from(child.stdout.take().unwrap());
        let err_r = OwnedFd::from(child.stderr.take().unwrap());
        let (guest, mut host) = UnixStream::pair().unwrap();
        let guest_fd = OwnedFd::from(guest);
        let t = std::thread::spawn(move || {
            let mut conn = File::from(guest_fd);
            relay_session(&mut conn, pid, in_w, out_r, err_r, None).unwrap();
        });
        proto::write_msg(
            &mut host,
            &Msg::Data {
                chan: 0,
                stream: Stream::Stdin,
                data: b"hi\n".to_vec(),
            },
        )
        .unwrap();
        proto::write_msg(
            &mut host,
            &Msg::Eof {
                chan: 0,
                stream: Stream::Stdin,
            },
        )
        .unwrap();
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(m) = proto::read_msg(&mut host).unwrap() {
            match m {
                Msg::Data {
                    stream: Stream::Stdout,
                    data,
                    ..
                } => out.extend(data),
                Msg::Data {
                    stream: Stream::Stderr,
                    data,
                    ..
                } => err.extend(data),
                Msg::Eof { .. } => {}
                Msg::Exited { code: c } => {
                    code = Some(c);
                    break;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        t.join().unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice(), code),
            (&b"got:hi\n"[..], &b"oops\n"[..], Some(4))
        );
    }

    /// With a terminal: input and output go through the pty master, window sizes apply to it.
    #[test]
    fn enter_session_with_a_tty_relays_through_the_pty() {
        use std::os::unix::process::CommandExt;
        let (master, slave) = supervisor::open_pty_in(Path::new("/dev/pts")).unwrap();
        let slave = File::options().read(true).write(true).open(slave).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "read l; test -t 0 && echo tty:$l:$(stty size); exit 3",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // The pipes carry nothing here: the command's stdio is the pty.
        let (_, in_w) = pipe().unwrap();
        let (out_r, _) = pipe().unwrap();
        let (err_r, _) = pipe().unwrap();
        let (guest, mut host) = UnixStream::pair().unwrap();
        let guest_fd = OwnedFd::from(guest);
        let t = std::thread::spawn(move || {
            let mut conn = File::from(guest_fd);
            relay_session(&mut conn, pid, in_w, out_r, err_r, Some(master)).unwrap();
        });
        for m in [
            Msg::Resize {
                chan: 0,
                rows: 33,
                cols: 77,
            },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdin,
                data: b"hi\n".to_vec(),
            },
        ] {
            proto::write_msg(&mut host, &m).unwrap();
        }
        let (mut out, mut code) = (Vec::new(), None);
        while let Some(m) = proto::read_msg(&mut host).unwrap() {
            match m {
                Msg::Data {
                    stream: Stream::Stdout,
                    data,
                    ..
                } => out.extend(data),
                Msg::Eof { .. } => {}
                Msg::Exited { code: c } => {
                    code = Some(c);
                    break;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        t.join().unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("tty:hi:33 77\r\n"), "{out:?}");
        assert_eq!(code, Some(3));
    }

    /// Input typed while the VM booted reaches the app once it starts, and its end closes the
    /// app's stdin; a second app's input is not mixed in.
    #[test]
    fn early_input_is_kept_until_the_app_starts() {
        let mut inputs = Inputs::default();
        for m in [
            Msg::Data {
                chan: 0,
                stream: Stream::Stdin,
                data: b"typed ".to_vec(),
            },
            Msg::Data {
                chan: 1,
                stream: Stream::Stdin,
                data: b"other".to_vec(),
            },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdin,
                data: b"ahead".to_vec(),
            },
            Msg::Eof {
                chan: 0,
                stream: Stream::Stdin,
            },
        ] {
            inputs.handle(&m);
        }
        let (r, w) = pipe().unwrap();
        inputs.register(0, File::from(w), None);
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed ahead");
        assert!(inputs.apps.is_empty(), "input already ended");
    }

    /// A host that goes away mid-session gets the command killed rather than left running.
    #[test]
    fn enter_session_kills_the_command_when_the_host_leaves() {
        let mut child = Command::new("/bin/sleep")
            .arg("1000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let in_w = OwnedFd::from(child.stdin.take().unwrap());
        let out_r = OwnedFd::from(child.stdout.take().unwrap());
        let err_r = OwnedFd::from(child.stderr.take().unwrap());
        let (guest, host) = UnixStream::pair().unwrap();
        drop(host);
        let mut conn = File::from(OwnedFd::from(guest));
        let t0 = std::time::Instant::now();
        relay_session(&mut conn, pid, in_w, out_r, err_r, None).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        // Killed and reaped by the session: the pid no longer exists.
        assert_eq!(kill(pid, None), Err(nix::errno::Errno::ESRCH));
    }
}
