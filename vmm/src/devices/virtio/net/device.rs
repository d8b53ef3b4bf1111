use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use crate::arch::boot::GuestMem;
use crate::devices::virtio::queue::{bufs_len, collect_chain, gather, scatter, Buf};
use crate::devices::virtio::{
    read_config_bytes, ActiveQueues, VirtioDevice, DEVICE_TOKEN_BASE, TYPE_NET,
};
use crate::event::EventOps;

/// `virtio_net_hdr_v1` (with `num_buffers`): what a v1 device puts before every frame, and what
/// the tap is told to use (TUNSETVNETHDRSZ), so headers pass through unchanged.
pub const HDR_LEN: usize = 12;
/// Largest header + frame handled: a 64 KiB TSO segment (IP total length <= 65535) with its
/// Ethernet and VLAN headers. The bound also keeps a hostile or confused peer from making us
/// allocate.
pub const MAX_FRAME: usize = HDR_LEN + 18 + 65535;

// Feature bits (virtio spec 5.1.3).
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_MRG_RXBUF: u64 = 1 << 15;
/// Checksum and TSO both ways: what the tap can take and give.
const OFFLOADS: u64 =
    F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;

// Header fields (virtio spec 5.1.6).
const HDR_F_NEEDS_CSUM: u8 = 1;
const HDR_F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const TOKEN_BACKEND: u32 = DEVICE_TOKEN_BASE;
/// Frames moved per event at most, so a flood cannot hold the event loop.
const BUDGET: usize = 256;

/// Tells the backend which `TUN_F_*` offloads the guest takes (TUNSETOFFLOAD on a tap).
pub type SetOffload = fn(RawFd, u32) -> io::Result<()>;

/// The offered features, from `RKT_VIRTIO_NET_OFFLOAD` (a diagnostic, to measure the device
/// with and without offloads in the same conditions): `0` offers none (the old device: every
/// frame at most MTU-sized, checksummed by the host), `nomrg` checksum/TSO without mergeable RX
/// buffers (the guest posts 64 KiB chains), anything else (the default) all of them.
pub fn offload_mode() -> &'static str {
    match std::env::var("RKT_VIRTIO_NET_OFFLOAD").as_deref() {
        Ok("0") => "0",
        Ok("nomrg") => "nomrg",
        _ => "all",
    }
}

fn mode_features(mode: &str) -> u64 {
    match mode {
        "0" => 0,
        "nomrg" => OFFLOADS,
        _ => OFFLOADS | F_MRG_RXBUF,
    }
}

pub struct Net {
    fd: OwnedFd,
    mac: [u8; 6],
    mtu: u16,
    /// Offload features offered (a subset of `OFFLOADS | F_MRG_RXBUF`); none when the backend
    /// refused TUNSETOFFLOAD.
    offered: u64,
    set_offload: Option<SetOffload>,
    active: Option<ActiveQueues>,
    debug: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for RX buffers from the guest.
    pending: Option<usize>,
    /// The backend is not polled while a frame waits for the guest (level-triggered epoll
    /// would spin); RX buffers from the guest re-arm it.
    paused: bool,
    /// Scratch for the chains one merged frame is spread over.
    chains: Vec<(u16, Vec<Buf>)>,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub dropped: u64,
}

/// What happened to the frame waiting in `rx_buf`.
enum Rx {
    Delivered,
    /// Not enough RX buffers yet: the frame keeps waiting, the chains went back to the ring.
    NoBuffers,
    /// Dropped; the chains it took went back to the guest with 0 bytes.
    Dropped,
}

impl Net {
    /// `fd`: a non-blocking backend that reads and writes one frame (with its 12-byte header)
    /// per call, e.g. [`super::tap::open_tap`]. Offloads are offered when the fd takes
    /// TUNSETOFFLOAD (a tap), as `RKT_VIRTIO_NET_OFFLOAD` allows ([`offload_mode`]).
    pub fn new(fd: OwnedFd, mac: [u8; 6], mtu: u16, debug: bool) -> Self {
        let want = mode_features(offload_mode());
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let tap = want != 0
            && super::tap::set_offload(fd.as_raw_fd(), all).is_ok()
            && super::tap::set_offload(fd.as_raw_fd(), 0).is_ok();
        if debug && want != 0 && !tap {
            eprintln!("rkt-vmm: virtio-net: the backend refuses TUNSETOFFLOAD: no offloads");
        }
        let (offered, set) = if tap {
            (want, Some(super::tap::set_offload as SetOffload))
        } else {
            (0, None)
        };
        Self::with_offload(fd, mac, mtu, debug, offered, set)
    }

    /// A device offering the offload features `offered` (masked to what it implements),
    /// telling the backend what the guest acked through `set_offload` (tests, the fuzz target).
    pub fn with_offload(
        fd: OwnedFd,
        mac: [u8; 6],
        mtu: u16,
        debug: bool,
        offered: u64,
        set_offload: Option<SetOffload>,
    ) -> Self {
        let offered = if set_offload.is_some() {
            offered & (OFFLOADS | F_MRG_RXBUF)
        } else {
            0
        };
        Net {
            fd,
            mac,
            mtu,
            offered,
            set_offload,
            active: None,
            debug,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            pending: None,
            paused: false,
            chains: Vec::new(),
            rx_frames: 0,
            tx_frames: 0,
            dropped: 0,
        }
    }

    fn acked(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.acked_features)
    }

    /// The `TUN_F_*` bits for what the guest acked: its RX side (GUEST_*) is what the tap may
    /// send it. TSO without checksum offload is not a valid combination (spec 5.1.3.1).
    fn tun_flags(acked: u64) -> u32 {
        if acked & F_GUEST_CSUM == 0 {
            return 0;
        }
        let mut f = TUN_F_CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if acked & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        f
    }

    fn apply_offload(&self, flags: u32) {
        if let Some(set) = self.set_offload {
            if let Err(e) = set(self.fd.as_raw_fd(), flags) {
                // The tap keeps what it had (0 after `new`/reset): frames stay plain, which
                // every guest takes.
                if self.debug {
                    eprintln!("rkt-vmm: virtio-net: TUNSETOFFLOAD {flags:#x}: {e}");
                }
            }
        }
    }

    /// Checks a guest's TX header against what it acked and returns the one the tap gets, or
    /// None to drop the frame. Without CSUM the header must mean nothing: it is zeroed, as the
    /// device did before offloads. With it, only the GSO types the guest acked pass.
    fn tx_header(acked: u64, h: &mut [u8]) -> bool {
        if acked & F_CSUM == 0 {
            h.fill(0);
            return true;
        }
        let ok = match h[1] {
            GSO_NONE => true,
            GSO_TCPV4 => acked & F_HOST_TSO4 != 0,
            GSO_TCPV6 => acked & F_HOST_TSO6 != 0,
            // UDP, ECN, UDP_L4: not offered.
            _ => false,
        };
        h[0] &= HDR_F_NEEDS_CSUM;
        h[10..12].fill(0);
        ok
    }

    /// Checks the backend's RX header against what the guest acked (the tap was told, but a
    /// frame queued before TUNSETOFFLOAD, or another backend, could still carry more): a frame
    /// the guest cannot take is dropped rather than handed over half-checksummed.
    fn rx_header_ok(acked: u64, h: &mut [u8]) -> bool {
        if acked & F_GUEST_CSUM == 0 {
            h[0] &= !HDR_F_DATA_VALID;
            if h[0] & HDR_F_NEEDS_CSUM != 0 {
                return false;
            }
        }
        match h[1] {
            GSO_NONE => true,
            GSO_TCPV4 => acked & F_GUEST_TSO4 != 0,
            GSO_TCPV6 => acked & F_GUEST_TSO6 != 0,
            _ => false,
        }
    }

    fn tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let acked = a.acked_features;
        let (fd, buf, debug) = (self.fd.as_raw_fd(), &mut self.tx_buf, self.debug);
        let (mut sent, mut dropped) = (0u64, 0u64);
        a.drain_queue(TX, |mem, chain| {
            match collect_chain(chain, mem, MAX_FRAME as u64) {
                Ok(bufs) => {
                    let n = bufs_len(&bufs, false);
                    if n <= HDR_LEN
                        || gather(mem, &bufs, 0, &mut buf[..n]) != n
                        || !Self::tx_header(acked, &mut buf[..HDR_LEN])
                    {
                        dropped += 1;
                        return 0;
                    }
                    // SAFETY: write(2) of our buffer to our fd. The tap checks the header
                    // again (virtio_net_hdr_to_skb) and refuses a frame whose GSO fields lie.
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
                if r <= HDR_LEN || !Self::rx_header_ok(self.acked(), &mut self.rx_buf[..HDR_LEN]) {
                    self.dropped += 1;
                    continue;
                }
                self.pending = Some(r);
            }
            let n = self.pending.unwrap_or_default();
            let Some(a) = self.active.as_mut() else {
                // No driver yet: frames are dropped, as on a NIC that is down.
                self.pending = None;
                self.dropped += 1;
                continue;
            };
            let mrg = a.acked_features & F_MRG_RXBUF != 0;
            let mem = &a.mem;
            let Some(q) = a.queues.get_mut(RX) else {
                break;
            };
            let frame = &mut self.rx_buf[..n];
            let r = if mrg {
                rx_merged(q, mem, frame, &mut self.chains, self.debug)
            } else {
                rx_one(q, mem, frame, self.debug)
            };
            match r {
                Some(Rx::Delivered) => {
                    self.pending = None;
                    self.rx_frames += 1;
                    used_any = true;
                }
                Some(Rx::Dropped) => {
                    self.pending = None;
                    self.dropped += 1;
                    used_any = true;
                }
                Some(Rx::NoBuffers) | None => {
                    stalled = true;
                    break;
                }
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

/// Without MRG_RXBUF: the frame goes into one chain (num_buffers = 1), which the guest made
/// big enough for what it acked (64 KiB chains with GUEST_TSO). None: no chain available.
fn rx_one(q: &mut Queue, mem: &GuestMem, frame: &mut [u8], debug: bool) -> Option<Rx> {
    let chain = q.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let n = frame.len();
    let r = match collect_chain(chain, mem, u64::from(u32::MAX)) {
        Ok(bufs) if bufs_len(&bufs, true) >= n => {
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            if scatter(mem, &bufs, 0, frame) == n {
                Rx::Delivered
            } else {
                Rx::Dropped
            }
        }
        // Buffers too small for the frame (or not writable): the frame is dropped.
        Ok(_) => Rx::Dropped,
        Err(e) => {
            if debug {
                eprintln!("rkt-vmm: virtio-net: bad RX chain from the guest: {e}");
            }
            Rx::Dropped
        }
    };
    let len = if matches!(r, Rx::Delivered) { n } else { 0 };
    let _ = q.add_used(mem, head, len as u32);
    Some(r)
}

/// With MRG_RXBUF: the frame is spread over as many chains as it needs, `num_buffers` in the
/// header says how many, each chain is returned with the bytes it got. When the ring runs out
/// part-way the chains are put back (the frame waits for more); a bad chain drops the frame
/// and returns every chain taken with 0 bytes.
fn rx_merged(
    q: &mut Queue,
    mem: &GuestMem,
    frame: &mut [u8],
    chains: &mut Vec<(u16, Vec<Buf>)>,
    debug: bool,
) -> Option<Rx> {
    chains.clear();
    let n = frame.len();
    let mut room = 0usize;
    let mut bad = false;
    while room < n {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            for _ in 0..chains.len() {
                q.go_to_previous_position();
            }
            chains.clear();
            return Some(Rx::NoBuffers);
        };
        let head = chain.head_index();
        match collect_chain(chain, mem, u64::from(u32::MAX)) {
            // The first chain must hold the whole header (num_buffers is written there).
            Ok(bufs) => {
                let w = bufs_len(&bufs, true);
                let min = if chains.is_empty() { HDR_LEN } else { 1 };
                bad = w < min;
                room += w;
                chains.push((head, bufs));
            }
            Err(e) => {
                if debug {
                    eprintln!("rkt-vmm: virtio-net: bad RX chain from the guest: {e}");
                }
                bad = true;
                chains.push((head, Vec::new()));
            }
        }
        if bad {
            break;
        }
    }
    if bad {
        for (head, _) in chains.drain(..) {
            let _ = q.add_used(mem, head, 0);
        }
        return Some(Rx::Dropped);
    }
    // At most one chain per ring entry, so the count fits the u16.
    frame[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let mut off = 0;
    let mut short = false;
    for (head, bufs) in chains.drain(..) {
        let take = bufs_len(&bufs, true).min(n - off);
        let got = if short {
            0
        } else {
            scatter(mem, &bufs, 0, &frame[off..off + take])
        };
        short |= got != take;
        off += take;
        let _ = q.add_used(mem, head, got as u32);
    }
    Some(if short { Rx::Dropped } else { Rx::Delivered })
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU | self.offered
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
        // Also the path of a restored snapshot (the transport re-activates with the saved
        // acked features), so a restored VM's new tap is told the same.
        self.apply_offload(Self::tun_flags(active.acked_features));
        self.active = Some(active);
        Ok(())
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
        self.apply_offload(0);
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
        rig_with(0, F_MAC, 16)
    }

    thread_local! {
        /// What the device told the backend through `record_offload`, per test thread.
        static OFFLOAD: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record_offload(_fd: RawFd, flags: u32) -> io::Result<()> {
        OFFLOAD.with(|o| o.borrow_mut().push(flags));
        Ok(())
    }

    fn offloads_set() -> Vec<u32> {
        OFFLOAD.with(|o| std::mem::take(&mut *o.borrow_mut()))
    }

    /// A device offering `offered` (recording TUNSETOFFLOAD), activated with `acked`.
    fn rig_with(offered: u64, acked: u64, qsize: u16) -> Rig {
        let mem = create_memory(1 << 20).unwrap();
        let rxq = DriverQueue::at(qsize, 0x1_0000);
        let txq = DriverQueue::at(qsize, 0x2_0000);
        let (ours, peer) = pair();
        let mut net = if offered == 0 {
            Net::new(ours, [2, 0, 0, 0, 0, 1], 1500, false)
        } else {
            Net::with_offload(
                ours,
                [2, 0, 0, 0, 0, 1],
                1500,
                false,
                offered,
                Some(record_offload),
            )
        };
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        net.init_events(&mut EventOps::new(&epoll, 0)).unwrap();
        net.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![rxq.queue(), txq.queue()],
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            acked_features: acked,
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

    const ALL: u64 = OFFLOADS | F_MRG_RXBUF;
    /// A Linux guest's ack with offloads on (no MRG_RXBUF: its big-packets mode).
    const GUEST_ACK: u64 = F_MAC | OFFLOADS;

    fn gso_frame(gso: u8, payload_len: usize) -> Vec<u8> {
        // NEEDS_CSUM, gso_type, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
        let mut f = vec![1, gso, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        f.extend((0..payload_len).map(|i| (i % 251) as u8));
        f
    }

    #[test]
    fn offloads_are_offered_only_over_a_backend_that_takes_them() {
        // A socketpair refuses TUNSETOFFLOAD: the device offers what it did before.
        let (ours, _peer) = pair();
        let n = Net::new(ours, [2, 0, 0, 0, 0, 1], 1500, false);
        assert_eq!(n.features(), F_MAC | F_MTU);
        let (ours, _peer) = pair();
        let n = Net::with_offload(ours, [0; 6], 1500, false, u64::MAX, Some(record_offload));
        assert_eq!(
            n.features(),
            F_MAC | F_MTU | ALL,
            "masked to what is implemented"
        );
        let (ours, _peer) = pair();
        let n = Net::with_offload(ours, [0; 6], 1500, false, ALL, None);
        assert_eq!(
            n.features(),
            F_MAC | F_MTU,
            "no way to tell the backend: nothing offered"
        );
        assert_eq!(mode_features("0"), 0);
        assert_eq!(mode_features("nomrg"), OFFLOADS);
        assert_eq!(mode_features("all"), ALL);
    }

    #[test]
    fn the_tap_is_told_what_the_guest_acked_and_reset_clears_it() {
        let mut r = rig_with(ALL, GUEST_ACK, 16);
        assert_eq!(offloads_set(), vec![TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6]);
        r.net.reset();
        assert_eq!(offloads_set(), vec![0]);
        // TSO without GUEST_CSUM is not valid: the tap gets nothing.
        let _ = rig_with(ALL, F_MAC | F_GUEST_TSO4 | F_GUEST_TSO6, 16);
        assert_eq!(offloads_set(), vec![0]);
        let _ = rig_with(ALL, F_MAC | F_GUEST_CSUM | F_GUEST_TSO4, 16);
        assert_eq!(offloads_set(), vec![TUN_F_CSUM | TUN_F_TSO4]);
        // A guest that acks nothing: a plain tap.
        let _ = rig_with(ALL, F_MAC, 16);
        assert_eq!(offloads_set(), vec![0]);
    }

    #[test]
    fn tx_passes_acked_gso_headers_and_drops_the_rest() {
        let mut r = rig_with(ALL, F_MAC | F_CSUM | F_HOST_TSO4, 16);
        let good = gso_frame(GSO_TCPV4, 3000);
        let mut v6 = gso_frame(GSO_TCPV6, 100);
        let udp = gso_frame(3, 100);
        let ecn = gso_frame(GSO_TCPV4 | 0x80, 100);
        // Stray flag bits and num_buffers are cleared, the rest passes unchanged.
        v6[0] = 1;
        let mut odd = gso_frame(GSO_NONE, 50);
        odd[0] = 0xff;
        odd[10] = 7;
        for (i, f) in [&good, &v6, &udp, &ecn, &odd].iter().enumerate() {
            let addr = 0x4_0000 + 0x1_0000 * i as u64;
            r.mem.write_slice(f, GuestAddress(addr)).unwrap();
            r.txq.desc(&r.mem, i as u16, addr, f.len() as u32, 0, 0);
            r.txq.push(&r.mem, i as u16);
        }
        r.net.process_queue(TX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(recv(&r.peer).unwrap(), good);
        let got = recv(&r.peer).unwrap();
        assert_eq!(&got[..HDR_LEN], &[1, 0, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0]);
        assert_eq!(&got[HDR_LEN..], &odd[HDR_LEN..]);
        assert!(
            recv(&r.peer).is_none(),
            "TCPV6 (not acked), UDP and ECN were dropped"
        );
        assert_eq!((r.net.tx_frames, r.net.dropped), (2, 3));
    }

    #[test]
    fn rx_puts_a_64k_gso_frame_into_one_big_chain() {
        let mut r = rig_with(ALL, GUEST_ACK, 32);
        let f = gso_frame(GSO_TCPV4, 65_535 + 14 - 66 + 66);
        assert!(f.len() <= MAX_FRAME);
        send(&r.peer, &f);
        // The Linux big-packets layout: the header alone, then 17 pages.
        r.rxq.desc(&r.mem, 0, 0x3_0000, HDR_LEN as u32, W | N, 1);
        for i in 1..=17u16 {
            let next = if i < 17 { N } else { 0 };
            let addr = 0x4_0000 + 0x1000 * u64::from(i);
            r.rxq.desc(&r.mem, i, addr, 4096, W | next, i + 1);
        }
        r.rxq.push(&r.mem, 0);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 0).1, f.len() as u32);
        let mut hdr = [0u8; HDR_LEN];
        r.mem.read_slice(&mut hdr, GuestAddress(0x3_0000)).unwrap();
        assert_eq!(&hdr[..10], &f[..10], "GSO fields reach the guest unchanged");
        assert_eq!(&hdr[10..], &[1, 0]);
        let mut body = vec![0u8; f.len() - HDR_LEN];
        r.mem.read_slice(&mut body, GuestAddress(0x4_1000)).unwrap();
        assert_eq!(body, &f[HDR_LEN..]);
        assert_eq!(r.net.rx_frames, 1);
    }

    #[test]
    fn rx_refuses_what_the_guest_did_not_ack() {
        // Only checksum offload acked: a TSO frame or a partial checksum the guest cannot
        // take is dropped, not handed over.
        let mut r = rig_with(ALL, F_MAC | F_GUEST_CSUM, 16);
        send(&r.peer, &gso_frame(GSO_TCPV4, 3000));
        let mut plain = gso_frame(GSO_NONE, 100);
        send(&r.peer, &plain);
        r.rxq.desc(&r.mem, 0, 0x4_0000, 8192, W, 0);
        r.rxq.push(&r.mem, 0);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 0).1, plain.len() as u32);
        assert_eq!((r.net.rx_frames, r.net.dropped), (1, 1));
        // Nothing acked: NEEDS_CSUM is dropped, DATA_VALID cleared.
        let mut r = rig_with(ALL, F_MAC, 16);
        send(&r.peer, &plain);
        plain[0] = HDR_F_DATA_VALID;
        send(&r.peer, &plain);
        r.rxq.desc(&r.mem, 0, 0x4_0000, 8192, W, 0);
        r.rxq.push(&r.mem, 0);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!((r.net.rx_frames, r.net.dropped), (1, 1));
        let mut hdr = [0u8; HDR_LEN];
        r.mem.read_slice(&mut hdr, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(hdr[0], 0);
    }

    #[test]
    fn rx_merges_buffers_waits_for_more_and_survives_bad_chains() {
        let mut r = rig_with(ALL, GUEST_ACK | F_MRG_RXBUF, 32);
        let f = gso_frame(GSO_TCPV4, 10_000); // 10 012 bytes: three 4 KiB buffers
        send(&r.peer, &f);
        // Two buffers: not enough; both go back to the ring and the frame waits.
        for i in 0..2u16 {
            r.rxq
                .desc(&r.mem, i, 0x4_0000 + 0x1000 * u64::from(i), 4096, W, 0);
            r.rxq.push(&r.mem, i);
        }
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 0).2, 0, "nothing used yet");
        assert_eq!(r.net.pending, Some(f.len()));
        assert!(r.net.paused);
        r.rxq.desc(&r.mem, 2, 0x4_2000, 4096, W, 0);
        r.rxq.push(&r.mem, 2);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        let lens: Vec<u32> = (0..3).map(|i| r.rxq.used_elem(&r.mem, i).1).collect();
        assert_eq!(lens, vec![4096, 4096, (f.len() - 8192) as u32]);
        let ids: Vec<u32> = (0..3).map(|i| r.rxq.used_elem(&r.mem, i).0).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        let mut got = vec![0u8; f.len()];
        r.mem.read_slice(&mut got, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&got[10..12], &[3, 0], "num_buffers");
        assert_eq!(&got[..10], &f[..10]);
        assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
        assert!(!r.net.paused);
        // A first buffer smaller than the header: dropped, the chain returned with 0 bytes.
        send(&r.peer, &f);
        r.rxq.desc(&r.mem, 3, 0x4_0000, 4, W, 0);
        r.rxq.push(&r.mem, 3);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        assert_eq!(r.rxq.used_elem(&r.mem, 3), (3, 0, 4));
        // Two good buffers, then one outside RAM: dropped, all three returned with 0 bytes.
        send(&r.peer, &f);
        for i in 4..6u16 {
            r.rxq
                .desc(&r.mem, i, 0x4_0000 + 0x1000 * u64::from(i), 4096, W, 0);
            r.rxq.push(&r.mem, i);
        }
        r.rxq.desc(&r.mem, 6, 0xdead_0000, 4096, W, 0);
        r.rxq.push(&r.mem, 6);
        r.net.process_queue(RX, &mut EventOps::new(&r.epoll, 0));
        let tail: Vec<(u32, u32)> = (4..7)
            .map(|i| {
                let (id, len, _) = r.rxq.used_elem(&r.mem, i);
                (id, len)
            })
            .collect();
        assert_eq!(tail, vec![(4, 0), (5, 0), (6, 0)]);
        assert_eq!((r.net.rx_frames, r.net.dropped), (1, 2));
    }

    /// Needs root: a real tap in a private network namespace takes the offloads the guest
    /// acked (read back with ETHTOOL_GTSO / ETHTOOL_GTXCSUM, as `ethtool -k` would).
    #[test]
    fn a_real_tap_gets_tso_when_the_guest_acks_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let fd = super::super::tap::open_tap("rkttso0").unwrap();
            let mem = create_memory(1 << 20).unwrap();
            let mut net = Net::new(fd, [2, 0, 0, 0, 0, 1], 1500, false);
            if offload_mode() != "all" {
                return;
            }
            assert_eq!(net.features() & ALL, ALL);
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTSO), 0, "off until acked");
            let activate = |net: &mut Net, acked| {
                net.activate(ActiveQueues {
                    mem: mem.clone(),
                    queues: vec![
                        DriverQueue::at(16, 0x1_0000).queue(),
                        DriverQueue::at(16, 0x2_0000).queue(),
                    ],
                    interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                    acked_features: acked,
                })
                .unwrap()
            };
            activate(&mut net, GUEST_ACK);
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTSO), 1);
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTXCSUM), 1);
            net.reset();
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTSO), 0);
            activate(&mut net, F_MAC);
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTSO), 0);
            assert_eq!(ethtool_get("rkttso0", ETHTOOL_GTXCSUM), 0);
        })
        .join()
        .unwrap();
    }

    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const ETHTOOL_GTSO: u32 = 0x1e;

    /// An ethtool "get value" command on `ifname` (SIOCETHTOOL).
    fn ethtool_get(ifname: &str, cmd: u32) -> u32 {
        #[repr(C)]
        struct Req {
            name: [u8; libc::IFNAMSIZ],
            data: *mut [u32; 2],
            _pad: [u8; 16],
        }
        let mut val = [cmd, 0u32];
        let mut req = Req {
            name: [0; libc::IFNAMSIZ],
            data: &mut val,
            _pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: a datagram socket for the ioctl, closed below.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(s >= 0);
        // SAFETY: SIOCETHTOOL reads the ifreq and writes the ethtool_value it points to.
        let r = unsafe { libc::ioctl(s, libc::SIOCETHTOOL as _, &mut req) };
        // SAFETY: our socket.
        unsafe { libc::close(s) };
        assert_eq!(
            r,
            0,
            "SIOCETHTOOL {cmd:#x} on {ifname}: {}",
            io::Error::last_os_error()
        );
        val[1]
    }
}
