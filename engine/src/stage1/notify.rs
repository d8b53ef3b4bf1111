//! systemd's readiness protocol (sd_notify) for `rkt run` under a `Type=notify` unit.
//!
//! When `rkt run` finds `NOTIFY_SOCKET` in its environment it sends `READY=1` once every app of
//! the pod has started, and `STOPPING=1` when the pod stops (see [`stopping`]). An app whose image
//! says `appc.io/executor/supports-systemd-notify=true` (rkt v1's annotation) gets a socket of its
//! own as `NOTIFY_SOCKET=/run/systemd/notify` (ns and fly); the pod is then ready only once every
//! such app has sent `READY=1` itself, and their `STATUS=`, `WATCHDOG=1`, `RELOADING=1`,
//! `STOPPING=1`, `ERRNO=` and `EXTEND_TIMEOUT_USEC=` lines are forwarded (a pid an app names
//! means nothing on the host: `MAINPID=` is dropped).
//!
//! On kvm the socket is the guest's: the host adds it to the guest spec ([`guest_sockets`]), the
//! guest init binds it in the guest's `/run` and sends what the app writes there over the control
//! connection (`Msg::Notify`), and the host's control loop judges it with [`app_message`].

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use rkt_stage2::PodSpec;

/// The image annotation with which an app says it speaks sd_notify (rkt v1).
pub const SUPPORTS_NOTIFY: &str = "appc.io/executor/supports-systemd-notify";
/// Where an app that speaks sd_notify finds its socket, as rkt v1 placed it.
pub const APP_SOCKET: &str = "/run/systemd/notify";
/// The host side of the apps' sockets, in the pod directory.
const SOCKETS_DIR: &str = "notify";

struct Target {
    sock: UnixDatagram,
    addr: SocketAddr,
}

fn target() -> Option<&'static Target> {
    static T: OnceLock<Option<Target>> = OnceLock::new();
    T.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
        // `@name` is an abstract socket (systemd's own form for them).
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name).ok()?
            }
            None => SocketAddr::from_pathname(Path::new(&path)).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Target { sock, addr })
    })
    .as_ref()
}

/// Whether `rkt run` runs under a notify socket.
pub fn enabled() -> bool {
    target().is_some()
}

/// Sends `msg` (newline-separated `KEY=VALUE` lines) to systemd, if it listens; best effort, as
/// sd_notify(3) is.
pub fn send(msg: &str) {
    if let Some(t) = target() {
        let _ = t.sock.send_to_addr(msg.as_bytes(), &t.addr);
    }
}

/// `STOPPING=1`, once: when `rkt run` is asked to stop the pod (systemd's SIGTERM, Ctrl-C) or,
/// for a pod stopped otherwise (`rkt stop` signals the pod's supervisor, or its apps exited),
/// once its apps are down and `rkt run` starts tearing the pod down.
pub fn stopping() {
    static SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if enabled() && !SENT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        send("STOPPING=1");
    }
}

/// Whether the image of `app` (its manifest in the pod, `appsinfo/<app>/manifest`) carries
/// [`SUPPORTS_NOTIFY`]`=true`.
pub fn app_supports_notify(pod_dir: &Path, app: &str) -> bool {
    let p = pod_dir.join("appsinfo").join(app).join("manifest");
    let Ok(b) = crate::read_limited(&p, crate::limits::POD_MANIFEST, "image manifest") else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return false;
    };
    v["annotations"].as_array().is_some_and(|a| {
        a.iter()
            .any(|nv| nv["name"] == SUPPORTS_NOTIFY && nv["value"] == "true")
    })
}

/// For each app of `spec`, whether it gets a notify socket of its own: it speaks sd_notify and
/// `rkt run` runs under a notify socket.
pub fn notifying_apps(pod_dir: &Path, spec: &PodSpec) -> Vec<bool> {
    spec.apps
        .iter()
        .map(|a| enabled() && app_supports_notify(pod_dir, &a.name))
        .collect()
}

/// kvm: gives each app of the guest spec `guest` that [`notifying_apps`] names its socket, bound
/// by the guest init at `proto::NOTIFY_DIR/<app>` (the guest's `/run`) and mounted on
/// [`APP_SOCKET`] in the app, which finds it in `NOTIFY_SOCKET`.
pub fn guest_sockets(pod_dir: &Path, guest: &mut PodSpec) {
    let which = notifying_apps(pod_dir, guest);
    for (app, yes) in guest.apps.iter_mut().zip(which) {
        if !yes {
            continue;
        }
        app.mounts.push(rkt_stage2::MountSpec {
            source: Path::new(rkt_guest_init::proto::NOTIFY_DIR).join(&app.name),
            target: APP_SOCKET.into(),
            read_only: false,
            recursive: false,
        });
        app.env.retain(|(k, _)| k != "NOTIFY_SOCKET");
        app.env.push(("NOTIFY_SOCKET".into(), APP_SOCKET.into()));
    }
}

/// One datagram an app sent to its notify socket: whether it says `READY=1`, and the lines to
/// pass on to systemd (joined; empty for none).
pub fn app_message(msg: &str) -> (bool, String) {
    let mut ready = false;
    let mut fwd = Vec::new();
    for line in msg.lines() {
        if line == "READY=1" {
            ready = true;
        } else if forwarded(line) {
            fwd.push(line);
        }
    }
    (ready, fwd.join("\n"))
}

/// The apps' notify sockets: for each app that speaks sd_notify (and only under a notify socket
/// of our own), a datagram socket bound at `<pod>/notify/<app>`, bind-mounted on
/// [`APP_SOCKET`] in the app, which finds it in `NOTIFY_SOCKET`.
pub struct AppSockets {
    socks: Vec<(String, UnixDatagram)>,
}

impl AppSockets {
    /// Binds the sockets and adds the mount and the variable to each such app of `spec`.
    pub fn bind(pod_dir: &Path, spec: &mut PodSpec) -> Result<AppSockets> {
        let mut socks = Vec::new();
        if !enabled() {
            return Ok(AppSockets { socks });
        }
        for app in &mut spec.apps {
            if !app_supports_notify(pod_dir, &app.name) {
                continue;
            }
            let dir = pod_dir.join(SOCKETS_DIR);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path: PathBuf = dir.join(&app.name);
            let _ = std::fs::remove_file(&path);
            let s = UnixDatagram::bind(&path)
                .with_context(|| format!("binding the notify socket {}", path.display()))?;
            // The app may run as any user; only it reaches the socket (the pod directory is
            // not open to others).
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
            s.set_nonblocking(true)?;
            app.mounts.push(rkt_stage2::MountSpec {
                source: path,
                target: APP_SOCKET.into(),
                read_only: false,
                recursive: false,
            });
            app.env.retain(|(k, _)| k != "NOTIFY_SOCKET");
            app.env.push(("NOTIFY_SOCKET".into(), APP_SOCKET.into()));
            socks.push((app.name.clone(), s));
        }
        Ok(AppSockets { socks })
    }
}

/// What the pod's stage1 tells the watcher: a byte once every app was launched, then the end of
/// the pipe once every app exec'd (each app's copy of the write end is close-on-exec).
pub struct Started {
    pub r: OwnedFd,
    pub w: OwnedFd,
}

impl Started {
    pub fn new() -> Result<Started> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        Ok(Started { r, w })
    }

    /// In the supervisor, once every app was launched.
    pub fn signal(w: OwnedFd) {
        let _ = nix::unistd::write(&w, b"s");
    }
}

/// Starts the thread that turns the pod's start and its apps' own notifications into messages
/// to systemd (see the module comment). Runs until the pod has started and every notifying app
/// said `READY=1`, then keeps forwarding until the pod ends (the thread is not joined).
pub fn watch(started: OwnedFd, apps: AppSockets) {
    if !enabled() {
        return;
    }
    std::thread::spawn(move || watch_loop(started, apps));
}

fn watch_loop(started: OwnedFd, apps: AppSockets) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut got_byte = false;
    let mut started_open = true;
    let mut pod_started = false;
    let mut ready = vec![false; apps.socks.len()];
    let mut sent_ready = false;
    let mut buf = vec![0u8; 4096];
    loop {
        if pod_started && !sent_ready && ready.iter().all(|r| *r) {
            send("READY=1");
            sent_ready = true;
        }
        if !started_open && apps.socks.is_empty() {
            return;
        }
        let mut fds = Vec::new();
        if started_open {
            fds.push(PollFd::new(started.as_fd(), PollFlags::POLLIN));
        }
        for (_, s) in &apps.socks {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let revents: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut i = 0;
        if started_open {
            if revents[0] {
                match nix::unistd::read(started.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        started_open = false;
                        // The end without the byte: the supervisor died before its apps ran.
                        pod_started = got_byte;
                    }
                    Ok(_) => got_byte = true,
                }
            }
            i = 1;
        }
        for (k, (_, s)) in apps.socks.iter().enumerate() {
            if !revents[i + k] {
                continue;
            }
            while let Ok(n) = s.recv(&mut buf) {
                let (r, fwd) = app_message(&String::from_utf8_lossy(&buf[..n]));
                ready[k] |= r;
                if !fwd.is_empty() {
                    send(&fwd);
                }
            }
        }
    }
}

/// The lines of an app's notification passed on to systemd.
fn forwarded(line: &str) -> bool {
    [
        "STATUS=",
        "WATCHDOG=",
        "RELOADING=",
        "STOPPING=",
        "ERRNO=",
        "EXTEND_TIMEOUT_USEC=",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harmless_lines_are_forwarded() {
        assert!(forwarded("STATUS=up"));
        assert!(forwarded("WATCHDOG=1"));
        assert!(!forwarded("MAINPID=1"));
        assert!(!forwarded("FDSTORE=1"));
        assert!(!forwarded("READY=1"));
        assert_eq!(
            app_message("STATUS=a\nREADY=1\nMAINPID=1\nWATCHDOG=1"),
            (true, "STATUS=a\nWATCHDOG=1".into())
        );
        assert_eq!(app_message("MAINPID=7\nFDSTORE=1"), (false, String::new()));
    }

    #[test]
    fn the_annotation_is_read_from_the_pods_image_manifest() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("appsinfo/a");
        std::fs::create_dir_all(&m).unwrap();
        let write = |v: &str| {
            std::fs::write(
                m.join("manifest"),
                format!(r#"{{"annotations":[{{"name":"{SUPPORTS_NOTIFY}","value":"{v}"}}]}}"#),
            )
            .unwrap()
        };
        write("true");
        assert!(app_supports_notify(d.path(), "a"));
        write("false");
        assert!(!app_supports_notify(d.path(), "a"));
        assert!(!app_supports_notify(d.path(), "missing"));
    }
}
