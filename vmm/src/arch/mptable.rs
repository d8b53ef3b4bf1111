//! Intel MultiProcessor Specification 1.4 table. Without ACPI this is how Linux learns about
//! the application processors and the IOAPIC (and so about IRQs above 15).

use crate::error::{Context, Error, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{EBDA_START, IRQ_MAX};

/// Where the floating pointer and the table go: Linux scans the last KiB of base memory.
pub const MPTABLE_START: u64 = EBDA_START;
const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer structure followed by the configuration table, for placement at
/// `base`.
pub fn build(base: u64, vcpus: u8) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > 254 {
        return Err(Error::Config(format!(
            "MP table: {vcpus} vCPUs is out of range"
        )));
    }
    let ioapic_id = vcpus + 1;
    let table_addr =
        u32::try_from(base + 16).map_err(|_| Error::Config("MP table above 4 GiB".into()))?;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let mut e = vec![0u8, id, APIC_VERSION, CPU_ENABLED];
        if id == 0 {
            e[3] |= CPU_BOOTPROCESSOR;
        }
        e.extend_from_slice(&0x600u32.to_le_bytes()); // cpu signature: family 6
        e.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        e.extend_from_slice(&[0u8; 8]);
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on every local APIC.
    entries.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"RKT-VMM ");
    table.extend_from_slice(b"RKTMICROVM  ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 16 bytes, spec 1.4, no default config
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table into guest memory.
pub fn setup<M: GuestMemory>(mem: &M, vcpus: u8) -> Result<()> {
    let t = build(MPTABLE_START, vcpus)?;
    // It must fit below the BIOS area (0xa0000) which the e820 map reserves.
    if MPTABLE_START + t.len() as u64 > 0xa_0000 {
        return Err(Error::Config(format!(
            "MP table for {vcpus} vCPUs does not fit in the EBDA"
        )));
    }
    mem.write_slice(&t, GuestAddress(MPTABLE_START))
        .context("writing the MP table")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 8] {
            let t = build(MPTABLE_START, n).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MPTABLE_START + 16);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(n) + 1 + 1 + 24 + 2);
            // Walk the entries: processors (20 bytes) first, BSP flagged once.
            let mut off = 44;
            let mut cpus = 0;
            let mut bsp = 0;
            while off < len {
                let size = if table[off] == 0 { 20 } else { 8 };
                if table[off] == 0 {
                    cpus += 1;
                    bsp += usize::from(table[off + 3] & CPU_BOOTPROCESSOR != 0);
                }
                off += size;
            }
            assert_eq!(off, len);
            assert_eq!((cpus, bsp), (usize::from(n), 1));
        }
    }

    #[test]
    fn fits_in_the_ebda_for_many_cpus() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup(&mem, 32).unwrap();
        assert!(build(MPTABLE_START, 0).is_err());
    }
}
