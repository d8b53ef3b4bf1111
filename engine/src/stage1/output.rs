//! App output of the host-process flavours (ns, fly): each app's stdout and stderr are pipes to
//! `rkt run`, which copies what arrives to its own stdout and stderr, as the app's output always
//! went, and into the pod's logs (`crate::pod::logs`). The copy is a thread of `rkt run`, not
//! the pod's supervisor: a reader that stops reading `rkt run`'s stdout then holds up only the
//! apps that write, as before, never the supervisor's stop handling.
//!
//! Interactive pods are not captured: the app's terminal is relayed by the supervisor.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
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
    /// output is then the end of its pipe) and starts copying `apps` output.
    pub fn relay(self, pod_dir: &Path, apps: &[&str]) -> Result<OutputRelay> {
        self.close_write();
        let fds = self.read.into_inner();
        let (stop_r, stop_w) = pipe()?;
        let logs = PodLogs::open(pod_dir, apps);
        let handle = std::thread::Builder::new()
            .name("app-output".into())
            .spawn(move || relay_loop(fds, logs, stop_r))
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

fn relay_loop(fds: Vec<(OwnedFd, OwnedFd)>, mut logs: PodLogs, stop: OwnedFd) {
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
    while !open.is_empty() {
        let mut pfds: Vec<PollFd> = open
            .iter()
            .map(|(_, _, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        if !draining {
            pfds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
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
        if !draining && ready[open.len()] {
            draining = true;
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
            open.remove(k);
        }
    }
    for (app, stream, _) in &open {
        logs.finish(*app, *stream);
    }
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
        Ok(HostIo {
            pipes,
            started_r: RefCell::new(r),
            started_w: RefCell::new(w),
            sockets: RefCell::new(Some(sockets)),
        })
    }

    /// In the supervisor, first: it keeps only the write ends.
    pub fn supervisor_side(&self) {
        if let Some(p) = &self.pipes {
            p.close_read();
        }
        self.started_r.borrow_mut().take();
        self.sockets.borrow_mut().take();
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
        self.pipes.map(|p| p.relay(pod_dir, &names)).transpose()
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
