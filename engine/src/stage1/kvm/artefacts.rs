//! The guest kernel, the static guest init and the initramfs packed from it; the VM's size.

use super::*;

/// The guest kernel: `$RKT_STAGE1_KVM_KERNEL`, else the newest `vmlinux` in the kernel cache
/// (`$RKT_KERNEL_CACHE`, default /var/cache/rkt/kernel, as kernel-config/build.sh writes it).
pub fn find_kernel() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RKT_STAGE1_KVM_KERNEL") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "stage1 kvm: RKT_STAGE1_KVM_KERNEL={} is not a file",
                p.display()
            );
        }
        return Ok(p);
    }
    let cache = std::env::var_os("RKT_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/rkt/kernel".into());
    newest_vmlinux(&cache)
        .ok_or_else(|| anyhow!("stage1 kvm: no guest kernel found (run kernel-config/build.sh)"))
}

pub(super) fn newest_vmlinux(cache: &Path) -> Option<PathBuf> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// The static guest init: `$RKT_STAGE1_KVM_INIT`, else the cargo build next to this `rkt`
/// (`<target>/x86_64-unknown-linux-gnu/{release,debug}/guest-init`), else
/// /usr/lib/rkt/stage1-kvm/guest-init.
pub fn find_guest_init() -> Result<PathBuf> {
    let found = if let Some(p) = std::env::var_os("RKT_STAGE1_KVM_INIT") {
        PathBuf::from(p)
    } else {
        let mut cands = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            if let (Some(dir), Some(target)) = (exe.parent(), exe.parent().and_then(Path::parent)) {
                let profile = dir.file_name().unwrap_or(OsStr::new("debug"));
                let t = target.join("x86_64-unknown-linux-gnu");
                cands.push(t.join(profile).join("guest-init"));
                cands.extend(["release", "debug"].map(|p| t.join(p).join("guest-init")));
            }
        }
        cands.push("/usr/lib/rkt/stage1-kvm/guest-init".into());
        cands.into_iter().find(|p| p.is_file()).ok_or_else(|| {
            anyhow!(
                "stage1 kvm: no guest init found (build it: RUSTFLAGS=\"-C target-feature=+crt-static\" \
                 cargo build -p rkt-guest-init --target x86_64-unknown-linux-gnu)"
            )
        })?
    };
    let bytes = std::fs::read(&found)
        .with_context(|| format!("stage1 kvm: reading {}", found.display()))?;
    match elf_has_interpreter(&bytes) {
        Some(false) => Ok(found),
        Some(true) => bail!(
            "stage1 kvm: {} is dynamically linked; the guest init must be static (RUSTFLAGS=\"-C target-feature=+crt-static\")",
            found.display()
        ),
        None => bail!("stage1 kvm: {} is not an x86-64 ELF executable", found.display()),
    }
}

/// Whether an ELF64 file asks for a program interpreter (is dynamically linked); None: not ELF64.
pub fn elf_has_interpreter(b: &[u8]) -> Option<bool> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let ty = u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?);
        if ty == 3 {
            return Some(true);
        }
    }
    Some(false)
}

/// The initramfs for `init`, packed at first use and cached as `<cache>/initramfs-<sha256>.cpio`.
pub fn initramfs(cache: &Path, init: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let out = cache.join(format!("initramfs-{digest}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache)?;
    rkt_guest_init::initramfs::write_newc(&mut io::BufWriter::new(tmp.as_file_mut()), &bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// vCPUs (`--cpu` summed over the apps, rounded up, at least 1, at most the host's CPUs) and guest
/// RAM in MiB (sum of `--memory` + [`GUEST_OVERHEAD_MIB`], or [`DEFAULT_MEM_MIB`]).
pub fn vm_size(spec: &PodSpec) -> (u8, u64) {
    let millis: u64 = spec.apps.iter().filter_map(|a| a.cpu_millis).sum();
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let vcpus = millis.div_ceil(1000).clamp(1, host.min(8)) as u8;
    let limits: Vec<u64> = spec.apps.iter().filter_map(|a| a.memory_limit).collect();
    let mem = if limits.is_empty() {
        DEFAULT_MEM_MIB
    } else {
        (limits.iter().sum::<u64>().div_ceil(1 << 20) + GUEST_OVERHEAD_MIB).max(DEFAULT_MEM_MIB)
    };
    (vcpus, mem)
}
