//! Guest physical memory map. Low addresses follow the Linux x86 boot protocol conventions that
//! Firecracker also uses, so a stock `vmlinux` finds everything where it expects it.

/// GDT, read by the CPU at entry (the kernel installs its own GDT very early).
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT: the kernel sets up its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// Initial stack pointer (grows down, below the zero page).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// `struct boot_params` ("zero page"); its address is handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapping page tables: one PML4, one PDPT, one PD of 2 MiB pages (first 1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the EBDA: usable low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernel images must be loaded at or above 1 MiB.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: guest RAM never overlaps [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices: one 4 KiB window each from here on.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ lines: COM1 uses 4 (as on a PC); virtio devices get 5, 6, ... up to the IOAPIC's 23.
pub const SERIAL_IRQ: u32 = 4;
pub const VIRTIO_IRQ_START: u32 = 5;
pub const IRQ_MAX: u32 = 23;
/// KVM needs three pages for its TSS and one for the identity map (only used by real-mode
/// emulation on some hosts) somewhere outside RAM; put them just below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Guest RAM regions (start, size) for `mem_bytes` of RAM: below the MMIO gap, and the rest
/// above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// Address of the MMIO window of the `index`th virtio device and its IRQ.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_START.checked_add(u32::try_from(index).ok()?)?;
    if irq > IRQ_MAX {
        return None;
    }
    Some((VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE, irq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_ram_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn virtio_slots_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_slot(18), Some((0xd001_2000, 23)));
        assert_eq!(virtio_slot(19), None);
    }
}
