//! `rkt app` on kvm: apps started and stopped in a running mutable pod's VM.
//!
//! `rkt app add` has written the app's files under the pod's share and its spec into
//! `stage1-spec.json`, as for ns. `rkt app start|stop|rm` then ask the pod's VMM process over
//! [`APP_SOCKET`] (0600 in the pod directory; peers must be uid 0 by `SO_PEERCRED`; one JSON line
//! each way). The VMM mounts the app's root and volumes in its private mount namespace (where
//! the other apps' are, under the virtio-fs share), picks a channel no app has used and sends
//! the guest `AppStart {chan, spec}` on the control connection; the guest init starts it as it
//! starts boot-time apps and reports `AppStarted`/`AppExited` for that channel, which
//! `serve_control` turns into `status/<app>` as for any app. Stops go out as `AppStop {chan}`,
//! signals (containerd's Kill) as `AppSignal {chan, signal}`.
//!
//! A start may come with the app's stdin, stdout and stderr (the containerd shim's FIFOs) as
//! three descriptors (`SCM_RIGHTS`) beside its request line: the VMM then writes the app's
//! output to them instead of its own, and relays what the stdin descriptor gives to the guest.
//!
//! An app whose root is a directory outside the pod (the containerd shim's bundle `rootfs`,
//! containerd's snapshot mounted there after the VM started) is not visible in the VMM's mount
//! namespace, a private copy made when the VM started: the client sends a detached clone of
//! that mount (`open_tree(OPEN_TREE_CLONE)`, made in its own namespace) as one more descriptor,
//! and the VMM moves it onto the app's root in the share (`move_mount`).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::SyncSender;
use std::sync::Condvar;

use super::*;
use rkt_stage2::control::valid_app_name;

/// The VMM's app socket in the pod directory.
pub const APP_SOCKET: &str = "kvm-app.sock";
/// Largest request or reply line.
const MAX_LINE: u64 = 4096;
/// How long `rkt app start` waits for the guest to report the app: a fork and exec in a guest
/// whose code is emulated (nested PVM) on a loaded host took 80 s here.
const START_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Start app `app` (in the pod's spec, not started before). With `stdio`, the request
    /// carries the app's stdin, stdout and stderr descriptors.
    Start {
        app: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stdio: bool,
        /// The request carries a detached clone of the app's root (after the stdio ones).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        root: bool,
    },
    /// Stop running app `app`.
    Stop { app: String },
    /// Unmount app `app`'s root and volumes (`rkt app rm`, after it stopped).
    Release { app: String },
    /// Send `signal` to running app `app`.
    Signal { app: String, signal: u32 },
}

/// Outputs queued per stream before the control connection waits for the descriptor's reader:
/// a slow reader slows the pod's output as a full pipe would, never grows the VMM's memory.
const SINK_QUEUE: usize = 64;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The apps added while the VM runs, as the control connection knows them: channel -> name.
/// Channels of boot-time apps are their indexes; added apps get channels above all of them,
/// never reused.
#[derive(Default)]
pub struct Dynamic {
    inner: Mutex<DynInner>,
    changed: Condvar,
}

#[derive(Default)]
struct DynInner {
    next: u32,
    /// Channel -> (app name, reported by the guest: started or exited).
    apps: HashMap<u32, (String, bool)>,
    /// Names of the apps whose roots this VMM mounted, with their volume binds.
    mounted: HashMap<String, Vec<PathBuf>>,
    /// Channel -> writers of the app's own stdout and stderr, when its start gave them.
    sinks: HashMap<u32, [Option<SyncSender<Vec<u8>>>; 2]>,
}

/// A thread that writes what it is sent to `fd` until the sender goes (then closes `fd`).
fn sink(fd: OwnedFd) -> SyncSender<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(SINK_QUEUE);
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        for d in rx {
            if f.write_all(&d).is_err() {
                break;
            }
        }
    });
    tx
}

impl Dynamic {
    pub fn new(first_chan: u32) -> Dynamic {
        let d = Dynamic::default();
        d.inner.lock().unwrap().next = first_chan;
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DynInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name of added app `chan`, if the host started such an app.
    pub fn name(&self, chan: u32) -> Option<String> {
        self.lock().apps.get(&chan).map(|(n, _)| n.clone())
    }

    /// The guest reported `chan` (started, or exited before): a waiting start may return.
    pub fn reported(&self, chan: u32) {
        if let Some(a) = self.lock().apps.get_mut(&chan) {
            a.1 = true;
        }
        self.changed.notify_all();
    }

    /// The guest reported `chan`'s exit: its channel is done (and its own stdio closed).
    pub fn exited(&self, chan: u32) {
        let mut d = self.lock();
        d.apps.remove(&chan);
        d.sinks.remove(&chan);
        drop(d);
        self.changed.notify_all();
    }

    /// Output of added app `chan` for its own descriptors: false when it has none (the VMM's
    /// output and the pod's logs take it). The queue's wait is outside the lock.
    pub fn output(&self, chan: u32, stream: Stream, data: &[u8]) -> bool {
        let i = usize::from(stream == Stream::Stderr);
        let tx = match self.lock().sinks.get(&chan) {
            Some(s) => s[i].clone(),
            None => return false,
        };
        if let Some(tx) = tx {
            let _ = tx.send(data.to_vec());
        }
        true
    }

    /// The guest's end of one of `chan`'s output streams: the reader of its descriptor sees EOF.
    pub fn close_output(&self, chan: u32, stream: Stream) {
        let i = usize::from(stream == Stream::Stderr);
        if let Some(s) = self.lock().sinks.get_mut(&chan) {
            s[i] = None;
        }
    }

    fn chan_of(&self, name: &str) -> Option<u32> {
        self.lock()
            .apps
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(c, _)| *c)
    }
}

/// Binds the app socket (the VMM of a mutable pod, before the guest connects).
pub(super) fn bind(pod_dir: &Path) -> Result<UnixListener> {
    let p = pod_dir.join(APP_SOCKET);
    let _ = std::fs::remove_file(&p);
    let l = UnixListener::bind(&p).with_context(|| format!("binding {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the app socket until the VM ends (the VMM removes the socket then).
pub(super) fn serve(
    listener: UnixListener,
    pod_dir: PathBuf,
    writer: Arc<Mutex<Option<UnixStream>>>,
    dynamic: Arc<Dynamic>,
) {
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let (pod_dir, writer, dynamic) = (pod_dir.clone(), writer.clone(), dynamic.clone());
        // One thread per request: a start waits for the guest, a stop must not wait behind it.
        std::thread::spawn(move || {
            let r = serve_one(&s, &pod_dir, &writer, &dynamic);
            let reply = Reply {
                error: r.err().map(|e| format!("{e:#}")),
            };
            let mut w = &s;
            let _ = w.write_all(format!("{}\n", serde_json::to_string(&reply).unwrap()).as_bytes());
        });
    }
}

/// Reads one request line (at most [`MAX_LINE`] bytes) and the descriptors sent with it (at
/// most four; more are refused).
fn read_request(s: &UnixStream) -> Result<(String, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let (mut buf, mut fds) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') {
        // Room for more than the four a request may carry, so that extra ones are received
        // (and closed) rather than truncated away unseen.
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
        let m = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("reading the request")?;
        if m.flags.contains(MsgFlags::MSG_CTRUNC) {
            bail!("too many descriptors with the request");
        }
        for c in m.cmsgs().context("reading the request's descriptors")? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors in this process.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if fds.len() > 4 {
            bail!("too many descriptors with the request");
        }
        let n = m.bytes;
        if n == 0 {
            bail!("reading the request: connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 >= MAX_LINE && !buf.contains(&b'\n') {
            bail!("bad request: longer than {MAX_LINE} bytes");
        }
    }
    let line = String::from_utf8(buf).context("request is not UTF-8")?;
    Ok((line, fds))
}

fn serve_one(
    s: &UnixStream,
    pod_dir: &Path,
    writer: &Arc<Mutex<Option<UnixStream>>>,
    dynamic: &Dynamic,
) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Read (bounded) before answering: a reply to an unread request may reach its sender as a
    // connection reset instead of the error.
    let read = read_request(s);
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .context("peer credentials")?;
    if cred.uid() != 0 {
        bail!("permission denied: only root may control a pod");
    }
    let (line, fds) = read?;
    let req: Request = serde_json::from_str(line.trim()).context("bad request")?;
    let (Request::Start { app, .. }
    | Request::Stop { app }
    | Request::Release { app }
    | Request::Signal { app, .. }) = &req;
    if !valid_app_name(app) {
        bail!("invalid app name {app:?}");
    }
    let want = match req {
        Request::Start { stdio, root, .. } => 3 * usize::from(stdio) + usize::from(root),
        _ => 0,
    };
    if fds.len() != want {
        bail!(
            "the request came with {} descriptors, not {want}",
            fds.len()
        );
    }
    let send = |m: &Msg| -> Result<()> {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = w.as_mut().context("the guest is not connected")?;
        proto::write_msg(w, m).map_err(|e| anyhow!("sending to the guest: {e}"))
    };
    match req {
        Request::Start { app, stdio, root } => {
            if dynamic.chan_of(&app).is_some() {
                bail!("app {app:?} is already running");
            }
            let spec = PodSpec::load(pod_dir)?;
            let a = spec
                .apps
                .iter()
                .find(|a| a.name == app)
                .with_context(|| format!("pod has no app named {app:?}"))?;
            let one = PodSpec {
                apps: vec![a.clone()],
                ..spec.clone()
            };
            let mut plan = plan(pod_dir, &one)?;
            let mut fds = fds.into_iter();
            let stdio_fds: Vec<OwnedFd> = fds.by_ref().take(3 * usize::from(stdio)).collect();
            let root_fd = if root { fds.next() } else { None };
            let at = rkt_stage2::app_root_path(pod_dir, &app);
            if root_fd.is_some() {
                // Moved in below instead of bound from a path this namespace may not see.
                plan.roots.retain(|(_, dst)| *dst != at);
            }
            // Volume binds of their own, apart from the other apps' (`volumes/<n>` at boot).
            let mut binds = Vec::new();
            for (i, (_, dst)) in plan.binds.iter_mut().enumerate() {
                let new = share_dir(pod_dir)
                    .join("volumes")
                    .join(format!("{app}-{i}"));
                let (old_g, new_g) = (guest_path(pod_dir, dst), guest_path(pod_dir, &new));
                for m in &mut plan.guest.apps[0].mounts {
                    if Some(&m.source) == old_g.as_ref() {
                        m.source = new_g.clone().unwrap();
                    }
                }
                *dst = new;
                binds.push(dst.clone());
            }
            {
                let mut d = dynamic.lock();
                if !d.mounted.contains_key(&app) {
                    if let Some(fd) = &root_fd {
                        std::fs::create_dir_all(&at)?;
                        move_mount(fd, &at)?;
                    }
                    if let Err(e) = plan.apply() {
                        if root_fd.is_some() {
                            let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
                        }
                        return Err(e);
                    }
                    binds.push(at.clone());
                    d.mounted.insert(app.clone(), binds);
                }
            }
            let body = serde_json::to_string(&plan.guest.apps[0])?;
            let mut fds = stdio_fds.into_iter();
            let stdin = fds.next();
            let chan = {
                let mut d = dynamic.lock();
                let c = d.next;
                d.next = c.checked_add(1).context("out of app channels")?;
                d.apps.insert(c, (app.clone(), false));
                if stdio {
                    d.sinks
                        .insert(c, [fds.next().map(sink), fds.next().map(sink)]);
                }
                c
            };
            let start = Msg::AppStart {
                chan,
                spec: body,
                stdin: stdin.is_some(),
            };
            if let Err(e) = send(&start) {
                dynamic.exited(chan);
                return Err(e);
            }
            if let Some(fd) = stdin {
                relay_stdin(fd, chan, writer.clone());
            }
            let d = dynamic.lock();
            let (d, _) = dynamic
                .changed
                .wait_timeout_while(d, START_WAIT, |d| {
                    d.apps.get(&chan).is_some_and(|(_, reported)| !reported)
                })
                .unwrap_or_else(|p| p.into_inner());
            if d.apps.get(&chan).is_some_and(|(_, reported)| !reported) {
                bail!("the guest did not report app {app:?} within {START_WAIT:?}");
            }
            Ok(())
        }
        Request::Stop { app } => {
            let chan = dynamic
                .chan_of(&app)
                .with_context(|| format!("app {app:?} is not running"))?;
            send(&Msg::AppStop { chan })
        }
        Request::Signal { app, signal } => {
            if !(1..=64).contains(&signal) {
                bail!("invalid signal {signal}");
            }
            let chan = dynamic
                .chan_of(&app)
                .with_context(|| format!("app {app:?} is not running"))?;
            send(&Msg::AppSignal { chan, signal })
        }
        Request::Release { app } => {
            if dynamic.chan_of(&app).is_some() {
                bail!("app {app:?} is still running");
            }
            let paths = dynamic.lock().mounted.remove(&app).unwrap_or_default();
            for p in paths {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
            Ok(())
        }
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached clone of the mount tree at `path` (in the caller's mount namespace), to be moved
/// into another namespace with [`move_mount`].
pub fn clone_tree(path: &Path) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: open_tree reads the path and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("cloning the mount at {}", path.display()));
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the detached mount `tree` (from [`clone_tree`]) at `at`.
fn move_mount(tree: &OwnedFd, at: &Path) -> Result<()> {
    let empty = c"";
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: move_mount reads the two paths; the descriptor is ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("moving the app's root onto {}", at.display()));
    }
    Ok(())
}

/// Sends what `fd` gives to the guest as app `chan`'s input, then its end. A guest that is gone
/// ends the relay at the next input.
fn relay_stdin(fd: OwnedFd, chan: u32, writer: Arc<Mutex<Option<UnixStream>>>) {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = vec![0u8; proto::MAX_DATA];
        let send = |m: &Msg| {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            w.as_mut().is_some_and(|w| proto::write_msg(w, m).is_ok())
        };
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let data = Msg::Data {
                chan,
                stream: Stream::Stdin,
                data: buf[..n].to_vec(),
            };
            if !send(&data) {
                return;
            }
        }
        send(&Msg::Eof {
            chan,
            stream: Stream::Stdin,
        });
    });
}

/// stage0's end: sends `req` to the pod's VMM and returns its answer.
pub fn request(pod_dir: &Path, req: &Request) -> Result<()> {
    request_with_fds(pod_dir, req, &[])
}

/// [`request`] with descriptors for the VMM (a start's stdin, stdout, stderr).
pub fn request_with_fds(pod_dir: &Path, req: &Request, fds: &[BorrowedFd]) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let p = pod_dir.join(APP_SOCKET);
    let s = UnixStream::connect(&p)
        .with_context(|| format!("connecting to the pod's VMM ({})", p.display()))?;
    s.set_read_timeout(Some(START_WAIT + Duration::from_secs(10)))?;
    let line = format!("{}\n", serde_json::to_string(req)?);
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [std::io::IoSlice::new(line.as_bytes())];
    // One message: the descriptors travel with the line's first bytes.
    let n = sendmsg::<()>(
        s.as_fd().as_raw_fd(),
        &iov,
        if raw.is_empty() { &[] } else { &cmsg },
        MsgFlags::empty(),
        None,
    )
    .context("sending the request")?;
    (&s).write_all(&line.as_bytes()[n..])?;
    let mut line = String::new();
    BufReader::new(Read::take(&s, MAX_LINE))
        .read_line(&mut line)
        .context("reading the VMM's reply")?;
    let r: Reply = serde_json::from_str(line.trim()).context("bad reply from the pod's VMM")?;
    match r.error {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkt_stage2::{InsecureRun, NetMode};

    fn empty_pod() -> PodSpec {
        PodSpec {
            uuid: "u".into(),
            hostname: "h".into(),
            net: NetMode::None,
            resolv_conf: None,
            hosts: None,
            interactive: false,
            tty: false,
            insecure: InsecureRun::default(),
            debug: false,
            apps: vec![],
            interfaces: vec![],
        }
    }

    /// A guest that says hello, sends `msgs` and keeps the connection until the host closes it.
    fn guest(msgs: Vec<Msg>) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (host, mut g) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            proto::handshake(&mut g).unwrap();
            for m in msgs {
                let _ = proto::write_msg(&mut g, &m);
            }
        });
        (host, t)
    }

    /// Serves a guest sending `msgs` to a host that started the added app "web" on channel 0;
    /// its stdout goes to `out`.
    fn serve_web(pod_dir: &Path, msgs: Vec<Msg>, out: &mut Vec<u8>) -> (Outcome, Dynamic) {
        let dynamic = Dynamic::new(0);
        dynamic.lock().apps.insert(0, ("web".into(), false));
        let (mut host, t) = guest(msgs);
        let o = serve_control_with(
            &mut host,
            pod_dir,
            &empty_pod(),
            out,
            &mut Vec::new(),
            &mut || {},
            &dynamic,
        );
        drop(host);
        t.join().unwrap();
        (o, dynamic)
    }

    /// An added app's output and exit code are taken while the host knows its channel; the pod
    /// is ready as soon as the guest connects, since it has no app of its own.
    #[test]
    fn added_apps_output_and_exit_codes_reach_the_host() {
        let d = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let msgs = vec![
            Msg::AppStarted { app: 0, pid: 9 },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdout,
                data: b"hi\n".to_vec(),
            },
            Msg::Eof {
                chan: 0,
                stream: Stream::Stdout,
            },
            Msg::AppExited { app: 0, code: 143 },
            Msg::PodDone { code: 0 },
        ];
        let (o, dynamic) = serve_web(d.path(), msgs, &mut out);
        assert_eq!((o.code, o.error), (Some(0), None));
        assert_eq!(out, b"hi\n");
        assert!(d.path().join(READY_FILE).exists());
        let st = std::fs::read_to_string(rkt_stage2::app_status_path(d.path(), "web")).unwrap();
        assert_eq!(st, "143");
        assert!(dynamic.name(0).is_none(), "the channel is done");
        // Kept in the pod's logs as a boot-time app's output is (`rkt logs --app=web`).
        let logged = crate::pod::logs::read(d.path(), "web").unwrap();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(
            (logged[0].stream, logged[0].full, &logged[0].content[..]),
            (crate::pod::logs::Stream::Stdout, true, &b"hi"[..])
        );
    }

    /// A guest's sd_notify message about an added app (none has a socket) or a channel the
    /// host does not know is not passed on; the unknown channel ends the pod.
    #[test]
    fn notify_messages_of_unknown_channels_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let msgs = vec![
            Msg::Notify {
                chan: 0,
                message: "READY=1".into(),
            },
            Msg::Notify {
                chan: 9,
                message: "READY=1".into(),
            },
        ];
        let (o, _) = serve_web(d.path(), msgs, &mut Vec::new());
        assert!(
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("unexpected message") && e.contains("chan: 9")),
            "{o:?}"
        );
    }

    /// An added app started with its own stdio: its output goes to those descriptors (each
    /// closed at the guest's end of its stream), not to the VMM's output or the pod's logs.
    #[test]
    fn added_apps_with_their_own_stdio_write_to_it() {
        let d = tempfile::tempdir().unwrap();
        let dynamic = Dynamic::new(0);
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        {
            let mut dl = dynamic.lock();
            dl.apps.insert(0, ("web".into(), false));
            dl.sinks.insert(0, [Some(sink(out_w)), Some(sink(err_w))]);
        }
        let data = |stream, d: &[u8]| Msg::Data {
            chan: 0,
            stream,
            data: d.to_vec(),
        };
        let msgs = vec![
            Msg::AppStarted { app: 0, pid: 9 },
            data(Stream::Stdout, b"out\n"),
            data(Stream::Stderr, b"err\n"),
            Msg::Eof {
                chan: 0,
                stream: Stream::Stdout,
            },
            Msg::Eof {
                chan: 0,
                stream: Stream::Stderr,
            },
            Msg::AppExited { app: 0, code: 3 },
            Msg::PodDone { code: 0 },
        ];
        let (mut host, t) = guest(msgs);
        let mut ours = Vec::new();
        let o = serve_control_with(
            &mut host,
            d.path(),
            &empty_pod(),
            &mut ours,
            &mut Vec::new(),
            &mut || {},
            &dynamic,
        );
        drop(host);
        t.join().unwrap();
        assert_eq!((o.code, o.error), (Some(0), None));
        let read_all = |fd: OwnedFd| {
            let mut s = String::new();
            std::fs::File::from(fd).read_to_string(&mut s).unwrap();
            s
        };
        // EOF comes: the VMM kept no copy of the write ends.
        assert_eq!(read_all(out_r), "out\n");
        assert_eq!(read_all(err_r), "err\n");
        assert!(ours.is_empty(), "{ours:?}");
        assert!(crate::pod::logs::read(d.path(), "web")
            .unwrap_or_default()
            .is_empty());
        let st = std::fs::read_to_string(rkt_stage2::app_status_path(d.path(), "web")).unwrap();
        assert_eq!(st, "3");
    }

    /// A hostile guest's report about a channel the host never started, or one that already
    /// exited, ends the pod with an error and writes nothing.
    #[test]
    fn reports_about_unknown_or_finished_apps_are_refused() {
        for msgs in [
            vec![Msg::AppExited { app: 5, code: 0 }],
            vec![
                Msg::AppExited { app: 0, code: 1 },
                Msg::AppExited { app: 0, code: 2 },
            ],
            vec![Msg::Data {
                chan: 7,
                stream: Stream::Stdout,
                data: b"x".to_vec(),
            }],
        ] {
            let d = tempfile::tempdir().unwrap();
            let (o, _) = serve_web(d.path(), msgs, &mut Vec::new());
            assert!(
                o.error
                    .as_deref()
                    .is_some_and(|e| e.contains("unexpected message")),
                "{o:?}"
            );
            let st = std::fs::read_to_string(rkt_stage2::app_status_path(d.path(), "web"));
            assert!(st.is_err() || st.unwrap() == "1");
        }
    }

    /// The app socket: 0600, root peers only (by credentials, not file mode), names checked,
    /// unknown apps refused, bounded requests.
    #[test]
    // The child is reaped by waitpid below, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn app_socket_refuses_non_root_bad_names_and_unknown_apps() {
        let d = tempfile::tempdir().unwrap();
        rkt_stage2::supervisor::write_atomic(
            &d.path().join(rkt_stage2::SPEC_FILE),
            &serde_json::to_string(&empty_pod()).unwrap(),
        )
        .unwrap();
        let l = bind(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(APP_SOCKET)).unwrap();
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let (pod_dir, writer) = (d.path().to_path_buf(), Arc::new(Mutex::new(None)));
        std::thread::spawn(move || serve(l, pod_dir, writer, Arc::new(Dynamic::new(0))));
        let err = |r: Request| request(d.path(), &r).unwrap_err().to_string();
        let start = |app: &str| Request::Start {
            app: app.into(),
            stdio: false,
            root: false,
        };
        assert!(err(start("../x")).contains("invalid app name"));
        assert!(err(start("nope")).contains("no app named"));
        assert!(err(Request::Signal {
            app: "nope".into(),
            signal: 0
        })
        .contains("invalid signal"));
        assert!(err(Request::Signal {
            app: "nope".into(),
            signal: 15
        })
        .contains("is not running"));
        // Descriptors only with a start that asks for its stdio, and then exactly three.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let one = [r.as_fd()];
        let e = request_with_fds(d.path(), &start("nope"), &one).unwrap_err();
        assert!(e.to_string().contains("with 1 descriptors, not 0"), "{e}");
        let five = [r.as_fd(), r.as_fd(), r.as_fd(), r.as_fd(), r.as_fd()];
        let stdio = Request::Start {
            app: "nope".into(),
            stdio: true,
            root: false,
        };
        let e = request_with_fds(d.path(), &stdio, &five).unwrap_err();
        assert!(e.to_string().contains("too many descriptors"), "{e}");
        let e = request_with_fds(d.path(), &stdio, &one).unwrap_err();
        assert!(e.to_string().contains("with 1 descriptors, not 3"), "{e}");
        assert!(err(Request::Stop { app: "nope".into() }).contains("is not running"));
        // A request line of the bound and no end is refused, not waited for.
        let s = UnixStream::connect(d.path().join(APP_SOCKET)).unwrap();
        (&s).write_all(&vec![b'x'; MAX_LINE as usize]).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("bad request"), "{line}");
        // The socket is reachable by anyone here: the peer's uid decides.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            d.path().join(APP_SOCKET),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        // SAFETY: the child only switches users, makes one request and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = nix::unistd::setgid(65534.into()).is_ok()
                    && nix::unistd::setuid(65534.into()).is_ok()
                    && request(d.path(), &Request::Stop { app: "web".into() })
                        .is_err_and(|e| e.to_string().contains("permission denied"));
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
