//! The control channel of a mutable pod's supervisor (`rkt app`): a Unix stream socket in the pod
//! directory, bound by stage0 before the supervisor exists and served by the supervisor between
//! reaping its apps. One request per connection, one JSON line each way.
//!
//! Apps added to a running pod are set up on the host by `rkt app start` (it has the privileges
//! and the host's file system the supervisor gave up) and handed to the supervisor, which reaps
//! them and records their exit codes like the apps it started itself. The supervisor trusts only
//! root on the host: the socket is 0600 in the pod directory (0700 data directory), apps in the
//! pod cannot reach it (not in their mount namespace), and every connection's peer credentials
//! must say uid 0.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The socket's file name in the pod directory.
pub const SOCKET: &str = "supervisor.sock";

/// Largest request or reply line.
const MAX_LINE: u64 = 4096;

pub fn socket_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join(SOCKET)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The supervisor's stdout and stderr (the pod's output, as for the apps it started),
    /// passed back as two descriptors.
    Stdio,
    /// `pid` (in the pod's PID namespace, already the supervisor's child) runs app `app`:
    /// reap it and record its exit code.
    Register { app: String, pid: i32 },
    /// Stop app `app`: SIGTERM, SIGKILL after the stop timeout.
    Stop { app: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// App names as appc's ACName allows them (lower-case alphanumerics and dashes): anything
/// else never names an app, and never reaches a path.
pub fn valid_app_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// Binds the control socket (stage0, before the supervisor exists): close-on-exec, 0600.
pub fn bind(pod_dir: &Path) -> Result<UnixListener> {
    let p = socket_path(pod_dir);
    let _ = std::fs::remove_file(&p);
    let l = UnixListener::bind(&p).with_context(|| format!("binding {}", p.display()))?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod {}", p.display()))?;
    l.set_nonblocking(true).context("control socket")?;
    Ok(l)
}

/// What the supervisor does for a request; the control channel only parses and checks.
pub trait Apps {
    /// The pid of running app `name`, if it runs.
    fn running(&self, name: &str) -> Option<i32>;
    fn add(&mut self, name: &str, pid: i32);
    fn stop(&mut self, pid: i32);
}

impl Apps for BTreeMap<i32, String> {
    fn running(&self, name: &str) -> Option<i32> {
        self.iter().find(|(_, n)| *n == name).map(|(p, _)| *p)
    }
    fn add(&mut self, name: &str, pid: i32) {
        self.insert(pid, name.to_string());
    }
    fn stop(&mut self, _pid: i32) {}
}

/// The supervisor's end.
pub struct Control {
    listener: UnixListener,
}

impl Control {
    pub fn new(listener: UnixListener) -> Control {
        Control { listener }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Serves every pending connection; a bad one is answered (if it can be) and dropped, it
    /// never stops the supervisor.
    pub fn serve(&self, apps: &mut dyn Apps) {
        while let Ok((s, _)) = self.listener.accept() {
            if let Err(e) = serve_one(&s, apps) {
                let _ = reply(
                    &s,
                    &Reply {
                        error: Some(format!("{e:#}")),
                    },
                );
            }
        }
    }
}

fn serve_one(s: &UnixStream, apps: &mut dyn Apps) -> Result<()> {
    s.set_nonblocking(false)?;
    // A client that connects and says nothing must not hold the pod's supervisor.
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .context("peer credentials")?;
    if cred.uid() != 0 {
        bail!("permission denied: only root may control a pod");
    }
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, MAX_LINE))
        .read_line(&mut line)
        .context("reading the request")?;
    let req: Request = serde_json::from_str(line.trim()).context("bad request")?;
    match req {
        Request::Stdio => {
            // SAFETY: the supervisor's standard descriptors stay open for its lifetime.
            let (o, e) = unsafe { (BorrowedFd::borrow_raw(1), BorrowedFd::borrow_raw(2)) };
            send_fds(s, &[o, e], &Reply::default())
        }
        Request::Register { app, pid } => {
            check_name(&app)?;
            if apps.running(&app).is_some() {
                bail!("app {app:?} is already running");
            }
            if pid <= 1 || !is_child(pid) {
                bail!("pid {pid} is not a process of the pod");
            }
            apps.add(&app, pid);
            reply(s, &Reply::default())
        }
        Request::Stop { app } => {
            check_name(&app)?;
            let pid = apps
                .running(&app)
                .with_context(|| format!("app {app:?} is not running"))?;
            apps.stop(pid);
            reply(s, &Reply::default())
        }
    }
}

fn check_name(n: &str) -> Result<()> {
    if !valid_app_name(n) {
        bail!("invalid app name {n:?}");
    }
    Ok(())
}

/// Whether `pid` is a child of ours that has not been reaped (WNOWAIT: it stays reapable).
fn is_child(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid writes at most one.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with a valid siginfo pointer; WNOHANG|WNOWAIT neither blocks nor reaps.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

fn reply(s: &UnixStream, r: &Reply) -> Result<()> {
    let mut w = s;
    w.write_all(format!("{}\n", serde_json::to_string(r)?).as_bytes())?;
    Ok(())
}

fn send_fds(s: &UnixStream, fds: &[BorrowedFd], r: &Reply) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let body = format!("{}\n", serde_json::to_string(r)?);
    let iov = [std::io::IoSlice::new(body.as_bytes())];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .context("sending descriptors")?;
    Ok(())
}

/// The client's end (`rkt app`, as root on the host): sends `req` to the pod's supervisor and
/// returns the descriptors that came with the reply. The supervisor's refusal is an error.
pub fn request(pod_dir: &Path, req: &Request) -> Result<Vec<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let p = socket_path(pod_dir);
    let s = UnixStream::connect(&p)
        .with_context(|| format!("connecting to the pod's supervisor ({})", p.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&s).write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())?;
    let mut buf = vec![0u8; MAX_LINE as usize];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut fds = Vec::new();
    let mut got = Vec::new();
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("reading the supervisor's reply")?;
        for c in msg.cmsgs().context("control message")? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        got.extend_from_slice(&buf[..n]);
        if n == 0 || got.contains(&b'\n') || got.len() as u64 >= MAX_LINE {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    let r: Reply = serde_json::from_str(text.trim())
        .with_context(|| format!("bad reply from the pod's supervisor: {:?}", text.trim()))?;
    if let Some(e) = r.error {
        bail!("{e}");
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_app_name("web-1"));
        for bad in ["", "Web", "../x", "a/b", "-a", "a-", "a b", "a\n"] {
            assert!(!valid_app_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = Control::new(bind(d.path()).unwrap());
        let mut apps: BTreeMap<i32, String> = BTreeMap::new();
        let path = d.path().to_path_buf();
        // The client blocks for the reply: serve from another thread.
        let t = std::thread::spawn(move || {
            let unknown = request(&path, &Request::Stop { app: "nope".into() });
            let bad = request(
                &path,
                &Request::Register {
                    app: "../x".into(),
                    pid: 5,
                },
            );
            let stranger = request(
                &path,
                &Request::Register {
                    app: "a".into(),
                    pid: 1,
                },
            );
            let stdio = request(&path, &Request::Stdio).map(|f| f.len());
            (unknown, bad, stranger, stdio)
        });
        let start = std::time::Instant::now();
        while !t.is_finished() && start.elapsed() < Duration::from_secs(10) {
            c.serve(&mut apps);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (unknown, bad, stranger, stdio) = t.join().unwrap();
        assert!(unknown.unwrap_err().to_string().contains("not running"));
        assert!(bad.unwrap_err().to_string().contains("invalid app name"));
        assert!(stranger
            .unwrap_err()
            .to_string()
            .contains("not a process of the pod"));
        assert_eq!(stdio.unwrap(), 2);
        assert!(apps.is_empty());
        let mode = std::fs::metadata(socket_path(d.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    /// Even a caller that can reach the socket (here: made world-writable on purpose) is
    /// refused unless it is root: the peer's credentials decide, not the file's mode.
    #[test]
    fn other_users_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root to switch users"
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = Control::new(bind(d.path()).unwrap());
        std::fs::set_permissions(
            socket_path(d.path()),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        // SAFETY: the child only switches users, makes one request and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = nix::unistd::setgid(65534.into()).is_ok()
                    && nix::unistd::setuid(65534.into()).is_ok()
                    && request(d.path(), &Request::Stdio)
                        .is_err_and(|e| e.to_string().contains("permission denied"));
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let mut apps: BTreeMap<i32, String> = BTreeMap::new();
                let start = std::time::Instant::now();
                let st = loop {
                    c.serve(&mut apps);
                    match nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                        .unwrap()
                    {
                        nix::sys::wait::WaitStatus::StillAlive => {}
                        st => break st,
                    }
                    assert!(start.elapsed() < Duration::from_secs(10));
                    std::thread::sleep(Duration::from_millis(5));
                };
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn socket_is_private() {
        let d = tempfile::tempdir().unwrap();
        let _l = bind(d.path()).unwrap();
        let mode = std::fs::metadata(socket_path(d.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }
}
