//! VM templates for stage1 kvm (issue 12; docs/kvm-template.md): the first kvm pod for a given
//! (kernel, initramfs, rkt binary, vCPUs, RAM, command line) boots cold and is snapshotted where
//! the guest init waits for its pod; later pods with the same key are restored from that
//! snapshot in their own VMM process. Every pod, cold or restored, is then handed its wall
//! clock and fresh entropy on vsock port `proto::POD_PORT` before anything pod-specific runs.
//!
//! Cache: `$RKT_TEMPLATE_CACHE`, default `/var/cache/rkt/templates`, one directory per key
//! (`state` + sparse `mem`, root-owned, mode 0400; the directory 0500), made in a temporary
//! directory and renamed into place, so a reader sees a whole template or none.
//! `RKT_STAGE1_KVM_TEMPLATE=0` boots cold and leaves no template. Each template records the
//! digests of its `state` and `mem` (`meta.json`); a restore checks them first, and a measured
//! pod extends them into the TPM (`rkt/stage1/kvm/template`) before the VM runs.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rkt_guest_init::proto;
use rkt_vmm::{ExitReason, Vm, VmConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bump when what a template holds changes meaning (the VMM digest covers the format).
const KEY_VERSION: &str = "rkt-kvm-template-2";
/// Templates kept in the cache: each rkt build, kernel or VM size makes a new one (~20-30 MiB
/// on disk), so the oldest go when a new one is made.
const KEEP_TEMPLATES: usize = 8;

pub fn cache_root() -> PathBuf {
    std::env::var_os("RKT_TEMPLATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rkt/templates"))
}

/// What a template was made from and the digests of what it holds (`<template>/meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub key: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub state_sha256: String,
    /// [`mem_digest`] of `mem`.
    pub mem_sha256: String,
    /// Non-zero pages in `mem` (what the digest covers).
    pub mem_pages: u64,
    pub kernel: PathBuf,
    pub kernel_sha256: String,
    pub initramfs: PathBuf,
    pub initramfs_sha256: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub cmdline: String,
}

pub const META_FILE: &str = "meta.json";
const PAGE: usize = 4096;

/// sha256 over the memory file's non-zero 4 KiB pages, each as (page index, u64 little
/// endian) then its bytes, in order. Only the data extents are read (`SEEK_DATA`/`SEEK_HOLE`;
/// holes are zero pages), and zero pages inside extents are skipped too, so the digest does
/// not depend on how the file system lays out the sparse file. Returns (digest, pages).
pub fn mem_digest(path: &Path) -> Result<(String, u64)> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut pages = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on an fd we own; no pointers.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e).with_context(|| format!("SEEK_DATA in {}", path.display()));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SEEK_HOLE in {}", path.display()));
        }
        let mut at = data as u64 / PAGE as u64 * PAGE as u64;
        let end = (hole as u64).min(len);
        while at < end {
            let n = ((end - at) as usize).min(buf.len()).div_ceil(PAGE) * PAGE;
            let got = f.read_at(&mut buf[..n], at)?;
            anyhow::ensure!(got > 0, "{} ended early", path.display());
            buf[got..n].fill(0);
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    h.update((at / PAGE as u64 + i as u64).to_le_bytes());
                    h.update(page);
                    pages += 1;
                }
            }
            at += n as u64;
        }
        pos = at.max(pos + 1);
    }
    Ok((hex::encode(h.finalize()), pages))
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Reads `<dir>/meta.json` and checks that `state` and `mem` still have its digests.
pub fn verify(dir: &Path) -> Result<Meta> {
    let p = dir.join(META_FILE);
    let meta: Meta =
        serde_json::from_slice(&fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?;
    let state = sha256_of(&dir.join(rkt_vmm::persist::STATE_FILE))?;
    anyhow::ensure!(
        state == meta.state_sha256,
        "its state file's digest is {state}, not the recorded {}",
        meta.state_sha256
    );
    let (mem, _) = mem_digest(&dir.join(rkt_vmm::persist::MEM_FILE))?;
    anyhow::ensure!(
        mem == meta.mem_sha256,
        "its memory file's digest is {mem}, not the recorded {}",
        meta.mem_sha256
    );
    Ok(meta)
}

/// How this pod's VM comes to life.
pub enum Plan {
    /// Restored from the template in this directory, whose digests were just checked.
    Restored(PathBuf, Box<Meta>),
    /// Cold boot that leaves a template in this directory at the pause point.
    Create(PathBuf, Box<VmConfig>),
    /// Cold boot, no template (switched off, or a measured pod).
    Cold,
}

/// sha256 of a file, cached by (device, inode, size, mtime) under `<root>/digests/`: the
/// kernel and a debug rkt binary are tens to hundreds of MiB, hashed once, not per pod.
fn file_digest(root: &Path, p: &Path) -> Result<String> {
    let md = fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    let memo = root.join("digests").join(format!(
        "{:x}-{:x}-{:x}-{}.{}",
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec()
    ));
    if let Ok(s) = fs::read_to_string(&memo) {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s);
        }
    }
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = hex::encode(h.finalize());
    if fs::create_dir_all(memo.parent().unwrap()).is_ok() {
        let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
        if fs::write(&tmp, &d).is_ok() {
            let _ = fs::rename(&tmp, &memo);
        }
    }
    Ok(d)
}

/// The template key: everything the guest's state at the pause point depends on.
pub fn key(root: &Path, cfg: &VmConfig, vmm: &Path, devices: &str) -> Result<String> {
    let mut h = Sha256::new();
    h.update(KEY_VERSION);
    h.update(file_digest(root, &cfg.kernel)?);
    if let Some(i) = &cfg.initrd {
        h.update(file_digest(root, i)?);
    }
    h.update(file_digest(root, vmm)?);
    h.update(format!(
        "\0vcpus={}\0mem={}\0extra={}\0devices={devices}\0pvm={}",
        cfg.vcpus,
        cfg.mem_mib,
        cfg.cmdline_extra,
        rkt_vmm::pvm::host_is_pvm()
    ));
    Ok(hex::encode(h.finalize()))
}

static TRACE: AtomicBool = AtomicBool::new(false);

/// `--debug`: the host's steps are printed with wall-clock times (`trace`), to line up with
/// the guest init's (docs/kvm-template.md, "Where the time goes").
pub fn set_trace(on: bool) {
    TRACE.store(on, Ordering::Relaxed);
}

pub fn trace(what: &str) {
    if TRACE.load(Ordering::Relaxed) {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "rkt: stage1 kvm: @{}.{:06} {what}",
            d.as_secs(),
            d.subsec_micros()
        );
    }
}

fn switched_off() -> bool {
    std::env::var("RKT_STAGE1_KVM_TEMPLATE").is_ok_and(|v| v == "0" || v == "off")
}

/// Builds the pod's VM: restored from its template if there is one (falling back to a cold
/// boot, with one line on stderr saying why, if the restore fails), else a cold boot that
/// will leave a template behind. `make_cfg` makes the VM's configuration (called again for a
/// fallback); `devices` names the device list for the key.
pub fn build(make_cfg: impl Fn() -> Result<VmConfig>, devices: &str) -> Result<(Vm, Plan)> {
    let with_handover = || -> Result<VmConfig> {
        let mut cfg = make_cfg()?;
        cfg.cmdline_extra = format!("{} {}", cfg.cmdline_extra, proto::HANDOVER_ARG)
            .trim()
            .to_string();
        Ok(cfg)
    };
    trace("building the VM");
    let cfg = with_handover()?;
    if switched_off() {
        return Ok((Vm::build(cfg)?, Plan::Cold));
    }
    let root = cache_root();
    let key = match key(&root, &cfg, Path::new("/proc/self/exe"), devices) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rkt: stage1 kvm: no VM template ({e:#}); booting cold");
            return Ok((Vm::build(cfg)?, Plan::Cold));
        }
    };
    let dir = root.join(&key);
    if dir.join(rkt_vmm::persist::STATE_FILE).is_file() {
        // Measure-then-execute: the digests checked here are the ones a measured pod extends
        // into the TPM before the VM runs. A template that fails its check is removed and
        // made again by this pod's cold boot.
        let t = Instant::now();
        let meta = match verify(&dir) {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "rkt: stage1 kvm: VM template {} refused ({e:#}); removing it and booting cold",
                    dir.display()
                );
                let _ = fs::remove_dir_all(&dir);
                return create(with_handover()?, dir);
            }
        };
        trace(&format!("template digests checked in {:?}", t.elapsed()));
        let t = Instant::now();
        match Vm::restore(cfg, &dir) {
            Ok(vm) => {
                trace(&format!("restored template {key} in {:?}", t.elapsed()));
                return Ok((vm, Plan::Restored(dir, Box::new(meta))));
            }
            Err(e) => {
                eprintln!(
                    "rkt: stage1 kvm: restoring VM template {} failed ({e:#}); booting cold",
                    dir.display()
                );
                return Ok((Vm::build(with_handover()?)?, Plan::Cold));
            }
        }
    }
    create(cfg, dir)
}

/// A cold boot that pauses at the template point to leave a template in `dir`.
fn create(mut cfg: VmConfig, dir: PathBuf) -> Result<(Vm, Plan)> {
    cfg.pause_marker = Some(proto::WAITING_MARKER.as_bytes().to_vec());
    let mut inputs = VmConfig::new(&cfg.kernel);
    inputs.initrd = cfg.initrd.clone();
    inputs.vcpus = cfg.vcpus;
    inputs.mem_mib = cfg.mem_mib;
    Ok((Vm::build(cfg)?, Plan::Create(dir, Box::new(inputs))))
}

/// `meta.json` for the snapshot just written into `tmp`, to be renamed to `dir`.
fn write_meta(vm: &Vm, tmp: &Path, dir: &Path, made_from: &VmConfig) -> Result<()> {
    let root = dir.parent().context("template directory")?;
    let (mem_sha256, mem_pages) = mem_digest(&tmp.join(rkt_vmm::persist::MEM_FILE))?;
    let initramfs = made_from.initrd.clone().unwrap_or_default();
    let meta = Meta {
        key: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        created: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        state_sha256: sha256_of(&tmp.join(rkt_vmm::persist::STATE_FILE))?,
        mem_sha256,
        mem_pages,
        kernel_sha256: file_digest(root, &made_from.kernel)?,
        kernel: made_from.kernel.clone(),
        initramfs_sha256: if made_from.initrd.is_some() {
            file_digest(root, &initramfs)?
        } else {
            String::new()
        },
        initramfs,
        vcpus: made_from.vcpus,
        mem_mib: made_from.mem_mib,
        cmdline: vm.cmdline.clone(),
    };
    let p = tmp.join(META_FILE);
    fs::write(&p, serde_json::to_vec_pretty(&meta)?)
        .with_context(|| format!("writing {}", p.display()))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o400))?;
    Ok(())
}

/// `rkt stage1 template build`: boots the VM `make_cfg` describes cold to the template point,
/// saves the template and ends it. Returns the key and whether it was made now (false: a
/// template that passes its check was already there).
pub fn make_ahead(
    make_cfg: impl Fn() -> Result<VmConfig>,
    devices: &str,
) -> Result<(String, bool)> {
    let mut cfg = make_cfg()?;
    cfg.cmdline_extra = format!("{} {}", cfg.cmdline_extra, proto::HANDOVER_ARG)
        .trim()
        .to_string();
    let root = cache_root();
    let key = key(&root, &cfg, Path::new("/proc/self/exe"), devices)?;
    let dir = root.join(&key);
    if dir.join(rkt_vmm::persist::STATE_FILE).is_file() && verify(&dir).is_ok() {
        return Ok((key, false));
    }
    let _ = fs::remove_dir_all(&dir);
    let (mut vm, plan) = create(cfg, dir.clone())?;
    let Plan::Create(_, made_from) = plan else {
        unreachable!("create makes a Plan::Create")
    };
    if let Some(reason) = vm.run_to_pause_point()? {
        anyhow::bail!("the guest ended ({reason:?}) before it reached the template point");
    }
    save_template(&vm, &dir, &made_from)?;
    Ok((key, true))
}

/// One template in the cache, for `rkt stage1 template list`.
#[derive(Debug)]
pub struct Entry {
    pub key: String,
    pub dir: PathBuf,
    /// None for a template without a readable `meta.json` (a restore refuses it).
    pub meta: Option<Meta>,
    /// Blocks allocated (the memory file is sparse).
    pub disk_bytes: u64,
    pub apparent_bytes: u64,
    pub modified: SystemTime,
}

fn is_key(n: &str) -> bool {
    n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The templates under `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<Entry>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        if !is_key(&key) {
            continue;
        }
        let dir = e.path();
        let (mut disk_bytes, mut apparent_bytes) = (0, 0);
        for f in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(md) = f.metadata() {
                disk_bytes += md.blocks() * 512;
                apparent_bytes += md.len();
            }
        }
        let meta = fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let modified = e.metadata()?.modified()?;
        out.push(Entry {
            key,
            dir,
            meta,
            disk_bytes,
            apparent_bytes,
            modified,
        });
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.modified));
    Ok(out)
}

/// Removes the templates named by `which` (keys or unambiguous key prefixes; empty: all).
/// Returns the removed keys. A pod restoring from one keeps its mapping.
pub fn remove(root: &Path, which: &[String]) -> Result<Vec<String>> {
    let all = list(root)?;
    let chosen: Vec<&Entry> = if which.is_empty() {
        all.iter().collect()
    } else {
        let mut v = Vec::new();
        for w in which {
            let m: Vec<&Entry> = all
                .iter()
                .filter(|e| !w.is_empty() && e.key.starts_with(&w.to_ascii_lowercase()))
                .collect();
            match m.len() {
                0 => anyhow::bail!("no VM template {w:?} in {}", root.display()),
                1 => v.push(m[0]),
                n => anyhow::bail!("VM template {w:?} is ambiguous ({n} templates start with it)"),
            }
        }
        v
    };
    let mut removed = Vec::new();
    for e in chosen {
        fs::remove_dir_all(&e.dir).with_context(|| format!("removing {}", e.dir.display()))?;
        removed.push(e.key.clone());
    }
    Ok(removed)
}

/// Writes the paused VM's snapshot as the template `dir` (temporary directory + rename).
fn save_template(vm: &Vm, dir: &Path, made_from: &VmConfig) -> Result<()> {
    let parent = dir.parent().context("template directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    fs::set_permissions(parent, fs::Permissions::from_mode(0o700))?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let r = vm
        .snapshot(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            write_meta(vm, &tmp, dir, made_from)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o500))?;
            // Another pod may have made the same template meanwhile: keep theirs.
            match fs::rename(&tmp, dir) {
                Ok(()) => Ok(()),
                Err(_) if dir.is_dir() => Ok(()),
                Err(e) => Err(e).with_context(|| format!("renaming into {}", dir.display())),
            }
        });
    if tmp.exists() {
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700));
        let _ = fs::remove_dir_all(&tmp);
    }
    if r.is_ok() {
        prune(parent, KEEP_TEMPLATES);
    }
    r
}

/// Removes all but the `keep` newest templates (by modification time) under `root`. A pod
/// restoring from a removed one keeps its mapping (the file lives on until unmapped); one that
/// had not yet opened it boots cold.
fn prune(root: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(root) else {
        return;
    };
    let mut t: Vec<(SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| is_key(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    t.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in t.into_iter().skip(keep) {
        let _ = fs::remove_dir_all(&p);
    }
}

/// Runs the VM: for `Plan::Create`, first to the pause point to save the template; then hands
/// the guest its pod (`handover`) and runs it to the end like `Vm::run`.
pub fn run(mut vm: Vm, plan: Plan, uds: &Path) -> Result<ExitReason> {
    // `<pod>/stage1/kvm-boot` says how this pod's VM started (tests, debugging).
    let name = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned());
    let how = match &plan {
        Plan::Restored(d, _) => format!("restored {}\n", name(d).unwrap_or_default()),
        Plan::Create(d, _) => format!("cold template {}\n", name(d).unwrap_or_default()),
        Plan::Cold => "cold\n".to_string(),
    };
    if let Some(stage1) = uds.parent() {
        let _ = fs::write(stage1.join("kvm-boot"), how);
    }
    if let Plan::Create(dir, made_from) = &plan {
        if let Some(reason) = vm.run_to_pause_point()? {
            return Ok(reason);
        }
        if let Err(e) = save_template(&vm, dir, made_from) {
            eprintln!("rkt: stage1 kvm: could not save the VM template ({e:#}); going on without");
        }
    }
    let ended = Arc::new(AtomicBool::new(false));
    let handle = vm.handle();
    let t = {
        let (uds, ended) = (uds.to_path_buf(), ended.clone());
        std::thread::spawn(move || {
            if let Err(e) = handover(&uds, &ended) {
                if !ended.load(Ordering::SeqCst) {
                    eprintln!("rkt: stage1 kvm: handing the pod to the VM: {e:#}");
                    handle.stop();
                }
            }
        })
    };
    trace("vCPUs running");
    let r = vm.run();
    trace("VM ended");
    ended.store(true, Ordering::SeqCst);
    let _ = t.join();
    Ok(r?)
}

/// Gives the waiting guest init its wall clock and fresh entropy; retries (the guest may not
/// listen yet, or a restored guest's vsock transport reset may drop the first connection)
/// until it acknowledges, the VM ends, or 30 minutes passed. Generous on purpose: under PVM a
/// cold boot is ~60-100 s of CPU, and 10 pods started at once on 2 busy cores overran 300 s
/// (7 of 10 failed); a guest that is stuck is still ended by `rkt stop`.
fn handover(uds: &Path, ended: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last = String::new();
    // Each try costs the guest a (PVM-emulated) connection request: back off while it boots.
    let mut pause = Duration::from_millis(5);
    while !ended.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            anyhow::bail!("the guest never took its pod ({last})");
        }
        let attempt = || -> Result<()> {
            let mut s = super::vsock_connect(uds, proto::POD_PORT)?;
            let mut entropy = [0u8; 32];
            getrandom(&mut entropy)?;
            let h = proto::Handover {
                realtime_ns: SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
                entropy,
            };
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&h.encode())?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).context("no acknowledgement")?;
            anyhow::ensure!(ack[0] == proto::Handover::ACK, "bad acknowledgement");
            Ok(())
        };
        match attempt() {
            Ok(()) => {
                trace("handover acknowledged");
                return Ok(());
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
    Ok(())
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_digest_covers_non_zero_pages_whatever_the_layout() {
        let d = tempfile::tempdir().unwrap();
        let (sparse, dense) = (d.path().join("sparse"), d.path().join("dense"));
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4096 * 3).unwrap();
        f.write_all_at(&[2u8; 10], (8 << 20) + 5).unwrap();
        // The same content with every zero page written out.
        let mut all = vec![0u8; 16 << 20];
        all[4096 * 3..4096 * 4].fill(1);
        all[(8 << 20) + 5..(8 << 20) + 15].fill(2);
        fs::write(&dense, &all).unwrap();
        let (a, pages) = mem_digest(&sparse).unwrap();
        assert_eq!(pages, 2);
        assert_eq!(mem_digest(&dense).unwrap(), (a.clone(), 2));
        // One byte anywhere, or a page moved, changes it.
        all[(12 << 20) + 1] = 9;
        fs::write(&dense, &all).unwrap();
        assert_ne!(mem_digest(&dense).unwrap().0, a);
        let g = fs::File::create(&sparse).unwrap();
        g.set_len(16 << 20).unwrap();
        g.write_all_at(&[1u8; 4096], 4096 * 4).unwrap();
        g.write_all_at(&[2u8; 10], (8 << 20) + 5).unwrap();
        assert_ne!(mem_digest(&sparse).unwrap().0, a);
    }

    #[test]
    fn verify_refuses_a_changed_or_unrecorded_template() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        fs::write(t.join("state"), b"vcpu state").unwrap();
        let f = fs::File::create(t.join("mem")).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"guest", 8192).unwrap();
        assert!(verify(t).unwrap_err().to_string().contains("meta.json"));
        let (mem_sha256, mem_pages) = mem_digest(&t.join("mem")).unwrap();
        let meta = Meta {
            key: "k".into(),
            created: 1,
            state_sha256: sha256_of(&t.join("state")).unwrap(),
            mem_sha256,
            mem_pages,
            kernel: "/k".into(),
            kernel_sha256: String::new(),
            initramfs: "/i".into(),
            initramfs_sha256: String::new(),
            vcpus: 1,
            mem_mib: 1,
            cmdline: String::new(),
        };
        fs::write(t.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        assert_eq!(verify(t).unwrap(), meta);
        f.write_all_at(b"Guest", 8192).unwrap();
        let e = format!("{:#}", verify(t).unwrap_err());
        assert!(e.contains("memory file's digest"), "{e}");
        f.write_all_at(b"guest", 8192).unwrap();
        fs::write(t.join("state"), b"vcpu statE").unwrap();
        let e = format!("{:#}", verify(t).unwrap_err());
        assert!(e.contains("state file's digest"), "{e}");
    }

    #[test]
    fn list_and_remove_by_key_prefix() {
        let d = tempfile::tempdir().unwrap();
        for k in ["ab", "ac", "bd"] {
            fs::create_dir(d.path().join(k.repeat(32))).unwrap();
        }
        fs::create_dir(d.path().join("digests")).unwrap();
        assert_eq!(list(d.path()).unwrap().len(), 3);
        assert!(list(&d.path().join("missing")).unwrap().is_empty());
        assert!(
            format!("{:#}", remove(d.path(), &["a".into()]).unwrap_err()).contains("ambiguous")
        );
        assert!(remove(d.path(), &["ff".into()]).is_err());
        assert_eq!(remove(d.path(), &["AB".into()]).unwrap(), ["ab".repeat(32)]);
        assert_eq!(remove(d.path(), &[]).unwrap().len(), 2);
        assert!(d.path().join("digests").is_dir());
    }

    #[test]
    fn prune_keeps_the_newest_templates_only() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5u8 {
            let p = d.path().join(hex::encode([i; 32]));
            fs::create_dir(&p).unwrap();
            fs::write(p.join("state"), "x").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o500)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::create_dir(d.path().join("digests")).unwrap();
        prune(d.path(), 2);
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                hex::encode([3u8; 32]),
                hex::encode([4u8; 32]),
                "digests".to_string()
            ]
        );
    }

    #[test]
    fn key_changes_with_every_input_and_digests_are_memoised() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinux");
        let i = d.path().join("initrd");
        let x = d.path().join("rkt");
        for (p, c) in [(&k, "kernel"), (&i, "initrd"), (&x, "rkt")] {
            fs::write(p, c).unwrap();
        }
        let root = d.path().join("cache");
        let cfg = || {
            let mut c = VmConfig::new(&k);
            c.initrd = Some(i.clone());
            c
        };
        let base = key(&root, &cfg(), &x, "fs,vsock,rng").unwrap();
        assert_eq!(base, key(&root, &cfg(), &x, "fs,vsock,rng").unwrap());
        assert_ne!(base, key(&root, &cfg(), &x, "fs,vsock").unwrap());
        let mut c = cfg();
        c.vcpus = 2;
        assert_ne!(base, key(&root, &c, &x, "fs,vsock,rng").unwrap());
        let mut c = cfg();
        c.mem_mib = 512;
        assert_ne!(base, key(&root, &c, &x, "fs,vsock,rng").unwrap());
        let mut c = cfg();
        c.cmdline_extra = "loglevel=7".into();
        assert_ne!(base, key(&root, &c, &x, "fs,vsock,rng").unwrap());
        // A changed file (new size and mtime) is hashed again.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&x, "rkt v2").unwrap();
        assert_ne!(base, key(&root, &cfg(), &x, "fs,vsock,rng").unwrap());
        assert!(fs::read_dir(root.join("digests")).unwrap().count() >= 4);
        // Missing kernel: an error (the caller boots cold).
        fs::remove_file(&k).unwrap();
        assert!(key(&root, &cfg(), &x, "fs,vsock,rng").is_err());
    }
}
