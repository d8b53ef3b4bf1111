//! Opening a tap device in the calling thread's network namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::HDR_LEN;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
// _IOW('T', 202, int), _IOW('T', 216, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
// _IOW('T', 208, unsigned int)
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// TUNSETOFFLOAD bits: what the reader of the tap (here: the guest) takes from the kernel.
/// `CSUM`: frames may carry a partial checksum (`NEEDS_CSUM`); `TSO4`/`TSO6` (need `CSUM`):
/// frames may be TCP segments up to 64 KiB for the reader to cut (a GSO header).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating if needed) tap `name`, non-blocking, with a virtio-net v1 header on every
/// frame.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad tap name"));
    }
    // SAFETY: open(2) of a constant path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let sz: libc::c_int = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &sz) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Tells the tap which offloads its reader takes (`TUN_F_*`; 0: every frame is a complete,
/// checksummed frame of at most the MTU, what a tap does before it is told anything). What a
/// writer sends (a GSO or partial-checksum header on TX) needs no setting: a `IFF_VNET_HDR` tap
/// always takes it.
pub fn set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes the flags by value; a non-tap fd just fails.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, flags as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        for n in ["", "a/b", "0123456789abcdef"] {
            assert!(open_tap(n).is_err(), "{n:?}");
        }
    }

    /// Needs root: a tap in a network namespace of its own (from a thread, as the VMM does).
    #[test]
    fn opens_a_tap_with_a_vnet_header() {
        if !nix_is_root() {
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let fd = open_tap("rkttest0").unwrap();
            // SAFETY: if_nametoindex reads a NUL-terminated string.
            let idx = unsafe { libc::if_nametoindex(c"rkttest0".as_ptr()) };
            assert!(idx > 0);
            // Link down: nothing to read, and the fd is non-blocking.
            let mut b = [0u8; 64];
            // SAFETY: read(2) into a local buffer.
            let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
            assert_eq!(r, -1);
        })
        .join()
        .unwrap();
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
