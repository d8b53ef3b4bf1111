use std::os::fd::{AsRawFd, OwnedFd};

use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use crate::devices::virtio::queue::{bufs_len, collect_chain, gather, scatter};
use crate::devices::virtio::{
    read_config_bytes, ActiveQueues, VirtioDevice, DEVICE_TOKEN_BASE, TYPE_NET,
};
use crate::event::EventOps;

/// `virtio_net_hdr_v1` (with `num_buffers`): what a v1 device puts before every frame, and what
/// the tap is told to use (TUNSETVNETHDRSZ), so headers pass through unchanged.
pub const HDR_LEN: usize = 12;
/// Largest header + frame handled (no GSO is negotiated, so frames are at most MTU-sized; the
/// bound only keeps a hostile or confused peer from making us allocate).
pub const MAX_FRAME: usize = HDR_LEN + 65536;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const TOKEN_BACKEND: u32 = DEVICE_TOKEN_BASE;
/// Frames moved per event at most, so a flood cannot hold the event loop.
const BUDGET: usize = 256;

pub struct Net {
    fd: OwnedFd,
    mac: [u8; 6],
    mtu: u16,
    active: Option<ActiveQueues>,
    debug: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for an RX buffer from the guest.
    pending: Option<usize>,
    /// The backend is not polled while a frame waits for the guest (level-triggered epoll
    /// would spin); RX buffers from the guest re-arm it.
    paused: bool,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub dropped: u64,
}

impl Net {
    /// `fd`: a non-blocking backend that reads and writes one frame (with its 12-byte header)
    /// per call, e.g. [`super::tap::open_tap`].
    pub fn new(fd: OwnedFd, mac: [u8; 6], mtu: u16, debug: bool) -> Self {
        Net {
            fd,
            mac,
            mtu,
            active: None,
            debug,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            pending: None,
            paused: false,
            rx_frames: 0,
            tx_frames: 0,
            dropped: 0,
        }
    }

    fn tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let (fd, buf, debug) = (self.fd.as_raw_fd(), &mut self.tx_buf, self.debug);
        let (mut sent, mut dropped) = (0u64, 0u64);
        a.drain_queue(TX, |mem, chain| {
            match collect_chain(chain, mem, MAX_FRAME as u64) {
                Ok(bufs) => {
                    let n = bufs_len(&bufs, false);
                    if n <= HDR_LEN || gather(mem, &bufs, 0, &mut buf[..n]) != n {
                        dropped += 1;
                        return 0;
                    }
                    // No offload is negotiated, so the header must be all zeroes; the tap
                    // would act on a guest's GSO or checksum request, so it never sees one.
                    buf[..HDR_LEN].fill(0);
                    // SAFETY: write(2) of our buffer to our fd.
                    let w = unsafe { libc::write(fd, buf.as_ptr().cast(), n) };
                    // A full backend drops the frame, as a NIC would.
                    if w == n as isize {
                        sent += 1;
                    } else {
                        dropped += 1;
                    }
                }
                Err(e) => {
                    dropped += 1;
                    if debug {
                        eprintln!("rkt-vmm: virtio-net: bad TX chain from the guest: {e}");
                    }
                }
            }
            0
        });
        self.tx_frames += sent;
        self.dropped += dropped;
    }

    /// Moves frames from the backend into the guest's RX buffers. Returns false when a frame
    /// waits for buffers (the backend should not be polled until the guest adds some).
    fn rx(&mut self) -> bool {
        let fd = self.fd.as_raw_fd();
        let mut used_any = false;
        let mut stalled = false;
        for _ in 0..BUDGET {
            if self.pending.is_none() {
                // SAFETY: read(2) into our buffer from our fd.
                let r = unsafe { libc::read(fd, self.rx_buf.as_mut_ptr().cast(), MAX_FRAME) };
                if r < 0 {
                    break; // EAGAIN (nothing more) or an error: nothing to deliver
                }
                let r = r as usize;
                if r <= HDR_LEN {
                    self.dropped += 1;
                    continue;
                }
                self.pending = Some(r);
            }
            let Some(a) = self.active.as_mut() else {
                // No driver yet: frames are dropped, as on a NIC that is down.
                self.pending = None;
                self.dropped += 1;
                continue;
            };
            let n = self.pending.unwrap_or_default();
            let mem = &a.mem;
            let Some(q) = a.queues.get_mut(RX) else {
                break;
            };
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                stalled = true;
                break;
            };
            let head = chain.head_index();
            let len = match collect_chain(chain, mem, u64::from(u32::MAX)) {
                Ok(bufs) if bufs_len(&bufs, true) >= n => {
                    // num_buffers = 1: the frame fits one chain (no MRG_RXBUF).
                    self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    self.pending = None;
                    if scatter(mem, &bufs, 0, &self.rx_buf[..n]) == n {
                        self.rx_frames += 1;
                        n as u32
                    } else {
                        self.dropped += 1;
                        0
                    }
                }
                Ok(_) => {
                    // Buffers too small for the frame: the frame is dropped, the chain returned.
                    self.pending = None;
                    self.dropped += 1;
                    0
                }
                Err(e) => {
                    if self.debug {
                        eprintln!("rkt-vmm: virtio-net: bad RX chain from the guest: {e}");
                    }
                    0
                }
            };
            if q.add_used(mem, head, len).is_ok() {
                used_any = true;
            }
        }
        if used_any {
            if let Some(a) = &self.active {
                let _ = a.interrupt.signal_used_queue();
            }
        }
        !stalled
    }

    fn set_polling(&mut self, on: bool, ops: &mut EventOps) {
        if on != self.paused {
            return;
        }
        let ev = if on { EventSet::IN } else { EventSet::empty() };
        if ops.modify(self.fd.as_raw_fd(), TOKEN_BACKEND, ev).is_ok() {
            self.paused = !on;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (no VIRTIO_NET_F_STATUS: unused), max_virtqueue_pairs = 1, mtu.
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&1u16.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> anyhow::Result<()> {
        if active.queues.len() != 2 || !active.queues.iter().all(|q| q.ready()) {
            anyhow::bail!("virtio-net needs its RX and TX queues");
        }
        self.active = Some(active);
        Ok(())
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn process_queue(&mut self, index: usize, ops: &mut EventOps) {
        match index {
            TX => self.tx(),
            RX => {
                let drained = self.rx();
                self.set_polling(drained, ops);
            }
            _ => {}
        }
    }

    fn init_events(&mut self, ops: &mut EventOps) -> std::io::Result<()> {
        ops.add(self.fd.as_raw_fd(), TOKEN_BACKEND, EventSet::IN)
    }

    fn handle_event(&mut self, token: u32, _events: EventSet, ops: &mut EventOps) {
        if token == TOKEN_BACKEND {
            let drained = self.rx();
            self.set_polling(drained, ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot::create_memory;
    use crate::devices::virtio::queue::testutil::DriverQueue;
    use crate::devices::virtio::Interrupt;
    use std::os::fd::FromRawFd;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const N: u16 = 1; // VRING_DESC_F_NEXT

    fn pair() -> (OwnedFd, OwnedFd) {
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
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    struct Rig {
        mem: crate::arch::boot::GuestMem,
        rxq: DriverQueue,
        txq: DriverQueue,
        net: Net,
        peer: OwnedFd,
        epoll: vmm_sys_util::epoll::Epoll,
    }

    fn rig() -> Rig {
        let mem = create_memory(1 << 20).unwrap();
        let rxq = DriverQueue::at(16, 0x1_0000);
        let txq = DriverQueue::at(16, 0x2_0000);
        let (ours, peer) = pair();
        let mut net = Net::new(ours, [2, 0, 0, 0, 0, 1], 1500, false);
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        net.init_events(&mut EventOps::new(&epoll, 0)).unwrap();
        net.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![rxq.queue(), txq.queue()],
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            acked_features: F_MAC,
        })
        .unwrap();
        Rig {
            mem,
            rxq,
            txq,
            net,
            peer,
            epoll,
        }
    }

    fn send(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: write(2) of a slice.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }

    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut b = vec![0u8; MAX_FRAME];
        // SAFETY: read(2) into a buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        (n >= 0).then(|| {
            b.truncate(n as usize);
            b
        })
    }

    #[test]
    fn config_space_has_mac_and_mtu() {
        let r = rig();
        let mut c = [0u8; 12];
        r.net.read_config(0, &mut c);
        assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
        let mut past = [0xffu8; 4];
        r.net.read_config(100, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn tx_sends_frames_and_survives_bad_chains() {
        let mut r = rig();
        let f = frame(b"hello-frame");
        // Header and payload split over two descriptors.
        r.mem
            .write_slice(&f[..HDR_LEN], GuestAddress(0x8000))
            .unwrap();
        r.mem
            .write_slice(&f[HDR_LEN..], GuestAddress(0x9000))
            .unwrap();
        r.txq.desc(&r.mem, 0, 0x8000, HDR_LEN as u32, N, 1);
        r.txq
            .desc(&r.mem, 1, 0x9000, (f.len() - HDR_LEN) as u32, 0, 0);
        // A loop, a buffer outside RAM, a header-only frame.
        r.txq.desc(&r.mem, 2, 0x8000, 8, N, 2);
        r.txq.desc(&r.mem, 3, 0xdead_0000, 64, 0, 0);
        r.txq.desc(&r.mem, 4, 0x8000, HDR_LEN as u32, 0, 0);
        for h in [0, 2, 3, 4] {
            r.txq.push(&r.mem, h);
        }
        r.net.process_queue(TX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(recv(&r.peer).unwrap(), f);
        assert!(recv(&r.peer).is_none(), "only the good frame went out");
        assert_eq!((r.net.tx_frames, r.net.dropped), (1, 3));
        for i in 0..4 {
            assert_eq!(r.txq.used_elem(&r.mem, i).1, 0);
        }
    }

    #[test]
    fn tx_clears_offload_requests_in_the_header() {
        let mut r = rig();
        // flags NEEDS_CSUM, gso_type TCPV4, hdr_len, gso_size, csum_start, csum_offset set.
        let mut f = vec![1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        f.extend_from_slice(&[0x55; 100]);
        r.mem.write_slice(&f, GuestAddress(0x8000)).unwrap();
        r.txq.desc(&r.mem, 0, 0x8000, f.len() as u32, 0, 0);
        r.txq.push(&r.mem, 0);
        r.net.process_queue(TX, &mut EventOps::new(&r.epoll, 0));
        let got = recv(&r.peer).unwrap();
        assert_eq!(&got[..HDR_LEN], &[0u8; HDR_LEN]);
        assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    }

    #[test]
    fn rx_delivers_frames_waits_for_buffers_and_drops_oversized() {
        let mut r = rig();
        let f = frame(b"from-the-tap");
        send(&r.peer, &f);
        // No RX buffers yet: the frame waits and polling pauses.
        r.net
            .handle_event(TOKEN_BACKEND, EventSet::IN, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.net.pending, Some(f.len()));
        assert!(r.net.paused);
        // A buffer too small for the frame: dropped, chain returned empty.
        r.rxq.desc(&r.mem, 0, 0x8000, 8, W, 0);
        r.rxq.push(&r.mem, 0);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 0).1, 0);
        assert_eq!(r.net.dropped, 1);
        // A good buffer (two descriptors) gets the next frame, num_buffers set to 1.
        send(&r.peer, &f);
        r.rxq.desc(&r.mem, 1, 0x8000, 6, W | N, 2);
        r.rxq.desc(&r.mem, 2, 0x9000, 2000, W, 0);
        r.rxq.push(&r.mem, 1);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 1).1, f.len() as u32);
        let mut got = vec![0u8; f.len()];
        r.mem
            .read_slice(&mut got[..6], GuestAddress(0x8000))
            .unwrap();
        r.mem
            .read_slice(&mut got[6..], GuestAddress(0x9000))
            .unwrap();
        assert_eq!(&got[HDR_LEN..], b"from-the-tap");
        assert_eq!(&got[10..12], &[1, 0]);
        assert!(!r.net.paused, "polling re-armed");
        // A readable (not writable) RX buffer is refused without delivering.
        send(&r.peer, &f);
        r.rxq.desc(&r.mem, 3, 0x8000, 2000, 0, 0);
        r.rxq.push(&r.mem, 3);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 2).1, 0);
        assert_eq!(r.net.rx_frames, 1);
    }

    #[test]
    fn frames_before_activation_are_dropped() {
        let (ours, peer) = pair();
        let mut net = Net::new(ours, [2, 0, 0, 0, 0, 1], 1500, false);
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        net.init_events(&mut EventOps::new(&epoll, 0)).unwrap();
        send(&peer, &frame(b"early"));
        net.handle_event(TOKEN_BACKEND, EventSet::IN, &mut EventOps::new(&epoll, 0));
        assert_eq!((net.dropped, net.pending), (1, None));
    }
}
