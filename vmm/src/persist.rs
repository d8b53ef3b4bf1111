//! Snapshot and restore of a paused VM: vCPU state, in-kernel irqchip/PIT/clock, the serial
//! port, the virtio-mmio transports' queue positions, and guest memory as a sparse file.
//!
//! A snapshot directory holds `state` (this module's binary format) and `mem` (guest RAM, the
//! regions back to back, all-zero pages left as holes). A restore maps `mem` `MAP_PRIVATE`, so
//! every VM restored from one snapshot shares the pages it only reads.
//!
//! The format is private to one build of the VMM (KVM structures are stored as their raw
//! bytes): callers key snapshots by the VMM's own digest and never load a foreign one. It is
//! still parsed defensively: every length is checked against what is left, every KVM structure
//! must have exactly its size, and trailing bytes are refused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{bail, Context, Error, Result};
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};
use vm_superio::serial::SerialState;

use crate::arch::boot::GuestMem;

/// First bytes of a state file; bump on any layout change.
pub const MAGIC: &[u8; 8] = b"RKTVMS01";
pub const STATE_FILE: &str = "state";
pub const MEM_FILE: &str = "mem";

/// Raw KVM structures stored byte for byte.
///
/// # Safety
/// Implementors must be plain old data: `Copy`, no pointers, every bit pattern valid.
pub unsafe trait Pod: Copy + Default {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_regs {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_sregs {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_xcrs {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_mp_state {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_debugregs {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_cpuid_entry2 {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_clock_data {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: a `#[repr(C)]` integer-only KVM ABI structure (unions of integers at most).
unsafe impl Pod for kvm_irqchip {}

/// Little-endian writer.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn pod<T: Pod>(&mut self, v: &T) {
        // SAFETY: T is plain old data (Pod), so viewing it as bytes is valid.
        let b = unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        };
        self.bytes(b);
    }
}

/// Bounds-checked little-endian reader.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            bail!(Snapshot, "snapshot state is truncated");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count of items that each take at least `min_item` bytes: refused if the rest of the
    /// input cannot hold them, so a huge count cannot make us allocate.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() - self.pos {
            bail!(Snapshot, "snapshot state has an impossible item count {n}");
        }
        Ok(n)
    }
    pub fn pod<T: Pod>(&mut self) -> Result<T> {
        let b = self.bytes()?;
        if b.len() != std::mem::size_of::<T>() {
            bail!(
                Snapshot,
                "snapshot state: a {} of {} bytes, expected {}",
                std::any::type_name::<T>(),
                b.len(),
                std::mem::size_of::<T>()
            );
        }
        let mut v = T::default();
        // SAFETY: T is Pod (every bit pattern valid) and b has exactly size_of::<T>() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len())
        };
        Ok(v)
    }
    pub fn finish(&self) -> Result<()> {
        if self.pos != self.buf.len() {
            bail!(
                Snapshot,
                "snapshot state has {} trailing bytes",
                self.buf.len() - self.pos
            );
        }
        Ok(())
    }
}

/// One virtqueue as the transport and the device left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    /// Descriptor table, driver (avail) ring, device (used) ring.
    pub rings: [u64; 3],
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// A virtio-mmio transport (register file) with its queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub active: bool,
    pub queues: Vec<QueueState>,
}

/// Everything KVM keeps about one vCPU that a restore needs.
#[derive(Clone)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// KVM_GET_XSAVE's 4096-byte region (legacy FPU/SSE area, header, AVX...).
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub debugregs: kvm_debugregs,
    /// 0 when KVM could not say.
    pub tsc_khz: u32,
}

/// The whole VM apart from guest memory (which is the `mem` file).
#[derive(Clone)]
pub struct VmState {
    pub mem_bytes: u64,
    pub cmdline: String,
    pub clock: kvm_clock_data,
    pub pit: kvm_pit_state2,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: [kvm_irqchip; 3],
    pub serial: SerialState,
    pub transports: Vec<TransportState>,
    pub vcpus: Vec<VcpuState>,
}

fn enc_serial(e: &mut Enc, s: &SerialState) {
    for b in [
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ] {
        e.u8(b);
    }
    e.bytes(&s.in_buffer);
}

fn dec_serial(d: &mut Dec) -> Result<SerialState> {
    Ok(SerialState {
        baud_divisor_low: d.u8()?,
        baud_divisor_high: d.u8()?,
        interrupt_enable: d.u8()?,
        interrupt_identification: d.u8()?,
        line_control: d.u8()?,
        line_status: d.u8()?,
        modem_control: d.u8()?,
        modem_status: d.u8()?,
        scratch: d.u8()?,
        in_buffer: d.bytes()?.to_vec(),
    })
}

impl TransportState {
    fn enc(&self, e: &mut Enc) {
        e.u32(self.device_type);
        e.u32(self.status);
        e.u64(self.driver_features);
        e.u32(self.interrupt_status);
        e.u32(self.config_generation);
        e.u8(u8::from(self.active));
        e.u32(self.queues.len() as u32);
        for q in &self.queues {
            e.u16(q.size);
            e.u8(u8::from(q.ready));
            for r in q.rings {
                e.u64(r);
            }
            e.u16(q.next_avail);
            e.u16(q.next_used);
            e.u8(u8::from(q.event_idx));
        }
    }

    fn dec(d: &mut Dec) -> Result<Self> {
        let mut t = TransportState {
            device_type: d.u32()?,
            status: d.u32()?,
            driver_features: d.u64()?,
            interrupt_status: d.u32()?,
            config_generation: d.u32()?,
            active: d.u8()? != 0,
            queues: Vec::new(),
        };
        let n = d.count(32)?;
        for _ in 0..n {
            t.queues.push(QueueState {
                size: d.u16()?,
                ready: d.u8()? != 0,
                rings: [d.u64()?, d.u64()?, d.u64()?],
                next_avail: d.u16()?,
                next_used: d.u16()?,
                event_idx: d.u8()? != 0,
            });
        }
        Ok(t)
    }
}

impl VcpuState {
    fn enc(&self, e: &mut Enc) {
        e.u32(self.cpuid.len() as u32);
        for c in &self.cpuid {
            e.pod(c);
        }
        e.u32(self.msrs.len() as u32);
        for (i, v) in &self.msrs {
            e.u32(*i);
            e.u64(*v);
        }
        e.pod(&self.regs);
        e.pod(&self.sregs);
        e.u32(self.xsave.len() as u32);
        for w in &self.xsave {
            e.u32(*w);
        }
        e.pod(&self.xcrs);
        e.pod(&self.lapic);
        e.pod(&self.events);
        e.pod(&self.mp_state);
        e.pod(&self.debugregs);
        e.u32(self.tsc_khz);
    }

    fn dec(d: &mut Dec) -> Result<Self> {
        let n = d.count(4 + std::mem::size_of::<kvm_cpuid_entry2>())?;
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(d.pod()?);
        }
        let n = d.count(12)?;
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            msrs.push((d.u32()?, d.u64()?));
        }
        Ok(VcpuState {
            cpuid,
            msrs,
            regs: d.pod()?,
            sregs: d.pod()?,
            xsave: {
                let n = d.count(4)?;
                if n != XSAVE_WORDS {
                    bail!(
                        Snapshot,
                        "snapshot XSAVE area of {n} words, expected {XSAVE_WORDS}"
                    );
                }
                (0..n).map(|_| d.u32()).collect::<Result<_>>()?
            },
            xcrs: d.pod()?,
            lapic: d.pod()?,
            events: d.pod()?,
            mp_state: d.pod()?,
            debugregs: d.pod()?,
            tsc_khz: d.u32()?,
        })
    }

    /// Reads the vCPU's state. The vCPU must be out of KVM_RUN (with any port/MMIO exit
    /// completed, see `vstate`). `msr_list` is KVM_GET_MSR_INDEX_LIST; MSRs KVM refuses to read
    /// are left out (and so not restored).
    pub fn save(vcpu: &VcpuFd, msr_list: &[u32]) -> Result<Self> {
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_CPUID2")?
            .as_slice()
            .to_vec();
        Ok(VcpuState {
            cpuid,
            msrs: read_msrs(vcpu, msr_list)?,
            regs: vcpu.get_regs().context("KVM_GET_REGS")?,
            sregs: vcpu.get_sregs().context("KVM_GET_SREGS")?,
            xsave: vcpu.get_xsave().context("KVM_GET_XSAVE")?.region.to_vec(),
            xcrs: vcpu.get_xcrs().context("KVM_GET_XCRS")?,
            lapic: vcpu.get_lapic().context("KVM_GET_LAPIC")?,
            events: vcpu.get_vcpu_events().context("KVM_GET_VCPU_EVENTS")?,
            mp_state: vcpu.get_mp_state().context("KVM_GET_MP_STATE")?,
            debugregs: vcpu.get_debug_regs().context("KVM_GET_DEBUGREGS")?,
            tsc_khz: vcpu.get_tsc_khz().unwrap_or(0),
        })
    }

    /// Sets the state back (Firecracker's order: CPUID first, events last so a pending
    /// exception/interrupt lands on the final register state; the TSC deadline after the TSC).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        let cpuid = kvm_bindings::CpuId::from_entries(&self.cpuid).map_err(|e| Error::Build {
            what: "CPUID",
            detail: format!("{e:?}"),
        })?;
        vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
        if self.tsc_khz != 0 {
            if let Ok(cur) = vcpu.get_tsc_khz() {
                if cur != self.tsc_khz {
                    vcpu.set_tsc_khz(self.tsc_khz).with_context(|| {
                        format!("KVM_SET_TSC_KHZ {} (host {cur})", self.tsc_khz)
                    })?;
                }
            }
        }
        vcpu.set_mp_state(self.mp_state)
            .context("KVM_SET_MP_STATE")?;
        vcpu.set_regs(&self.regs).context("KVM_SET_REGS")?;
        vcpu.set_sregs(&self.sregs).context("KVM_SET_SREGS")?;
        let mut x = kvm_xsave::default();
        if self.xsave.len() != x.region.len() {
            bail!(Snapshot, "XSAVE area of {} words", self.xsave.len());
        }
        x.region.copy_from_slice(&self.xsave);
        // SAFETY: a whole 4096-byte kvm_xsave, the size KVM_SET_XSAVE reads.
        unsafe { vcpu.set_xsave(&x) }.context("KVM_SET_XSAVE")?;
        vcpu.set_xcrs(&self.xcrs).context("KVM_SET_XCRS")?;
        vcpu.set_debug_regs(&self.debugregs)
            .context("KVM_SET_DEBUGREGS")?;
        vcpu.set_lapic(&self.lapic).context("KVM_SET_LAPIC")?;
        let msrs = msrs_in_restore_order(&self.msrs);
        let entries: Vec<_> = msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let m = Msrs::from_entries(&entries).map_err(|e| Error::Build {
            what: "the MSR list",
            detail: format!("{e:?}"),
        })?;
        let n = vcpu.set_msrs(&m).context("KVM_SET_MSRS")?;
        if n != entries.len() {
            bail!(
                Snapshot,
                "KVM_SET_MSRS refused MSR {:#x} ({n} of {} set)",
                entries[n].index,
                entries.len()
            );
        }
        vcpu.set_vcpu_events(&self.events)
            .context("KVM_SET_VCPU_EVENTS")?;
        Ok(())
    }
}

/// IA32_TSC_DEADLINE is relative to the TSC: it must be written after it.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

fn msrs_in_restore_order(msrs: &[(u32, u64)]) -> Vec<(u32, u64)> {
    let mut v: Vec<_> = msrs
        .iter()
        .copied()
        .filter(|m| m.0 != MSR_IA32_TSC_DEADLINE)
        .collect();
    v.extend(
        msrs.iter()
            .copied()
            .filter(|m| m.0 == MSR_IA32_TSC_DEADLINE),
    );
    v
}

/// Reads every MSR of `list` KVM lets us read: KVM_GET_MSRS stops at the first one it refuses,
/// which is dropped before trying the rest again.
fn read_msrs(vcpu: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>> {
    let mut want: Vec<u32> = list.to_vec();
    let mut out = Vec::new();
    while !want.is_empty() {
        let entries: Vec<_> = want
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut m = Msrs::from_entries(&entries).map_err(|e| Error::Build {
            what: "the MSR list",
            detail: format!("{e:?}"),
        })?;
        let n = vcpu.get_msrs(&mut m).context("KVM_GET_MSRS")?;
        out.extend(m.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // The one at n was refused; go on after it.
        want.drain(..(n + 1).min(want.len()));
    }
    Ok(out)
}

/// KVM_GET_MSR_INDEX_LIST.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>> {
    Ok(kvm
        .get_msr_index_list()
        .context("KVM_GET_MSR_INDEX_LIST")?
        .as_slice()
        .to_vec())
}

/// The in-kernel devices: KVM clock, PIT, PICs and IOAPIC.
pub fn save_vm(vm: &VmFd) -> Result<(kvm_clock_data, kvm_pit_state2, [kvm_irqchip; 3])> {
    let clock = vm.get_clock().context("KVM_GET_CLOCK")?;
    let pit = vm.get_pit2().context("KVM_GET_PIT2")?;
    let mut chips = [kvm_irqchip::default(); 3];
    for (c, id) in chips.iter_mut().zip([
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ]) {
        c.chip_id = id;
        vm.get_irqchip(c)
            .with_context(|| format!("KVM_GET_IRQCHIP {id}"))?;
    }
    Ok((clock, pit, chips))
}

pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<()> {
    vm.set_pit2(&s.pit).context("KVM_SET_PIT2")?;
    // KVM_SET_CLOCK refuses flags it only reports (TSC_STABLE, REALTIME, HOST_TSC).
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).context("KVM_SET_CLOCK")?;
    for c in &s.irqchips {
        vm.set_irqchip(c)
            .with_context(|| format!("KVM_SET_IRQCHIP {}", c.chip_id))?;
    }
    Ok(())
}

impl VmState {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.0.extend_from_slice(MAGIC);
        e.u64(self.mem_bytes);
        e.bytes(self.cmdline.as_bytes());
        e.pod(&self.clock);
        e.pod(&self.pit);
        for c in &self.irqchips {
            e.pod(c);
        }
        enc_serial(&mut e, &self.serial);
        e.u32(self.transports.len() as u32);
        for t in &self.transports {
            t.enc(&mut e);
        }
        e.u32(self.vcpus.len() as u32);
        for v in &self.vcpus {
            v.enc(&mut e);
        }
        e.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
            bail!(Snapshot, "not a snapshot state file of this VMM version");
        }
        let mut d = Dec::new(&buf[MAGIC.len()..]);
        let mem_bytes = d.u64()?;
        let cmdline = String::from_utf8(d.bytes()?.to_vec())
            .map_err(|e| Error::Snapshot(format!("snapshot command line: {e}")))?;
        let clock = d.pod()?;
        let pit = d.pod()?;
        let irqchips = [d.pod()?, d.pod()?, d.pod()?];
        let serial = dec_serial(&mut d)?;
        let n = d.count(29)?;
        let mut transports = Vec::with_capacity(n);
        for _ in 0..n {
            transports.push(TransportState::dec(&mut d)?);
        }
        let n = d.count(4 * XSAVE_WORDS)?;
        if n == 0 {
            bail!(Snapshot, "snapshot state has no vCPU");
        }
        let mut vcpus = Vec::with_capacity(n);
        for _ in 0..n {
            vcpus.push(VcpuState::dec(&mut d)?);
        }
        d.finish()?;
        Ok(VmState {
            mem_bytes,
            cmdline,
            clock,
            pit,
            irqchips,
            serial,
            transports,
            vcpus,
        })
    }
}

const PAGE: usize = 4096;
const XSAVE_WORDS: usize = 1024;

/// Writes guest memory to `path` (created, mode 0400): regions back to back, all-zero pages
/// left as holes. Returns the bytes actually written (the non-hole part).
pub fn write_memory(mem: &GuestMem, path: &Path) -> Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut off = 0u64;
    let mut written = 0u64;
    let zero = [0u8; PAGE];
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .context("guest memory host address")?;
        // SAFETY: the region is a live mapping of `len` bytes owned by `mem`, and the VM is
        // paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let mut i = 0;
        while i < len {
            // Coalesce a run of non-zero pages into one write.
            if bytes[i..i + PAGE] == zero {
                i += PAGE;
                continue;
            }
            let start = i;
            while i < len && bytes[i..i + PAGE] != zero {
                i += PAGE;
            }
            f.write_all_at(&bytes[start..i], off + start as u64)
                .with_context(|| format!("writing {}", path.display()))?;
            written += (i - start) as u64;
        }
        off += len as u64;
    }
    f.set_len(off)
        .with_context(|| format!("sizing {}", path.display()))?;
    f.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(written)
}

/// Maps `path` as guest memory with the layout of `ranges` (as `boot::ram_regions`),
/// `MAP_PRIVATE`: the guest's writes stay in this process, unwritten pages are shared with
/// every other VM mapping the same file.
pub fn map_memory(path: &Path, ranges: &[(u64, u64)]) -> Result<GuestMem> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if size != total {
        bail!(
            Snapshot,
            "{} holds {size} bytes, the VM has {total} bytes of RAM",
            path.display()
        );
    }
    let mut regions = Vec::new();
    let mut off = 0u64;
    for &(start, len) in ranges {
        let fo = FileOffset::new(f.try_clone().context("duplicating a file descriptor")?, off);
        let m = MmapRegionBuilder::new(len as usize)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::GuestMemory {
                what: format!("mapping {}", path.display()),
                source: Box::new(e),
            })?;
        regions.push(
            GuestRegionMmap::new(m, GuestAddress(start))
                .ok_or_else(|| Error::Snapshot("guest memory region out of range".into()))?,
        );
        off += len;
    }
    GuestMem::from_regions(regions).map_err(|e| Error::GuestMemory {
        what: "guest memory layout".into(),
        source: Box::new(e),
    })
}

/// Reads and decodes `<dir>/state`.
pub fn read_state(dir: &Path) -> Result<VmState> {
    let p = dir.join(STATE_FILE);
    let buf = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    VmState::decode(&buf).map_err(|e| Error::StateFile {
        path: p,
        source: Box::new(e),
    })
}

/// Writes `<dir>/state` (created, mode 0400).
pub fn write_state(dir: &Path, s: &VmState) -> Result<()> {
    let p = dir.join(STATE_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(&s.encode())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot::create_memory;
    use crate::arch::layout::ram_regions;
    use vm_memory::Bytes;

    fn sample() -> VmState {
        let mut regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rax: 42,
            ..Default::default()
        };
        regs.rflags = 0x202;
        let mut chips = [kvm_irqchip::default(); 3];
        chips[2].chip_id = KVM_IRQCHIP_IOAPIC;
        let v = VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806f8,
                ..Default::default()
            }],
            msrs: vec![
                (0x10, 123),
                (MSR_IA32_TSC_DEADLINE, 456),
                (0xc000_0080, 0xd01),
            ],
            regs,
            sregs: Default::default(),
            xsave: vec![7; XSAVE_WORDS],
            xcrs: Default::default(),
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
            debugregs: Default::default(),
            tsc_khz: 2_000_000,
        };
        VmState {
            mem_bytes: 64 << 20,
            cmdline: "console=ttyS0".into(),
            clock: kvm_clock_data {
                clock: 99,
                ..Default::default()
            },
            pit: Default::default(),
            irqchips: chips,
            serial: SerialState {
                interrupt_enable: 2,
                in_buffer: vec![b'x'],
                ..Default::default()
            },
            transports: vec![TransportState {
                device_type: 19,
                status: 15,
                driver_features: 1 << 32,
                interrupt_status: 1,
                config_generation: 0,
                active: true,
                queues: vec![QueueState {
                    size: 128,
                    ready: true,
                    rings: [0x1000, 0x2000, 0x3000],
                    next_avail: 7,
                    next_used: 5,
                    event_idx: true,
                }],
            }],
            vcpus: vec![v.clone(), v],
        }
    }

    #[test]
    fn state_round_trips() {
        let s = sample();
        let b = s.encode();
        let d = VmState::decode(&b).unwrap();
        assert_eq!(d.encode(), b);
        assert_eq!(d.vcpus.len(), 2);
        assert_eq!(d.vcpus[1].regs.rax, 42);
        assert_eq!(d.vcpus[0].msrs[1], (MSR_IA32_TSC_DEADLINE, 456));
        assert_eq!(d.transports, s.transports);
        assert_eq!(d.serial, s.serial);
        assert_eq!(d.clock.clock, 99);
        assert_eq!(d.irqchips[2].chip_id, KVM_IRQCHIP_IOAPIC);
    }

    #[test]
    fn damaged_state_is_refused() {
        let b = sample().encode();
        // Every truncation fails cleanly (no panic).
        for n in 0..b.len() {
            assert!(VmState::decode(&b[..n]).is_err(), "truncated at {n}");
        }
        let mut t = b.clone();
        t.push(0);
        assert!(VmState::decode(&t).is_err(), "trailing byte");
        let mut m = b.clone();
        m[7] = b'9';
        assert!(VmState::decode(&m).is_err(), "other magic");
        // A huge count must not allocate: the vCPU count sits right before the first vCPU.
        let mut e = Enc::default();
        e.0.extend_from_slice(MAGIC);
        e.u64(1 << 20);
        e.bytes(b"");
        e.pod(&kvm_clock_data::default());
        e.pod(&kvm_pit_state2::default());
        for _ in 0..3 {
            e.pod(&kvm_irqchip::default());
        }
        enc_serial(&mut e, &SerialState::default());
        e.u32(u32::MAX);
        assert!(VmState::decode(&e.0).is_err());
    }

    #[test]
    fn a_pod_of_the_wrong_size_is_refused() {
        let mut e = Enc::default();
        e.bytes(&[0u8; 10]);
        assert!(Dec::new(&e.0).pod::<kvm_regs>().is_err());
    }

    #[test]
    fn tsc_deadline_is_restored_after_the_tsc() {
        let v = msrs_in_restore_order(&[(MSR_IA32_TSC_DEADLINE, 1), (0x10, 2), (0x1b, 3)]);
        assert_eq!(v.last().unwrap().0, MSR_IA32_TSC_DEADLINE);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn memory_file_is_sparse_and_maps_private() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64u64 << 20;
        let mem = create_memory(size).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"world", GuestAddress(size - 5)).unwrap();
        let p = dir.path().join(MEM_FILE);
        let written = write_memory(&mem, &p).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        let md = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.len(), size);
        assert!(md.blocks() * 512 <= 64 * 1024, "{} blocks", md.blocks());
        assert_eq!(md.mode() & 0o777, 0o400);
        let regions: Vec<(u64, u64)> = ram_regions(size);
        let a = map_memory(&p, &regions).unwrap();
        let b = map_memory(&p, &regions).unwrap();
        let mut buf = [0u8; 5];
        a.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        a.read_slice(&mut buf, GuestAddress(size - 5)).unwrap();
        assert_eq!(&buf, b"world");
        // Private: a write in one copy is seen neither by the other nor in the file.
        a.write_slice(b"HELLO", GuestAddress(0x1000)).unwrap();
        b.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        let c = map_memory(&p, &regions).unwrap();
        c.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        // The wrong size is refused.
        assert!(map_memory(&p, &ram_regions(size * 2)).is_err());
        // Never overwritten.
        assert!(write_memory(&mem, &p).is_err());
    }
}
