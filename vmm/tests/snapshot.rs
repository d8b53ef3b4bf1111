//! Snapshot/restore probe on the real host KVM (PVM here): boots the cached guest kernel with a
//! tiny init (tests/guest/snap.c) that waits on vsock, pauses the VM at its "SNAP: waiting"
//! line, saves the whole state and sets it back into the same VM (stop, save, set back,
//! continue), writes a snapshot directory, lets the original finish, then restores TWO new VMs
//! from the snapshot (fresh KVM VMs, memory mapped MAP_PRIVATE from the file) and talks to each:
//! vsock host->guest, virtio-rng, a CRNG reseed from host entropy, the wall clock set from the
//! host. Checks the two copies differ in boot_id and urandom bytes and keep the host's clock.
//! Needs /dev/kvm, gcc and the kernel from kernel-config/build.sh; FAILS without them.

mod common;
use common::{initramfs, kernel_path};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rkt_vmm::{DeviceConfig, ExitReason, SerialOut, Vm, VmConfig};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(kernel: &Path, initrd: &Path, uds: &Path, console: &Console) -> VmConfig {
    let mut cfg = VmConfig::new(kernel);
    cfg.initrd = Some(initrd.to_path_buf());
    cfg.devices.push(DeviceConfig::Rng);
    cfg.devices.push(DeviceConfig::Vsock {
        guest_cid: 3,
        uds_path: uds.to_path_buf(),
    });
    cfg.serial_out = SerialOut::Writer(Box::new(console.clone()));
    // No newline: the console turns "\n" into "\r\n".
    cfg.pause_marker = Some(b"SNAP: waiting".to_vec());
    cfg.debug = std::env::var_os("RKT_VMM_DEBUG").is_some();
    cfg
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Connects to the guest's port 5000 (retrying while it is not there yet), sends "go", returns
/// the guest's answer as key=value pairs and the host time the answer arrived.
fn go(uds: &Path, seed: &str) -> (Vec<(String, String)>, u128) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "guest never answered on vsock");
        let Ok(s) = UnixStream::connect(uds) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        (&s).write_all(b"CONNECT 5000\n").unwrap();
        let mut r = BufReader::new(&s);
        let mut ok = String::new();
        if r.read_line(&mut ok).is_err() || !ok.starts_with("OK ") {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        (&s).write_all(format!("go {} {seed}\n", now_ns()).as_bytes())
            .unwrap();
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let at = now_ns();
        if line.is_empty() {
            // Reset by the guest (the transport reset after a restore): try again.
            eprintln!("connection to the guest closed without an answer, retrying");
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let kv = line
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        return (kv, at);
    }
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {kv:?}"))
}

fn seed() -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn snapshot_restore_running_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = kernel_path();
    let initrd = initramfs(tmp.path(), "snap.c");

    // 1. Cold boot to the pause point.
    let console = Console::default();
    let uds0 = tmp.path().join("v0.sock");
    let t0 = Instant::now();
    let mut vm = Vm::build(config(&kernel, &initrd, &uds0, &console)).unwrap();
    let r = vm.run_to_pause_point().unwrap();
    assert_eq!(
        r,
        None,
        "VM ended before the pause point:\n{}",
        console.text()
    );
    eprintln!("cold boot to the pause point: {:?}", t0.elapsed());

    // 2. In place: save everything, set it back, then snapshot to files.
    let state = vm.save_state().unwrap();
    eprintln!(
        "vCPU 0: {} MSRs saved, rip {:#x}, mp_state {}",
        state.vcpus[0].msrs.len(),
        state.vcpus[0].regs.rip,
        state.vcpus[0].mp_state.mp_state
    );
    vm.load_state(&state).unwrap();
    let snap = tmp.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    let t = Instant::now();
    let written = vm.snapshot(&snap).unwrap();
    eprintln!(
        "snapshot: {} KiB of guest memory written in {:?}",
        written >> 10,
        t.elapsed()
    );

    // 3. The original continues after the in-place set-back.
    let h = std::thread::spawn(move || vm.run().unwrap());
    let (kv, _) = go(&uds0, &seed());
    assert_eq!(h.join().unwrap(), ExitReason::Reset, "{}", console.text());
    let orig_boot_id = get(&kv, "boot_id").to_string();

    // 4. Two restores into new VMs, one after the other.
    let mut answers = Vec::new();
    for i in 1..=2 {
        let console = Console::default();
        let uds = tmp.path().join(format!("v{i}.sock"));
        let t = Instant::now();
        let vm = Vm::restore(config(&kernel, &initrd, &uds, &console), &snap)
            .unwrap_or_else(|e| panic!("restore {i}: {e:#}"));
        let built = t.elapsed();
        let h = std::thread::spawn(move || vm.run().unwrap());
        let (kv, at) = go(&uds, &seed());
        let answered = t.elapsed();
        let reason = h.join().unwrap();
        eprintln!("restore {i}: Vm::restore {built:?}, answer after {answered:?}: {kv:?}");
        assert_eq!(
            reason,
            ExitReason::Reset,
            "restore {i}:\n{}",
            console.text()
        );
        let clock: u128 = get(&kv, "clock_ns").parse().unwrap();
        let before: u128 = get(&kv, "before_ns").parse().unwrap();
        eprintln!(
            "restore {i}: guest clock before the host set it: {:.3} s behind",
            (at as f64 - before as f64) / 1e9
        );
        assert!(
            at.abs_diff(clock) < 1_000_000_000,
            "restore {i}: guest clock {clock} vs host {at}"
        );
        assert_ne!(
            get(&kv, "hwrng"),
            "none",
            "restore {i}: virtio-rng after restore"
        );
        answers.push(kv);
    }
    for k in ["boot_id", "urandom"] {
        assert_ne!(
            get(&answers[0], k),
            get(&answers[1], k),
            "{k} is the same in both copies"
        );
    }
    assert_ne!(get(&answers[0], "boot_id"), orig_boot_id);
}
