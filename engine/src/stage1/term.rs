//! The caller's terminal while a pod's app owns it through a pty relay (`--interactive`, and
//! `rkt enter` on kvm): raw while the relay runs, restored however the relay ends.

use anyhow::{Context, Result};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use std::os::fd::BorrowedFd;

/// Puts `fd` in raw mode until dropped.
pub struct RawTerminal {
    fd: i32,
    saved: Termios,
}

impl RawTerminal {
    pub fn new(fd: i32) -> Result<RawTerminal> {
        // SAFETY: the caller's standard descriptors stay open for the whole run.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let saved = tcgetattr(b).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(b, SetArg::TCSANOW, &raw).context("setting the terminal raw")?;
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: as in new().
        let b = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = tcsetattr(b, SetArg::TCSANOW, &self.saved);
    }
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal size of `fd` as (rows, cols), if it is a terminal.
pub fn size(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize struct.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some((ws.ws_row, ws.ws_col))
}
