#!/usr/bin/env bash
# One command from a fresh machine to a running pod: installs Debian packages, builds the guest
# kernel when its cache is cold, builds the workspace and the test images, then runs a demo pod.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get, mounts, namespaces)" >&2; exit 1; }

scripts/deps.sh
if [ -x kernel-config/build.sh ]; then
  kernel-config/build.sh
fi
cargo build --release --workspace
# The kvm guest init must be static; --target keeps these RUSTFLAGS off host build scripts.
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" cargo build --release -p rkt-guest-init --target x86_64-unknown-linux-gnu
if [ -x images/build.sh ]; then
  images/build.sh target/demo-images >/dev/null
fi

rkt=target/release/rkt
dir=$(mktemp -d /tmp/rkt-demo.XXXXXX)
echo "setup: demo pod (stage1 ns) with --dir=$dir"
"$rkt" --dir="$dir" run --stage1=ns --insecure-options=image \
  oci:target/demo-images/busybox-oci:latest --exec /bin/echo -- "hello from an rkt pod"
"$rkt" --dir="$dir" list
"$rkt" --dir="$dir" gc --grace-period=0s >/dev/null
rm -rf "$dir"
