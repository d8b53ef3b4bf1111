//! VM templates for stage1 kvm (issue 12; docs/kvm-template.md): the first kvm pod for a given
//! (kernel, initramfs, rkt binary, vCPUs, RAM, command line) boots cold and is snapshotted where
//! the guest init waits for its pod; later pods with the same key are restored from that
//! snapshot in their own VMM process. Every pod, cold or restored, is then handed its wall
//! clock and fresh entropy on vsock port `proto::POD_PORT` before anything pod-specific runs.
//!
//! Cache: `$RKT_TEMPLATE_CACHE`, default `/var/cache/rkt/templates`, one directory per key
//! (`state` + sparse `mem`, root-owned, mode 0400; the directory 0500), made in a temporary
//! directory and renamed into place, so a reader sees a whole template or none.
//! `RKT_STAGE1_KVM_TEMPLATE=0` boots cold and leaves no template.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rkt_guest_init::proto;
use rkt_vmm::{ExitReason, Vm, VmConfig};
use sha2::{Digest, Sha256};

/// Bump when what a template holds changes meaning (the VMM digest covers the format).
const KEY_VERSION: &str = "rkt-kvm-template-1";
/// Templates kept in the cache: each rkt build, kernel or VM size makes a new one (~20-30 MiB
/// on disk), so the oldest go when a new one is made.
const KEEP_TEMPLATES: usize = 8;

pub fn cache_root() -> PathBuf {
    std::env::var_os("RKT_TEMPLATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rkt/templates"))
}

/// How this pod's VM comes to life.
pub enum Plan {
    /// Restored from the template in this directory.
    Restored(PathBuf),
    /// Cold boot that leaves a template in this directory at the pause point.
    Create(PathBuf),
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

fn switched_off() -> bool {
    std::env::var("RKT_STAGE1_KVM_TEMPLATE").is_ok_and(|v| v == "0" || v == "off")
}

/// Builds the pod's VM: restored from its template if there is one (falling back to a cold
/// boot, with one line on stderr saying why, if the restore fails), else a cold boot that
/// will leave a template behind. `make_cfg` makes the VM's configuration (called again for a
/// fallback); `devices` names the device list for the key.
pub fn build(
    make_cfg: impl Fn() -> Result<VmConfig>,
    devices: &str,
    measured: bool,
) -> Result<(Vm, Plan)> {
    let with_handover = || -> Result<VmConfig> {
        let mut cfg = make_cfg()?;
        cfg.cmdline_extra = format!("{} {}", cfg.cmdline_extra, proto::HANDOVER_ARG)
            .trim()
            .to_string();
        Ok(cfg)
    };
    let cfg = with_handover()?;
    // A measured pod measures the kernel and initramfs it boots; a restored one would run
    // state those measurements do not cover (docs/kvm-template.md), so it boots cold.
    if switched_off() || measured {
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
        let t = Instant::now();
        match Vm::restore(cfg, &dir) {
            Ok(vm) => {
                if std::env::var_os("RKT_DEBUG_TEMPLATE").is_some() {
                    eprintln!(
                        "rkt: stage1 kvm: restored template {key} in {:?}",
                        t.elapsed()
                    );
                }
                return Ok((vm, Plan::Restored(dir)));
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
    let mut cfg = cfg;
    cfg.pause_marker = Some(proto::WAITING_MARKER.as_bytes().to_vec());
    Ok((Vm::build(cfg)?, Plan::Create(dir)))
}

/// Writes the paused VM's snapshot as the template `dir` (temporary directory + rename).
fn save_template(vm: &Vm, dir: &Path) -> Result<()> {
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
    let r = vm.snapshot(&tmp).map_err(anyhow::Error::from).and_then(|_| {
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
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
        })
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
        Plan::Restored(d) => format!("restored {}\n", name(d).unwrap_or_default()),
        Plan::Create(d) => format!("cold template {}\n", name(d).unwrap_or_default()),
        Plan::Cold => "cold\n".to_string(),
    };
    if let Some(stage1) = uds.parent() {
        let _ = fs::write(stage1.join("kvm-boot"), how);
    }
    if let Plan::Create(dir) = &plan {
        if let Some(reason) = vm.run_to_pause_point()? {
            return Ok(reason);
        }
        if let Err(e) = save_template(&vm, dir) {
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
    let r = vm.run();
    ended.store(true, Ordering::SeqCst);
    let _ = t.join();
    Ok(r?)
}

/// Gives the waiting guest init its wall clock and fresh entropy; retries (the guest may not
/// listen yet, or a restored guest's vsock transport reset may drop the first connection)
/// until it acknowledges, the VM ends, or 300 s passed.
fn handover(uds: &Path, ended: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
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
            Ok(()) => return Ok(()),
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
