#!/usr/bin/env bash
# Network throughput benchmark: TCP host -> pod with iperf3 (Debian's, the client on the host, the
# server in the pod: the same binary with its libraries copied into the image, bench/net-image.sh)
# into
#   loopback  a server on the host's 127.0.0.1 (the ceiling: no device at all)
#   veth      a plain veth pair set up by hand into a namespace (ip netns; the floor for ns)
#   ns        `rkt run --stage1=ns --net=default` (CNI ptp veth, host-local, masquerade rules)
#   kvm       `rkt run --stage1=kvm --net=default` (the same veth, tc-redirected to the VMM's tap,
#             virtio-net in the guest, checksum/TSO offloads and mergeable RX buffers)
#   kvm-<m>   the same with RKT_VIRTIO_NET_OFFLOAD=<m> for every <m> in KVM_MODES (default "0":
#             the device without offloads, as before; "nomrg": offloads without mergeable RX
#             buffers), so the offloads are measured against their absence in the same run
#
#   bench/net-throughput.sh        (ROUNDS=5, SECS=5; RKT_BIN, BUSYBOX_OCI; KVM=0 skips kvm,
#                                   KVM_MODES="0 nomrg" adds more kvm pods, "" none)
#
# Method: every server is started once; then ROUNDS rounds each run one `iperf3 -c` of SECS
# seconds against every target in turn (loopback, veth, ns, kvm), so a change in the machine's
# load hits all of a round alike. Printed: Gbit/s (receiver side) per target, median over the
# rounds, and the median of the per-round ratios kvm/ns, ns/loopback, ns/veth (target ns >= 0.9x
# veth). Needs root, iperf3, umoci, python3, a release build of rkt (built if missing), the busybox
# test image (built if missing) and for kvm the guest kernel (kernel-config/build.sh) and the
# static guest init.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
rounds=${ROUNDS:-5}
secs=${SECS:-5}
kvm=${KVM:-1}
kvm_modes=${KVM_MODES-0}
rkt=${RKT_BIN:-$ws/target/release/rkt}
for t in iperf3 umoci python3 ip; do
  command -v "$t" >/dev/null || { echo "net-throughput.sh: $t is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "net-throughput.sh: must run as root" >&2; exit 1; }
[ -x "$rkt" ] || (cd "$ws" && cargo build --release -p rkt)
if [ "$kvm" = 1 ]; then
  (cd "$ws" && RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
    cargo build --release -p rkt-guest-init --target x86_64-unknown-linux-gnu -q)
fi
oci=${BUSYBOX_OCI:-$(ls -td "$ws"/target/test-images/*/busybox-oci 2>/dev/null | head -1 || true)}
if [ -z "$oci" ] || [ ! -d "$oci" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" "$ws/target/bench-images"
  oci="$ws/target/bench-images/busybox-oci"
fi

work=$(mktemp -d /var/tmp/rkt-net-bench.XXXXXX)
ns=rkt-bench-veth-$$
pids=()
cleanup() {
  for u in "$work"/uuid-*; do [ -f "$u" ] && "$rkt" --dir="$work/rkt" stop "$(cat "$u")" >/dev/null 2>&1; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "vb$$" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
img=$("$here/net-image.sh" "$oci" "$work/iperf-oci")
"$rkt" --dir="$work/rkt" fetch --insecure-options=image "oci:$img:latest" >/dev/null

# loopback
iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
pids+=($!)
# veth by hand: 10.254.<pid-ish>.1 on the host, .2 in the namespace
o=$(( $$ % 200 + 20 ))
ip netns add "$ns"
ip link add "vb$$" type veth peer name eth0 netns "$ns"
ip addr add "10.254.$o.1/24" dev "vb$$"
ip link set "vb$$" up
ip -n "$ns" addr add "10.254.$o.2/24" dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set lo up
ip netns exec "$ns" iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)

pod() { # flavour [offload mode]; sets $pod_ip
  local f=$1 t=$1${2:+-$2}
  local uf="$work/uuid-$t" log="$work/$t.log"
  RKT_VIRTIO_NET_OFFLOAD=${2:-} "$rkt" --dir="$work/rkt" run --stage1="$f" --net=default --tpm=off --insecure-options=image --uuid-file-save="$uf" \
    "oci:$img:latest" --exec /usr/bin/iperf3 -- -s -p 5201 --forceflush >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 1200); do
    grep -q "Server listening" "$log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  grep -q "Server listening" "$log" || { echo "net-throughput.sh: the $t pod did not start:" >&2; cat "$log" >&2; exit 1; }
  pod_ip=$("$rkt" --dir="$work/rkt" status "$(cat "$uf")" | sed -n 's/^networks=default:ip4=//p')
}
pod ns
ip_ns=$pod_ip
ip_kvm=
kvm_extra=()
if [ "$kvm" = 1 ]; then
  pod kvm
  ip_kvm=$pod_ip
  for m in $kvm_modes; do
    pod kvm "$m"
    kvm_extra+=("kvm-$m=$pod_ip")
  done
fi

python3 - "$rounds" "$secs" "10.254.$o.2" "$ip_ns" "$ip_kvm" "${kvm_extra[@]}" <<'PY'
import json, os, platform, statistics as st, subprocess, sys
rounds, secs, veth, ns, kvm = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
extra = [tuple(a.split("=", 1)) for a in sys.argv[6:]]
targets = [("loopback", "127.0.0.1"), ("veth", veth), ("ns", ns)] + ([("kvm", kvm)] if kvm else []) + extra
load0 = open("/proc/loadavg").read().split()[:3]

def gbits(addr):
    r = subprocess.run(["iperf3", "-c", addr, "-p", "5201", "-t", str(secs), "-J"],
                       capture_output=True, text=True)
    j = json.loads(r.stdout)
    if "error" in j:
        sys.exit(f"net-throughput.sh: iperf3 -c {addr}: {j['error']}")
    return j["end"]["sum_received"]["bits_per_second"] / 1e9

res = {n: [] for n, _ in targets}
for _ in range(rounds):
    for n, a in targets:
        res[n].append(gbits(a))
load1 = open("/proc/loadavg").read().split()[:3]
print(f"conditions: {os.cpu_count()} cores, kernel {platform.release()}, load {' '.join(load0)} "
      f"before, {' '.join(load1)} after; {rounds} rounds of {secs} s per target, iperf3 "
      f"{subprocess.run(['iperf3', '--version'], capture_output=True, text=True).stdout.split()[1]}"
      f", 1 TCP stream host -> pod")
for n, _ in targets:
    v = res[n]
    print(f"  {n:9s} median {st.median(v):8.3f} Gbit/s = {st.median(v)*1000:9.2f} Mbit/s"
          f"  (min {min(v)*1000:.2f}, max {max(v)*1000:.2f} Mbit/s)")
def ratio(a, b):
    return st.median([x / y for x, y in zip(res[a], res[b])])
if kvm:
    print(f"per-round ratio kvm/ns:       median {ratio('kvm', 'ns'):.5f}")
for n, _ in extra:
    print(f"per-round ratio kvm/{n}: median {ratio('kvm', n):.3f}")
# Evidence of what reached each VM: its tap's frames towards the guest (tap0 TX in the pod's
# namespace), average size; with TSO they are segments of up to 64 KiB, without ~1.5 KiB.
def tap_stats(ip):
    for l in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        n = l.split()[0]
        a = subprocess.run(["ip", "-n", n, "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        if f" {ip}/" in a:
            j = json.loads(subprocess.run(["ip", "-n", n, "-j", "-s", "link", "show", "tap0"],
                                          capture_output=True, text=True).stdout or "[]")
            return j[0]["stats64"]["tx"] if j else None
for n, a in targets:
    if n.startswith("kvm"):
        t = tap_stats(a)
        if t and t["packets"]:
            print(f"  {n:9s} tap0 -> guest: {t['packets']} frames, average {t['bytes'] // t['packets']} bytes, {t['dropped']} dropped")
print(f"per-round ratio ns/loopback:  median {ratio('ns', 'loopback'):.3f}")
print(f"per-round ratio ns/veth:      median {ratio('ns', 'veth'):.3f}  (target >= 0.9)")
PY
