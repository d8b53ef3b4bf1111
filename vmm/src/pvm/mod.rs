//! PVM (pagetable-based virtualization) support. Under PVM's "native" mode every guest
//! kernel-mode instruction is emulated, and the emulator lacks a few instructions; see
//! docs/vmm.md. Everything here is only used when `/sys/module/kvm_pvm` exists: on VMX/SVM
//! hosts none of these exits happen.

use std::path::Path;

pub mod xsave;

/// Kernel command line additions for PVM, where every guest kernel instruction is emulated
/// (≈1 µs each; a `rep movs/stos` costs about that per iteration). Measured in docs/kernel.md.
/// - `clearcpuid=smap,fsgsbase,pku,rdpid,popcnt`: features PVM's emulator cannot run
///   (PVM re-enables them after KVM_SET_CPUID2, so CPUID alone does not do it).
/// - `clearcpuid=xsaveopt,xsavec,xsaves,xgetbv1`: the guest kernel keeps XSAVE, which the VMM
///   runs for it ([`xsave`]), in the one form the VMM implements: plain XSAVE/XRSTOR, standard
///   format. (`noxsave` instead leaves user space's AVX state unswitched: see [`xsave`].)
/// - `clearcpuid=…erms,fsrm`: without "enhanced rep movsb" the kernel's memcpy/copy_to_user use
///   `rep movsq`, 8 bytes per emulated iteration instead of 1 (a 4 MiB virtio-fs read: 5.3-7.8 s
///   → 2.4-3.4 s).
/// - `rodata=off`: skips write-protecting the kernel image (`mark_rodata_ro` and freeing its
///   gaps took ~3 s); the guest kernel's text stays writable, which only matters to code that
///   already runs in the guest kernel.
/// - `percpu_alloc=page`: the per-CPU first chunk in 4 KiB pages instead of a 2 MiB embedded
///   unit (1.0 s → 0.35 s at boot).
/// - `retain_initrd`: the initramfs pages are not poisoned (byte-wise memset) and freed after
///   unpacking (populate_rootfs of a 5.2 MB initramfs: 16.5 s → 11.1 s); they stay reserved,
///   a few MiB.
pub const PVM_CMDLINE: &str =
    "clearcpuid=smap,fsgsbase,pku,rdpid,popcnt,erms,fsrm,xsaveopt,xsavec,xsaves,xgetbv1 \
    rodata=off percpu_alloc=page retain_initrd";

/// True when the host's KVM is the kvm_pvm module.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// What to do with an instruction the emulator gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationFix {
    /// Advance RIP by `skip` bytes, then inject exception `vector` (if any).
    Fix { skip: u64, vector: Option<u8> },
    /// Unknown instruction: stop the VM.
    Fatal,
}

/// Decides the fix for the instruction starting with `bytes`.
pub fn fix_for(bytes: &[u8]) -> EmulationFix {
    match bytes {
        // int3: kernel text patching and the alternatives self-test use it; deliver #BP with
        // RIP after the instruction (trap semantics).
        [0xcc, ..] => EmulationFix::Fix {
            skip: 1,
            vector: Some(3),
        },
        // ud2 (BUG/WARN): #UD with RIP on the instruction, as the CPU would.
        [0x0f, 0x0b, ..] => EmulationFix::Fix {
            skip: 0,
            vector: Some(6),
        },
        // fwait: nothing pending to check in a freshly booted guest.
        [0x9b, ..] => EmulationFix::Fix {
            skip: 1,
            vector: None,
        },
        _ => EmulationFix::Fatal,
    }
}

/// KVM_INTERNAL_ERROR_EMULATION.
pub const SUBERROR_EMULATION: u32 = 1;
/// `emulation_failure.flags`: the instruction bytes are valid.
const FLAG_INSTRUCTION_BYTES: u64 = 1;

/// Extracts the instruction bytes from `kvm_run.internal` for an emulation failure:
/// data[0] = flags, then a byte with the length followed by up to 15 instruction bytes.
pub fn instruction_bytes(ndata: u32, data: &[u64; 16]) -> Option<Vec<u8>> {
    if ndata < 3 || data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return None;
    }
    let mut raw = Vec::with_capacity(16);
    raw.extend_from_slice(&data[1].to_le_bytes());
    raw.extend_from_slice(&data[2].to_le_bytes());
    let len = usize::from(raw[0]).min(15);
    Some(raw[1..1 + len].to_vec())
}

/// Hex dump for error messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instructions() {
        assert_eq!(
            fix_for(&[0xcc, 0x90]),
            EmulationFix::Fix {
                skip: 1,
                vector: Some(3)
            }
        );
        assert_eq!(
            fix_for(&[0x0f, 0x0b]),
            EmulationFix::Fix {
                skip: 0,
                vector: Some(6)
            }
        );
        assert_eq!(
            fix_for(&[0x9b]),
            EmulationFix::Fix {
                skip: 1,
                vector: None
            }
        );
        assert_eq!(fix_for(&[0x48, 0x0f, 0xae, 0x2f]), EmulationFix::Fatal);
        assert_eq!(fix_for(&[]), EmulationFix::Fatal);
    }

    #[test]
    fn decode_instruction_bytes() {
        let mut d = [0u64; 16];
        d[0] = 1;
        d[1] = u64::from_le_bytes([4, 0x48, 0x0f, 0xae, 0x2f, 0x90, 0x90, 0x90]);
        assert_eq!(
            instruction_bytes(3, &d).unwrap(),
            vec![0x48, 0x0f, 0xae, 0x2f]
        );
        // Length byte larger than the buffer is clamped, never read out of bounds.
        d[1] = u64::from_le_bytes([0xff, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(instruction_bytes(3, &d).unwrap().len(), 15);
        d[0] = 0;
        assert_eq!(instruction_bytes(3, &d), None);
        assert_eq!(instruction_bytes(1, &[1; 16]), None);
    }
}
