//! stage1 `kvm` only: what has no ns counterpart. Everything both flavours do runs as a matrix
//! in stage1_matrix.rs and pods_run.rs (their `::kvm` tests boot the guest kernel in rkt's own VMM);
//! kvm's guest RAM sizing is checked there too, beside the limits it comes from.

use rkt_tests::{images, Flavor};

#[test]
fn kvm_refuses_host_networking_in_one_line_without_booting() {
    let f = Flavor::Kvm;
    let env = f.env();
    let img = images().busybox_oci_ref();
    let out = env.rkt(&[
        "run",
        "--insecure-options=image",
        f.flag(),
        "--net=host",
        &img,
        "--exec=/inspect",
    ]);
    out.assert_code(254);
    // One line, the last one, names the problem (stage0 may print warnings before it).
    let last = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("--net=host is not supported") && last.starts_with("rkt: "),
        "{out}"
    );
    assert_eq!(out.stderr.matches("--net=host").count(), 1, "{out}");
    // Refused before the VM existed: no pod has a serial console log.
    let consoles: Vec<_> = ["run", "exited-garbage", "garbage", "prepared"]
        .iter()
        .filter_map(|s| std::fs::read_dir(env.dir.join("pods").join(s)).ok())
        .flatten()
        .flatten()
        .map(|e| e.path().join("console.log"))
        .filter(|p| p.exists())
        .collect();
    assert!(consoles.is_empty(), "{consoles:?}");
}
