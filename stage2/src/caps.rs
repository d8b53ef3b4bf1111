//! Linux capabilities: names, and applying a final set the way rkt did (bounding set reduced to
//! the set; permitted, effective, inheritable and ambient set to it, so that the set also survives
//! exec for a non-root user). The system calls are the `caps` crate's; rkt keeps sets as `u64`
//! masks (bit N = capability N) because manifests, seccomp and the guest protocol pass masks.

use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use caps::{CapSet, Capability, CapsHashSet};

pub const CAP_SYS_ADMIN: u32 = Capability::CAP_SYS_ADMIN as u32;

/// Every capability name rkt knows (`CAP_CHOWN`…), in number order.
pub fn names() -> Vec<String> {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    all.iter().map(|c| c.to_string()).collect()
}

/// Parses `CAP_NET_ADMIN`, `cap_net_admin` or `NET_ADMIN` to its number.
pub fn parse(name: &str) -> anyhow::Result<u32> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    match Capability::from_str(&full) {
        Ok(c) => Ok(c.index() as u32),
        Err(_) => bail!("unknown capability {name:?}"),
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

/// The capabilities the running kernel knows (it may be older or newer than this list).
fn supported() -> CapsHashSet {
    caps::runtime::thread_all_supported()
}

/// Mask of every capability the running kernel knows.
pub fn all_mask() -> u64 {
    to_mask(&supported())
}

fn to_mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

fn to_set(mask: u64) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

/// The calling thread's permitted set (what a mask can be at most).
pub fn current_permitted() -> anyhow::Result<u64> {
    caps::read(None, CapSet::Permitted)
        .map(|s| to_mask(&s))
        .map_err(caps_err("capget"))
}

/// Drops every capability not in `mask` from the bounding set. Needs CAP_SETPCAP, so it runs
/// before the uid switch.
pub fn limit_bounding(mask: u64) -> anyhow::Result<()> {
    for c in supported() {
        if mask & c.bitmask() == 0 {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(caps_err("PR_CAPBSET_DROP"))
                .with_context(|| format!("dropping {c} from the bounding set"))?;
        }
    }
    Ok(())
}

/// Sets the three sets exactly; the kernel drops ambient capabilities no longer permitted and
/// inheritable (so an empty `inh` clears them all). Effective and inheritable go first: each
/// capset must stay within the permitted set it replaces.
pub fn set_process_caps_exact(eff: u64, perm: u64, inh: u64) -> anyhow::Result<()> {
    caps::set(None, CapSet::Effective, &to_set(eff & perm)).map_err(caps_err("capset"))?;
    caps::set(None, CapSet::Inheritable, &to_set(inh)).map_err(caps_err("capset"))?;
    caps::set(None, CapSet::Permitted, &to_set(perm)).map_err(caps_err("capset"))?;
    if eff & !perm != 0 {
        bail!("capset: effective set {eff:#x} is not within permitted {perm:#x}");
    }
    Ok(())
}

/// Sets permitted/effective/inheritable to `mask` and raises the same ambient capabilities.
/// Runs after the uid switch (with PR_SET_KEEPCAPS set before it).
pub fn set_process_caps(mask: u64) -> anyhow::Result<()> {
    set_process_caps_exact(mask, mask, mask)?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    for c in supported() {
        if mask & c.bitmask() != 0 {
            caps::raise(None, CapSet::Ambient, c)
                .map_err(caps_err("PR_CAP_AMBIENT_RAISE"))
                .with_context(|| format!("raising ambient {c}"))?;
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
    fn masks_and_names() {
        let m = mask_of(&["CAP_KILL".into(), "CAP_NET_RAW".into()]).unwrap();
        assert_eq!(m, (1 << 5) | (1 << 13));
        assert!(mask_of(&["nope".into()]).is_err());
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            all_mask().count_ones(),
            (last + 1).min(names().len() as u32)
        );
        let n = names();
        assert_eq!(n[0], "CAP_CHOWN");
        assert_eq!(n[21], "CAP_SYS_ADMIN");
        assert_eq!(to_set(m).len(), 2);
    }
}
