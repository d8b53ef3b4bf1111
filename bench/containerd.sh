#!/usr/bin/env bash
# containerd benchmark: `ctr run --rm` of busybox `/bin/true` with rkt's ns shim
# (io.containerd.rkt-ns.v2: an rkt pod per container) against containerd's own runc shim
# (io.containerd.runc.v2), same image, same containerd, in one run.
#
#   bench/containerd.sh       (PAIRS=30 by default; RKT_BIN, SHIM_BIN, BUSYBOX_OCI_TAR to override)
#   KVM_RUNS=1 bench/containerd.sh   also runs the kvm shim (io.containerd.rkt.v2: a VM per
#                                    container) that many times after the pairs, each beside a
#                                    runc run, and prints its ratio (a boot under this host's
#                                    nested PVM: minutes, so one run by default when asked)
#
# Method: a private containerd (Debian's 1.6; temp root/state, its own socket, CRI off) is
# started; the two runtimes alternate (rkt-ns, runc, rkt-ns, runc, ...) after WARMUP pairs, so
# load changes hit both sides of a pair alike. Prints the median wall time of each side and the
# median of the per-pair ratios rkt-ns/runc (the number to quote), with the conditions.
# Needs root, containerd, runc, python3 and release builds of rkt and the shim (built if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
pairs=${PAIRS:-30}
warmup=${WARMUP:-3}
rkt=${RKT_BIN:-$ws/target/release/rkt}
shim=${SHIM_BIN:-$ws/target/release/containerd-shim-rkt-v2}
for t in containerd ctr runc python3; do
  command -v "$t" >/dev/null || { echo "containerd.sh: $t is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "containerd.sh: must run as root" >&2; exit 1; }
if [ ! -x "$rkt" ] || [ ! -x "$shim" ]; then
  (cd "$ws" && cargo build --release -p rkt -p rkt-shim)
fi
tar=${BUSYBOX_OCI_TAR:-$(ls -t "$ws"/target/test-images/*/busybox-oci.tar 2>/dev/null | head -1 || true)}
if [ -z "$tar" ] || [ ! -f "$tar" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" "$ws/target/bench-images" >/dev/null
  tar="$ws/target/bench-images/busybox-oci.tar"
fi

work=$(mktemp -d /var/lib/rkt-ctd-bench.XXXXXX)
mkdir -p "$work/bin" "$work/rkt"
ln -s "$shim" "$work/bin/containerd-shim-rkt-ns-v2"
ln -s "$shim" "$work/bin/containerd-shim-rkt-v2"
cat > "$work/config.toml" <<CONF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
CONF
PATH="$work/bin:$PATH" RKT_SHIM_DIR="$work/rkt" RKT_SHIM_RKT="$rkt" \
  containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctd=$!
cleanup() {
  kill "$ctd" 2>/dev/null || true
  wait "$ctd" 2>/dev/null || true
  "$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1 || true
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ctr=(ctr --address "$work/containerd.sock")
for _ in $(seq 100); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
img=docker.io/library/busybox:latest
"${ctr[@]}" image import --index-name "$img" "$tar" >/dev/null

run() { # runtime id -> wall seconds
  local t0 t1
  t0=$(date +%s.%N)
  "${ctr[@]}" run --rm --runtime "$1" "$img" "$2" /bin/true
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.6f\n", $2-$1}'
}
a=(); b=()
for i in $(seq $((warmup + pairs))); do
  x=$(run io.containerd.rkt-ns.v2 "r$i")
  y=$(run io.containerd.runc.v2 "c$i")
  if [ "$i" -gt "$warmup" ]; then a+=("$x"); b+=("$y"); fi
done
k=(); kb=()
for i in $(seq "${KVM_RUNS:-0}"); do
  k+=("$(run io.containerd.rkt.v2 "k$i")")
  kb+=("$(run io.containerd.runc.v2 "kc$i")")
done
left=$(find "$work/rkt/pods" -mindepth 2 -maxdepth 2 | wc -l)
python3 - "${a[*]}" "${b[*]}" "$left" "${k[*]:-}" "${kb[*]:-}" <<'PY'
import os, statistics as st, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
r = [x / y for x, y in zip(a, b)]
print(f"pairs: {len(a)}  (ctr run --rm busybox /bin/true, alternating)")
print(f"rkt-ns shim  median {st.median(a)*1000:.1f} ms  (min {min(a)*1000:.1f})")
print(f"runc shim    median {st.median(b)*1000:.1f} ms  (min {min(b)*1000:.1f})")
print(f"median of per-pair ratios rkt-ns/runc: {st.median(r):.2f}")
if sys.argv[4].strip():
    k = [float(x) for x in sys.argv[4].split()]
    kb = [float(x) for x in sys.argv[5].split()]
    kr = [x / y for x, y in zip(k, kb)]
    print(f"kvm shim     median {st.median(k)*1000:.1f} ms over {len(k)} run(s), runc beside it "
          f"{st.median(kb)*1000:.1f} ms: ratio {st.median(kr):.1f}")
print(f"rkt pods left after the runs: {sys.argv[3]}")
print(f"conditions: {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[0]}, kernel {os.uname().release}")
PY
