#!/usr/bin/env bash
# The whole test suite: style gates, unit tests, and end-to-end tests that run the real rkt binary
# against real components (docker-registry, skopeo, umoci, swtpm + tpm2-tools, runc, KVM).
set -euo pipefail
# Root is needed (pods need mounts and namespaces). Root runs on (containers and cloud images
# often have no sudo); a user re-runs this script through sudo, keeping the caller's PATH and
# rustup toolchains (cargo's own home stays root's).
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "test: run as root (pods need mounts and namespaces); sudo is not installed" >&2; exit 1; }
  echo "test: not root, re-running with sudo" >&2
  exec sudo env "PATH=$PATH" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" "$0" "$@"
fi
cd "$(dirname "$0")/.."
if [ ! -e /dev/kvm ]; then
  echo "test: WARNING /dev/kvm is missing: the kvm stage1 tests will FAIL, not skip" >&2
fi

scripts/deps.sh
kernel-config/build.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
# The kvm guest init must be static; --target keeps these RUSTFLAGS off host build scripts.
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" cargo build -p rkt-guest-init --target x86_64-unknown-linux-gnu
# Bounded fuzzing of the extractor, the image JSON parsers and the virtio-mmio devices. Its build
# is cached outside the clone, like the kernel (the first one takes ~11 min on 2 cores).
CARGO_TARGET_DIR=/var/cache/rkt/fuzz-target scripts/fuzz-smoke.sh 20
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
