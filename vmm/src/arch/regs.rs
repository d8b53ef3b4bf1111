//! Initial vCPU state for entering a `vmlinux` at `startup_64`: 64-bit mode, identity-mapped
//! paging, flat segments (code 0x10, data 0x18 as the Linux boot protocol expects), a TSS,
//! boot MSRs, FPU defaults and the local APIC's LINT pins.

use crate::error::{Context, Error, Result};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::*;

/// GDT as installed at boot: null, null, code, data, TSS. Selector = index * 8.
pub const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code, present, DPL 0, 4 KiB granularity
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, read/write, 32-bit, 4 KiB granularity
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: busy 64-bit TSS
];
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Packs a segment descriptor: `flags` holds the access byte (bits 0-7) and the flags nibble
/// (bits 12-15) exactly as they sit in the descriptor's upper half.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into the segment register form KVM wants.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the effective limit covers the whole last page.
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// The three page-table pages identity-mapping the first 1 GiB with 2 MiB pages, as
/// (guest address, contents) pairs.
pub fn page_tables() -> Vec<(u64, Vec<u64>)> {
    const PRESENT_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPTE_START | PRESENT_RW;
    let mut pdpt = vec![0u64; 512];
    pdpt[0] = PDE_START | PRESENT_RW;
    let pd = (0..512u64).map(|i| (i << 21) | PRESENT_RW | PS).collect();
    vec![(PML4_START, pml4), (PDPTE_START, pdpt), (PDE_START, pd)]
}

/// Writes GDT, IDT and page tables into guest memory.
pub fn write_boot_tables<M: GuestMemory>(mem: &M) -> Result<()> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .context("writing the GDT")?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .context("writing the IDT")?;
    for (addr, entries) in page_tables() {
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(addr + i as u64 * 8))
                .context("writing page tables")?;
        }
    }
    Ok(())
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Special registers for 64-bit entry, starting from what KVM reports.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[2], CODE_SELECTOR);
    let data = segment_from_gdt(GDT[3], DATA_SELECTOR);
    let tss = segment_from_gdt(GDT[4], TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers: entry point, stack, RSI = zero page, RFLAGS with only the reserved bit.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Boot MSR values: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Applies registers, MSRs, FPU and LAPIC state to a vCPU. Returns the MSRs KVM refused (PVM
/// rejects some), which are not fatal: the kernel reprograms all of them.
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<Vec<u32>> {
    let msrs = boot_msrs();
    let entries: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let kvm_msrs = Msrs::from_entries(&entries).map_err(|e| Error::Build {
        what: "the MSR list",
        detail: format!("{e:?}"),
    })?;
    let set = vcpu.set_msrs(&kvm_msrs).context("KVM_SET_MSRS")?;
    let refused = msrs[set.min(msrs.len())..]
        .iter()
        .map(|m| m.0)
        .collect::<Vec<_>>();
    // KVM stops at the first MSR it rejects; set the rest one by one so one refusal does not
    // drop the others.
    let mut really_refused = Vec::new();
    for index in refused {
        let data = msrs.iter().find(|m| m.0 == index).map(|m| m.1).unwrap_or(0);
        let one = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|e| Error::Build {
            what: "the MSR list",
            detail: format!("{e:?}"),
        })?;
        if vcpu.set_msrs(&one).unwrap_or(0) != 1 {
            really_refused.push(index);
        }
    }

    let sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    vcpu.set_sregs(&boot_sregs(sregs))
        .context("KVM_SET_SREGS")?;
    vcpu.set_regs(&boot_regs(entry)).context("KVM_SET_REGS")?;
    vcpu.set_fpu(&boot_fpu()).context("KVM_SET_FPU")?;
    setup_lint(vcpu)?;
    Ok(really_refused)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets a LVT register's delivery mode (bits 8-10), keeping its other bits.
pub fn lvt_with_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the legacy PIC's output), LINT1 = NMI, as a PC wires them.
fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().context("KVM_GET_LAPIC")?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let regs = &mut lapic.regs;
        if off + 4 > regs.len() {
            return Err(Error::Config("LAPIC register page too small".into()));
        }
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i] as u8;
        }
        let v = lvt_with_mode(u32::from_le_bytes(b), mode).to_le_bytes();
        for (i, x) in v.iter().enumerate() {
            regs[off + i] = *x as _;
        }
    }
    vcpu.set_lapic(&lapic).context("KVM_SET_LAPIC")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn gdt_entries_match_the_known_encodings() {
        // Values every x86 boot loader uses for flat 64-bit code and 32-bit data.
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[4], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_is_64_bit_ring_0() {
        let cs = segment_from_gdt(GDT[2], CODE_SELECTOR);
        assert_eq!(cs.selector, 0x10);
        assert_eq!(
            (cs.l, cs.db, cs.dpl, cs.present, cs.s, cs.g),
            (1, 0, 0, 1, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = segment_from_gdt(GDT[3], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.unusable), (0, 1, 3, 0));
        let tr = segment_from_gdt(GDT[4], TSS_SELECTOR);
        assert_eq!((tr.s, tr.type_, tr.selector), (0, 0xb, 0x20));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpt, PDE_START | 3);
        // Walk a few addresses through the tables: each must map to itself.
        for va in [0u64, 0x100_0000, 0x3fff_ffff, 0x1234_5678] {
            let pde: u64 = mem
                .read_obj(GuestAddress(PDE_START + ((va >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB page");
            let pa = (pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff);
            assert_eq!(pa, va);
        }
        let gdt2: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 16)).unwrap();
        assert_eq!(gdt2, GDT[2]);
    }

    #[test]
    fn sregs_enable_long_mode_paging() {
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ss.selector, 0x18);
        assert_eq!(s.gdt.limit, 39);
    }

    #[test]
    fn lvt_mode_keeps_other_bits() {
        assert_eq!(lvt_with_mode(0x0001_0000, APIC_MODE_EXTINT), 0x0001_0700);
        assert_eq!(lvt_with_mode(0x0000_07ff, APIC_MODE_NMI), 0x0000_04ff);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_START, 2));
    }
}
