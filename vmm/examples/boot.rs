//! Boots a kernel by hand:
//!   cargo run -p rkt-vmm --example boot -- --kernel K [--initrd I] [--mem 256] [--vcpus 1]
//!       [--cmdline "extra args"] [--rng] [--vsock UDS_PATH] [--fs TAG=DIR] [--serial-log FILE]
//!       [--stdin] [--debug]
//! Exits 0 when the guest resets or powers off, 1 on a VMM error (Ctrl-C kills the process).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use rkt_vmm::{DeviceConfig, ExitReason, SerialOut, Vm, VmConfig};

fn usage() -> ! {
    eprintln!(
        "usage: boot --kernel VMLINUX [--initrd INITRD] [--mem MIB] [--vcpus N] [--cmdline ARGS] [--rng] [--vsock UDS_PATH] [--fs TAG=DIR] [--serial-log FILE] [--stdin] [--debug]"
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut kernel = None;
    let mut cfg = VmConfig::new("");
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val())),
            "--initrd" => cfg.initrd = Some(val().into()),
            "--mem" => cfg.mem_mib = val().parse().unwrap_or_else(|_| usage()),
            "--vcpus" => cfg.vcpus = val().parse().unwrap_or_else(|_| usage()),
            "--cmdline" => cfg.cmdline_extra = val(),
            "--serial-log" => cfg.serial_out = SerialOut::Both(val().into()),
            "--rng" => cfg.devices.push(DeviceConfig::Rng),
            "--fs" => {
                let v = val();
                let (tag, dir) = v.split_once('=').unwrap_or_else(|| usage());
                cfg.devices.push(DeviceConfig::Fs {
                    tag: tag.into(),
                    shared_dir: dir.into(),
                });
            }
            "--vsock" => cfg.devices.push(DeviceConfig::Vsock {
                guest_cid: 3,
                uds_path: val().into(),
            }),
            "--debug" => cfg.debug = true,
            "--stdin" => {
                use std::os::fd::AsFd;
                cfg.serial_in = std::io::stdin().as_fd().try_clone_to_owned().ok();
            }
            _ => usage(),
        }
    }
    cfg.kernel = kernel.unwrap_or_else(|| usage());
    let start = Instant::now();
    let vm = match Vm::build(cfg) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("boot: {e:#}");
            return ExitCode::from(1);
        }
    };
    match vm.run() {
        Ok(r) => {
            eprintln!(
                "boot: VM ended after {:.1} s: {r:?}",
                start.elapsed().as_secs_f64()
            );
            match r {
                ExitReason::Error(_) => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("boot: {e:#}");
            ExitCode::from(1)
        }
    }
}
