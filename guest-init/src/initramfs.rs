//! The stage1 kvm initramfs: the guest init as `/init`, `/dev/console`, and the directories the
//! init mounts on. Packed by rkt at first use (and by tests), so it lives with the init.

use std::io::{self, Write};

/// Writes an uncompressed newc cpio: the directories the init mounts on, `/dev/console`, `/init`.
/// Uncompressed on purpose: on PVM hosts guest kernel code is emulated, and gunzip there costs
/// far more than copying a few more MiB.
pub fn write_newc<W: Write>(w: &mut W, init: &[u8]) -> io::Result<()> {
    let mut ino = 1u32;
    let mut entry =
        |w: &mut W, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| -> io::Result<()> {
            let nm_len = name.len() + 1;
            let hdr = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            nm_len,
            0
        );
            ino += 1;
            w.write_all(hdr.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&vec![0u8; (4 - (110 + nm_len) % 4) % 4])?;
            w.write_all(data)?;
            w.write_all(&vec![0u8; (4 - data.len() % 4) % 4])
        };
    for d in ["dev", "proc", "sys", "run", "tmp", "rkt"] {
        entry(w, d, 0o040755, &[], (0, 0))?;
    }
    entry(w, "dev/console", 0o020600, &[], (5, 1))?;
    entry(w, "init", 0o100755, init, (0, 0))?;
    entry(w, "TRAILER!!!", 0, &[], (0, 0))
}
