//! A process's stdio from the FIFOs containerd passes (paths in Create/Exec; empty: none).
//!
//! stdout and stderr are the FIFOs themselves, opened read-write so that opening never blocks
//! and a reader that goes away does not kill the app with SIGPIPE; the app holds the only
//! writer once the shim closes its copy, so the reader sees EOF when the app (and whatever
//! inherited its output) is gone. stdin goes through a pipe fed by a thread, so that CloseIO can
//! end it (EOF for the app) whatever the client does with its end of the FIFO. With a terminal,
//! the process gets a pty and threads copy between its master and the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

/// The writer that feeds a process's stdin; CloseIO drops it.
pub type StdinWriter = Arc<Mutex<Option<File>>>;

pub struct Stdio {
    /// stdin, stdout, stderr for the process.
    pub fds: [OwnedFd; 3],
    pub stdin: StdinWriter,
    /// The pty's master (ResizePty), when the process has a terminal.
    pub pty: Option<File>,
}

fn null(write: bool) -> Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .context("/dev/null")?
        .into())
}

fn out_fifo(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))
}

/// Copies the stdin FIFO into `to` until EOF or CloseIO.
fn feed_stdin(path: String, to: StdinWriter) {
    std::thread::spawn(move || {
        // Blocks until the client opens its end.
        let Ok(mut fifo) = File::open(&path) else {
            to.lock().unwrap().take();
            return;
        };
        let mut buf = [0u8; 32 * 1024];
        loop {
            let n = match fifo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut w = to.lock().unwrap();
            let written = w.as_mut().is_some_and(|f| f.write_all(&buf[..n]).is_ok());
            if !written {
                break;
            }
        }
        to.lock().unwrap().take();
    });
}

/// stderr that containerd does not want (CRI's pause container, `ctr run --null-io`): a pipe
/// whose last line is logged (in containerd's log) once the process and its children are gone,
/// so that rkt's one-line error for an app that could not start is not lost. Only the last
/// KiB is kept.
fn logged_stderr(label: &str) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let label = label.to_string();
    std::thread::spawn(move || {
        let mut from = File::from(r);
        let (mut tail, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(1024);
                    tail.drain(..excess);
                }
            }
        }
        let text = String::from_utf8_lossy(&tail);
        if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            log::warn!("{label}: last line of its unread stderr: {last}");
        }
    });
    Ok(w)
}

/// `ptmx`: the multiplexer of the devpts instance the process will see (an app's own, for an
/// exec: `/proc/<app>/root/dev/ptmx`), so that its terminal has a name there (`tty`, `ps`);
/// None takes the host's. `label` names the process in the shim's log.
pub fn open(
    label: &str,
    stdin: &str,
    stdout: &str,
    stderr: &str,
    terminal: bool,
    ptmx: Option<&std::path::Path>,
) -> Result<Stdio> {
    if terminal {
        return open_pty(stdin, stdout, ptmx);
    }
    let writer: StdinWriter = Arc::new(Mutex::new(None));
    let input = if stdin.is_empty() {
        null(false)?
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        *writer.lock().unwrap() = Some(File::from(w));
        feed_stdin(stdin.to_string(), writer.clone());
        r
    };
    let out = |p: &str| -> Result<OwnedFd> {
        if p.is_empty() {
            null(true)
        } else {
            Ok(out_fifo(p)?.into())
        }
    };
    let err = if stderr.is_empty() {
        logged_stderr(label)?
    } else {
        out(stderr)?
    };
    Ok(Stdio {
        fds: [input, out(stdout)?, err],
        stdin: writer,
        pty: None,
    })
}

/// A pty pair from `ptmx`; the peer comes from TIOCGPTPEER, never from a path lookup (the
/// instance may be in another mount namespace).
fn pty_in(ptmx: &std::path::Path) -> Result<(File, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)
        .with_context(|| format!("opening {}", ptmx.display()))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new descriptor we then own.
    let peer = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(std::io::Error::last_os_error()).context("unlocking the pty");
        }
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCGPTPEER");
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok((master, unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(peer)
    }))
}

fn open_pty(stdin: &str, stdout: &str, ptmx: Option<&std::path::Path>) -> Result<Stdio> {
    let (master, slave) = match ptmx {
        Some(p) => pty_in(p)?,
        None => {
            let pty = nix::pty::openpty(None, None).context("openpty")?;
            for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
                // SAFETY: fcntl on descriptors we own.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            (File::from(pty.master), pty.slave)
        }
    };
    let writer: StdinWriter = Arc::new(Mutex::new(None));
    if !stdin.is_empty() {
        *writer.lock().unwrap() = Some(master.try_clone()?);
        feed_stdin(stdin.to_string(), writer.clone());
    }
    if !stdout.is_empty() {
        let mut out = out_fifo(stdout)?;
        let mut from = master.try_clone()?;
        std::thread::spawn(move || {
            // EIO once every holder of the slave is gone.
            let _ = std::io::copy(&mut from, &mut out);
        });
    }
    Ok(Stdio {
        fds: [slave.try_clone()?, slave.try_clone()?, slave],
        stdin: writer,
        pty: Some(master),
    })
}

/// TIOCSWINSZ on a pty master.
pub fn resize(pty: &File, width: u32, height: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
    }
    Ok(())
}
