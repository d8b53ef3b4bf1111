//! Boots the cached rkt guest kernel with a tiny init, virtio-rng, virtio-fs and virtio-vsock
//! devices, and checks the serial output (rng in use, a file read from and one written to the
//! share, vsock traffic both ways) and a clean reset exit. Needs /dev/kvm and the kernel built by
//! kernel-config/build.sh; without them this test FAILS (it does not skip).

mod common;
use common::{initramfs, kernel_path};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rkt_vmm::{DeviceConfig, ExitReason, SerialOut, Vm, VmConfig};
use vm_memory::{GuestMemory, GuestMemoryRegion, MemoryRegionAddress};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Resident memory of this process split into guest RAM and the rest, in KiB, from
/// /proc/self/smaps (guest RAM = the mappings that start at a guest region's host address).
fn rss_split(guest_starts: &[u64]) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let total: u64 = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let mut guest = 0;
    let mut in_guest = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((start, _)) = range.split_once('-') {
                if let Ok(s) = u64::from_str_radix(start, 16) {
                    if !l.starts_with("Rss:") && range.contains('-') && !range.contains(':') {
                        in_guest = guest_starts.contains(&s);
                        continue;
                    }
                }
            }
        }
        if in_guest {
            if let Some(v) = l.strip_prefix("Rss:") {
                guest += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
    }
    (guest, total.saturating_sub(guest))
}

struct Capture {
    text: Arc<Mutex<String>>,
    start: Instant,
    first_line: Arc<Mutex<Option<Duration>>>,
    rss: Arc<Mutex<Option<(u64, u64)>>>,
    guest_starts: Vec<u64>,
    partial: String,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        self.text.lock().unwrap().push_str(&s);
        self.partial.push_str(&s);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            if line.contains("RKT-VMM-TEST: init started") {
                *self.first_line.lock().unwrap() = Some(self.start.elapsed());
            }
            if line.contains("RKT-VMM-TEST: rebooting") {
                *self.rss.lock().unwrap() = Some(rss_split(&self.guest_starts));
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Host side of the guest's vsock client: answers "ping" with "PONG".
fn serve_pong(uds: &Path) -> std::thread::JoinHandle<String> {
    let l = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        (&s).write_all(b"PONG\n").unwrap();
        line
    })
}

/// Host-initiated connection to the guest's port 5000, retried until the guest listens.
fn connect_to_guest(uds: PathBuf, deadline: Instant) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            let Ok(s) = UnixStream::connect(&uds) else {
                continue;
            };
            (&s).write_all(b"CONNECT 5000\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut ok = String::new();
            if r.read_line(&mut ok).unwrap_or(0) == 0 || !ok.starts_with("OK ") {
                continue; // guest not up or not listening yet
            }
            let mut greeting = String::new();
            r.read_line(&mut greeting).unwrap();
            (&s).write_all(b"bye\n").unwrap();
            return Some(greeting);
        }
        None
    })
}

#[test]
fn boots_init_with_rng_fs_vsock_and_resets() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "\n\n*** rkt-vmm boot test: /dev/kvm is missing: this test needs KVM. ***\n"
    );
    let kernel = kernel_path();
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(dir.path(), "init.c");

    let start = Instant::now();
    let text = Arc::new(Mutex::new(String::new()));
    let first_line = Arc::new(Mutex::new(None));
    let rss = Arc::new(Mutex::new(None));
    let mut cfg = VmConfig::new(&kernel);
    cfg.initrd = Some(initrd);
    cfg.mem_mib = 256;
    cfg.devices.push(DeviceConfig::Rng);
    let uds = dir.path().join("vsock.sock");
    cfg.devices.push(DeviceConfig::Vsock {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    let pong = serve_pong(&uds);
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "from the host\n").unwrap();
    cfg.devices.push(DeviceConfig::Fs {
        tag: "rkt".into(),
        shared_dir: share.clone(),
    });
    cfg.debug = true;
    // Placeholder writer: replaced below once guest memory addresses are known.
    let slot: Arc<Mutex<Option<Capture>>> = Arc::new(Mutex::new(None));
    struct Deferred(Arc<Mutex<Option<Capture>>>);
    impl Write for Deferred {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            match self.0.lock().unwrap().as_mut() {
                Some(c) => c.write(b),
                None => Ok(b.len()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    cfg.serial_out = SerialOut::Writer(Box::new(Deferred(slot.clone())));
    let vm = Vm::build(cfg).expect("building the VM");
    let guest_starts = vm
        .guest_memory()
        .iter()
        .map(|r| r.get_host_address(MemoryRegionAddress(0)).unwrap() as u64)
        .collect();
    *slot.lock().unwrap() = Some(Capture {
        text: text.clone(),
        start,
        first_line: first_line.clone(),
        rss: rss.clone(),
        guest_starts,
        partial: String::new(),
    });
    let to_guest = connect_to_guest(uds.clone(), start + TIMEOUT);
    let handle = vm.handle();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(TIMEOUT);
        handle.stop();
    });
    let reason = vm.run().expect("running the VM");
    let elapsed = start.elapsed();
    drop(watchdog);
    let out = text.lock().unwrap().clone();
    eprintln!("--- guest serial output ---\n{out}--- end ({elapsed:?}) ---");
    if let Some(t) = *first_line.lock().unwrap() {
        eprintln!("time to the init's first line: {:.1} s", t.as_secs_f64());
    }
    if let Some((guest, vmm)) = *rss.lock().unwrap() {
        eprintln!("RSS at the end of the guest run: guest RAM touched {guest} KiB, VMM (test process) rest {vmm} KiB");
    }
    assert_ne!(
        reason,
        ExitReason::Stopped,
        "the guest did not finish within {TIMEOUT:?}"
    );
    assert!(
        out.contains("RKT-VMM-TEST: init started"),
        "init never printed"
    );
    assert!(
        out.contains("RKT-VMM-TEST: rng_current=virtio_rng"),
        "virtio-rng is not the guest's hwrng"
    );
    assert!(
        out.contains("RKT-VMM-TEST: hwrng read 32 bytes nonzero"),
        "no bytes from virtio-rng"
    );
    assert!(
        out.contains("RKT-VMM-TEST: virtiofs hello.txt=from the host"),
        "guest could not read the virtio-fs share"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt"))
            .ok()
            .as_deref(),
        Some("written by the guest\n")
    );
    assert!(
        out.contains("RKT-VMM-TEST: vector state ok"),
        "guest processes do not keep their own vector registers (see docs/kernel.md, xcr0_sse_only)"
    );
    assert!(
        out.contains("RKT-VMM-TEST: vsock reply=PONG"),
        "guest-to-host vsock failed"
    );
    assert_eq!(pong.join().unwrap(), "ping\n");
    assert!(
        out.contains("RKT-VMM-TEST: vsock host said=bye"),
        "host-to-guest vsock failed"
    );
    assert_eq!(
        to_guest.join().unwrap().as_deref(),
        Some("hello from guest\n")
    );
    assert_eq!(reason, ExitReason::Reset);
}
