//! guest-init: PID 1 of the stage1 kvm VM. Mounts the basics and the virtio-fs pod share, reads
//! the guest pod spec, starts every app with stage2's set-up code (the same code the ns flavour
//! runs), relays the apps' stdio and exit codes to the host over vsock, serves `rkt enter`
//! sessions, and resets the VM when the pod is done. See docs/kvm.md. Here: start-up, the control
//! connection and the VM-template wait point; `mounts`, `apps` and `enter` do the rest.

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

mod apps;
mod apps_dynamic;
mod enter;
mod mounts;
mod notify;
use apps::*;
use enter::*;
use mounts::*;

/// Exit code of an app whose set-up failed before exec (rkt's own-error code).
pub(crate) const SETUP_FAILED: i32 = rkt_stage2::EXIT_RKT_ERROR;

/// Wall-clock times of the steps after the template point (docs/kvm-template.md, "Where the
/// time goes"); printed on the console for a `--debug` pod once its spec is read. The clock is
/// the host's from the handover on, so the host's `--debug` times line up with these.
static TRACE: Mutex<Vec<(&str, std::time::SystemTime)>> = Mutex::new(Vec::new());
static TRACE_ON: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

/// Records step `what`: kept until we know whether the pod is `--debug`, then printed or dropped.
pub(crate) fn trace(what: &'static str) {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now();
    match TRACE_ON.load(Ordering::Relaxed) {
        0 => {}
        1 => print_trace(what, now),
        _ => TRACE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((what, now)),
    }
}

/// Prints the kept steps (`debug`) or drops them, and decides for the ones to come.
pub(crate) fn trace_decide(debug: bool) {
    use std::sync::atomic::Ordering;
    TRACE_ON.store(debug as u8, Ordering::Relaxed);
    let kept = std::mem::take(&mut *TRACE.lock().unwrap_or_else(|p| p.into_inner()));
    if debug {
        // A close-on-exec copy of the console: an app child's stderr is its pipe to the host.
        // SAFETY: F_DUPFD_CLOEXEC makes a new fd we own, or fails.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            // SAFETY: fd is a new descriptor nobody else owns.
            let _ = CONSOLE.set(unsafe { File::from_raw_fd(fd) });
        }
        for (w, t) in kept {
            print_trace(w, t);
        }
    }
}

static CONSOLE: std::sync::OnceLock<File> = std::sync::OnceLock::new();

fn print_trace(what: &str, t: std::time::SystemTime) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let line = format!(
        "guest-init: @{}.{:06} {what}\n",
        d.as_secs(),
        d.subsec_micros()
    );
    match CONSOLE.get() {
        Some(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub(crate) fn log(msg: &str) {
    // PID 1's stderr is the serial console: slow, so only for errors and --debug.
    let _ = writeln!(std::io::stderr(), "guest-init: {msg}");
}

/// The crash signal behind a 128+N exit code, if it is one.
pub(crate) fn crash_signal(code: i32) -> Option<&'static str> {
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

pub(crate) fn power_off() -> ! {
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
pub(crate) struct Control {
    pub(crate) sock: Option<Arc<Mutex<File>>>,
    pub(crate) names: Arc<Vec<String>>,
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

pub(crate) fn run() -> anyhow::Result<()> {
    leave_initramfs_root().context("moving off the initramfs root")?;
    mount_basics()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == proto::HANDOVER_ARG) {
        prepare_cgroups();
        wait_for_pod().context("waiting for the pod")?;
        trace("handover applied");
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
        trace("virtio-fs mounted");
    }
    let text =
        std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    let pod: PodSpec = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", spec_path.display()))?;
    trace("spec read");
    trace_decide(pod.debug);
    let ctl = Control {
        sock: connect_host(pod.debug).map(|f| Arc::new(Mutex::new(f))),
        names: Arc::new(pod.apps.iter().map(|a| a.name.clone()).collect()),
    };
    trace("control connected");
    // Before any app starts: their sd_notify sockets must be there to be mounted.
    match notify::start(&pod, &ctl).and_then(|()| supervise_pod(&pod, &ctl)) {
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
pub(crate) fn wait_for_pod() -> anyhow::Result<()> {
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
pub(crate) const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
pub(crate) const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

pub(crate) fn apply_handover(h: &proto::Handover) -> anyhow::Result<()> {
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
