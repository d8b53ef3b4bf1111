//! Building a `Vm`, cold or from a snapshot, as a short recipe: check the configuration, open
//! KVM, create the VM with its in-kernel irqchip and PIT, guest memory, the kernel, the legacy
//! port-I/O devices, the virtio devices, the guest's boot data (or the snapshot's state), the
//! vCPUs, and the event loop that ties them together. Each step is one helper below; the order
//! matters (e.g. memory before the kernel, devices before the command line that names them).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::error::{bail, Context, Error, Result};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot::{self, GuestMem};
use crate::arch::{self, layout};
use crate::devices::legacy::{IrqTrigger, PioBus, ResetTrigger, SerialDevice, SerialInput, Tee};
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::{self, Interrupt, VirtioDevice};
use crate::event::EventLoop;
use crate::exit::ExitState;
use crate::persist::{self, VmState};
use crate::vstate::{MmioSlot, VcpuShared};
use crate::{
    pvm, DeviceConfig, SerialOut, Vm, VmConfig, BASE_CMDLINE, TOKEN_EXIT, TOKEN_PAUSE, TOKEN_STOP,
};

/// A snapshot being restored: its state and the directory holding its memory file.
type Restore<'a> = Option<(&'a VmState, &'a Path)>;

/// Prints a build decision on stderr when `debug` is on.
fn dbg(debug: bool, m: impl FnOnce() -> String) {
    if debug {
        eprintln!("rkt-vmm: {}", m());
    }
}

pub(crate) fn build(cfg: VmConfig, restore: Restore) -> Result<Vm> {
    let debug = cfg.debug;
    let mem_bytes = check_config(&cfg)?;
    let (kvm, pvm) = open_kvm(cfg.vcpus, debug)?;
    let vm = create_vm(&kvm)?;
    if let Some((st, _)) = restore {
        check_snapshot_size(st, mem_bytes, &cfg)?;
    }
    let mem = guest_memory(&vm, mem_bytes, restore)?;
    // A restored guest is past its boot: its memory already holds kernel and initrd.
    let kernel = match restore {
        None => Some(load_kernel(
            &mem,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            debug,
        )?),
        Some(_) => None,
    };
    let exit = Arc::new(ExitState::new().context("creating an eventfd")?);
    let pause_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?);
    let serial = serial_port(&vm, cfg.serial_out, cfg.pause_marker, &pause_evt, restore)?;
    let i8042 = vm_superio::I8042Device::new(ResetTrigger(exit.clone()));
    let mut event_loop = EventLoop::new().context("creating the event loop")?;
    let mut cmdline = String::from(BASE_CMDLINE);
    if pvm {
        cmdline.push(' ');
        cmdline.push_str(pvm::PVM_CMDLINE);
    }
    let mmio = virtio_devices(&vm, &mem, cfg.devices, &mut event_loop, &mut cmdline, debug)?;
    if !cfg.cmdline_extra.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(cfg.cmdline_extra.trim());
    }
    dbg(debug, || format!("command line: {cmdline}"));
    match restore {
        Some((st, _)) => restore_devices(&vm, st, &cmdline, &mmio)?,
        None => {
            let initrd = kernel.and_then(|k| k.initrd);
            write_boot_data(&mem, mem_bytes, &cmdline, initrd, cfg.vcpus)?;
        }
    }
    let entry = kernel.map_or(0, |k| k.entry);
    let (vcpus, supported) = create_vcpus(&kvm, &vm, cfg.vcpus, pvm, entry, restore, debug)?;
    if restore.is_some() {
        resume_devices(&mmio);
    }
    let pio = Arc::new(Mutex::new(PioBus { serial, i8042 }));
    if let Some(input) = cfg.serial_in {
        event_loop
            .add_subscriber(Arc::new(Mutex::new(SerialInput::new(input, pio.clone()))))
            .context("registering serial input")?;
    }
    let shared = Arc::new(VcpuShared {
        pio,
        mmio,
        exit,
        stopping: AtomicBool::new(false),
        mem,
        pvm,
        debug,
        pvm_fixups: AtomicU64::new(0),
        xsave_layout: xsave_layout(&supported),
        pvm_xsave_ops: AtomicU64::new(0),
        pvm_xsave_ns: AtomicU64::new(0),
    });
    let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?);
    watch_owner_events(&mut event_loop, &shared.exit, &stop, &pause_evt)?;
    Ok(Vm {
        kvm,
        vm,
        vcpus,
        mem_bytes,
        pause_evt,
        pause_grace_ms: cfg.pause_grace_ms,
        shared,
        event_loop,
        stop,
        cmdline,
        pvm,
        debug,
    })
}

/// Refuses what no VM can be made of; returns the guest memory size in bytes.
fn check_config(cfg: &VmConfig) -> Result<u64> {
    if cfg.vcpus == 0 {
        bail!(Config, "a VM needs at least one vCPU");
    }
    if cfg.mem_mib < 32 {
        bail!(
            Config,
            "guest memory of {} MiB is too small (32 MiB at least)",
            cfg.mem_mib
        );
    }
    cfg.mem_mib
        .checked_mul(1 << 20)
        .filter(|b| *b <= 1 << 40)
        .ok_or_else(|| Error::Config(format!("guest memory of {} MiB is too large", cfg.mem_mib)))
}

/// Opens /dev/kvm; returns it and whether the host is PVM (which needs workarounds).
fn open_kvm(vcpus: u8, debug: bool) -> Result<(Kvm, bool)> {
    let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
    let pvm = pvm::host_is_pvm();
    dbg(debug, || {
        format!(
            "host KVM mode: {}",
            if pvm {
                "PVM (kvm_pvm module): CX16 hidden, emulation fix-ups on, PVM command line"
            } else {
                "hardware virtualization (no PVM workarounds)"
            }
        )
    });
    let max_vcpus = kvm.get_max_vcpus();
    if usize::from(vcpus) > max_vcpus {
        bail!(Config, "{vcpus} vCPUs requested, KVM allows {max_vcpus}");
    }
    Ok((kvm, pvm))
}

/// The VM with its x86 plumbing: TSS and identity-map pages, in-kernel PIC/IOAPIC and PIT.
fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .context("KVM_SET_TSS_ADDR")?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .context("KVM_SET_IDENTITY_MAP_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .context("KVM_CREATE_PIT2")?;
    Ok(vm)
}

fn check_snapshot_size(st: &VmState, mem_bytes: u64, cfg: &VmConfig) -> Result<()> {
    if st.mem_bytes != mem_bytes || st.vcpus.len() != usize::from(cfg.vcpus) {
        bail!(
            Snapshot,
            "the snapshot is of a VM with {} MiB and {} vCPUs, not {} MiB and {}",
            st.mem_bytes >> 20,
            st.vcpus.len(),
            cfg.mem_mib,
            cfg.vcpus
        );
    }
    Ok(())
}

/// Guest RAM (fresh, or the snapshot's memory file mapped private), registered with KVM.
fn guest_memory(vm: &VmFd, mem_bytes: u64, restore: Restore) -> Result<GuestMem> {
    let mem = match restore {
        None => boot::create_memory(mem_bytes)?,
        Some((_, dir)) => persist::map_memory(
            &dir.join(persist::MEM_FILE),
            &layout::ram_regions(mem_bytes),
        )?,
    };
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .context("guest memory host address")?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM (it is
        // kept in VcpuShared and dropped after the vCPUs have stopped).
        unsafe { vm.set_user_memory_region(r) }.context("KVM_SET_USER_MEMORY_REGION")?;
    }
    Ok(mem)
}

/// Where the kernel and initrd landed.
#[derive(Clone, Copy)]
struct LoadedKernel {
    entry: u64,
    /// (address, size)
    initrd: Option<(u64, u64)>,
}

fn load_kernel(
    mem: &GuestMem,
    kernel: &Path,
    initrd: Option<&Path>,
    debug: bool,
) -> Result<LoadedKernel> {
    let (entry, kernel_end) = boot::load_kernel(mem, kernel)?;
    dbg(debug, || {
        format!(
            "kernel {} entry {entry:#x} end {kernel_end:#x}",
            kernel.display()
        )
    });
    let initrd = match initrd {
        Some(p) => Some(boot::load_initrd(mem, p, kernel_end)?),
        None => None,
    };
    Ok(LoadedKernel { entry, initrd })
}

/// The COM1 UART (the guest console) on its IRQ, writing to `out`; with a pause marker, the
/// output is watched for it (`pause_evt` fires when it went by).
fn serial_port(
    vm: &VmFd,
    out: SerialOut,
    pause_marker: Option<Vec<u8>>,
    pause_evt: &Arc<EventFd>,
    restore: Restore,
) -> Result<SerialDevice> {
    let irq = IrqTrigger(irqfd(vm, layout::SERIAL_IRQ)?);
    let mut out = open_serial(out)?;
    if let Some(marker) = pause_marker.filter(|m| !m.is_empty()) {
        out = Box::new(MarkerWriter {
            inner: out,
            marker,
            matched: 0,
            evt: pause_evt.clone(),
        });
    }
    Ok(match restore {
        None => vm_superio::Serial::new(irq, out),
        Some((st, _)) => {
            vm_superio::Serial::from_state(&st.serial, irq, vm_superio::serial::NoEvents, out)
                .map_err(|e| Error::Snapshot(format!("restoring the serial port: {e:?}")))?
        }
    })
}

/// Creates the virtio devices, each in the next MMIO slot with its queue-notify ioeventfds and
/// its irqfd, registers them with the event loop and names them on the command line.
fn virtio_devices(
    vm: &VmFd,
    mem: &GuestMem,
    devices: Vec<DeviceConfig>,
    event_loop: &mut EventLoop,
    cmdline: &mut String,
    debug: bool,
) -> Result<Vec<MmioSlot>> {
    let mut mmio = Vec::new();
    for (i, d) in devices.into_iter().enumerate() {
        let Some((base, irq)) = layout::virtio_slot(i) else {
            bail!(Config, "too many virtio devices");
        };
        let device = virtio_device(d, debug)?;
        let nq = device.queue_max_sizes().len();
        let mut evts = Vec::with_capacity(nq);
        for q in 0..nq {
            let e = EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?;
            vm.register_ioevent(&e, &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY), q as u32)
                .context("KVM_IOEVENTFD")?;
            evts.push(e);
        }
        dbg(debug, || {
            format!(
                "virtio device type {} at {base:#x} irq {irq}",
                device.device_type()
            )
        });
        let t = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mem.clone(),
            Interrupt::new(irqfd(vm, irq)?),
            evts,
            debug,
        )));
        event_loop
            .add_subscriber(t.clone())
            .context("registering device events")?;
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        mmio.push(MmioSlot {
            base,
            len: layout::VIRTIO_MMIO_SIZE,
            transport: t,
        });
    }
    Ok(mmio)
}

fn virtio_device(d: DeviceConfig, debug: bool) -> Result<Box<dyn VirtioDevice>> {
    Ok(match d {
        DeviceConfig::Rng => Box::new(virtio::rng::Rng::new(debug)),
        DeviceConfig::Vsock {
            guest_cid,
            uds_path,
        } => Box::new(virtio::vsock::Vsock::new(guest_cid, uds_path, debug)?),
        DeviceConfig::Fs { tag, shared_dir } => {
            Box::new(virtio::fs::Fs::new(&tag, &shared_dir, debug)?)
        }
        DeviceConfig::Net { tap, mac, mtu } => {
            Box::new(virtio::net::Net::new(tap, mac, mtu, debug))
        }
    })
}

/// Cold boot: the command line, the zero page, GDT/IDT/page tables and the MP table.
fn write_boot_data(
    mem: &GuestMem,
    mem_bytes: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    vcpus: u8,
) -> Result<()> {
    let cmdline_len = boot::write_cmdline(mem, cmdline)?;
    boot::write_boot_params(mem, mem_bytes, cmdline_len, initrd)?;
    arch::regs::write_boot_tables(mem)?;
    arch::mptable::setup(mem, vcpus)
}

/// Restore: the virtio transports' and the in-kernel devices' state from the snapshot.
fn restore_devices(vm: &VmFd, st: &VmState, cmdline: &str, mmio: &[MmioSlot]) -> Result<()> {
    // The guest booted with the snapshot's command line; ours must say the same
    // (devices at the same addresses), or the guest's drivers would not find them.
    if st.cmdline != cmdline {
        bail!(
            Snapshot,
            "the snapshot's VM had the command line {:?}, this one {cmdline:?}",
            st.cmdline
        );
    }
    if st.transports.len() != mmio.len() {
        bail!(
            Snapshot,
            "the snapshot has {} virtio devices, this VM {}",
            st.transports.len(),
            mmio.len()
        );
    }
    for (slot, ts) in mmio.iter().zip(&st.transports) {
        slot.transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(ts)?;
    }
    persist::restore_vm(vm, st)
}

/// Creates the vCPUs with the guest's CPUID and boot registers (or the snapshot's state);
/// returns them and KVM's supported CPUID (the XSAVE layout comes from it).
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    pvm: bool,
    entry: u64,
    restore: Restore,
    debug: bool,
) -> Result<(Vec<VcpuFd>, CpuId)> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
        if let Some((st, _)) = restore {
            st.vcpus[usize::from(id)]
                .restore(&vcpu)
                .map_err(|e| Error::Vcpu {
                    action: "restoring",
                    id: usize::from(id),
                    source: Box::new(e),
                })?;
            vcpus.push(vcpu);
            continue;
        }
        let mut entries = supported.as_slice().to_vec();
        arch::cpuid::normalize(
            &mut entries,
            arch::cpuid::CpuidOptions {
                vcpu_id: id,
                vcpu_count: count,
                pvm,
            },
        );
        let cpuid = CpuId::from_entries(&entries).map_err(|e| Error::Build {
            what: "CPUID",
            detail: format!("{e:?}"),
        })?;
        vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
        let refused = arch::regs::setup_vcpu(&vcpu, entry)?;
        if !refused.is_empty() && id == 0 {
            dbg(debug, || {
                format!("KVM refused boot MSRs {refused:x?} (harmless)")
            });
        }
        vcpus.push(vcpu);
    }
    Ok((vcpus, supported))
}

/// Restore: interrupts the devices raise now reach the restored irqchip and LAPICs, so the
/// active devices may tell their drivers what changed.
fn resume_devices(mmio: &[MmioSlot]) {
    for slot in mmio {
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_active() {
            t.device_mut().after_restore();
        }
    }
}

/// The guest's XSAVE layout (for running XSAVE/XRSTOR on PVM), from CPUID leaf 0xd.
fn xsave_layout(supported: &CpuId) -> pvm::xsave::Layout {
    pvm::xsave::Layout::from_cpuid(
        supported
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xd)
            .map(|e| (e.index, e.eax, e.ebx)),
    )
}

/// The events `Vm::run`'s loop acts on itself: the VM ended, stop was asked, the pause marker.
fn watch_owner_events(
    event_loop: &mut EventLoop,
    exit: &ExitState,
    stop: &EventFd,
    pause_evt: &EventFd,
) -> Result<()> {
    for (fd, token) in [
        (exit.evt.as_raw_fd(), TOKEN_EXIT),
        (stop.as_raw_fd(), TOKEN_STOP),
        (pause_evt.as_raw_fd(), TOKEN_PAUSE),
    ] {
        event_loop.add_owner_fd(fd, token).context("event loop")?;
    }
    Ok(())
}

/// Passes serial output on and signals `evt` when `marker` went by.
struct MarkerWriter {
    inner: Box<dyn Write + Send>,
    marker: Vec<u8>,
    matched: usize,
    evt: Arc<EventFd>,
}

impl Write for MarkerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == self.marker[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == self.marker[0]);
            }
            if self.matched == self.marker.len() {
                self.matched = 0;
                let _ = self.evt.write(1);
            }
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn open_serial(out: SerialOut) -> Result<Box<dyn Write + Send>> {
    let open = |p: &PathBuf| -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening serial log {}", p.display()))
    };
    Ok(match out {
        SerialOut::Sink => Box::new(std::io::sink()),
        SerialOut::Stdout => Box::new(std::io::stdout()),
        SerialOut::File(p) => Box::new(open(&p)?),
        SerialOut::Both(p) => Box::new(Tee(std::io::stdout(), open(&p)?)),
        SerialOut::Writer(w) => w,
    })
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd> {
    let e = EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?;
    vm.register_irqfd(&e, gsi)
        .with_context(|| format!("KVM_IRQFD for IRQ {gsi}"))?;
    Ok(e)
}
