//! Drives the virtio-mmio transport and the rng/vsock/fs/net devices the way a hostile guest could.
//! Input: [device][op count N] N ops of 6 bytes (register write/read/odd-size write/queue
//! notification), then the rest is copied to guest RAM at 0 (descriptor tables, rings, buffers).
//!   cargo +nightly fuzz run virtio_mmio      (from this directory, with cargo-fuzz installed)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkt_vmm::arch::boot::create_memory;
use rkt_vmm::devices::virtio::mmio::MmioTransport;
use rkt_vmm::devices::virtio::{Interrupt, VirtioDevice};
use rkt_vmm::event::{EventOps, Subscriber};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 1 << 20;
const IMAGE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (which, nops, rest) = (data[0], usize::from(data[1]), &data[2..]);
    let (ops, image) = rest.split_at(rest.len().min(nops * 6));
    let image = &image[..image.len().min(IMAGE)];
    let mem = create_memory(MEM).unwrap();
    mem.write_slice(image, GuestAddress(0)).unwrap();

    let dir = tempfile_dir();
    // virtio-net's backend: a socketpair whose other end holds frames for the RX path: a
    // header-only one, then one whose length (from the device byte: up to ~2.3 KiB, past the
    // 1514-byte frames a 1500 MTU allows; with offloads offered, bit 2, up to ~64 KiB, a TSO
    // segment) the guest's RX buffers, merged or not, may or may not fit. Its virtio-net
    // header is the input's last 12 bytes (GSO and checksum fields the guest may not have acked).
    let mut peer: Option<std::os::fd::OwnedFd> = None;
    let device: Box<dyn VirtioDevice> = match which % 4 {
        0 => Box::new(rkt_vmm::devices::virtio::rng::Rng::new(false)),
        1 => Box::new(
            rkt_vmm::devices::virtio::vsock::Vsock::new(3, dir.join("v.sock"), false).unwrap(),
        ),
        2 => Box::new(rkt_vmm::devices::virtio::fs::Fs::new("rkt", &dir, false).unwrap()),
        _ => {
            let (ours, theirs) = seqpacket_pair();
            let offload = which & 4 != 0;
            let len = if offload {
                12 + usize::from(which >> 3) * 2111
            } else {
                12 + usize::from(which >> 2) * 37
            };
            let mut frame = vec![0xa5u8; len];
            let tail = &data[data.len().saturating_sub(12)..];
            frame[..tail.len()].copy_from_slice(tail);
            for f in [&frame[..12], &frame[..]] {
                // SAFETY: write(2) of a local buffer.
                unsafe {
                    libc::write(
                        std::os::fd::AsRawFd::as_raw_fd(&theirs),
                        f.as_ptr().cast(),
                        f.len(),
                    )
                };
            }
            peer = Some(theirs);
            if offload {
                // Every offload offered; the backend's TUNSETOFFLOAD is a no-op.
                Box::new(rkt_vmm::devices::virtio::net::Net::with_offload(
                    ours,
                    [2, 0, 0, 0, 0, 1],
                    1500,
                    false,
                    u64::MAX,
                    Some(|_, _| Ok(())),
                ))
            } else {
                Box::new(rkt_vmm::devices::virtio::net::Net::new(
                    ours,
                    [2, 0, 0, 0, 0, 1],
                    1500,
                    false,
                ))
            }
        }
    };
    let nq = device.queue_max_sizes().len();
    let evts = (0..nq)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let mut t = MmioTransport::new(
        device,
        mem,
        Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        evts,
        false,
    );
    let epoll = Epoll::new().unwrap();
    t.init(&mut EventOps::new(&epoll, 0)).unwrap();
    for op in ops.chunks_exact(6) {
        let off = u64::from(op[1]) * 4;
        let val = [op[2], op[3], op[4], op[5]];
        match op[0] % 4 {
            0 => t.write(off, &val),
            1 => {
                let mut d = [0u8; 4];
                t.read(off, &mut d);
            }
            2 => t.write(off, &val[..usize::from(op[2] % 4) + 1]),
            _ => t.handle(
                u32::from(op[1]) % nq as u32,
                EventSet::IN,
                &mut EventOps::new(&epoll, 0),
            ),
        }
    }
    drop(peer);
    let _ = std::fs::remove_dir_all(&dir);
});

fn seqpacket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) fills two fds we then own.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds were just created.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "rkt-vmm-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
