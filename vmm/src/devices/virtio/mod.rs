//! virtio 1.x over MMIO. `mmio` is the transport (register file, feature negotiation, queue
//! setup); each device lives in its own folder with its queue handling and its event handling.

pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot::GuestMem;
use crate::event::EventOps;
pub use virtio_queue::{Queue, QueueT};

/// Device type ids (virtio spec 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every device offers: this is a virtio 1.x ("modern") device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits (MMIO InterruptStatus register).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Event-loop tokens: a transport uses 0..queues for queue notifications; devices may use
/// tokens from `DEVICE_TOKEN_BASE` on for their own fds.
pub const DEVICE_TOKEN_BASE: u32 = 0x1000;

/// A device's interrupt line: status bits shared with the transport plus an irqfd.
#[derive(Clone)]
pub struct Interrupt {
    pub status: Arc<AtomicU32>,
    pub irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    pub fn signal(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(INT_USED_RING)
    }
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct ActiveQueues {
    pub mem: GuestMem,
    pub queues: Vec<Queue>,
    pub interrupt: Interrupt,
    /// Feature bits the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind the MMIO transport. All methods run with the transport's lock held,
/// either on a vCPU thread (config space, activation, reset) or on the event-loop thread
/// (queue and backend events). They must never block.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; read-only devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver is ready: start serving `queues`.
    fn activate(&mut self, active: ActiveQueues) -> anyhow::Result<()>;
    /// The driver reset the device: drop queues and return to the pre-activation state.
    fn reset(&mut self);
    /// The driver notified queue `index` (only called while active). `ops` lets the device
    /// register new backend fds (e.g. a vsock connection's socket).
    fn process_queue(&mut self, index: usize, ops: &mut EventOps);
    /// Registers device-private fds (tokens >= DEVICE_TOKEN_BASE).
    fn init_events(&mut self, _ops: &mut EventOps) -> io::Result<()> {
        Ok(())
    }
    /// A device-private fd is ready.
    fn handle_event(&mut self, _token: u32, _events: EventSet, _ops: &mut EventOps) {}
    /// The queues the device serves while active (their positions go into a snapshot). A
    /// device that keeps the default cannot be snapshotted while active: its saved state has
    /// no queues, which a restore refuses.
    fn active_queues(&self) -> Option<&ActiveQueues> {
        None
    }
    /// The VM was restored from a snapshot into this (new) device and it is active again:
    /// tell the driver what it must forget (vsock: its connections).
    fn after_restore(&mut self) {}
}

/// Copies `src` from offset `offset` into `data`, zero-filling what lies past its end.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < src.len() {
        let n = data.len().min(src.len() - off);
        data[..n].copy_from_slice(&src[off..off + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_end_are_zero() {
        let src = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut d = [0xffu8; 4];
        read_config_bytes(&src, 6, &mut d);
        assert_eq!(d, [7, 8, 0, 0]);
        read_config_bytes(&src, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
