//! Descriptor-chain validation on top of `virtio-queue`. The guest writes the descriptor table,
//! so a chain may loop, point outside guest RAM, hold zero-length buffers or mix readable and
//! writable buffers in the wrong order; `collect_chain` turns all of that into an error the
//! device can answer (usually by returning the chain with length 0) instead of trusting it.

use std::fmt;
use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::arch::boot::GuestMem;
use crate::devices::virtio::ActiveQueues;

/// One guest buffer of a validated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (the device fills it); otherwise device-readable.
    pub write: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// The head index or the first descriptor could not be read.
    Empty,
    /// The chain ended on a descriptor that still had NEXT set: a loop, a next index out of
    /// range, or a descriptor (or indirect table) outside guest memory.
    Broken,
    ZeroLength,
    OutOfMemory {
        addr: u64,
        len: u32,
    },
    /// A device-readable buffer after a device-writable one (spec 2.7.4.2).
    ReadAfterWrite,
    TooLarge,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ChainError::Empty => write!(f, "empty descriptor chain"),
            ChainError::Broken => write!(f, "descriptor chain loops or leaves the table"),
            ChainError::ZeroLength => write!(f, "zero-length descriptor"),
            ChainError::OutOfMemory { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} is outside guest memory")
            }
            ChainError::ReadAfterWrite => write!(f, "readable descriptor after a writable one"),
            ChainError::TooLarge => write!(f, "descriptor chain larger than allowed"),
        }
    }
}

impl std::error::Error for ChainError {}

const F_NEXT: u16 = 1;

/// Walks a chain and checks every buffer; `max_bytes` bounds the chain's total length.
pub fn collect_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMem,
    max_bytes: u64,
) -> Result<Vec<Buf>, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut bufs = Vec::new();
    let mut last: Option<Descriptor> = None;
    let mut total = 0u64;
    let mut seen_write = false;
    for d in chain {
        last = Some(d);
        if d.len() == 0 {
            return Err(ChainError::ZeroLength);
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(ChainError::OutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        total += u64::from(d.len());
        if total > max_bytes {
            return Err(ChainError::TooLarge);
        }
        let write = d.is_write_only();
        if seen_write && !write {
            return Err(ChainError::ReadAfterWrite);
        }
        seen_write |= write;
        bufs.push(Buf {
            addr: d.addr(),
            len: d.len(),
            write,
        });
    }
    match last {
        None => Err(ChainError::Empty),
        Some(d) if d.flags() & F_NEXT != 0 => Err(ChainError::Broken),
        Some(_) => Ok(bufs),
    }
}

impl ActiveQueues {
    /// Serves the chains the driver made available on queue `index`: each goes to `handle`,
    /// which returns how many bytes it wrote into the chain, and then back to the used ring;
    /// the guest gets one interrupt if anything was returned. `handle` must not trust the chain
    /// (use `collect_chain` or a transport that checks it): it answers a bad one with 0 bytes,
    /// which still returns it, so the driver does not wait for it forever. At most one pass over
    /// the ring per call, so a guest that keeps refilling cannot hold the event loop. A head the
    /// used ring cannot take (index outside the table) is dropped. Returns the bytes of the
    /// chains actually returned; an unknown `index` does nothing.
    pub fn drain_queue(
        &mut self,
        index: usize,
        mut handle: impl FnMut(&GuestMem, DescriptorChain<&GuestMem>) -> u32,
    ) -> u64 {
        let mem = &self.mem;
        let Some(q) = self.queues.get_mut(index) else {
            return 0;
        };
        let mut used_any = false;
        let mut written = 0u64;
        for _ in 0..q.size() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let n = handle(mem, chain);
            if q.add_used(mem, head, n).is_ok() {
                used_any = true;
                written += u64::from(n);
            }
        }
        if used_any {
            let _ = self.interrupt.signal_used_queue();
        }
        written
    }
}

/// Copies bytes from the device-readable buffers of a validated chain, starting `skip` bytes
/// in; returns how many were copied.
pub fn gather(mem: &GuestMem, bufs: &[Buf], skip: usize, out: &mut [u8]) -> usize {
    copy_bufs(bufs, false, skip, out.len(), |addr, range| {
        mem.read_slice(&mut out[range], addr).is_ok()
    })
}

/// Copies `data` into the device-writable buffers of a validated chain, starting `skip`
/// bytes in; returns how many were copied.
pub fn scatter(mem: &GuestMem, bufs: &[Buf], skip: usize, data: &[u8]) -> usize {
    copy_bufs(bufs, true, skip, data.len(), |addr, range| {
        mem.write_slice(&data[range], addr).is_ok()
    })
}

fn copy_bufs(
    bufs: &[Buf],
    write: bool,
    mut skip: usize,
    len: usize,
    mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> usize {
    let mut done = 0;
    for b in bufs.iter().filter(|b| b.write == write) {
        if done == len {
            break;
        }
        let blen = b.len as usize;
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = (blen - skip).min(len - done);
        // The buffer was range-checked by collect_chain, so the offset cannot overflow.
        if !copy(GuestAddress(b.addr.0 + skip as u64), done..done + n) {
            break;
        }
        done += n;
        skip = 0;
    }
    done
}

/// Total bytes of the readable (or writable) buffers.
pub fn bufs_len(bufs: &[Buf], write: bool) -> usize {
    bufs.iter()
        .filter(|b| b.write == write)
        .map(|b| b.len as usize)
        .sum()
}

/// Test helper: lays out a split queue in guest memory the way a driver would.
#[cfg(test)]
pub mod testutil {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    pub struct DriverQueue {
        pub size: u16,
        pub avail_idx: u16,
        /// Descriptor table; the avail ring is 4 KiB above, the used ring 8 KiB above.
        pub base: u64,
    }

    impl DriverQueue {
        pub fn new(size: u16) -> Self {
            Self::at(size, DESC)
        }

        pub fn at(size: u16, base: u64) -> Self {
            DriverQueue {
                size,
                avail_idx: 0,
                base,
            }
        }

        fn avail(&self) -> u64 {
            self.base + 0x1000
        }

        fn used_ring(&self) -> u64 {
            self.base + 0x2000
        }

        pub fn queue(&self) -> Queue {
            let mut q = Queue::new(self.size).unwrap();
            q.set_size(self.size);
            q.set_desc_table_address(Some(self.base as u32), Some(0));
            q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
            q.set_used_ring_address(Some(self.used_ring() as u32), Some(0));
            q.set_ready(true);
            q
        }

        pub fn set_desc(mem: &GuestMem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            DriverQueue::new(16).desc(mem, i, addr, len, flags, next)
        }

        pub fn desc(&self, mem: &GuestMem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let base = self.base + u64::from(i) * 16;
            mem.write_obj(addr, GuestAddress(base)).unwrap();
            mem.write_obj(len, GuestAddress(base + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
            mem.write_obj(next, GuestAddress(base + 14)).unwrap();
        }

        /// Offers chain `head` to the device.
        pub fn push(&mut self, mem: &GuestMem, head: u16) {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_obj(head, GuestAddress(self.avail() + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
                .unwrap();
        }

        /// (id, len) of used element `n` of the default queue, and the used index.
        pub fn used(mem: &GuestMem, n: u16) -> (u32, u32, u16) {
            DriverQueue::new(16).used_elem(mem, n)
        }

        pub fn used_elem(&self, mem: &GuestMem, n: u16) -> (u32, u32, u16) {
            let e = self.used_ring() + 4 + 8 * u64::from(n);
            (
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
                mem.read_obj(GuestAddress(self.used_ring() + 2)).unwrap(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::arch::boot::create_memory;
    use virtio_queue::QueueT;

    const W: u16 = 2;
    const N: u16 = 1;
    const IND: u16 = 4;

    fn first_chain(
        mem: &GuestMem,
        dq: &mut DriverQueue,
        head: u16,
    ) -> Result<Vec<Buf>, ChainError> {
        let mut q = dq.queue();
        dq.push(mem, head);
        let chain = q.pop_descriptor_chain(mem).expect("a chain is available");
        collect_chain(chain, mem, 1 << 20)
    }

    #[test]
    fn gather_and_scatter_span_buffers() {
        let mem = create_memory(1 << 20).unwrap();
        let bufs = [
            Buf {
                addr: GuestAddress(0x8000),
                len: 4,
                write: false,
            },
            Buf {
                addr: GuestAddress(0x9000),
                len: 4,
                write: false,
            },
            Buf {
                addr: GuestAddress(0xa000),
                len: 3,
                write: true,
            },
            Buf {
                addr: GuestAddress(0xb000),
                len: 8,
                write: true,
            },
        ];
        mem.write_slice(b"abcd", GuestAddress(0x8000)).unwrap();
        mem.write_slice(b"efgh", GuestAddress(0x9000)).unwrap();
        let mut out = [0u8; 5];
        assert_eq!(gather(&mem, &bufs, 2, &mut out), 5);
        assert_eq!(&out, b"cdefg");
        assert_eq!(scatter(&mem, &bufs, 1, b"0123456789abcdef"), 10);
        let mut w = [0u8; 8];
        mem.read_slice(&mut w[..2], GuestAddress(0xa001)).unwrap();
        assert_eq!(&w[..2], b"01");
        mem.read_slice(&mut w, GuestAddress(0xb000)).unwrap();
        assert_eq!(&w, b"23456789");
        assert_eq!((bufs_len(&bufs, false), bufs_len(&bufs, true)), (8, 11));
    }

    #[test]
    fn good_chain() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x8000, 16, N, 1);
        DriverQueue::set_desc(&mem, 1, 0x9000, 64, W, 0);
        let bufs = first_chain(&mem, &mut dq, 0).unwrap();
        assert_eq!(bufs.len(), 2);
        assert_eq!(
            bufs[1],
            Buf {
                addr: GuestAddress(0x9000),
                len: 64,
                write: true
            }
        );
    }

    #[test]
    fn loop_is_refused() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x8000, 16, N, 1);
        DriverQueue::set_desc(&mem, 1, 0x9000, 16, N, 0);
        assert_eq!(first_chain(&mem, &mut dq, 0), Err(ChainError::Broken));
    }

    #[test]
    fn self_loop_is_refused() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 3, 0x8000, 16, N, 3);
        assert_eq!(first_chain(&mem, &mut dq, 3), Err(ChainError::Broken));
    }

    #[test]
    fn next_index_out_of_table() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x8000, 16, N, 999);
        assert_eq!(first_chain(&mem, &mut dq, 0), Err(ChainError::Broken));
    }

    #[test]
    fn head_out_of_table() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        assert_eq!(first_chain(&mem, &mut dq, 40), Err(ChainError::Empty));
    }

    #[test]
    fn buffer_outside_guest_memory() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0xf_f000, 0x2000, W, 0);
        assert_eq!(
            first_chain(&mem, &mut dq, 0),
            Err(ChainError::OutOfMemory {
                addr: 0xf_f000,
                len: 0x2000
            })
        );
        // Address arithmetic that would wrap around.
        DriverQueue::set_desc(&mem, 0, u64::MAX - 4, 16, W, 0);
        assert!(matches!(
            first_chain(&mem, &mut dq, 0),
            Err(ChainError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn zero_length_descriptor() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x8000, 0, W, 0);
        assert_eq!(first_chain(&mem, &mut dq, 0), Err(ChainError::ZeroLength));
    }

    #[test]
    fn readable_after_writable() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x8000, 16, W | N, 1);
        DriverQueue::set_desc(&mem, 1, 0x9000, 16, 0, 0);
        assert_eq!(
            first_chain(&mem, &mut dq, 0),
            Err(ChainError::ReadAfterWrite)
        );
    }

    #[test]
    fn too_large() {
        let mem = create_memory(4 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x10_0000, 0x20_0000, W, 0);
        assert_eq!(first_chain(&mem, &mut dq, 0), Err(ChainError::TooLarge));
    }

    #[test]
    fn indirect_table_outside_memory() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        DriverQueue::set_desc(&mem, 0, 0x7000_0000, 32, IND, 0);
        assert_eq!(first_chain(&mem, &mut dq, 0), Err(ChainError::Empty));
    }

    #[test]
    fn indirect_chain_is_followed() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        // Indirect table at 0x5000 with two descriptors.
        use vm_memory::Bytes;
        for (i, (addr, len, flags, next)) in [(0x8000u64, 8u32, N, 1u16), (0x9000, 8, W, 0)]
            .into_iter()
            .enumerate()
        {
            let b = 0x5000 + 16 * i as u64;
            mem.write_obj(addr, GuestAddress(b)).unwrap();
            mem.write_obj(len, GuestAddress(b + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(b + 12)).unwrap();
            mem.write_obj(next, GuestAddress(b + 14)).unwrap();
        }
        DriverQueue::set_desc(&mem, 0, 0x5000, 32, IND, 0);
        let bufs = first_chain(&mem, &mut dq, 0).unwrap();
        assert_eq!(bufs.len(), 2);
        assert!(bufs[1].write);
    }

    #[test]
    fn drain_queue_returns_every_chain_and_signals_once() {
        use crate::devices::virtio::Interrupt;
        use std::sync::atomic::Ordering;
        use vmm_sys_util::eventfd::EventFd;
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut a = ActiveQueues {
            mem: mem.clone(),
            queues: vec![dq.queue()],
            interrupt: irq.clone(),
            acked_features: 0,
        };
        assert_eq!(a.drain_queue(0, |_, _| unreachable!("nothing offered")), 0);
        assert_eq!(
            irq.status.load(Ordering::SeqCst),
            0,
            "no used entry, no interrupt"
        );
        DriverQueue::set_desc(&mem, 0, 0x8000, 8, W, 0);
        DriverQueue::set_desc(&mem, 1, 0x9000, 8, N, 1); // loops
        for h in [0, 1, 40, 0] {
            dq.push(&mem, h); // 40: head outside the table, cannot be returned
        }
        let mut seen = Vec::new();
        let n = a.drain_queue(0, |mem, chain| match collect_chain(chain, mem, 1 << 20) {
            Ok(bufs) => {
                seen.push(Ok(()));
                bufs[0].len
            }
            Err(e) => {
                seen.push(Err(e));
                99 // counted only when the used ring takes the head
            }
        });
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[1], Err(ChainError::Broken));
        assert_eq!(n, 8 + 99 + 8, "the head outside the table was dropped");
        assert_eq!(DriverQueue::used(&mem, 2), (0, 8, 3));
        assert_eq!(irq.irqfd.read().unwrap(), 1, "one interrupt for the batch");
        assert_eq!(a.drain_queue(7, |_, _| unreachable!("no such queue")), 0);
    }

    #[test]
    fn avail_index_far_ahead_yields_nothing() {
        use vm_memory::Bytes;
        let mem = create_memory(1 << 20).unwrap();
        let dq = DriverQueue::new(16);
        let mut q = dq.queue();
        mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
        assert!(q.pop_descriptor_chain(&mem).is_none());
    }
}
