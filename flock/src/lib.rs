//! `flock(2)` locks, released when the [`Flock`] is dropped (its file is closed) or when the
//! holding process dies. One implementation for the image store's `cas/locks`, the TPM journal's
//! lock, `locks/prepareLock` and the pod directories; its own crate because `rkt-store` and
//! `rkt-tpm` share no other dependency it could live in.
//!
//! Errors are plain `io::Error`s so each caller keeps its own context ("opening …", "locking …").

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    fn op(self) -> libc::c_int {
        match self {
            Mode::Shared => libc::LOCK_SH,
            Mode::Exclusive => libc::LOCK_EX,
        }
    }
}

/// A held lock. flock locks belong to the open file description, so two `Flock`s on the same
/// path conflict even inside one process.
#[derive(Debug)]
pub struct Flock {
    file: File,
}

/// Opens a lock file, creating it if missing (never truncating: it may be someone's held lock).
/// Read-write and close-on-exec (std's default), so a lock is not leaked into children by accident.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// `flock(fd, op)`, retried on EINTR.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Flock {
    /// Locks `file`, waiting for conflicting holders to let go.
    pub fn lock(file: File, mode: Mode) -> io::Result<Flock> {
        flock(&file, mode.op())?;
        Ok(Flock { file })
    }

    /// Locks `file` without waiting: `None` (and `file` closed) if a conflicting lock is held.
    pub fn try_lock(file: File, mode: Mode) -> io::Result<Option<Flock>> {
        match flock(&file, mode.op() | libc::LOCK_NB) {
            Ok(()) => Ok(Some(Flock { file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`open_lock_file`] then [`Flock::lock`].
    pub fn acquire(path: &Path, mode: Mode) -> io::Result<Flock> {
        Flock::lock(open_lock_file(path)?, mode)
    }
}

impl AsRawFd for Flock {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Flock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_at(path: &Path, mode: Mode) -> Option<Flock> {
        Flock::try_lock(open_lock_file(path).unwrap(), mode).unwrap()
    }

    #[test]
    fn exclusive_excludes_everyone_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let held = Flock::acquire(&p, Mode::Exclusive).unwrap();
        assert!(try_at(&p, Mode::Shared).is_none());
        assert!(try_at(&p, Mode::Exclusive).is_none());
        drop(held);
        assert!(try_at(&p, Mode::Exclusive).is_some());
    }

    #[test]
    fn shared_admits_shared_not_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let a = Flock::acquire(&p, Mode::Shared).unwrap();
        let b = Flock::acquire(&p, Mode::Shared).unwrap();
        assert!(try_at(&p, Mode::Exclusive).is_none());
        drop(a);
        assert!(try_at(&p, Mode::Exclusive).is_none());
        drop(b);
        assert!(try_at(&p, Mode::Exclusive).is_some());
    }

    #[test]
    fn blocking_lock_waits_for_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let held = Flock::acquire(&p, Mode::Exclusive).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let l = Flock::acquire(&p2, Mode::Shared).unwrap();
            tx.send(()).unwrap();
            drop(l);
        });
        // Still blocked while we hold it.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn lock_file_is_created_not_truncated_and_close_on_exec() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        std::fs::write(&p, b"keep").unwrap();
        let l = Flock::acquire(&p, Mode::Exclusive).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        // SAFETY: F_GETFD on a descriptor `l` owns.
        let flags = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        let fresh = d.path().join("new");
        drop(Flock::acquire(&fresh, Mode::Shared).unwrap());
        assert!(fresh.exists());
    }

    #[test]
    fn directories_can_be_locked() {
        // Pod liveness is a lock on the pod directory, opened read-only.
        let d = tempfile::tempdir().unwrap();
        let l = Flock::try_lock(File::open(d.path()).unwrap(), Mode::Exclusive).unwrap();
        assert!(l.is_some());
        let again = Flock::try_lock(File::open(d.path()).unwrap(), Mode::Shared).unwrap();
        assert!(again.is_none());
    }
}
