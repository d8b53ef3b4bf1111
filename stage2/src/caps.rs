//! Linux capabilities: names, and applying a final set the way rkt did (bounding set reduced to
//! the set; permitted, effective, inheritable and ambient set to it, so that the set also survives
//! exec for a non-root user).

use anyhow::{bail, Context};

/// Capability names indexed by number (linux/capability.h).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const CAP_SYS_ADMIN: u32 = 21;

/// Parses `CAP_NET_ADMIN`, `cap_net_admin` or `NET_ADMIN` to its number.
pub fn parse(name: &str) -> anyhow::Result<u32> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    match NAMES.iter().position(|n| *n == full) {
        Some(i) => Ok(i as u32),
        None => bail!("unknown capability {name:?}"),
    }
}

/// Bit mask of a list of capability names.
pub fn mask_of(names: &[String]) -> anyhow::Result<u64> {
    let mut m = 0u64;
    for n in names {
        m |= 1u64 << parse(n)?;
    }
    Ok(m)
}

/// Highest capability the running kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

pub fn all_mask() -> u64 {
    let last = last_cap().min(63);
    if last == 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capset(eff: u64, perm: u64, inh: u64) -> anyhow::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: perm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (perm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs laid out as the v3 capset ABI wants.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// The calling process's permitted set (what `mask` can be at most).
pub fn current_permitted() -> anyhow::Result<u64> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs laid out as the v3 capget ABI wants.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    Ok(data[0].permitted as u64 | (data[1].permitted as u64) << 32)
}

/// Drops every capability not in `mask` from the bounding set. Needs CAP_SETPCAP, so it runs
/// before the uid switch.
pub fn limit_bounding(mask: u64) -> anyhow::Result<()> {
    for c in 0..=last_cap() {
        if mask & (1u64 << c) == 0 {
            // SAFETY: plain prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: the kernel does not know this capability.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e).with_context(|| {
                        format!("dropping {} from the bounding set", NAMES[c as usize])
                    });
                }
            }
        }
    }
    Ok(())
}

/// Sets the three sets exactly; the kernel drops ambient capabilities no longer permitted and
/// inheritable (so an empty `inh` clears them all).
pub fn set_process_caps_exact(eff: u64, perm: u64, inh: u64) -> anyhow::Result<()> {
    capset(eff, perm, inh)
}

/// Sets permitted/effective/inheritable to `mask` and raises the same ambient capabilities.
/// Runs after the uid switch (with PR_SET_KEEPCAPS set before it).
pub fn set_process_caps(mask: u64) -> anyhow::Result<()> {
    capset(mask, mask, mask)?;
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    for c in 0..=last_cap() {
        if mask & (1u64 << c) != 0 {
            // SAFETY: as above.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    c as libc::c_ulong,
                    0,
                    0,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e)
                        .with_context(|| format!("raising ambient {}", NAMES[c as usize]));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_in_all_spellings() {
        assert_eq!(parse("CAP_CHOWN").unwrap(), 0);
        assert_eq!(parse("cap_net_bind_service").unwrap(), 10);
        assert_eq!(parse("SYS_ADMIN").unwrap(), CAP_SYS_ADMIN);
        assert_eq!(parse("CAP_CHECKPOINT_RESTORE").unwrap(), 40);
        let e = parse("CAP_FLY").unwrap_err().to_string();
        assert!(e.contains("CAP_FLY"), "{e}");
    }

    #[test]
    fn masks() {
        let m = mask_of(&["CAP_KILL".into(), "CAP_NET_RAW".into()]).unwrap();
        assert_eq!(m, (1 << 5) | (1 << 13));
        assert!(mask_of(&["nope".into()]).is_err());
        assert_eq!(all_mask().count_ones(), last_cap() + 1);
    }
}
