#!/usr/bin/env bash
# Run benchmark: `rkt run --stage1=ns` of busybox's `/bin/echo hi` (prepare a pod from an image
# already in the store, start it in fresh namespaces with an overlay root, wait, record the exit
# status) against `runc run` of the same image, unpacked into an OCI bundle.
#
#   bench/run-ns.sh           (PAIRS=40 by default; RKT_BIN, BUSYBOX_OCI, RKT_DATA_DIR to override)
#
# Method: the two commands alternate (rkt, runc, rkt, runc, ...) after WARMUP pairs, so that a
# change in the machine's load hits both sides of a pair alike; each pair gives a ratio rkt/runc.
# It prints the median wall time of each side, the median of the per-pair ratios (the number to
# quote), the CPU time (user+sys of the command and the children it waited for), the wall time
# of the untimed `rkt gc` between runs, and the conditions: load before/after, cores, kernel,
# cgroup layout, the file system of both state dirs.
#
# Needs root, runc, umoci, python3, a release build of rkt (`cargo build --release -p rkt`, built
# here if missing) and the busybox test image (built with images/build.sh if missing). Both sides
# get a private network namespace with loopback only (rkt --net=none, runc's default spec). rkt
# runs with --tpm=off: this measures the pod lifecycle, not the TPM. rkt's data dir is on the same
# file system as its default, /var/lib/rkt, unless RKT_DATA_DIR says otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
pairs=${PAIRS:-40}
warmup=${WARMUP:-3}
rkt=${RKT_BIN:-$ws/target/release/rkt}
for t in runc umoci python3; do
  command -v "$t" >/dev/null || { echo "run-ns.sh: $t is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run-ns.sh: must run as root" >&2; exit 1; }
if [ ! -x "$rkt" ]; then
  (cd "$ws" && cargo build --release -p rkt)
fi
oci=${BUSYBOX_OCI:-}
if [ -z "$oci" ]; then
  oci=$(ls -td "$ws"/target/test-images/*/busybox-oci 2>/dev/null | head -1 || true)
fi
if [ -z "$oci" ] || [ ! -d "$oci" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" "$ws/target/bench-images"
  oci="$ws/target/bench-images/busybox-oci"
fi

mkdir -p /var/lib
work=$(mktemp -d "${RKT_DATA_DIR:-/var/lib}/rkt-bench.XXXXXX")
cleanup() {
  "$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# rkt: the image is imported and rendered once, as it would be after `rkt fetch`.
# Unsigned test image: --insecure-options=image, as for any unsigned local image.
"$rkt" --dir="$work/rkt" fetch --insecure-options=image "oci:$oci:latest" >/dev/null
out=$("$rkt" --dir="$work/rkt" run --stage1=ns --net=none --tpm=off --insecure-options=image "oci:$oci:latest" --exec /bin/echo -- hi)
[ "$out" = hi ] || { echo "run-ns.sh: rkt run printed '$out', not 'hi'" >&2; exit 1; }
"$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1

# runc: the same image unpacked into a bundle, with runc's default spec running /bin/echo hi.
umoci unpack --image "$oci:latest" "$work/unpacked" >/dev/null
mkdir -p "$work/bundle"
mv "$work/unpacked/rootfs" "$work/bundle/rootfs"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/echo", "hi"]
json.dump(c, open(p, "w"), indent=2)
PY
out=$(runc run --bundle "$work/bundle" rkt-bench-$$)
[ "$out" = hi ] || { echo "run-ns.sh: runc run printed '$out', not 'hi'" >&2; exit 1; }

python3 - "$rkt" "$work" "$oci" "$pairs" "$warmup" "rkt-bench-$$" <<'PY'
import os, platform, statistics as st, subprocess, sys, time
rkt, work, oci, pairs, warmup, name = sys.argv[1:7]
pairs, warmup = int(pairs), int(warmup)
A = [rkt, f"--dir={work}/rkt", "run", "--stage1=ns", "--net=none", "--tpm=off", "--insecure-options=image",
     f"oci:{oci}:latest", "--exec", "/bin/echo", "--", "hi"]
B = ["runc", "run", "--bundle", f"{work}/bundle", name]
GC = [rkt, f"--dir={work}/rkt", "gc", "--grace-period=0s"]

def timed(cmd):
    """Wall and CPU (user+sys, waited-for children included) seconds of one run."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out = p.stdout.read()
    p.stdout.close(); p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0 or out != b"hi\n":
        sys.exit(f"run-ns.sh: {cmd[0]} exited {p.returncode}, printed {out!r}")
    return wall, ru.ru_utime + ru.ru_stime

def untimed_gc():
    # Exited pods are removed between runs, outside the ratio: every run starts from the same
    # store state. Its wall time is reported: it includes the overlay teardown's sync of the
    # upper file system, which rkt leaves to gc (docs/pods.md, "Durability").
    t = time.perf_counter()
    subprocess.run(GC, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t

def cond():
    return open("/proc/loadavg").read().split()[:3]

load0 = cond()
ra, rb, rg = [], [], []
for i in range(warmup + pairs):
    a = timed(A); g = untimed_gc()
    b = timed(B)
    if i >= warmup:
        ra.append(a); rb.append(b); rg.append(g)
load1 = cond()

def ms(v): return f"{v*1000:6.1f}"
def q(v, f): return st.quantiles(v, n=4)[f]
wa, ca = [x[0] for x in ra], [x[1] for x in ra]
wb, cb = [x[0] for x in rb], [x[1] for x in rb]
ratios = [a / b for a, b in zip(wa, wb)]
cratios = [a / b for a, b in zip(ca, cb) if b > 0]
v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
hybrid = os.path.isdir("/sys/fs/cgroup/unified")
fs = lambda p: subprocess.run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", p],
                              capture_output=True, text=True).stdout.strip()
print(f"conditions: {os.cpu_count()} cores, kernel {platform.release()}, cgroup "
      f"{'v2' if v2 else 'v1' + (' (hybrid)' if hybrid else '')}, load {' '.join(load0)} before, "
      f"{' '.join(load1)} after")
print(f"  rkt: {rkt} (release build), data dir {work}/rkt on {fs(work)}")
print(f"  runc: {subprocess.run(['runc', '--version'], capture_output=True, text=True).stdout.split(chr(10))[0]}, "
      f"state dir /run/runc on {fs('/run')}")
print(f"  {pairs} pairs, alternating rkt, runc (after {warmup} warm-up pairs)")
print(f"                      wall median (p25-p75)      min    CPU median")
print(f"rkt run --stage1=ns: {ms(st.median(wa))} ms ({ms(q(wa,0))}-{ms(q(wa,2))})  {ms(min(wa))}  {ms(st.median(ca))} ms")
print(f"runc run:            {ms(st.median(wb))} ms ({ms(q(wb,0))}-{ms(q(wb,2))})  {ms(min(wb))}  {ms(st.median(cb))} ms")
print(f"per-pair ratio rkt/runc, wall: median {st.median(ratios):.2f} (p25 {q(ratios,0):.2f}, "
      f"p75 {q(ratios,2):.2f}); target <= 0.80")
print(f"per-pair ratio rkt/runc, CPU:  median {st.median(cratios):.2f}")
print(f"rkt gc of the exited pod (not in the ratio): wall median {ms(st.median(rg))} ms")
PY
