//! Guest memory creation and the Linux boot protocol: ELF kernel, initrd, command line and
//! the zero page with its e820 map.

use std::fs::File;
use std::path::Path;

use crate::error::{Context, Error, Result};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, ReadVolatile};

use super::layout::*;

pub type GuestMem = GuestMemoryMmap<()>;

const E820_RAM: u32 = 1;

/// Anonymous guest RAM of `mem_bytes`, split around the MMIO gap.
pub fn create_memory(mem_bytes: u64) -> Result<GuestMem> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(mem_bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        what: "allocating guest memory".into(),
        source: Box::new(e),
    })
}

/// Loads an uncompressed `vmlinux` ELF; returns its 64-bit entry point and the end of its
/// image in guest memory (including .bss).
pub fn load_kernel(mem: &GuestMem, path: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening kernel {}", path.display()))?;
    let res =
        Elf::load(mem, None, &mut f, Some(GuestAddress(HIGH_MEMORY_START))).map_err(|err| {
            Error::Kernel {
                path: path.to_path_buf(),
                err,
            }
        })?;
    Ok((res.kernel_load.raw_value(), res.kernel_end))
}

/// Loads the initrd at the top of low RAM (below the MMIO gap), page aligned, above the
/// kernel. Returns (address, size).
pub fn load_initrd(mem: &GuestMem, path: &Path, kernel_end: u64) -> Result<(u64, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening initrd {}", path.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading initrd {}", path.display()))?
        .len();
    let low_end = mem
        .iter()
        .map(|r| {
            use vm_memory::GuestMemoryRegion;
            r.start_addr().raw_value() + r.len()
        })
        .filter(|&end| end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0);
    let addr = low_end.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel_end => a,
        _ => {
            return Err(Error::Config(format!(
                "initrd {} ({} bytes) does not fit in guest RAM above the kernel; give the VM more memory",
                path.display(),
                size
            )))
        }
    };
    let slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .context("initrd region")?;
    let mut done = 0usize;
    while done < size as usize {
        let mut sub =
            slice
                .subslice(done, size as usize - done)
                .map_err(|e| Error::GuestMemory {
                    what: "initrd region".into(),
                    source: Box::new(e),
                })?;
        let n = f.read_volatile(&mut sub).map_err(|e| Error::GuestMemory {
            what: format!("reading initrd {}", path.display()),
            source: Box::new(e),
        })?;
        if n == 0 {
            return Err(Error::Io {
                what: format!("reading initrd {}", path.display()),
                source: std::io::Error::other("it shrank while being read"),
            });
        }
        done += n;
    }
    Ok((addr, size))
}

/// The e820 map: low RAM up to the EBDA, then RAM from 1 MiB (and above 4 GiB if any).
pub fn e820_entries(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![(0, EBDA_START, E820_RAM)];
    for (start, len) in ram_regions(mem_bytes) {
        let s = start.max(HIGH_MEMORY_START);
        let end = start + len;
        if end > s {
            v.push((s, end - s, E820_RAM));
        }
    }
    v
}

/// Fills and writes the zero page.
pub fn write_boot_params(
    mem: &GuestMem,
    mem_bytes: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut bp = boot_params::default();
    bp.hdr.type_of_loader = 0xff; // "other" boot loader
    bp.hdr.boot_flag = 0xaa55;
    bp.hdr.header = 0x5372_6448; // "HdrS"
    bp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    bp.hdr.cmdline_size = cmdline_len as u32;
    bp.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        bp.hdr.ramdisk_image = addr as u32;
        bp.hdr.ramdisk_size = size as u32;
    }
    let e820 = e820_entries(mem_bytes);
    if e820.len() > bp.e820_table.len() {
        return Err(Error::Config("too many e820 entries".into()));
    }
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        bp.e820_table[i].addr = *addr;
        bp.e820_table[i].size = *size;
        bp.e820_table[i].type_ = *type_;
    }
    bp.e820_entries = e820.len() as u8;
    mem.write_obj(bp, GuestAddress(ZERO_PAGE_START))
        .context("writing the zero page")?;
    Ok(())
}

/// Writes the NUL-terminated command line; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<usize> {
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(Error::Config(format!(
            "kernel command line is {} bytes, the limit is {}",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    if cmdline.bytes().any(|b| b == 0) {
        return Err(Error::Config(
            "kernel command line contains a NUL byte".into(),
        ));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .context("writing the command line")?;
    Ok(cmdline.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_but_not_the_ebda_or_the_gap() {
        assert_eq!(
            e820_entries(256 << 20),
            vec![(0, 0x9fc00, 1), (0x10_0000, (256 << 20) - 0x10_0000, 1)]
        );
        let big = e820_entries(4 << 30);
        assert_eq!(big[2], (4 << 30, 1 << 30, 1));
    }

    #[test]
    fn zero_page_fields() {
        let mem = create_memory(64 << 20).unwrap();
        let n = write_cmdline(&mem, "console=ttyS0 quiet").unwrap();
        write_boot_params(&mem, 64 << 20, n, Some((0x300_0000, 1234))).unwrap();
        let bp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ bp.hdr.boot_flag }, 0xaa55);
        assert_eq!({ bp.hdr.header }, 0x5372_6448);
        assert_eq!({ bp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ bp.hdr.cmdline_size }, 19);
        assert_eq!({ bp.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 1234);
        assert_eq!(bp.e820_entries, 2);
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn cmdline_limits() {
        let mem = create_memory(1 << 20).unwrap();
        assert!(write_cmdline(&mem, &"x".repeat(CMDLINE_MAX_SIZE)).is_err());
        assert!(write_cmdline(&mem, "a\0b").is_err());
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = create_memory(64 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![0x5a; 10_000]).unwrap();
        let (addr, size) = load_initrd(&mem, &p, 32 << 20).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr & 0xfff, 0);
        assert!(addr + size <= 64 << 20 && addr + size > (64 << 20) - 0x2000);
        let b: u8 = mem.read_obj(GuestAddress(addr + 9_999)).unwrap();
        assert_eq!(b, 0x5a);
        // Too big for the space above the kernel: a clear error, not a corrupted guest.
        assert!(load_initrd(&mem, &p, (64 << 20) - 4096).is_err());
    }

    #[test]
    fn missing_kernel_is_named() {
        let mem = create_memory(16 << 20).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/vmlinux"));
    }
}
