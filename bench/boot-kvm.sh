#!/usr/bin/env bash
# Boot benchmark for stage1 kvm, one run, peers side by side:
#   rkt    `rkt run --stage1=kvm` of busybox `/bin/echo`: wall time to the app's first output line
#          (image already in the store; guest init + initramfs cached by a warm-up run)
#   qemu   `qemu-system-x86_64 -M microvm` direct-booting the same vmlinux (PVH) with an initramfs
#          whose init prints one line: with -accel kvm (the peer the issue names) and -accel tcg.
# Prints each time and the ratios. On this machine /dev/kvm is nested PVM, where guest kernel code
# is emulated instruction by instruction, so the absolute figures speak about PVM, not about KVM.
#
#   bench/boot-kvm.sh        (RUNS=2 by default; needs root, /dev/kvm, the cached guest kernel)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
runs=${RUNS:-2}
cd "$ws"
[ -e /dev/kvm ] || { echo "boot-kvm.sh: /dev/kvm is missing" >&2; exit 1; }
kernel=$(kernel-config/build.sh --print-path) || { echo "boot-kvm.sh: build the kernel first: kernel-config/build.sh" >&2; exit 1; }
cargo build -q --release -p rkt
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
  cargo build -q --release -p rkt-guest-init --target x86_64-unknown-linux-gnu
rkt=$ws/target/release/rkt
imgs=$ws/target/bench-images
images/build.sh "$imgs" >/dev/null
work=$(mktemp -d /tmp/rkt-bench-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
kernel-config/test-init/build.sh "$work/ti" >/dev/null

# Time from start to the first stdout line that contains MARK; prints seconds or "fail".
first_line() {
  python3 - "$@" <<'PY'
import subprocess, sys, time
mark, argv = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
seen = None
for line in p.stdout:
    if mark.encode() in line and seen is None:
        seen = time.monotonic() - t0
        if any("qemu" in a for a in argv[:2]):
            p.kill()
            break
try:
    p.wait(timeout=600)
except subprocess.TimeoutExpired:
    p.kill()
print("%.2f" % seen if seen is not None else "fail")
PY
}

dir=$work/rkt
img=oci:$imgs/busybox-oci:latest
"$rkt" --dir="$dir" fetch --insecure-options=image "$img" >/dev/null
echo "warm-up: one rkt kvm run (builds the cached initramfs)" >&2
"$rkt" --dir="$dir" run --stage1=kvm --insecure-options=image "$img" --exec /bin/true >/dev/null

qemu=(qemu-system-x86_64 -M microvm -m 256 -smp 1 -no-reboot -nographic -nodefaults -serial stdio
  -kernel "$kernel" -initrd "$work/ti/test-initramfs.cpio" -append "console=ttyS0 reboot=t panic=-1 quiet")

rkt_t=() tcg_t=() kvmq_t=()
for i in $(seq "$runs"); do
  rkt_t+=("$(first_line hello-from-kvm "$rkt" --dir="$dir" run --stage1=kvm --insecure-options=image "$img" --exec /bin/echo -- hello-from-kvm)")
  tcg_t+=("$(first_line RKT-TEST-INIT timeout 120 "${qemu[@]}" -accel tcg)")
  kvmq_t+=("$(first_line RKT-TEST-INIT timeout 90 "${qemu[@]}" -accel kvm)")
  echo "run $i: rkt kvm ${rkt_t[-1]} s, qemu tcg ${tcg_t[-1]} s, qemu kvm ${kvmq_t[-1]} s" >&2
done
"$rkt" --dir="$dir" gc --grace-period=0s >/dev/null 2>&1 || true

mean() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:] if x!="fail"]; print("%.2f" % (sum(v)/len(v)) if v else "fail")' "$@"; }
r=$(mean "${rkt_t[@]}"); t=$(mean "${tcg_t[@]}"); k=$(mean "${kvmq_t[@]}")
echo "rkt run --stage1=kvm, to the app's first output: ${r} s (mean of $runs)"
echo "qemu -M microvm -accel tcg, to init's first line: ${t} s"
echo "qemu -M microvm -accel kvm, to init's first line: ${k} s"
ratio() { python3 -c 'import sys; a,b=sys.argv[1:]; print("n/a (a peer did not boot)" if "fail" in (a,b) else "%.2f" % (float(a)/float(b)))' "$1" "$2"; }
echo "ratio rkt/qemu-kvm: $(ratio "$r" "$k")"
echo "ratio rkt/qemu-tcg: $(ratio "$r" "$t")"
