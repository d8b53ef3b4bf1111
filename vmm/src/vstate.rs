//! The VM and its vCPU threads.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::boot::GuestMem;
use crate::devices::legacy::PioBus;
use crate::devices::virtio::mmio::MmioTransport;
use crate::pvm::{self, EmulationFix};
use crate::ExitReason;

/// How the VM ended, first reporter wins; `evt` wakes the event loop.
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitState {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitState {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn exit(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        drop(g);
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A virtio-mmio window on the MMIO bus.
pub struct MmioSlot {
    pub base: u64,
    pub len: u64,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    pub pio: Arc<Mutex<PioBus>>,
    pub mmio: Vec<MmioSlot>,
    pub exit: Arc<ExitState>,
    pub stopping: AtomicBool,
    pub mem: GuestMem,
    pub pvm: bool,
    pub debug: bool,
    /// Emulation failures fixed up (PVM), for statistics.
    pub pvm_fixups: AtomicU64,
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only effect is that the blocked
/// KVM_RUN returns EINTR.
pub fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| anyhow::anyhow!("installing the vCPU kick signal handler: {e}"));
    });
    res
}

enum Action {
    None,
    Exit(ExitReason),
    Internal,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn mmio_slot(shared: &VcpuShared, addr: u64) -> Option<&MmioSlot> {
    shared
        .mmio
        .iter()
        .find(|s| addr >= s.base && addr - s.base < s.len)
}

pub fn spawn_vcpu(index: u8, mut vcpu: VcpuFd, shared: Arc<VcpuShared>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || run_vcpu(index, &mut vcpu, &shared))
        .context("starting a vCPU thread")
}

fn run_vcpu(index: u8, vcpu: &mut VcpuFd, shared: &VcpuShared) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let action = match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    lock(&shared.pio).read(port, data);
                    Action::None
                }
                VcpuExit::IoOut(port, data) => {
                    lock(&shared.pio).write(port, data);
                    Action::None
                }
                VcpuExit::MmioRead(addr, data) => {
                    match mmio_slot(shared, addr) {
                        Some(s) => lock(&s.transport).read(addr - s.base, data),
                        None => data.fill(0),
                    }
                    Action::None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if let Some(s) = mmio_slot(shared, addr) {
                        lock(&s.transport).write(addr - s.base, data);
                    }
                    Action::None
                }
                // HLT only reaches us without an in-kernel LAPIC; treat it as power-off.
                VcpuExit::Hlt => Action::Exit(ExitReason::PowerOff),
                // Triple fault: what a PC does next is reset.
                VcpuExit::Shutdown => {
                    if shared.debug {
                        eprintln!("rkt-vmm: vcpu{index}: triple fault, treating as reset");
                    }
                    Action::Exit(ExitReason::Reset)
                }
                VcpuExit::SystemEvent(t, _) => match t {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Action::Exit(ExitReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Action::Exit(ExitReason::Reset),
                    KVM_SYSTEM_EVENT_CRASH => {
                        Action::Exit(ExitReason::Error("guest crashed".into()))
                    }
                    other => Action::Exit(ExitReason::Error(format!(
                        "unexpected KVM system event {other}"
                    ))),
                },
                VcpuExit::FailEntry(reason, cpu) => Action::Exit(ExitReason::Error(format!(
                    "vcpu{index}: KVM entry failed, hardware reason {reason:#x} on cpu {cpu}"
                ))),
                VcpuExit::InternalError => Action::Internal,
                VcpuExit::Intr => Action::None,
                other => Action::Exit(ExitReason::Error(format!(
                    "vcpu{index}: unexpected KVM exit {other:?}"
                ))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::None,
            Err(e) => Action::Exit(ExitReason::Error(format!("vcpu{index}: KVM_RUN: {e}"))),
        };
        match action {
            Action::None => {}
            Action::Exit(r) => {
                shared.exit.exit(r);
                return;
            }
            Action::Internal => {
                if let Err(msg) = handle_internal_error(index, vcpu, shared) {
                    shared.exit.exit(ExitReason::Error(msg));
                    return;
                }
            }
        }
    }
}

/// KVM_EXIT_INTERNAL_ERROR: on PVM, fix up the instructions its emulator cannot run; anything
/// else stops the VM with RIP and the instruction bytes.
fn handle_internal_error(index: u8, vcpu: &mut VcpuFd, shared: &VcpuShared) -> Result<(), String> {
    // SAFETY: exit_reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let regs = vcpu
        .get_regs()
        .map_err(|e| format!("vcpu{index}: KVM_GET_REGS: {e}"))?;
    let bytes = pvm::instruction_bytes(internal.ndata, &internal.data)
        .or_else(|| read_guest_code(vcpu, &shared.mem, regs.rip))
        .unwrap_or_default();
    let describe = || {
        format!(
            "vcpu{index}: KVM internal error (suberror {}) at RIP {:#x}, instruction bytes [{}]",
            internal.suberror,
            regs.rip,
            pvm::hex(&bytes)
        )
    };
    if !shared.pvm || internal.suberror != pvm::SUBERROR_EMULATION {
        return Err(describe());
    }
    match pvm::fix_for(&bytes) {
        EmulationFix::Fatal => Err(format!(
            "{}: the PVM host cannot emulate this instruction",
            describe()
        )),
        EmulationFix::Fix { skip, vector } => {
            let n = shared.pvm_fixups.fetch_add(1, Ordering::Relaxed);
            if shared.debug && n < 20 {
                eprintln!(
                    "rkt-vmm: vcpu{index}: PVM emulation fix-up at {:#x} [{}]",
                    regs.rip,
                    pvm::hex(&bytes)
                );
            }
            if skip > 0 {
                let mut r = regs;
                r.rip = r.rip.wrapping_add(skip);
                vcpu.set_regs(&r)
                    .map_err(|e| format!("vcpu{index}: KVM_SET_REGS: {e}"))?;
            }
            if let Some(v) = vector {
                let mut ev = vcpu
                    .get_vcpu_events()
                    .map_err(|e| format!("vcpu{index}: KVM_GET_VCPU_EVENTS: {e}"))?;
                ev.exception.injected = 1;
                ev.exception.nr = v;
                ev.exception.has_error_code = 0;
                ev.exception.error_code = 0;
                ev.exception.pending = 0;
                vcpu.set_vcpu_events(&ev)
                    .map_err(|e| format!("vcpu{index}: KVM_SET_VCPU_EVENTS: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Fallback when KVM did not report the instruction bytes: translate RIP and read them.
fn read_guest_code(vcpu: &VcpuFd, mem: &GuestMem, rip: u64) -> Option<Vec<u8>> {
    let t = vcpu.translate_gva(rip).ok()?;
    if t.valid == 0 {
        return None;
    }
    let mut buf = [0u8; 15];
    // Stop at the page end: the next page may map elsewhere.
    let n = (0x1000 - (t.physical_address & 0xfff)).min(15) as usize;
    mem.read_slice(&mut buf[..n], GuestAddress(t.physical_address))
        .ok()?;
    Some(buf[..n].to_vec())
}

/// Kicks the vCPU threads out of KVM_RUN until they have all returned.
pub fn stop_vcpus(shared: &VcpuShared, threads: Vec<JoinHandle<()>>) {
    shared.stopping.store(true, Ordering::SeqCst);
    for t in threads {
        // A kick can land just before the thread re-enters KVM_RUN, so repeat until it is out.
        while !t.is_finished() {
            // SAFETY: the thread is alive (not finished and not joined), so its pthread_t is valid.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = t.join();
    }
}
