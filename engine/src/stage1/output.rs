//! App output of the host-process flavours (ns, fly): each app's stdout and stderr are pipes to
//! `rkt run`, which copies what arrives to its own stdout and stderr, as the app's output always
//! went, and into the pod's logs (`crate::pod::logs`). The copy is a thread of `rkt run`, not
//! the pod's supervisor: a reader that stops reading `rkt run`'s stdout then holds up only the
//! apps that write, as before, never the supervisor's stop handling.
//!
//! Interactive pods are not captured: the app's terminal is relayed by the supervisor.
//!
//! A mutable pod's `rkt run` (`rkt app sandbox`) also takes the output of the apps added while it
//! runs: it listens on [`OUTPUT_SOCKET`] in the pod directory, where `rkt app start` passes it
//! the read ends of the new app's two pipes ([`hand_over`]), so an added app's output goes
//! where a boot-time app's goes: the sandbox's stdout/stderr and the pod's logs.

use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::pod::logs::{PodLogs, Stream};

/// Per app, the two pipes of its stdout and stderr (close-on-exec; the app gets them as 1 and 2).
/// Made before the supervisor exists; the supervisor and the app children use the write ends,
/// `rkt run` the read ends ([`AppPipes::relay`]).
pub struct AppPipes {
    read: RefCell<Vec<(OwnedFd, OwnedFd)>>,
    write: RefCell<Vec<(OwnedFd, OwnedFd)>>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")
}

impl AppPipes {
    pub fn new(apps: usize) -> Result<AppPipes> {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for _ in 0..apps {
            let (or, ow) = pipe()?;
            let (er, ew) = pipe()?;
            read.push((or, er));
            write.push((ow, ew));
        }
        Ok(AppPipes {
            read: RefCell::new(read),
            write: RefCell::new(write),
        })
    }

    /// In the supervisor: it reads none of them.
    pub fn close_read(&self) {
        self.read.borrow_mut().clear();
    }

    /// In app `i`'s child, before anything else: its stdout and stderr are the pipes.
    pub fn attach(&self, i: usize) -> Result<()> {
        if let Some((o, e)) = self.write.borrow().get(i) {
            for (fd, to) in [(o, 1), (e, 2)] {
                // SAFETY: dup2 onto a standard descriptor; the source is open.
                if unsafe { libc::dup2(fd.as_raw_fd(), to) } < 0 {
                    return Err(std::io::Error::last_os_error()).context("dup2");
                }
            }
        }
        Ok(())
    }

    /// In the supervisor, once every app was launched: the apps hold their own copies.
    pub fn close_write(&self) {
        self.write.borrow_mut().clear();
    }

    /// In `rkt run`, once the supervisor exists: drops the write ends (the end of an app's
    /// output is then the end of its pipe) and starts copying `apps` output, and that of the
    /// apps handed over on `adds` (a mutable pod's [`OUTPUT_SOCKET`]).
    pub fn relay(
        self,
        pod_dir: &Path,
        apps: &[&str],
        adds: Option<UnixListener>,
    ) -> Result<OutputRelay> {
        self.close_write();
        let fds = self.read.into_inner();
        let (stop_r, stop_w) = pipe()?;
        let logs = PodLogs::open(pod_dir, apps);
        let adds = adds.map(Adds::start).transpose()?;
        let pod_dir = pod_dir.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("app-output".into())
            .spawn(move || relay_loop(fds, logs, stop_r, adds, &pod_dir))
            .context("starting the output relay")?;
        Ok(OutputRelay {
            stop: Some(stop_w),
            handle: Some(handle),
        })
    }
}

/// The running copy; [`OutputRelay::finish`] once the supervisor has exited.
pub struct OutputRelay {
    stop: Option<OwnedFd>,
    handle: Option<JoinHandle<()>>,
}

impl OutputRelay {
    /// Copies what is left in the pipes, then ends the relay. An app's own child may still hold
    /// a pipe (fly has no PID namespace that ends with the pod): what it writes later is lost.
    pub fn finish(mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for OutputRelay {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn relay_loop(
    fds: Vec<(OwnedFd, OwnedFd)>,
    mut logs: PodLogs,
    stop: OwnedFd,
    mut adds: Option<Adds>,
    pod_dir: &Path,
) {
    let mut open: Vec<(usize, Stream, OwnedFd)> = Vec::new();
    for (i, (o, e)) in fds.into_iter().enumerate() {
        open.push((i, Stream::Stdout, o));
        open.push((i, Stream::Stderr, e));
    }
    let mut pass = [true, true];
    let mut draining = false;
    // A writer that never stops (a daemon the app left behind on fly) does not hold `rkt run`.
    let mut drain_deadline = None;
    let mut buf = vec![0u8; 64 << 10];
    // A mutable pod relays until it is stopped, with or without apps.
    while !open.is_empty() || (adds.is_some() && !draining) {
        let mut pfds: Vec<PollFd> = open
            .iter()
            .map(|(_, _, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        if !draining {
            pfds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            if let Some(a) = &adds {
                pfds.push(PollFd::new(a.wake.as_fd(), PollFlags::POLLIN));
            }
        }
        let timeout = if draining {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut pfds, timeout) {
            Ok(0) if draining => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        if !draining && adds.is_some() && ready[open.len() + 1] {
            if let Some(a) = &adds {
                for (app, out, err) in a.take() {
                    let i = logs.add(pod_dir, &app);
                    open.push((i, Stream::Stdout, out));
                    open.push((i, Stream::Stderr, err));
                }
            }
            continue;
        }
        if !draining && ready[open.len()] {
            draining = true;
            // No app is added to a pod that is stopping (the acceptor then refuses them).
            adds = None;
            drain_deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
        }
        if drain_deadline.is_some_and(|d| std::time::Instant::now() > d) {
            break;
        }
        let mut closed = Vec::new();
        for (k, (app, stream, fd)) in open.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let s = match stream {
                        Stream::Stdout => 0,
                        Stream::Stderr => 1,
                    };
                    if pass[s] && !write_all(s as i32 + 1, &buf[..n]) {
                        // Our reader went away: keep logging, stop copying there.
                        pass[s] = false;
                    }
                    logs.write(*app, *stream, &buf[..n]);
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                _ => {
                    logs.finish(*app, *stream);
                    closed.push(k);
                }
            }
        }
        for k in closed.into_iter().rev() {
            let (app, _, _) = open.remove(k);
            if !open.iter().any(|(a, _, _)| *a == app) {
                logs.close(app);
            }
        }
    }
    for (app, stream, _) in &open {
        logs.finish(*app, *stream);
    }
}

/// Where a mutable pod's `rkt run` takes the output pipes of added apps, in the pod directory.
pub const OUTPUT_SOCKET: &str = "output.sock";
/// Largest request or reply line on [`OUTPUT_SOCKET`].
const MAX_LINE: usize = 4096;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Handover {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Binds [`OUTPUT_SOCKET`] (a mutable pod's `rkt run`, before the supervisor exists): 0600 in
/// the pod directory, close-on-exec, non-blocking; only root's requests are taken.
fn bind_output_socket(pod_dir: &Path) -> Result<UnixListener> {
    let p = pod_dir.join(OUTPUT_SOCKET);
    let _ = std::fs::remove_file(&p);
    let l = UnixListener::bind(&p).with_context(|| format!("binding {}", p.display()))?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// An app handed over: its name and the read ends of its stdout and stderr pipes.
type Added = (String, OwnedFd, OwnedFd);

/// The apps handed over on [`OUTPUT_SOCKET`], taken by a thread of their own: neither a client
/// that says nothing nor a relay held up by a reader that stopped reading `rkt run`'s stdout
/// holds up the other (`rkt app start` is answered at once; the app's output waits in its pipes
/// as a boot-time app's does).
struct Adds {
    rx: std::sync::mpsc::Receiver<Added>,
    /// Readable when `rx` has apps.
    wake: OwnedFd,
}

impl Adds {
    fn start(l: UnixListener) -> Result<Adds> {
        let (wake, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        l.set_nonblocking(false)?;
        std::thread::Builder::new()
            .name("app-output-adds".into())
            .spawn(move || serve_adds(l, tx, wake_w))
            .context("starting the output socket")?;
        Ok(Adds { rx, wake })
    }

    /// The apps handed over since the last call.
    fn take(&self) -> Vec<Added> {
        let mut b = [0u8; 64];
        while matches!(nix::unistd::read(self.wake.as_raw_fd(), &mut b), Ok(1..)) {}
        self.rx.try_iter().collect()
    }
}

/// Answers every hand-over on `l`; a bad one gets its error and is dropped.
fn serve_adds(l: UnixListener, tx: std::sync::mpsc::Sender<Added>, wake: OwnedFd) {
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let reply = match take_app(&s).and_then(|a| {
            tx.send(a)
                .map_err(|_| anyhow::anyhow!("the pod is stopping"))
        }) {
            Ok(()) => {
                let _ = nix::unistd::write(&wake, b"a");
                Handover::default()
            }
            Err(e) => Handover {
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        };
        if let Ok(line) = serde_json::to_string(&reply) {
            let _ = (&s).write_all(format!("{line}\n").as_bytes());
        }
    }
}

fn take_app(s: &UnixStream) -> Result<(String, OwnedFd, OwnedFd)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    s.set_nonblocking(false)?;
    // A client that connects and says nothing holds the next hand-over this long.
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; MAX_LINE];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("reading the request")?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().context("control message")? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    // Checked after taking the descriptors, so that a refused request's are closed.
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .context("peer credentials")?;
    if cred.uid() != 0 {
        bail!("permission denied: only root may add an app's output");
    }
    let req: Handover = serde_json::from_slice(buf[..n].trim_ascii()).context("bad request")?;
    if !rkt_stage2::control::valid_app_name(&req.app) {
        bail!("invalid app name {:?}", req.app);
    }
    let (Some(err), Some(out), None) = (fds.pop(), fds.pop(), fds.pop()) else {
        bail!("expected the app's stdout and stderr");
    };
    for fd in [&out, &err] {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            bail!("expected pipes");
        }
    }
    Ok((req.app, out, err))
}

/// `rkt app start` on ns: makes app `app`'s stdout and stderr pipes and hands their read ends to
/// the pod's `rkt run`, which copies them to its output and into the pod's logs. Returns the
/// write ends for the app; None if the pod has no [`OUTPUT_SOCKET`].
pub fn hand_over(pod_dir: &Path, app: &str) -> Result<Option<[OwnedFd; 2]>> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let p: PathBuf = pod_dir.join(OUTPUT_SOCKET);
    if !p.exists() {
        return Ok(None);
    }
    let s = UnixStream::connect(&p)
        .with_context(|| format!("connecting to the pod's rkt run ({})", p.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let body = format!(
        "{}\n",
        serde_json::to_string(&Handover {
            app: app.into(),
            error: None
        })?
    );
    let raw = [out_r.as_raw_fd(), err_r.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(body.as_bytes())],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .context("passing the app's output to the pod's rkt run")?;
    drop((out_r, err_r));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(std::io::Read::take(&s, MAX_LINE as u64)),
        &mut line,
    )
    .context("reading the reply of the pod's rkt run")?;
    let r: Handover = serde_json::from_str(line.trim())
        .with_context(|| format!("bad reply from the pod's rkt run: {:?}", line.trim()))?;
    if let Some(e) = r.error {
        bail!("{e}");
    }
    Ok(Some([out_w, err_w]))
}

/// What `rkt run` shares with a host-process pod (ns, fly) while it runs: the apps' output pipes
/// (none for an interactive pod), and for systemd ([`super::notify`]) the "every app started"
/// pipe and the apps' own notify sockets. Each side closes the other's ends: the supervisor with
/// [`HostIo::supervisor_side`], `rkt run` in [`HostIo::start`].
pub struct HostIo {
    pipes: Option<AppPipes>,
    started_r: RefCell<Option<OwnedFd>>,
    started_w: RefCell<Option<OwnedFd>>,
    sockets: RefCell<Option<super::notify::AppSockets>>,
    /// A mutable pod's [`OUTPUT_SOCKET`].
    adds: RefCell<Option<UnixListener>>,
}

impl HostIo {
    /// Before the supervisor exists; adds the apps' notify sockets to `spec`.
    pub fn new(pod_dir: &Path, spec: &mut rkt_stage2::PodSpec) -> Result<HostIo> {
        let pipes = if spec.interactive {
            None
        } else {
            Some(AppPipes::new(spec.apps.len())?)
        };
        let (r, w) = if super::notify::enabled() {
            let s = super::notify::Started::new()?;
            (Some(s.r), Some(s.w))
        } else {
            (None, None)
        };
        let sockets = super::notify::AppSockets::bind(pod_dir, spec)?;
        let adds = match pipes.is_some() && crate::pod::app::is_mutable(pod_dir) {
            true => Some(bind_output_socket(pod_dir)?),
            false => None,
        };
        Ok(HostIo {
            pipes,
            started_r: RefCell::new(r),
            started_w: RefCell::new(w),
            sockets: RefCell::new(Some(sockets)),
            adds: RefCell::new(adds),
        })
    }

    /// In the supervisor, first: it keeps only the write ends.
    pub fn supervisor_side(&self) {
        if let Some(p) = &self.pipes {
            p.close_read();
        }
        self.started_r.borrow_mut().take();
        self.sockets.borrow_mut().take();
        self.adds.borrow_mut().take();
    }

    /// In app `i`'s child.
    pub fn attach(&self, i: usize) -> Result<()> {
        match &self.pipes {
            Some(p) => p.attach(i),
            None => Ok(()),
        }
    }

    /// In the supervisor once every app was launched: the apps hold their own ends now.
    pub fn all_launched(&self) {
        if let Some(p) = &self.pipes {
            p.close_write();
        }
        if let Some(w) = self.started_w.borrow_mut().take() {
            super::notify::Started::signal(w);
        }
    }

    /// In `rkt run` once the supervisor exists: the output relay and the systemd watcher.
    pub fn start(self, pod_dir: &Path, spec: &rkt_stage2::PodSpec) -> Result<Option<OutputRelay>> {
        self.started_w.borrow_mut().take();
        if let (Some(r), Some(s)) = (self.started_r.take(), self.sockets.take()) {
            super::notify::watch(r, s);
        }
        let names: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
        let adds = self.adds.take();
        self.pipes
            .map(|p| p.relay(pod_dir, &names, adds))
            .transpose()
    }
}

fn write_all(fd: i32, mut b: &[u8]) -> bool {
    // SAFETY: our standard descriptors stay open for the life of `rkt run`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) if n > 0 => b = &b[n..],
            Err(nix::errno::Errno::EINTR) => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// What `adds` took within a few seconds, until `n` apps.
    fn take(adds: &Adds, n: usize) -> Vec<Added> {
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < n && start.elapsed() < Duration::from_secs(5) {
            got.extend(adds.take());
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// A raw request with `fds`; returns the reply line.
    fn raw(dir: &Path, body: &str, fds: &[i32]) -> String {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let s = UnixStream::connect(dir.join(OUTPUT_SOCKET)).unwrap();
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            s.as_raw_fd(),
            &[std::io::IoSlice::new(body.as_bytes())],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
        line
    }

    #[test]
    fn added_apps_output_is_handed_over_and_hostile_requests_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(hand_over(d.path(), "web").unwrap().is_none(), "no socket");
        let l = bind_output_socket(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(OUTPUT_SOCKET)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let dir = d.path().to_path_buf();
        let adds = Adds::start(l).unwrap();
        // Answered at once, whether or not the relay looks.
        let [o, e] = hand_over(d.path(), "web").unwrap().unwrap();
        let got = take(&adds, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "web");
        nix::unistd::write(&o, b"out\n").unwrap();
        nix::unistd::write(&e, b"err\n").unwrap();
        let mut b = [0u8; 8];
        let n = nix::unistd::read(got[0].1.as_raw_fd(), &mut b).unwrap();
        assert_eq!(&b[..n], b"out\n");
        let n = nix::unistd::read(got[0].2.as_raw_fd(), &mut b).unwrap();
        assert_eq!(&b[..n], b"err\n");

        // Hostile requests: bad names, no or wrong descriptors, garbage.
        let (pr, pw) = pipe().unwrap();
        let (pr2, _pw2) = pipe().unwrap();
        let pipes = [pr.as_raw_fd(), pr2.as_raw_fd()];
        let null = std::fs::File::open("/dev/null").unwrap();
        let nulls = [null.as_raw_fd(), null.as_raw_fd()];
        for (body, fds, want) in [
            (r#"{"app":"../x"}"#, &pipes[..], "invalid app name"),
            (r#"{"app":""}"#, &pipes[..], "invalid app name"),
            (r#"{"app":"web"}"#, &[][..], "expected the app's stdout"),
            (r#"{"app":"web"}"#, &pipes[..1], "expected the app's stdout"),
            (r#"{"app":"web"}"#, &nulls[..], "expected pipes"),
            ("garbage", &pipes[..], "bad request"),
        ] {
            let r = raw(&dir, &format!("{body}\n"), fds);
            assert!(r.contains(want), "{body}: {r}");
        }
        // A refused request's descriptors are closed: the relay holds no read end of ours.
        drop(pr);
        drop(pr2);
        assert_eq!(
            nix::unistd::write(&pw, b"x"),
            Err(nix::errno::Errno::EPIPE),
            "a read end was kept"
        );
        // Not root: refused by credentials even when the socket is open to everyone.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            dir.join(OUTPUT_SOCKET),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        // SAFETY: the child only switches users, makes one request and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = nix::unistd::setgid(65534.into()).is_ok()
                    && nix::unistd::setuid(65534.into()).is_ok()
                    && hand_over(&dir, "web")
                        .is_err_and(|e| format!("{e:#}").contains("permission denied"));
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        // None of them was taken; a good one still is.
        let [_o, _e] = hand_over(&dir, "late").unwrap().unwrap();
        let got = take(&adds, 2);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "late");
        // A stopping pod's relay has gone: the hand-over is refused, not silently lost.
        drop(adds);
        let e = hand_over(&dir, "later").unwrap_err();
        assert!(format!("{e:#}").contains("the pod is stopping"), "{e:#}");
    }
}
