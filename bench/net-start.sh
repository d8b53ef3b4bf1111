#!/usr/bin/env bash
# Start-time cost of the default network: `rkt run --stage1=ns --net=default` against
# `rkt run --stage1=ns --net=none` and `podman run` (Debian's podman, its default network: the
# `podman` bridge with its CNI/netavark set-up, same OCI image), each running /bin/true.
#
#   bench/net-start.sh        (PAIRS=30, WARMUP=3; RKT_BIN, BUSYBOX_OCI to override)
#
# Method: the three commands alternate (rkt default, rkt none, podman, ...) after WARMUP rounds;
# exited pods/containers are removed between runs, untimed (`rkt gc`, `podman rm`), so every run
# starts from the same state. Printed: median wall time of each, the medians of the per-round
# ratios rkt-default/podman (target <= 0.5) and rkt-default/rkt-none, and the conditions.
# Needs root, podman, umoci, python3, a release build of rkt (built if missing) and the busybox
# test image (built if missing). rkt runs with --tpm=off.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
pairs=${PAIRS:-30}
warmup=${WARMUP:-3}
rkt=${RKT_BIN:-$ws/target/release/rkt}
for t in podman python3; do
  command -v "$t" >/dev/null || { echo "net-start.sh: $t is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "net-start.sh: must run as root" >&2; exit 1; }
[ -x "$rkt" ] || (cd "$ws" && cargo build --release -p rkt)
oci=${BUSYBOX_OCI:-$(ls -td "$ws"/target/test-images/*/busybox-oci 2>/dev/null | head -1 || true)}
if [ -z "$oci" ] || [ ! -d "$oci" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" "$ws/target/bench-images"
  oci="$ws/target/bench-images/busybox-oci"
fi
work=$(mktemp -d /var/lib/rkt-net-start.XXXXXX)
tag=localhost/rkt-net-start-$$:latest
cleanup() {
  "$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$rkt" --dir="$work/rkt" fetch --insecure-options=image "oci:$oci:latest" >/dev/null
podman tag "$(podman pull -q "oci:$oci:latest" | tail -1)" "$tag"

python3 - "$rkt" "$work" "$oci" "$tag" "$pairs" "$warmup" <<'PY'
import os, platform, statistics as st, subprocess, sys, time
rkt, work, oci, tag, pairs, warmup = sys.argv[1:7]
pairs, warmup = int(pairs), int(warmup)
def rktrun(net):
    return [rkt, f"--dir={work}/rkt", "run", "--stage1=ns", f"--net={net}", "--tpm=off", "--insecure-options=image",
            f"oci:{oci}:latest", "--exec", "/bin/true"]
cmds = {
    "rkt --net=default": (rktrun("default"), [rkt, f"--dir={work}/rkt", "gc", "--grace-period=0s"]),
    "rkt --net=none": (rktrun("none"), [rkt, f"--dir={work}/rkt", "gc", "--grace-period=0s"]),
    # Small rlimits: podman raises nofile/nproc to the maximum for root by default, which
    # needs CAP_SYS_RESOURCE (missing in some sandboxes); rkt leaves them as they are.
    "podman run": (["podman", "run", "--name", "rkt-net-start", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024", tag, "/bin/true"],
                   ["podman", "rm", "-f", "rkt-net-start"]),
}
def timed(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"net-start.sh: {' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-300:]}")
    return wall
res = {k: [] for k in cmds}
load0 = open("/proc/loadavg").read().split()[:3]
for i in range(warmup + pairs):
    for k, (run, clean) in cmds.items():
        w = timed(run)
        subprocess.run(clean, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i >= warmup:
            res[k].append(w)
load1 = open("/proc/loadavg").read().split()[:3]
pv = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
be = subprocess.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"],
                    capture_output=True, text=True).stdout.strip()
print(f"conditions: {os.cpu_count()} cores, kernel {platform.release()}, load {' '.join(load0)} "
      f"before, {' '.join(load1)} after; {pairs} rounds (after {warmup} warm-up), alternating")
print(f"  {pv}, network backend {be}; rkt {rkt} (release), --tpm=off; /bin/true in busybox")
for k, v in res.items():
    q = st.quantiles(v, n=4)
    print(f"  {k:18s} median {st.median(v)*1000:7.1f} ms  (p25 {q[0]*1000:.1f}, p75 {q[2]*1000:.1f})")
def ratio(a, b):
    return st.median([x / y for x, y in zip(res[a], res[b])])
print(f"per-round ratio rkt default / podman:   median {ratio('rkt --net=default', 'podman run'):.3f}  (target <= 0.5)")
print(f"per-round ratio rkt default / rkt none: median {ratio('rkt --net=default', 'rkt --net=none'):.3f}")
PY
