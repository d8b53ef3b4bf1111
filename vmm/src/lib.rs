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
//! # Ok::<(), rkt_vmm::Error>(())
//! ```

pub mod arch;
mod builder;
pub mod devices;
pub mod error;
pub mod event;
pub mod exit;
pub mod persist;
pub mod pvm;
pub mod vstate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use arch::boot::GuestMem;
use error::Context;
pub use error::{Error, Result};
use event::EventLoop;
pub use exit::ExitReason;
use vstate::VcpuShared;

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
    /// virtio-net over `tap`, a non-blocking fd reading and writing one frame with its 12-byte
    /// virtio-net header per call (`devices::virtio::net::tap::open_tap`), opened by the caller
    /// (e.g. in the pod's network namespace); the guest sees `mac` and `mtu`.
    Net {
        tap: std::os::fd::OwnedFd,
        mac: [u8; 6],
        mtu: u16,
    },
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

impl Vm {
    /// Creates the VM: memory, kernel, initrd, devices and vCPUs; nothing runs yet.
    pub fn build(cfg: VmConfig) -> Result<Vm> {
        builder::build(cfg, None)
    }

    /// Creates a VM from the snapshot in `dir` (see `persist`): guest memory mapped
    /// `MAP_PRIVATE` from `<dir>/mem`, vCPU, in-kernel and device state from `<dir>/state`.
    /// `cfg` must describe the same VM (memory size, vCPUs, the same devices in the same order;
    /// the devices' backends, e.g. the vsock socket path or the shared directory, may differ);
    /// its kernel and initrd are not read.
    pub fn restore(cfg: VmConfig, dir: &Path) -> Result<Vm> {
        let state = persist::read_state(dir)?;
        builder::build(cfg, Some((&state, dir)))
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
            return Err(Error::Snapshot(
                "the VM is not paused (its vCPUs are running or gone)".into(),
            ));
        }
        let msr_list = persist::msr_index_list(&self.kvm)?;
        let vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| {
                persist::VcpuState::save(v, &msr_list).map_err(|e| Error::Vcpu {
                    action: "saving",
                    id: i,
                    source: Box::new(e),
                })
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
            return Err(Error::Snapshot(format!(
                "the state has {} vCPUs, the VM {}",
                st.vcpus.len(),
                self.vcpus.len()
            )));
        }
        persist::restore_vm(&self.vm, st)?;
        for (i, (v, s)) in self.vcpus.iter().zip(&st.vcpus).enumerate() {
            s.restore(v).map_err(|e| Error::Vcpu {
                action: "restoring",
                id: i,
                source: Box::new(e),
            })?;
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
                    return Err(e).context("event loop");
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
