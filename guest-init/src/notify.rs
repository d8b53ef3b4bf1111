//! The notify sockets of apps that speak sd_notify (images annotated
//! `appc.io/executor/supports-systemd-notify=true`, under a `rkt run` that has a `NOTIFY_SOCKET`).
//! The host puts a mount of `proto::NOTIFY_DIR/<app>` on `/run/systemd/notify` in such an app's
//! spec; we bind a datagram socket there (our own `/run`, which no app sees otherwise) before the
//! app starts, and pass every datagram it sends on to the host as `Msg::Notify` on its channel.
//! The host decides what reaches systemd (docs/systemd.md): we only bound and relay.

use crate::*;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

/// Binds the socket of every app of `pod` that the host gave one and relays from them, on a
/// thread of its own, for the life of the pod.
pub(crate) fn start(pod: &PodSpec, ctl: &Control) -> anyhow::Result<()> {
    let dir = Path::new(proto::NOTIFY_DIR);
    let mut socks = Vec::new();
    for (chan, app) in pod.apps.iter().enumerate() {
        let Some(m) = app
            .mounts
            .iter()
            .find(|m| m.source.parent() == Some(dir) && m.source.file_name().is_some())
        else {
            continue;
        };
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_file(&m.source);
        let s = UnixDatagram::bind(&m.source)
            .with_context(|| format!("binding {}", m.source.display()))?;
        // The app may run as any user; only it has the socket in its file system.
        std::fs::set_permissions(
            &m.source,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )?;
        socks.push((chan as u32, s));
    }
    if socks.is_empty() {
        return Ok(());
    }
    let ctl = ctl.clone();
    std::thread::spawn(move || relay(socks, ctl));
    Ok(())
}

fn relay(socks: Vec<(u32, UnixDatagram)>, ctl: Control) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; proto::MAX_NOTIFY];
    loop {
        let mut fds: Vec<PollFd> = socks
            .iter()
            .map(|(_, s)| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        for ((chan, s), r) in socks.iter().zip(ready) {
            if !r {
                continue;
            }
            // A longer datagram is cut at MAX_NOTIFY (sd_notify messages are a few lines).
            if let Ok(n) = s.recv(&mut buf) {
                let mut message = String::from_utf8_lossy(&buf[..n]).into_owned();
                while message.len() > proto::MAX_NOTIFY {
                    message.pop();
                }
                ctl.send(&Msg::Notify {
                    chan: *chan,
                    message,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_datagrams_reach_the_host_as_notify_messages() {
        // Only the relay: binding under /run needs the guest.
        let (s, app) = UnixDatagram::pair().unwrap();
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let ctl = Control {
            sock: Some(Arc::new(Mutex::new(File::from(OwnedFd::from(guest))))),
            names: Arc::new(vec![]),
        };
        std::thread::spawn(move || relay(vec![(3, s)], ctl));
        app.send(b"STATUS=up\nREADY=1").unwrap();
        app.send(&vec![b'x'; 3 * proto::MAX_NOTIFY]).unwrap();
        let mut host = File::from(OwnedFd::from(host));
        assert_eq!(
            proto::read_msg(&mut host).unwrap(),
            Some(Msg::Notify {
                chan: 3,
                message: "STATUS=up\nREADY=1".into()
            })
        );
        match proto::read_msg(&mut host).unwrap() {
            Some(Msg::Notify { chan: 3, message }) => assert_eq!(message.len(), proto::MAX_NOTIFY),
            m => panic!("{m:?}"),
        }
    }
}
