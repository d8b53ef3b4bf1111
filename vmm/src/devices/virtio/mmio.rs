//! virtio-mmio transport, version 2 ("modern") register layout (virtio 1.2, 4.2.2).
//!
//! Every value here comes from the guest, so every access is checked: unaligned or odd-sized
//! register accesses, out-of-range queue selectors and writes in the wrong device state are
//! ignored (reads return 0); queue rings must lie inside guest RAM before the device starts.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActiveQueues, Interrupt, VirtioDevice, DEVICE_TOKEN_BASE, INT_CONFIG, VIRTIO_F_VERSION_1,
};
use crate::arch::boot::GuestMem;
use crate::event::{EventOps, Subscriber};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x0052_4b54; // "TKR\0"

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    /// Descriptor table, driver (avail) and device (used) ring addresses per queue.
    ring_addrs: Vec<[u64; 3]>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
    debug: bool,
}

fn new_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .map(|&m| Queue::new(m).unwrap_or_else(|_| Queue::new(256).expect("256 is valid")))
        .collect()
}

impl MmioTransport {
    /// `queue_evts[i]` must be signalled when the driver notifies queue i (usually a KVM
    /// ioeventfd on QueueNotify with datamatch i).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
        debug: bool,
    ) -> Self {
        let queues = new_queues(device.queue_max_sizes());
        let ring_addrs = vec![[0; 3]; queues.len()];
        MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            ring_addrs,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
            debug,
        }
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change between FEATURES_OK and DRIVER_OK, while the queue
    /// is not ready.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.selected_queue().filter(|q| !q.ready())
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            // No shared memory regions: length all ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            // Config writes are only meaningful once the driver knows the device.
            if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FAILED == 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let set_lo = |x: u64| (x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: u64| (x & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Only before FEATURES_OK, and only bits the device offered.
            REG_DRIVER_FEATURES
                if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0 =>
            {
                let offered = self.device_features();
                match self.driver_features_sel {
                    0 => self.driver_features = set_lo(self.driver_features) & offered,
                    1 => self.driver_features = set_hi(self.driver_features) & offered,
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.queue_writable() {
                    // virtio-queue ignores sizes that are not powers of two or exceed the max;
                    // is_valid() then refuses the queue at DRIVER_OK.
                    q.set_size(v as u16);
                    if v > u32::from(u16::MAX) {
                        q.set_size(0);
                    }
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    if self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
                    {
                        q.set_ready(v == 1);
                    }
                }
            }
            REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH => {
                // Kept in a shadow and checked as a whole at DRIVER_OK: virtio-queue silently
                // ignores misaligned addresses, which would leave a stale ring address.
                let ring = ((offset - REG_QUEUE_DESC_LOW) / 0x10) as usize;
                let high = (offset - REG_QUEUE_DESC_LOW) % 0x10 == 4;
                if ring < 3 && (offset - REG_QUEUE_DESC_LOW) % 0x10 <= 4 {
                    let sel = self.queue_sel as usize;
                    if self.queue_writable().is_some() {
                        let a = &mut self.ring_addrs[sel][ring];
                        *a = if high { set_hi(*a) } else { set_lo(*a) };
                    }
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd in KVM; this is the fallback path.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (spec 3.1.1), FAILED excepted.
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        if new & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        if new & STATUS_FEATURES_OK != 0 {
            // Accept the feature set only if it is modern and within what we offered (the
            // driver reads FEATURES_OK back to learn whether we did).
            let ok = self.status & STATUS_DRIVER != 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.driver_features & !self.device_features() == 0;
            if !ok {
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        if new & STATUS_DRIVER_OK != 0 {
            let ok = (v & STATUS_FEATURES_OK != 0) && self.activate();
            if !ok {
                self.status = (v & !STATUS_DRIVER_OK) | STATUS_NEEDS_RESET;
                let _ = self.interrupt.signal(INT_CONFIG);
                return;
            }
        }
        self.status = v;
    }

    /// Checks that every queue the driver made ready lies in guest RAM, then starts the device.
    fn activate(&mut self) -> bool {
        for (i, q) in self.queues.iter_mut().enumerate() {
            let [d, a, u] = self.ring_addrs[i];
            q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
            q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
            q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
            if q.ready() && !queue_in_memory(q, [d, a, u], &self.mem) {
                if self.debug {
                    eprintln!(
                        "rkt-vmm: virtio {}: queue {i} rings are outside guest RAM",
                        self.device.device_type()
                    );
                }
                return false;
            }
        }
        let active = ActiveQueues {
            mem: self.mem.clone(),
            // The device owns the queues from now on; a reset re-creates them.
            queues: std::mem::take(&mut self.queues),
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(active) {
            Ok(()) => {
                self.active = true;
                // Serve buffers the driver queued before DRIVER_OK.
                for e in &self.queue_evts {
                    let _ = e.write(1);
                }
                true
            }
            Err(e) => {
                if self.debug {
                    eprintln!(
                        "rkt-vmm: virtio {}: activation failed: {e:#}",
                        self.device.device_type()
                    );
                }
                false
            }
        }
    }

    /// The register file and queue positions, for a snapshot (the VM must be paused).
    pub fn save_state(&self) -> crate::persist::TransportState {
        let queues: &[Queue] = match self.device.active_queues() {
            Some(a) if self.active => &a.queues,
            _ => &self.queues,
        };
        crate::persist::TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            config_generation: self.config_generation,
            active: self.active,
            queues: queues
                .iter()
                .zip(&self.ring_addrs)
                .map(|(q, r)| crate::persist::QueueState {
                    size: q.size(),
                    ready: q.ready(),
                    rings: *r,
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                    event_idx: q.event_idx_enabled(),
                })
                .collect(),
        }
    }

    /// Puts a freshly built transport into the state `s` was saved in; an active device is
    /// activated again (with the same checks as a driver's DRIVER_OK); the caller tells it
    /// (`VirtioDevice::after_restore`) once the vCPUs and irqchip are restored. Refuses a state of another device type or queue count.
    pub fn restore_state(&mut self, s: &crate::persist::TransportState) -> crate::Result<()> {
        let t = self.device.device_type();
        if s.device_type != t || s.queues.len() != self.queues.len() {
            crate::error::bail!(
                Snapshot,
                "snapshot has virtio device type {} with {} queues where the VM has type {t} with {}",
                s.device_type,
                s.queues.len(),
                self.queues.len()
            );
        }
        if s.driver_features & !self.device_features() != 0 {
            crate::error::bail!(
                Snapshot,
                "snapshot has virtio features this device does not offer"
            );
        }
        for (i, (q, qs)) in self.queues.iter_mut().zip(&s.queues).enumerate() {
            if qs.size > q.max_size() {
                crate::error::bail!(
                    Snapshot,
                    "snapshot queue {i} of virtio device type {t} is too large"
                );
            }
            q.set_size(qs.size);
            q.set_ready(qs.ready);
            q.set_next_avail(qs.next_avail);
            q.set_next_used(qs.next_used);
            q.set_event_idx(qs.event_idx);
            self.ring_addrs[i] = qs.rings;
        }
        self.driver_features = s.driver_features;
        self.config_generation = s.config_generation;
        if s.active {
            if !self.activate() {
                crate::error::bail!(
                    Snapshot,
                    "restoring virtio device type {t}: its queues are not valid"
                );
            }
        } else {
            // Queue addresses only reach the queues at DRIVER_OK (activate).
            for (q, [d, a, u]) in self.queues.iter_mut().zip(&self.ring_addrs) {
                q.set_desc_table_address(Some(*d as u32), Some((*d >> 32) as u32));
                q.set_avail_ring_address(Some(*a as u32), Some((*a >> 32) as u32));
                q.set_used_ring_address(Some(*u as u32), Some((*u >> 32) as u32));
            }
        }
        self.status = s.status;
        self.interrupt
            .status
            .fetch_or(s.interrupt_status, Ordering::SeqCst);
        Ok(())
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.device_features_sel = 0;
        self.queue_sel = 0;
        self.queues = new_queues(self.device.queue_max_sizes());
        self.ring_addrs = vec![[0; 3]; self.queues.len()];
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

/// A ready queue's three rings (at `addrs`) must be aligned and each lie entirely inside one
/// guest RAM region.
pub fn queue_in_memory(q: &Queue, addrs: [u64; 3], mem: &GuestMem) -> bool {
    let n = u64::from(q.size());
    if n == 0 || !n.is_power_of_two() || n > u64::from(q.max_size()) {
        return false;
    }
    let rings = [
        (addrs[0], 16 * n, 16),
        (addrs[1], 6 + 2 * n, 2),
        (addrs[2], 6 + 8 * n, 4),
    ];
    rings.iter().all(|&(addr, len, align)| {
        addr % align == 0 && mem.check_range(GuestAddress(addr), len as usize)
    }) && q.desc_table() == addrs[0]
        && q.avail_ring() == addrs[1]
        && q.used_ring() == addrs[2]
        && q.is_valid(mem)
}

impl Subscriber for MmioTransport {
    fn init(&mut self, ops: &mut EventOps) -> io::Result<()> {
        for (i, e) in self.queue_evts.iter().enumerate() {
            ops.add(e.as_raw_fd(), i as u32, EventSet::IN)?;
        }
        self.device.init_events(ops)
    }

    fn handle(&mut self, token: u32, events: EventSet, ops: &mut EventOps) {
        if token >= DEVICE_TOKEN_BASE {
            self.device.handle_event(token, events, ops);
            return;
        }
        let i = token as usize;
        if let Some(e) = self.queue_evts.get(i) {
            let _ = e.read();
            if self.active {
                self.device.process_queue(i, ops);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot::create_memory;
    use crate::devices::virtio::rng::Rng;

    fn transport(mem_bytes: u64) -> MmioTransport {
        let mem = create_memory(mem_bytes).unwrap();
        MmioTransport::new(
            Box::new(Rng::new(false)),
            mem,
            Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            false,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Driver init up to FEATURES_OK with the modern feature bit.
    fn negotiate(t: &mut MmioTransport) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, 1);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
        w(t, REG_QUEUE_SEL, 0);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, desc as u32);
        w(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w(t, REG_QUEUE_DRIVER_LOW, avail as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        w(t, REG_QUEUE_DEVICE_LOW, used as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let mut t = transport(1 << 20);
        assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 4);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 256);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 offered");
        // Unaligned and narrow accesses read as zero.
        let mut d = [0xffu8; 2];
        t.read(REG_MAGIC, &mut d);
        assert_eq!(d, [0, 0]);
        let mut d = [0xffu8; 4];
        t.read(REG_MAGIC + 1, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn full_init_activates_the_device() {
        let mut t = transport(1 << 20);
        negotiate(&mut t);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, 0x1000, 0x2000, 0x3000);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        w(&mut t, REG_STATUS, ALL);
        assert!(t.is_active());
        assert_eq!(r(&mut t, REG_STATUS), ALL);
        // Activation kicks the queue once to serve anything already queued.
        assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
        // Reset returns to the initial state.
        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 256);
    }

    #[test]
    fn legacy_driver_is_refused_features_ok() {
        let mut t = transport(1 << 20);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        // Without FEATURES_OK, DRIVER_OK cannot activate.
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert!(!t.is_active());
    }

    #[test]
    fn unoffered_feature_bits_are_dropped() {
        let mut t = transport(1 << 20);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 0xffff_ffff);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        assert_eq!(t.driver_features, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn queue_registers_are_locked_outside_setup() {
        let mut t = transport(1 << 20);
        // Before FEATURES_OK: ignored.
        w(&mut t, REG_QUEUE_NUM, 16);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        negotiate(&mut t);
        // Out-of-range queue selector: reads 0, writes ignored, no panic.
        w(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        w(&mut t, REG_QUEUE_NUM, 16);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_QUEUE_SEL, u32::MAX);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, REG_QUEUE_NOTIFY, u32::MAX);
        setup_queue(&mut t, 0x1000, 0x2000, 0x3000);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x9000); // ready: ignored
        w(&mut t, REG_STATUS, ALL);
        assert!(t.is_active());
    }

    #[test]
    fn rings_outside_memory_need_reset() {
        let mut t = transport(1 << 20);
        negotiate(&mut t);
        setup_queue(&mut t, 0xffff_f000, 0x2000, 0x3000);
        w(&mut t, REG_STATUS, ALL);
        assert!(!t.is_active());
        let s = r(&mut t, REG_STATUS);
        assert_eq!(s & STATUS_DRIVER_OK, 0);
        assert_ne!(s & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        w(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        // Misaligned and wrapping ring addresses are refused too.
        for (d, a, u) in [(0x1001, 0x2000, 0x3000), (0x1000, 0x2000, u64::MAX - 8)] {
            let mut t = transport(1 << 20);
            negotiate(&mut t);
            setup_queue(&mut t, d, a, u);
            w(&mut t, REG_STATUS, ALL);
            assert!(!t.is_active());
        }
    }

    #[test]
    fn bad_queue_size_is_refused_at_driver_ok() {
        let mut t = transport(1 << 20);
        negotiate(&mut t);
        setup_queue(&mut t, 0x1000, 0x2000, 0x3000);
        let mut t2 = transport(1 << 20);
        negotiate(&mut t2);
        w(&mut t2, REG_QUEUE_NUM, 1000); // not a power of two, above max
        w(&mut t2, REG_QUEUE_NUM, 0x1_0010); // truncates to a valid-looking 16 if unchecked
        w(&mut t2, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t2, REG_QUEUE_DRIVER_LOW, 0x2000);
        w(&mut t2, REG_QUEUE_DEVICE_LOW, 0x3000);
        w(&mut t2, REG_QUEUE_READY, 1);
        w(&mut t2, REG_STATUS, ALL);
        assert!(t2.is_active(), "size stays at the 256 default, which fits");
        w(&mut t, REG_STATUS, ALL);
        assert!(t.is_active());
    }

    #[test]
    fn status_bits_cannot_be_cleared_except_by_reset() {
        let mut t = transport(1 << 20);
        negotiate(&mut t);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(
            r(&mut t, REG_STATUS),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
        let s = r(&mut t, REG_STATUS);
        w(&mut t, REG_STATUS, s | STATUS_FAILED);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FAILED, 0);
    }

    #[test]
    fn saved_state_restores_into_a_new_transport() {
        let mut t = transport(1 << 20);
        negotiate(&mut t);
        setup_queue(&mut t, 0x1000, 0x2000, 0x3000);
        w(&mut t, REG_STATUS, ALL);
        let mut st = t.save_state();
        assert!(st.active);
        assert_eq!(st.status, ALL);
        assert_eq!(st.queues[0].rings, [0x1000, 0x2000, 0x3000]);
        assert_eq!(st.queues[0].size, 16);
        st.queues[0].next_avail = 5;
        st.queues[0].next_used = 5;

        let mut n = MmioTransport::new(
            Box::new(Rng::new(false)),
            t.mem.clone(),
            Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            false,
        );
        n.restore_state(&st).unwrap();
        assert!(n.is_active());
        assert_eq!(r(&mut n, REG_STATUS), ALL);
        assert_eq!(n.save_state(), st, "queue positions carried over");
        // Restored like a DRIVER_OK: the queue is kicked once.
        assert_eq!(n.queue_evts()[0].read().unwrap(), 1);

        // Another device type, a queue over the device's maximum, rings outside RAM: refused.
        let fresh = || transport(1 << 20);
        let mut bad = st.clone();
        bad.device_type = 19;
        assert!(fresh().restore_state(&bad).is_err());
        let mut bad = st.clone();
        bad.queues[0].size = 512;
        assert!(fresh().restore_state(&bad).is_err());
        let mut bad = st.clone();
        bad.queues[0].rings[2] = 0xffff_f000;
        assert!(fresh().restore_state(&bad).is_err());
        let mut bad = st;
        bad.queues.push(Default::default());
        assert!(fresh().restore_state(&bad).is_err());
    }

    #[test]
    fn notify_fallback_signals_the_queue() {
        let mut t = transport(1 << 20);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
    }
}
