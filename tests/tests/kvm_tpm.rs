//! A kvm pod measured into a real TPM (swtpm) as a kvm pod, in execution order: stage0, the VMM,
//! guest kernel, initramfs and final kernel command line (before any vCPU runs), the pod manifest,
//! the app; never as ns. `rkt tpm verify` checks them against the files and the TPM. One boot
//! (~1 min on PVM).

mod tpm_support;

use rkt_tests::{images, require_root, RktEnv};
use tpm_support::Swtpm;

#[test]
fn kvm_pod_measures_vmm_kernel_initramfs_and_cmdline() {
    require_root();
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing"
    );
    let tpm = Swtpm::start();
    let mut env = RktEnv::new();
    env.set_timeout(600);
    let tcti = format!("--tpm-tcti={}", tpm.tcti());
    let uuid_file = env.scratch.join("uuid");
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        &tcti,
        "--insecure-options=image",
        "run",
        "--tpm=required",
        "--stage1=kvm",
        &format!("--uuid-file-save={}", uuid_file.display()),
        "--net=none",
        &img,
        "--exec",
        "/inspect",
        "--",
        "--echo=measured-vm",
    ]);
    out.assert_ok();
    out.assert_stdout_contains("measured-vm");
    let uuid = std::fs::read_to_string(uuid_file)
        .unwrap()
        .trim()
        .to_string();
    let log = env.rkt(&[&tcti, "tpm", "log", "--pod", &uuid]);
    log.assert_ok();
    for label in [
        "rkt/stage0",
        "rkt/pod-manifest",
        "rkt/stage1/kvm/vmm",
        "rkt/stage1/kvm/vmlinux",
        "rkt/stage1/kvm/initramfs",
        "rkt/stage1/kvm/cmdline",
    ] {
        log.assert_stdout_contains(label);
    }
    // The command line measured is the one the guest got (virtio-mmio devices included).
    log.assert_stdout_contains("virtio_mmio.device=");
    // Measured as what it is, in the order the stages run.
    let json = env.rkt(&[&tcti, "tpm", "log", "--pod", &uuid, "--format=json"]);
    json.assert_ok();
    let events: Vec<serde_json::Value> = serde_json::from_str(json.stdout.trim()).unwrap();
    // A pod restored from a VM template (made by an earlier kvm pod) also logs the template
    // after the command line (tests/tests/templates.rs checks that entry).
    let labels: Vec<String> = events
        .iter()
        .map(|e| {
            let data = e["event"].as_str().unwrap();
            data.split(' ').next().unwrap().to_string()
        })
        .filter(|l| l != "rkt/stage1/kvm/template")
        .collect();
    assert_eq!(
        labels,
        [
            "rkt/stage0",
            "rkt/stage1/kvm/vmm",
            "rkt/stage1/kvm/vmlinux",
            "rkt/stage1/kvm/initramfs",
            "rkt/stage1/kvm/cmdline",
            "rkt/pod-manifest",
            "rkt/app",
        ],
        "{}",
        json.stdout
    );
    assert!(
        events
            .iter()
            .all(|e| !e["event"].as_str().unwrap().contains(r#""flavor":"ns""#)),
        "{}",
        json.stdout
    );
    env.rkt(&[&tcti, "tpm", "verify", "--pod", &uuid])
        .assert_ok()
        .assert_stdout_contains("matches the TPM");
}
