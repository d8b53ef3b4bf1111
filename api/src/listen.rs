//! The service's listening sockets: those systemd passed (socket activation, sd_listen_fds(3):
//! `LISTEN_PID` is our pid, `LISTEN_FDS=N` sockets from fd 3, as a `.socket` unit with one or more
//! `ListenStream=` lines passes them), else the `--listen` address bound here.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use anyhow::{bail, Context, Result};

/// First fd systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;
/// More would be a misconfigured unit, not a reason to walk the fd table.
const MAX_LISTEN_FDS: usize = 64;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp socket".into()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix socket".into()),
        }
    }
}

/// The sockets passed by systemd, or None when this process was not socket-activated. The
/// variables are removed either way so that no child mistakes them for its own (as
/// sd_listen_fds(1) does with unset_environment).
pub fn activated() -> Result<Option<Vec<Listener>>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None); // meant for another process (our parent, say)
    }
    let n: usize = fds
        .trim()
        .parse()
        .with_context(|| format!("invalid LISTEN_FDS={fds:?}"))?;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_LISTEN_FDS {
        bail!("LISTEN_FDS={n}: more than {MAX_LISTEN_FDS} sockets passed");
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(adopt(LISTEN_FDS_START + i as RawFd)?);
    }
    Ok(Some(out))
}

/// Takes over one passed fd: it must be a listening stream socket (TCP or Unix).
fn adopt(fd: RawFd) -> Result<Listener> {
    let int_opt = |opt| -> Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, a c_int we own.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("passed fd {fd} is not a socket"));
        }
        Ok(v)
    };
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM || int_opt(libc::SO_ACCEPTCONN)? == 0 {
        bail!(
            "passed fd {fd} is not a listening stream socket (ListenStream= in the .socket unit)"
        );
    }
    let domain = int_opt(libc::SO_DOMAIN)?;
    // SAFETY: fcntl on an fd we just checked is an open socket.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd hands the fd to this process, which owns it from here on; nothing else in
    // the process uses fds 3.. before this point.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(match domain {
        libc::AF_INET | libc::AF_INET6 => Listener::Tcp(TcpListener::from(owned)),
        libc::AF_UNIX => Listener::Unix(UnixListener::from(owned)),
        d => bail!("passed fd {fd} is a socket of unsupported family {d}"),
    })
}

/// Binds every address `addr` resolves to (`localhost` gives 127.0.0.1 and, where the host has
/// it, ::1), like a `.socket` unit with one `ListenStream=` per address.
pub fn bind(addr: &str) -> Result<Vec<Listener>> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .with_context(|| format!("invalid listen address {addr:?} (HOST:PORT)"))?
        .collect();
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut last_err = None;
    for a in addrs {
        if seen.contains(&a) {
            continue;
        }
        seen.push(a);
        match TcpListener::bind(a) {
            Ok(l) => out.push(Listener::Tcp(l)),
            // A name that also resolves to an address family the host lacks (::1 without IPv6).
            Err(e)
                if a.is_ipv6()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
                    ) =>
            {
                last_err = Some(e)
            }
            Err(e) => return Err(e).with_context(|| format!("listening on {a}")),
        }
    }
    if out.is_empty() {
        match last_err {
            Some(e) => return Err(e).with_context(|| format!("listening on {addr}")),
            None => bail!("listen address {addr:?} resolves to nothing"),
        }
    }
    Ok(out)
}
