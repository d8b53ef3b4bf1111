#!/usr/bin/env bash
# Installs the Debian packages rkt's build, tests and benchmarks need (idempotent; needs root).
set -euo pipefail
pkgs=(
  build-essential pkg-config clang libclang-dev        # C parts of -sys crates
  libtss2-dev tpm2-tools swtpm swtpm-tools             # TPM access and the TPM emulator for tests
  docker-registry skopeo umoci                         # real registry, image copy/inspect, import peer
  busybox-static                                       # test images
  gnupg openssl                                        # test image signatures, test registry TLS cert
  containernetworking-plugins iproute2                 # CNI networking
  runc podman iperf3 hyperfine time                    # benchmark peers and timing
  iptables                                             # CNI portmap/masquerade rules (tests read iptables-save)
  containerd                                           # the shim's tests and benchmark (docs/containerd.md)
  linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio  # guest kernel build
  qemu-system-x86                                      # boot benchmark peer
  xz-utils zstd bzip2 file util-linux
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian ships the registry as a service that grabs :5000; the tests start their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
