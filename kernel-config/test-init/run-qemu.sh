#!/bin/bash
# run-qemu.sh [--kvm] [--timeout SECS] VMLINUX INITRD [EXTRA CMDLINE...]
# Boots VMLINUX (PVH entry) under qemu -M microvm, TCG by default or KVM with --kvm, prints the
# serial console with each line prefixed by the wall time since qemu started, and at the end
# "first-init-line-seconds=S" (the first line starting with RKT-TEST-INIT / RKT-VMM-TEST) and
# "total-seconds=S". Exits 0 if the console shows "RKT-TEST-INIT [...] ok", else 1.
set -euo pipefail
accel=tcg
timeout=120
while [[ ${1:-} == --* ]]; do
    case $1 in
        --kvm) accel=kvm; shift ;;
        --timeout) timeout=$2; shift 2 ;;
        *) echo "run-qemu: unknown option $1" >&2; exit 2 ;;
    esac
done
kernel=${1:?usage: run-qemu.sh [--kvm] [--timeout S] VMLINUX INITRD [CMDLINE...]}
initrd=${2:?usage: run-qemu.sh [--kvm] [--timeout S] VMLINUX INITRD [CMDLINE...]}
shift 2
cmdline="console=ttyS0 reboot=t panic=-1 quiet $*"
cpu=()
[[ $accel == kvm ]] && cpu=(-cpu host)
exec python3 - "$timeout" qemu-system-x86_64 -M microvm -accel "$accel" "${cpu[@]}" -m 256 -smp 1 \
    -no-reboot -nographic -nodefaults -serial stdio \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" <<'PY'
import subprocess, sys, time
timeout, argv = float(sys.argv[1]), sys.argv[2:]
start = time.monotonic()
p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
first, ok = None, False
import selectors
sel = selectors.DefaultSelector()
sel.register(p.stdout, selectors.EVENT_READ)
buf = b""
while True:
    left = timeout - (time.monotonic() - start)
    if left <= 0:
        p.kill()
        print("run-qemu: timed out after %.0fs" % timeout)
        break
    if not sel.select(left):
        continue
    chunk = p.stdout.read1(4096)
    if not chunk:
        break
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        t = time.monotonic() - start
        s = line.decode(errors="replace").rstrip("\r")
        if first is None and (s.startswith("RKT-TEST-INIT") or s.startswith("RKT-VMM-TEST")):
            first = t
        if s.startswith("RKT-TEST-INIT") and s.endswith("] ok"):
            ok = True
        print("%8.3f %s" % (t, s), flush=True)
p.wait()
print("first-init-line-seconds=%s" % ("%.3f" % first if first is not None else "none"))
print("total-seconds=%.3f" % (time.monotonic() - start))
sys.exit(0 if ok else 1)
PY
