//! The vCPU threads: what they share (buses, guest memory, the exit state) and their run loop.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Context, Error, Result};
use kvm_bindings::{
    kvm_regs, kvm_xcrs, kvm_xsave, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::boot::GuestMem;
use crate::devices::legacy::PioBus;
use crate::devices::virtio::mmio::MmioTransport;
use crate::exit::{ExitReason, ExitState};
use crate::pvm::xsave::{self, XInsn, KVM_XSAVE_SIZE};
use crate::pvm::{self, EmulationFix};

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
    /// The guest's XSAVE layout, for running XSAVE/XRSTOR on PVM.
    pub xsave_layout: xsave::Layout,
    /// XSAVE-family instructions run for the guest (PVM), for statistics.
    pub pvm_xsave_ops: AtomicU64,
    /// Time spent running them in the VMM.
    pub pvm_xsave_ns: AtomicU64,
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
        res = register_signal_handler(kick_signal(), noop_handler).map_err(|e| Error::Io {
            what: "installing the vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        });
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

/// Runs `vcpu` on a thread of its own; the thread hands it back when it ends (on
/// `stop_vcpus` or when the VM ends), so a paused VM can be snapshotted and run again.
pub fn spawn_vcpu(
    index: u8,
    mut vcpu: VcpuFd,
    shared: Arc<VcpuShared>,
) -> Result<JoinHandle<VcpuFd>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            run_vcpu(index, &mut vcpu, &shared);
            vcpu
        })
        .context("starting a vCPU thread")
}

/// Finishes a port or MMIO access KVM handed us: KVM completes it (e.g. moves RIP past an
/// emulated IN/OUT, stores an IN's data) only on the next KVM_RUN, so without this a snapshot
/// would hold a half-done instruction. `immediate_exit` makes that KVM_RUN return at once.
fn complete_pending_io(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
}

fn run_vcpu(index: u8, vcpu: &mut VcpuFd, shared: &VcpuShared) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            complete_pending_io(vcpu);
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
    if let Some((insn, len)) = xsave::decode(&bytes) {
        let n = shared.pvm_xsave_ops.fetch_add(1, Ordering::Relaxed);
        if shared.debug && n == 0 {
            eprintln!("rkt-vmm: vcpu{index}: running the guest's XSAVE-family instructions (PVM)");
        }
        let t = std::time::Instant::now();
        let r = emulate_xsave(vcpu, shared, regs, insn, len);
        shared
            .pvm_xsave_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        return r.map_err(|e| format!("{}: {e}", describe()));
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
                inject_exception(vcpu, v, None).map_err(|e| format!("vcpu{index}: {e}"))?;
            }
            Ok(())
        }
    }
}

/// Delivers exception `vector` (with `error_code` if it has one) before the next guest
/// instruction.
fn inject_exception(vcpu: &VcpuFd, vector: u8, error_code: Option<u32>) -> Result<(), String> {
    let mut ev = vcpu
        .get_vcpu_events()
        .map_err(|e| format!("KVM_GET_VCPU_EVENTS: {e}"))?;
    ev.exception.injected = 1;
    ev.exception.nr = vector;
    ev.exception.has_error_code = u8::from(error_code.is_some());
    ev.exception.error_code = error_code.unwrap_or(0);
    ev.exception.pending = 0;
    vcpu.set_vcpu_events(&ev)
        .map_err(|e| format!("KVM_SET_VCPU_EVENTS: {e}"))
}

/// What an XSAVE-family instruction raises instead of completing.
enum GuestFault {
    /// #GP(0).
    Gp,
    /// #PF at `addr` with `code` (present, write bits; always a supervisor access).
    Pf { addr: u64, code: u32 },
}

impl From<xsave::Fault> for GuestFault {
    fn from(_: xsave::Fault) -> Self {
        GuestFault::Gp
    }
}

/// A range of guest-virtual memory as the guest-physical pieces it maps to.
struct VirtRange(Vec<(u64, usize)>);

impl VirtRange {
    /// Translates [gva, gva + len) page by page with the vCPU's page tables; an unmapped page (or
    /// a read-only one for a write) is the #PF the CPU would raise, so the guest kernel can fault
    /// the page in (or take its exception fix-up) and run the instruction again.
    fn new(
        vcpu: &VcpuFd,
        gva: u64,
        len: usize,
        write: bool,
    ) -> Result<Result<VirtRange, GuestFault>, String> {
        let mut pieces = Vec::new();
        let mut addr = gva;
        let end = gva.wrapping_add(len as u64);
        while addr != end {
            let n = (0x1000 - (addr & 0xfff)).min(end.wrapping_sub(addr));
            let t = vcpu
                .translate_gva(addr)
                .map_err(|e| format!("KVM_TRANSLATE {addr:#x}: {e}"))?;
            if t.valid == 0 || (write && t.writeable == 0) {
                let code = u32::from(write) << 1 | u32::from(t.valid != 0);
                return Ok(Err(GuestFault::Pf { addr, code }));
            }
            pieces.push((t.physical_address, n as usize));
            addr = addr.wrapping_add(n);
        }
        Ok(Ok(VirtRange(pieces)))
    }

    /// Calls `f(gpa, range offset, piece length)` for the pieces that overlap [off, off + len).
    fn each(
        &self,
        off: usize,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), GuestFault>,
    ) -> Result<(), GuestFault> {
        let mut start = 0;
        for &(gpa, n) in &self.0 {
            let (lo, hi) = (off.max(start), (off + len).min(start + n));
            if lo < hi {
                f(gpa + (lo - start) as u64, lo, hi - lo)?;
            }
            start += n;
        }
        Ok(())
    }

    fn read(&self, mem: &GuestMem, off: usize, buf: &mut [u8]) -> Result<(), GuestFault> {
        self.each(off, buf.len(), |gpa, at, n| {
            mem.read_slice(&mut buf[at - off..at - off + n], GuestAddress(gpa))
                .map_err(|_| GuestFault::Gp)
        })
    }

    fn write(&self, mem: &GuestMem, off: usize, data: &[u8]) -> Result<(), GuestFault> {
        self.each(off, data.len(), |gpa, at, n| {
            mem.write_slice(&data[at - off..at - off + n], GuestAddress(gpa))
                .map_err(|_| GuestFault::Gp)
        })
    }
}

fn xsave_bytes(x: &kvm_xsave) -> [u8; KVM_XSAVE_SIZE] {
    let mut b = [0u8; KVM_XSAVE_SIZE];
    for (chunk, word) in b.chunks_exact_mut(4).zip(x.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    b
}

/// Runs XSAVE, XRSTOR, XSETBV or XGETBV for the guest (see `pvm::xsave`): on success RIP moves
/// past it; a fault is injected with RIP left on it, as the CPU would. Err stops the VM.
fn emulate_xsave(
    vcpu: &mut VcpuFd,
    shared: &VcpuShared,
    mut regs: kvm_regs,
    insn: XInsn,
    len: usize,
) -> Result<(), String> {
    let r = &regs;
    let gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    let next_rip = regs.rip.wrapping_add(len as u64);
    let xcr0 = || -> Result<u64, String> {
        let x = vcpu.get_xcrs().map_err(|e| format!("KVM_GET_XCRS: {e}"))?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Ok(x.xcrs[..n]
            .iter()
            .find(|c| c.xcr == 0)
            .map_or(1, |c| c.value))
    };
    let edx_eax = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let mem = &shared.mem;
    let layout = &shared.xsave_layout;
    let outcome: Result<(), GuestFault> = match insn {
        XInsn::Xgetbv => {
            if regs.rcx as u32 != 0 {
                Err(GuestFault::Gp)
            } else {
                let v = xcr0()?;
                regs.rax = v & 0xffff_ffff;
                regs.rdx = v >> 32;
                Ok(())
            }
        }
        XInsn::Xsetbv => {
            let mut x = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            x.xcrs[0].xcr = regs.rcx as u32;
            x.xcrs[0].value = edx_eax;
            // KVM checks the index and the value as the CPU would (#GP cases).
            if regs.rcx as u32 != 0 || vcpu.set_xcrs(&x).is_err() {
                Err(GuestFault::Gp)
            } else {
                Ok(())
            }
        }
        XInsn::Xsave(m) | XInsn::Xrstor(m) => {
            let addr = m.address(&gpr, next_rip);
            let xcr0 = xcr0()?;
            let rfbm = xcr0 & edx_eax;
            let area = layout.area_len(rfbm);
            let write = matches!(insn, XInsn::Xsave(_));
            if addr & 63 != 0 {
                Err(GuestFault::Gp)
            } else {
                match VirtRange::new(vcpu, addr, area, write)? {
                    Err(f) => Err(f),
                    Ok(range) => {
                        let x = vcpu
                            .get_xsave()
                            .map_err(|e| format!("KVM_GET_XSAVE: {e}"))?;
                        let mut cur = xsave_bytes(&x);
                        if write {
                            let mut bv = [0u8; 8];
                            range.read(mem, 512, &mut bv).and_then(|()| {
                                let writes =
                                    xsave::xsave_writes(&cur, rfbm, u64::from_le_bytes(bv), layout);
                                writes
                                    .iter()
                                    .try_for_each(|(off, data)| range.write(mem, *off, data))
                            })
                        } else {
                            let mut buf = vec![0u8; area];
                            range
                                .read(mem, 0, &mut buf)
                                .and_then(|()| {
                                    Ok(xsave::xrstor_merge(&mut cur, &buf, rfbm, xcr0, layout)?)
                                })
                                .and_then(|()| {
                                    let mut x = kvm_xsave::default();
                                    for (w, c) in x.region.iter_mut().zip(cur.chunks_exact(4)) {
                                        *w = u32::from_le_bytes(c.try_into().unwrap());
                                    }
                                    // SAFETY: a 4096-byte kvm_xsave, the size KVM_SET_XSAVE reads;
                                    // KVM validates the header and MXCSR (EINVAL: #GP, as XRSTOR).
                                    unsafe { vcpu.set_xsave(&x) }.map_err(|_| GuestFault::Gp)
                                })
                        }
                    }
                }
            }
        }
    };
    match outcome {
        Ok(()) => {
            regs.rip = next_rip;
            vcpu.set_regs(&regs)
                .map_err(|e| format!("KVM_SET_REGS: {e}"))
        }
        Err(GuestFault::Gp) => inject_exception(vcpu, 13, Some(0)),
        Err(GuestFault::Pf { addr, code }) => {
            let mut s = vcpu
                .get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
            s.cr2 = addr;
            vcpu.set_sregs(&s)
                .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
            inject_exception(vcpu, 14, Some(code))
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

/// Kicks the vCPU threads out of KVM_RUN until they have all returned; returns their vCPUs in
/// order (a thread that panicked loses its vCPU).
pub fn stop_vcpus(shared: &VcpuShared, threads: Vec<JoinHandle<VcpuFd>>) -> Vec<VcpuFd> {
    shared.stopping.store(true, Ordering::SeqCst);
    let mut vcpus = Vec::with_capacity(threads.len());
    for t in threads {
        // A kick can land just before the thread re-enters KVM_RUN, so repeat until it is out.
        while !t.is_finished() {
            // SAFETY: the thread is alive (not finished and not joined), so its pthread_t is valid.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Ok(v) = t.join() {
            vcpus.push(v);
        }
    }
    vcpus
}
