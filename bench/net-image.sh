#!/usr/bin/env bash
# Builds the benchmark image for bench/net-*.sh: the busybox test image plus Debian's iperf3 with
# the shared libraries it loads (ldd), as an OCI layout `DIR:latest`, so the same iperf3 runs on
# the host and inside ns and kvm pods.
#
#   bench/net-image.sh BUSYBOX_OCI OUTDIR      prints OUTDIR (an OCI layout)
#
# Needs root, umoci and iperf3.
set -euo pipefail
src=${1:?usage: net-image.sh BUSYBOX_OCI OUTDIR}
out=${2:?usage: net-image.sh BUSYBOX_OCI OUTDIR}
for t in umoci iperf3 ldd; do
  command -v "$t" >/dev/null || { echo "net-image.sh: $t is not installed" >&2; exit 1; }
done
rm -rf "$out" "$out.unpacked"
cp -a "$src" "$out"
umoci unpack --image "$out:latest" "$out.unpacked" >/dev/null
root=$out.unpacked/rootfs
bin=$(command -v iperf3)
mkdir -p "$root/usr/bin"
cp "$bin" "$root/usr/bin/iperf3"
# Every library iperf3 loads, at the path the dynamic loader looks for it.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
umoci repack --image "$out:latest" "$out.unpacked" >/dev/null
umoci config --image "$out:latest" --config.cmd /usr/bin/iperf3 >/dev/null
rm -rf "$out.unpacked"
echo "$out"
