//! The XSAVE family for PVM guests. PVM's instruction emulator cannot run XSAVE/XRSTOR in guest
//! kernel mode, so a guest kernel had to boot with `noxsave` and switch tasks' FPU state with
//! FXSAVE. But guest *user* mode runs natively with the host's XCR0, and on hosts without CPUID
//! faulting (AMD) with the host's CPUID too: libc then uses AVX/AVX-512, and FXSAVE leaves the
//! YMM/ZMM upper halves and opmask registers out, so tasks corrupted each other's vector
//! registers (the exit 139s of multi-app pods on an AMD EPYC host, docs/kernel.md).
//!
//! Instead the guest keeps XSAVE (standard format only: `clearcpuid=xsaveopt,xsavec,xsaves`),
//! and the VMM runs XSAVE, XRSTOR, XSETBV and XGETBV when the emulator gives up on them, against
//! the vCPU's FPU state as KVM holds it (KVM_GET/SET_XSAVE, whose buffer is the standard format).
//! Everything here is pure (byte buffers in, byte ranges out) so it can be tested without KVM;
//! `vstate` does the guest memory and register access.

/// The instructions handled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XInsn {
    /// `xsave`/`xsave64 m` (0F AE /4).
    Xsave(MemOperand),
    /// `xrstor`/`xrstor64 m` (0F AE /5).
    Xrstor(MemOperand),
    /// `xsetbv` (0F 01 D1).
    Xsetbv,
    /// `xgetbv` (0F 01 D0).
    Xgetbv,
}

/// A decoded ModRM memory operand (64-bit addressing, DS/SS segments, which are flat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register number (0 = RAX … 15 = R15), or None.
    pub base: Option<u8>,
    /// Index register and scale factor.
    pub index: Option<(u8, u8)>,
    pub disp: i32,
    /// RIP-relative: the displacement is from the next instruction.
    pub rip_relative: bool,
}

impl MemOperand {
    /// The linear address, given the 16 general registers (RAX, RCX, RDX, RBX, RSP, RBP, RSI,
    /// RDI, R8…R15 order) and the address of the next instruction.
    pub fn address(&self, gpr: &[u64; 16], next_rip: u64) -> u64 {
        let mut a = if self.rip_relative { next_rip } else { 0 };
        if let Some(b) = self.base {
            a = a.wrapping_add(gpr[usize::from(b)]);
        }
        if let Some((i, s)) = self.index {
            a = a.wrapping_add(gpr[usize::from(i)].wrapping_mul(u64::from(s)));
        }
        a.wrapping_add(self.disp as i64 as u64)
    }
}

/// Decodes one of the [`XInsn`] at the start of `b`; returns it and its length. Anything else
/// (other prefixes, segment overrides, 32-bit addressing, register operands) is `None`.
pub fn decode(b: &[u8]) -> Option<(XInsn, usize)> {
    let mut i = 0;
    let mut rex = 0u8;
    if let Some(&p) = b.first() {
        if p & 0xf0 == 0x40 {
            rex = p;
            i = 1;
        }
    }
    if b.get(i) != Some(&0x0f) {
        return None;
    }
    match *b.get(i + 1)? {
        0x01 => match *b.get(i + 2)? {
            0xd0 => Some((XInsn::Xgetbv, i + 3)),
            0xd1 => Some((XInsn::Xsetbv, i + 3)),
            _ => None,
        },
        0xae => {
            let modrm = *b.get(i + 2)?;
            let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
            if md == 3 {
                return None;
            }
            let (op, len) = decode_mem(&b[i + 3..], md, rm, rex)?;
            let insn = match reg {
                4 => XInsn::Xsave(op),
                5 => XInsn::Xrstor(op),
                _ => return None,
            };
            Some((insn, i + 3 + len))
        }
        _ => None,
    }
}

/// The SIB byte and displacement after a ModRM byte with mod != 3; returns the operand and how
/// many bytes followed the ModRM byte.
fn decode_mem(b: &[u8], md: u8, rm: u8, rex: u8) -> Option<(MemOperand, usize)> {
    let (rex_b, rex_x) = ((rex & 1) << 3, ((rex >> 1) & 1) << 3);
    let mut n = 0;
    let mut op = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
    };
    let mut no_base_disp32 = false;
    if rm == 4 {
        let sib = *b.first()?;
        n = 1;
        let (scale, index, base) = (1u8 << (sib >> 6), ((sib >> 3) & 7) | rex_x, sib & 7);
        if index != 4 {
            op.index = Some((index, scale));
        }
        if base == 5 && md == 0 {
            no_base_disp32 = true;
        } else {
            op.base = Some(base | rex_b);
        }
    } else if rm == 5 && md == 0 {
        op.rip_relative = true;
        no_base_disp32 = true;
    } else {
        op.base = Some(rm | rex_b);
    }
    if md == 1 {
        op.disp = i32::from(*b.get(n)? as i8);
        n += 1;
    } else if md == 2 || no_base_disp32 {
        op.disp = i32::from_le_bytes(b.get(n..n + 4)?.try_into().ok()?);
        n += 4;
    }
    Some((op, n))
}

/// Size of KVM's XSAVE buffer (`struct kvm_xsave`); the standard format fits in it for every
/// feature up to AVX-512 (AMX would need KVM_GET_XSAVE2, and its XFD).
pub const KVM_XSAVE_SIZE: usize = 4096;
/// The legacy (FXSAVE) area and the XSAVE header.
const LEGACY: usize = 512;
const HEADER: usize = 64;
const BV: std::ops::Range<usize> = LEGACY..LEGACY + 8;
/// XCOMP_BV and the rest of the first 24 header bytes must be zero in the standard format.
const HEADER_MUST_BE_ZERO: std::ops::Range<usize> = LEGACY + 8..LEGACY + 24;
const MXCSR: std::ops::Range<usize> = 24..28;
/// x87: FCW…FDP, then ST0-7 (the MXCSR words in between belong to SSE/AVX).
const X87: [std::ops::Range<usize>; 2] = [0..24, 32..160];
const XMM: std::ops::Range<usize> = 160..416;

/// Where each state component >= 2 lives in the standard format (CPUID 0xD sub-leaf i: EAX size,
/// EBX offset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    comps: Vec<(usize, usize)>,
}

impl Layout {
    /// From (sub-leaf, eax, ebx) triples of CPUID leaf 0xD. Components that do not fit the
    /// buffer (or are supervisor-only, offset 0) are left out, so they are never copied.
    pub fn from_cpuid(subleaves: impl IntoIterator<Item = (u32, u32, u32)>) -> Layout {
        let mut comps = vec![(0, 0); 64];
        for (i, size, off) in subleaves {
            let (i, size, off) = (i as usize, size as usize, off as usize);
            if (2..64).contains(&i) && off >= LEGACY + HEADER && off + size <= KVM_XSAVE_SIZE {
                comps[i] = (off, size);
            }
        }
        Layout { comps }
    }

    /// The byte ranges of component `i` in the standard format (empty if unknown).
    fn ranges(&self, i: usize) -> Vec<std::ops::Range<usize>> {
        match i {
            0 => X87.to_vec(),
            1 => std::iter::once(XMM).collect(),
            _ => match self.comps.get(i) {
                Some(&(off, size)) if size > 0 => std::iter::once(off..off + size).collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Bytes from the area's start that XSAVE/XRSTOR with `rfbm` may touch.
    pub fn area_len(&self, rfbm: u64) -> usize {
        (2..64)
            .filter(|i| rfbm & (1 << i) != 0)
            .flat_map(|i| self.ranges(i))
            .map(|r| r.end)
            .fold(LEGACY + HEADER, usize::max)
    }
}

/// An exception the instruction raises instead of completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #GP(0).
    Gp,
}

fn bv(buf: &[u8]) -> u64 {
    u64::from_le_bytes(buf[BV].try_into().unwrap())
}

/// XSAVE: the writes to make to the area at offset 0 for `rfbm` (= XCR0 & EDX:EAX), given the
/// vCPU's current state `cur` (KVM's buffer) and the area's current XSTATE_BV `mem_bv`. Only
/// components in RFBM and the XSTATE_BV field are written, as the instruction does.
pub fn xsave_writes(
    cur: &[u8; KVM_XSAVE_SIZE],
    rfbm: u64,
    mem_bv: u64,
    layout: &Layout,
) -> Vec<(usize, Vec<u8>)> {
    let mut w = Vec::new();
    for i in 0..64 {
        if rfbm & (1 << i) != 0 {
            for r in layout.ranges(i) {
                w.push((r.start, cur[r].to_vec()));
            }
        }
    }
    if rfbm & 0b110 != 0 {
        // MXCSR and MXCSR_MASK.
        w.push((MXCSR.start, cur[MXCSR.start..MXCSR.start + 8].to_vec()));
    }
    let new_bv = (mem_bv & !rfbm) | (bv(cur) & rfbm);
    w.push((BV.start, new_bv.to_le_bytes().to_vec()));
    w
}

/// XRSTOR: merges the area `mem` (at least [`Layout::area_len`] bytes) into the vCPU state
/// `cur` for `rfbm`, as the instruction loads it: a component in RFBM comes from memory when its
/// XSTATE_BV bit is set and is put in its initial state otherwise; others stay as they are.
pub fn xrstor_merge(
    cur: &mut [u8; KVM_XSAVE_SIZE],
    mem: &[u8],
    rfbm: u64,
    xcr0: u64,
    layout: &Layout,
) -> Result<(), Fault> {
    if mem.len() < layout.area_len(rfbm) {
        return Err(Fault::Gp);
    }
    let mem_bv = bv(mem);
    // Compacted form (XCOMP_BV bit 63) is XRSTORS territory; a standard header has these zero.
    if mem[HEADER_MUST_BE_ZERO].iter().any(|&b| b != 0) || mem_bv & !xcr0 != 0 {
        return Err(Fault::Gp);
    }
    let mut new_bv = bv(cur) & !rfbm;
    for i in 0..64 {
        let bit = 1u64 << i;
        if rfbm & bit == 0 {
            continue;
        }
        if mem_bv & bit != 0 {
            for r in layout.ranges(i) {
                cur[r.clone()].copy_from_slice(&mem[r]);
            }
            new_bv |= bit;
        } else if i < 2 {
            // x87 and SSE are put in their initial state explicitly and stay marked in use, so
            // the MXCSR loaded below is kept (KVM only takes MXCSR with one of them set).
            for r in layout.ranges(i) {
                cur[r].fill(0);
            }
            if i == 0 {
                cur[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
            }
            new_bv |= bit;
        }
        // Other components: a clear bit is their initial state for KVM.
    }
    if rfbm & 0b110 != 0 {
        cur[MXCSR].copy_from_slice(&mem[MXCSR]);
    }
    cur[BV].copy_from_slice(&new_bv.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(base: Option<u8>, index: Option<(u8, u8)>, disp: i32) -> MemOperand {
        MemOperand {
            base,
            index,
            disp,
            rip_relative: false,
        }
    }

    #[test]
    fn decodes_the_forms_the_kernel_uses() {
        // xrstor64 (%rdi), seen at boot.
        assert_eq!(
            decode(&[0x48, 0x0f, 0xae, 0x2f, 0x31, 0xc0]),
            Some((XInsn::Xrstor(op(Some(7), None, 0)), 4))
        );
        // xsave64 (%rdi)
        assert_eq!(
            decode(&[0x48, 0x0f, 0xae, 0x27]),
            Some((XInsn::Xsave(op(Some(7), None, 0)), 4))
        );
        // xsave64 0x40(%r12): REX.WB, mod 1, rm 4 -> SIB base 4 + REX.B
        assert_eq!(
            decode(&[0x49, 0x0f, 0xae, 0x64, 0x24, 0x40]),
            Some((XInsn::Xsave(op(Some(12), None, 0x40)), 6))
        );
        // xrstor 0x12345678(%rax,%r9,8): REX.X, mod 2, SIB scale 8 index 1+8 base 0
        assert_eq!(
            decode(&[0x42, 0x0f, 0xae, 0xac, 0xc8, 0x78, 0x56, 0x34, 0x12]),
            Some((XInsn::Xrstor(op(Some(0), Some((9, 8)), 0x12345678)), 9))
        );
        // RIP-relative
        let (insn, len) = decode(&[0x0f, 0xae, 0x25, 0x10, 0, 0, 0]).unwrap();
        assert_eq!(len, 7);
        let XInsn::Xsave(m) = insn else { panic!() };
        assert!(m.rip_relative);
        assert_eq!(m.address(&[0; 16], 0x1000), 0x1010);
        assert_eq!(decode(&[0x0f, 0x01, 0xd1]), Some((XInsn::Xsetbv, 3)));
        assert_eq!(decode(&[0x0f, 0x01, 0xd0]), Some((XInsn::Xgetbv, 3)));
        // Not ours: fxsave (/0), register operand, truncated, another opcode.
        assert_eq!(decode(&[0x0f, 0xae, 0x07]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0xe7]), None);
        assert_eq!(decode(&[0x48, 0x0f, 0xae]), None);
        assert_eq!(decode(&[0x0f, 0xae, 0x64]), None);
        assert_eq!(decode(&[0x9b]), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn address_adds_base_index_and_signed_displacement() {
        let mut gpr = [0u64; 16];
        gpr[0] = 0x1000;
        gpr[9] = 3;
        assert_eq!(op(Some(0), Some((9, 8)), -8).address(&gpr, 0), 0x1010);
    }

    fn layout() -> Layout {
        // AVX (2) at 576+256, opmask (5) at 1088+64, as on AVX-512 hosts.
        Layout::from_cpuid([(2, 256, 576), (5, 64, 1088), (9, 8, 4096)])
    }

    #[test]
    fn layout_ignores_components_outside_the_buffer() {
        let l = layout();
        assert_eq!(l.area_len(0b11), 576);
        assert_eq!(l.area_len(0b111), 832);
        assert_eq!(l.area_len(0b100111), 1152);
        assert_eq!(l.area_len(1 << 9), 576);
    }

    #[test]
    fn xsave_writes_only_requested_components_and_merges_xstate_bv() {
        let l = layout();
        let mut cur = [0u8; KVM_XSAVE_SIZE];
        cur[600] = 0xaa; // AVX
        cur[1100] = 0xbb; // opmask
        cur[BV].copy_from_slice(&0b100111u64.to_le_bytes());
        let w = xsave_writes(&cur, 0b000111, 0b100000, &l);
        let mut area = vec![0u8; 2048];
        for (off, bytes) in &w {
            area[*off..off + bytes.len()].copy_from_slice(bytes);
        }
        assert_eq!(area[600], 0xaa);
        assert_eq!(area[1100], 0, "opmask was not requested");
        // Bit 5 stays as it was in memory; bits 0-2 come from the state in use.
        assert_eq!(bv(&area), 0b100111);
    }

    #[test]
    fn xrstor_loads_set_components_and_inits_the_others() {
        let l = layout();
        let mut cur = [0u8; KVM_XSAVE_SIZE];
        cur[200] = 0x11; // XMM
        cur[1100] = 0x22; // opmask, not requested
        cur[600] = 0x33; // AVX, to be initialised
        cur[BV].copy_from_slice(&0b100111u64.to_le_bytes());
        let mut mem = vec![0u8; 1152];
        mem[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        mem[8] = 0x55; // FIP
        mem[BV].copy_from_slice(&0b001u64.to_le_bytes()); // only x87 from memory
        xrstor_merge(&mut cur, &mem, 0b111, 0b100111, &l).unwrap();
        assert_eq!(cur[8], 0x55);
        assert_eq!(cur[200], 0, "SSE put in its initial state");
        assert_eq!(&cur[24..28], &0x1f80u32.to_le_bytes());
        assert_eq!(cur[1100], 0x22, "opmask untouched");
        assert_eq!(bv(&cur) & 0b100, 0, "AVX marked initial");
        assert_eq!(bv(&cur) & 0b100000, 0b100000);
    }

    #[test]
    fn xrstor_refuses_bad_headers() {
        let l = layout();
        let mut cur = [0u8; KVM_XSAVE_SIZE];
        let mut mem = vec![0u8; 1152];
        mem[BV].copy_from_slice(&(1u64 << 9).to_le_bytes());
        assert_eq!(
            xrstor_merge(&mut cur, &mem, 0b111, 0b111, &l),
            Err(Fault::Gp),
            "XSTATE_BV beyond XCR0"
        );
        mem[BV].copy_from_slice(&0u64.to_le_bytes());
        mem[LEGACY + 15] = 0x80; // XCOMP_BV bit 63: compacted
        assert_eq!(
            xrstor_merge(&mut cur, &mem, 0b111, 0b111, &l),
            Err(Fault::Gp)
        );
        assert_eq!(
            xrstor_merge(&mut cur, &mem[..100], 0b111, 0b111, &l),
            Err(Fault::Gp)
        );
    }
}
