//! rkt-vmm: a small KVM virtual machine monitor for rkt's `kvm` stage1.
//!
//! It boots an uncompressed Linux `vmlinux` directly in 64-bit mode with an optional initrd, a
//! 16550 serial console, an i8042 for reset, and virtio-mmio devices. On PVM hosts (nested
//! "pagetable virtual machine" KVM) it applies the workarounds described in docs/vmm.md.
//!
//! ```no_run
//! use rkt_vmm::{DeviceConfig, ExitReason, SerialOut, Vm, VmConfig};
//! let mut cfg = VmConfig::new("/var/cache/rkt/kernel/x/vmlinux");
//! cfg.initrd = Some("/tmp/initrd.cpio.gz".into());
//! cfg.devices.push(DeviceConfig::Rng);
//! cfg.serial_out = SerialOut::Stdout;
//! let vm = Vm::build(cfg)?;
//! let handle = vm.handle(); // handle.stop() from any thread ends run() with Stopped
//! match vm.run()? {
//!     ExitReason::Reset => println!("guest rebooted"),
//!     other => println!("{other:?}"),
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod arch;
pub mod devices;
pub mod event;
pub mod exit;
pub mod persist;
pub mod pvm;
pub mod vstate;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use arch::boot::{self, GuestMem};
use arch::layout;
use devices::legacy::{IrqTrigger, PioBus, ResetTrigger, SerialInput, Tee};
use devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::{Interrupt, VirtioDevice};
use event::EventLoop;
pub use exit::ExitReason;
use exit::ExitState;
use vstate::{MmioSlot, VcpuShared};

/// Base kernel command line: serial console, reset through the i8042 on reboot, reboot at
/// once on panic, and little console output (every character costs a VM exit).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// Where the guest's serial console goes.
pub enum SerialOut {
    /// Discard.
    Sink,
    Stdout,
    /// Append to a file.
    File(PathBuf),
    /// Stdout and a file.
    Both(PathBuf),
    /// Any writer (tests, log pipes).
    Writer(Box<dyn Write + Send>),
}

/// A virtio device to attach (each gets a 4 KiB MMIO window and an IRQ).
#[non_exhaustive]
pub enum DeviceConfig {
    /// virtio-rng, fed from the host's getrandom(2).
    Rng,
    /// virtio-vsock bridged to Unix sockets (see `devices::virtio::vsock`): guest connections
    /// to host port P go to `<uds_path>_<P>`; host clients connect to `uds_path` and send
    /// `CONNECT <guest port>\n`.
    Vsock { guest_cid: u64, uds_path: PathBuf },
    /// virtio-fs serving `shared_dir`; the guest mounts it with `mount -t virtiofs <tag> DIR`.
    Fs { tag: String, shared_dir: PathBuf },
}

pub struct VmConfig {
    /// Uncompressed vmlinux ELF.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the base command line (after the device entries).
    pub cmdline_extra: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub serial_out: SerialOut,
    /// Bytes read from this fd (e.g. a terminal or pipe) are typed into the guest console.
    pub serial_in: Option<std::os::fd::OwnedFd>,
    pub devices: Vec<DeviceConfig>,
    /// Describe decisions (PVM or not, devices, fix-ups) on stderr.
    pub debug: bool,
    /// `Vm::run_to_pause_point` pauses the VM once the guest wrote these bytes to the serial
    /// console (plus `pause_grace_ms`, so the guest can go idle after saying it).
    pub pause_marker: Option<Vec<u8>>,
    pub pause_grace_ms: u64,
}

impl VmConfig {
    /// Defaults: 256 MiB, 1 vCPU, console to stdout, no devices.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline_extra: String::new(),
            mem_mib: 256,
            vcpus: 1,
            serial_out: SerialOut::Stdout,
            serial_in: None,
            devices: Vec::new(),
            debug: false,
            pause_marker: None,
            pause_grace_ms: 200,
        }
    }
}

/// Stops a running VM from any thread.
#[derive(Clone)]
pub struct VmHandle {
    stop: Arc<EventFd>,
}

impl VmHandle {
    /// Asks `Vm::run` to end; it returns `ExitReason::Stopped` unless the guest ended first.
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }
}

pub struct Vm {
    kvm: Kvm,
    vm: VmFd,
    vcpus: Vec<VcpuFd>,
    mem_bytes: u64,
    /// Set by the serial console when it saw `VmConfig::pause_marker`.
    pause_evt: Arc<EventFd>,
    pause_grace_ms: u64,
    shared: Arc<VcpuShared>,
    event_loop: EventLoop,
    stop: Arc<EventFd>,
    /// The command line the guest got.
    pub cmdline: String,
    /// Whether the PVM workarounds are on.
    pub pvm: bool,
    debug: bool,
}

const TOKEN_EXIT: u32 = 0;
const TOKEN_STOP: u32 = 1;
const TOKEN_PAUSE: u32 = 2;

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

impl Vm {
    /// Creates the VM: memory, kernel, initrd, devices and vCPUs; nothing runs yet.
    pub fn build(cfg: VmConfig) -> Result<Vm> {
        Self::build_inner(cfg, None)
    }

    /// Creates a VM from the snapshot in `dir` (see `persist`): guest memory mapped
    /// `MAP_PRIVATE` from `<dir>/mem`, vCPU, in-kernel and device state from `<dir>/state`.
    /// `cfg` must describe the same VM (memory size, vCPUs, the same devices in the same order;
    /// the devices' backends, e.g. the vsock socket path or the shared directory, may differ);
    /// its kernel and initrd are not read.
    pub fn restore(cfg: VmConfig, dir: &Path) -> Result<Vm> {
        let state = persist::read_state(dir)?;
        Self::build_inner(cfg, Some((&state, dir)))
    }

    fn build_inner(cfg: VmConfig, restore: Option<(&persist::VmState, &Path)>) -> Result<Vm> {
        let debug = cfg.debug;
        let dbg = |m: String| {
            if debug {
                eprintln!("rkt-vmm: {m}");
            }
        };
        if cfg.vcpus == 0 {
            bail!("a VM needs at least one vCPU");
        }
        if cfg.mem_mib < 32 {
            bail!(
                "guest memory of {} MiB is too small (32 MiB at least)",
                cfg.mem_mib
            );
        }
        let mem_bytes = cfg
            .mem_mib
            .checked_mul(1 << 20)
            .filter(|b| *b <= 1 << 40)
            .with_context(|| format!("guest memory of {} MiB is too large", cfg.mem_mib))?;

        let kvm = Kvm::new().map_err(|e| {
            anyhow::anyhow!("cannot open /dev/kvm: {e} (is KVM available and accessible?)")
        })?;
        let pvm = pvm::host_is_pvm();
        dbg(format!(
            "host KVM mode: {}",
            if pvm {
                "PVM (kvm_pvm module): CX16 hidden, emulation fix-ups on, PVM command line"
            } else {
                "hardware virtualization (no PVM workarounds)"
            }
        ));
        let max_vcpus = kvm.get_max_vcpus();
        if usize::from(cfg.vcpus) > max_vcpus {
            bail!("{} vCPUs requested, KVM allows {max_vcpus}", cfg.vcpus);
        }

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

        if let Some((st, _)) = restore {
            if st.mem_bytes != mem_bytes || st.vcpus.len() != usize::from(cfg.vcpus) {
                bail!(
                    "the snapshot is of a VM with {} MiB and {} vCPUs, not {} MiB and {}",
                    st.mem_bytes >> 20,
                    st.vcpus.len(),
                    cfg.mem_mib,
                    cfg.vcpus
                );
            }
        }
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

        // A restored guest is past its boot: its memory already holds kernel and initrd.
        let (entry, initrd) = if restore.is_some() {
            (0, None)
        } else {
            let (entry, kernel_end) = boot::load_kernel(&mem, &cfg.kernel)?;
            dbg(format!(
                "kernel {} entry {entry:#x} end {kernel_end:#x}",
                cfg.kernel.display()
            ));
            let initrd = match &cfg.initrd {
                Some(p) => Some(boot::load_initrd(&mem, p, kernel_end)?),
                None => None,
            };
            (entry, initrd)
        };

        // Legacy devices.
        let exit = Arc::new(ExitState::new().context("creating an eventfd")?);
        let serial_irq = irqfd(&vm, layout::SERIAL_IRQ)?;
        let pause_evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?);
        let mut serial_out = open_serial(cfg.serial_out)?;
        if let Some(marker) = cfg.pause_marker.filter(|m| !m.is_empty()) {
            serial_out = Box::new(MarkerWriter {
                inner: serial_out,
                marker,
                matched: 0,
                evt: pause_evt.clone(),
            });
        }
        let serial = match restore {
            None => vm_superio::Serial::new(IrqTrigger(serial_irq), serial_out),
            Some((st, _)) => vm_superio::Serial::from_state(
                &st.serial,
                IrqTrigger(serial_irq),
                vm_superio::serial::NoEvents,
                serial_out,
            )
            .map_err(|e| anyhow::anyhow!("restoring the serial port: {e:?}"))?,
        };
        let i8042 = vm_superio::I8042Device::new(ResetTrigger(exit.clone()));

        // virtio devices.
        let mut cmdline = String::from(BASE_CMDLINE);
        if pvm {
            cmdline.push(' ');
            cmdline.push_str(pvm::PVM_CMDLINE);
        }
        let mut mmio = Vec::new();
        let mut event_loop = EventLoop::new().context("creating the event loop")?;
        for (i, d) in cfg.devices.into_iter().enumerate() {
            let (base, irq) = layout::virtio_slot(i).context("too many virtio devices")?;
            let device: Box<dyn VirtioDevice> = match d {
                DeviceConfig::Rng => Box::new(devices::virtio::rng::Rng::new(debug)),
                DeviceConfig::Vsock {
                    guest_cid,
                    uds_path,
                } => Box::new(devices::virtio::vsock::Vsock::new(
                    guest_cid, uds_path, debug,
                )?),
                DeviceConfig::Fs { tag, shared_dir } => {
                    Box::new(devices::virtio::fs::Fs::new(&tag, &shared_dir, debug)?)
                }
            };
            let nq = device.queue_max_sizes().len();
            let mut evts = Vec::with_capacity(nq);
            for q in 0..nq {
                let e = EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?;
                vm.register_ioevent(&e, &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY), q as u32)
                    .context("KVM_IOEVENTFD")?;
                evts.push(e);
            }
            dbg(format!(
                "virtio device type {} at {base:#x} irq {irq}",
                device.device_type()
            ));
            let t = Arc::new(Mutex::new(MmioTransport::new(
                device,
                mem.clone(),
                Interrupt::new(irqfd(&vm, irq)?),
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
        if !cfg.cmdline_extra.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(cfg.cmdline_extra.trim());
        }
        dbg(format!("command line: {cmdline}"));
        if let Some((st, _)) = restore {
            // The guest booted with the snapshot's command line; ours must say the same
            // (devices at the same addresses), or the guest's drivers would not find them.
            if st.cmdline != cmdline {
                bail!(
                    "the snapshot's VM had the command line {:?}, this one {cmdline:?}",
                    st.cmdline
                );
            }
            if st.transports.len() != mmio.len() {
                bail!(
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
            persist::restore_vm(&vm, st)?;
        } else {
            let cmdline_len = boot::write_cmdline(&mem, &cmdline)?;
            boot::write_boot_params(&mem, mem_bytes, cmdline_len, initrd)?;
            arch::regs::write_boot_tables(&mem)?;
            arch::mptable::setup(&mem, cfg.vcpus)?;
        }

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        let mut vcpus = Vec::new();
        for id in 0..cfg.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
            let mut entries = supported.as_slice().to_vec();
            arch::cpuid::normalize(
                &mut entries,
                arch::cpuid::CpuidOptions {
                    vcpu_id: id,
                    vcpu_count: cfg.vcpus,
                    pvm,
                },
            );
            if let Some((st, _)) = restore {
                st.vcpus[usize::from(id)]
                    .restore(&vcpu)
                    .with_context(|| format!("restoring vCPU {id}"))?;
                vcpus.push(vcpu);
                continue;
            }
            let cpuid = kvm_bindings::CpuId::from_entries(&entries)
                .map_err(|e| anyhow::anyhow!("building CPUID: {e:?}"))?;
            vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
            let refused = arch::regs::setup_vcpu(&vcpu, entry)?;
            if !refused.is_empty() && id == 0 {
                dbg(format!("KVM refused boot MSRs {refused:x?} (harmless)"));
            }
            vcpus.push(vcpu);
        }

        if restore.is_some() {
            // Interrupts the devices raise now reach the restored irqchip and LAPICs.
            for slot in &mmio {
                let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
                if t.is_active() {
                    t.device_mut().after_restore();
                }
            }
        }
        let pio = Arc::new(Mutex::new(PioBus { serial, i8042 }));
        if let Some(input) = cfg.serial_in {
            event_loop
                .add_subscriber(Arc::new(Mutex::new(SerialInput::new(input, pio.clone()))))
                .context("registering serial input")?;
        }
        let shared = Arc::new(VcpuShared {
            pio: pio.clone(),
            mmio,
            exit,
            stopping: AtomicBool::new(false),
            mem,
            pvm,
            debug,
            pvm_fixups: AtomicU64::new(0),
            xsave_layout: pvm::xsave::Layout::from_cpuid(
                supported
                    .as_slice()
                    .iter()
                    .filter(|e| e.function == 0xd)
                    .map(|e| (e.index, e.eax, e.ebx)),
            ),
            pvm_xsave_ops: AtomicU64::new(0),
            pvm_xsave_ns: AtomicU64::new(0),
        });
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?);
        event_loop
            .add_owner_fd(shared.exit.evt.as_raw_fd(), TOKEN_EXIT)
            .context("event loop")?;
        event_loop
            .add_owner_fd(stop.as_raw_fd(), TOKEN_STOP)
            .context("event loop")?;
        event_loop
            .add_owner_fd(pause_evt.as_raw_fd(), TOKEN_PAUSE)
            .context("event loop")?;
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

    pub fn handle(&self) -> VmHandle {
        VmHandle {
            stop: self.stop.clone(),
        }
    }

    /// Guest memory (e.g. to measure how much of it the guest touched).
    pub fn guest_memory(&self) -> &GuestMem {
        &self.shared.mem
    }

    /// Runs the VM until the guest resets or powers off, the VMM hits an error, or
    /// `VmHandle::stop` is called. The calling thread runs the device event loop.
    pub fn run(mut self) -> Result<ExitReason> {
        let reason = self.run_loop(false)?.expect("run_loop(false) never pauses");
        if self.debug {
            eprintln!(
                "rkt-vmm: VM ended: {reason:?} (PVM fix-ups: {}, XSAVE-family instructions run: {} in {} ms)",
                self.shared.pvm_fixups.load(Ordering::Relaxed),
                self.shared.pvm_xsave_ops.load(Ordering::Relaxed),
                self.shared.pvm_xsave_ns.load(Ordering::Relaxed) / 1_000_000
            );
        }
        let _ = self
            .shared
            .pio
            .lock()
            .map(|mut p| p.serial.writer_mut().flush());
        Ok(reason)
    }

    /// Runs the VM like `run` until the guest wrote `VmConfig::pause_marker` on its console,
    /// then (after `pause_grace_ms`) stops the vCPUs and returns `None`: the VM can now be
    /// snapshotted and run again. `Some(reason)` if it ended first.
    pub fn run_to_pause_point(&mut self) -> Result<Option<ExitReason>> {
        self.run_loop(true)
    }

    /// Saves the paused VM (after `run_to_pause_point`, or before it ever ran) into `dir`,
    /// which must exist: `state` and a sparse `mem`, both created read-only. Returns the bytes
    /// of guest memory written (the rest are holes).
    pub fn snapshot(&self, dir: &Path) -> Result<u64> {
        let state = self.save_state()?;
        let written = persist::write_memory(&self.shared.mem, &dir.join(persist::MEM_FILE))?;
        persist::write_state(dir, &state)?;
        Ok(written)
    }

    /// The paused VM's state (vCPUs, in-kernel devices, serial, virtio transports).
    pub fn save_state(&self) -> Result<persist::VmState> {
        if self.vcpus.is_empty() {
            bail!("the VM is not paused (its vCPUs are running or gone)");
        }
        let msr_list = persist::msr_index_list(&self.kvm)?;
        let vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| {
                persist::VcpuState::save(v, &msr_list).with_context(|| format!("saving vCPU {i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (clock, pit, irqchips) = persist::save_vm(&self.vm)?;
        let serial = self
            .shared
            .pio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serial
            .state();
        let transports = self
            .shared
            .mmio
            .iter()
            .map(|s| {
                s.transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save_state()
            })
            .collect();
        Ok(persist::VmState {
            mem_bytes: self.mem_bytes,
            cmdline: self.cmdline.clone(),
            clock,
            pit,
            irqchips,
            serial,
            transports,
            vcpus,
        })
    }

    /// Sets a saved state back into this VM's vCPUs and in-kernel devices (the probe for
    /// "can this host restore a running guest" without a second VM).
    pub fn load_state(&self, st: &persist::VmState) -> Result<()> {
        if st.vcpus.len() != self.vcpus.len() {
            bail!(
                "the state has {} vCPUs, the VM {}",
                st.vcpus.len(),
                self.vcpus.len()
            );
        }
        persist::restore_vm(&self.vm, st)?;
        for (i, (v, s)) in self.vcpus.iter().zip(&st.vcpus).enumerate() {
            s.restore(v)
                .with_context(|| format!("restoring vCPU {i}"))?;
        }
        Ok(())
    }

    fn run_loop(&mut self, pause_on_marker: bool) -> Result<Option<ExitReason>> {
        vstate::install_kick_handler()?;
        self.shared.stopping.store(false, Ordering::SeqCst);
        let mut threads = Vec::new();
        let vcpus: Vec<VcpuFd> = self.vcpus.drain(..).collect();
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            match vstate::spawn_vcpu(i as u8, vcpu, self.shared.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.vcpus = vstate::stop_vcpus(&self.shared, threads);
                    return Err(e);
                }
            }
        }
        // Once the marker went by: when to pause.
        let mut pause_at: Option<std::time::Instant> = None;
        let reason = loop {
            let timeout = match pause_at {
                None => -1,
                Some(t) => t
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
            };
            let owner = match self.event_loop.run_once(timeout) {
                Ok(o) => o,
                Err(e) => {
                    self.vcpus = vstate::stop_vcpus(&self.shared, threads);
                    return Err(anyhow::Error::new(e).context("event loop"));
                }
            };
            if owner.contains(&TOKEN_EXIT) {
                if let Some(r) = self.shared.exit.reason() {
                    break Some(r);
                }
            }
            if owner.contains(&TOKEN_STOP) {
                break Some(ExitReason::Stopped);
            }
            if owner.contains(&TOKEN_PAUSE) {
                let _ = self.pause_evt.read();
                if pause_on_marker && pause_at.is_none() {
                    pause_at = Some(
                        std::time::Instant::now()
                            + std::time::Duration::from_millis(self.pause_grace_ms),
                    );
                }
            }
            if pause_at.is_some_and(|t| std::time::Instant::now() >= t) {
                break None;
            }
        };
        self.vcpus = vstate::stop_vcpus(&self.shared, threads);
        Ok(reason)
    }
}
