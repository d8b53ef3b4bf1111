#!/bin/bash
# stage1 kvm VM templates (issue 12): host memory of N concurrent kvm pods restored from one
# template vs N cold-booted ones (RSS and PSS of each pod's VMM process, i.e. `rkt run`).
# Usage: bench/kvm-template-mem.sh [N]   (env RKT=path/to/rkt, default target/release/rkt)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
RKT=${RKT:-target/release/rkt}
IMG=${IMG:-oci:$(ls -d target/test-images/*/busybox-oci | head -1):latest}
W=$(mktemp -d /tmp/rkt-bench-tmem.XXXXXX)
cleanup() {
    for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for _ in 1 2; do "$RKT" --dir="$W/data" gc --grace-period=0s >/dev/null 2>&1 || true; done
    rm -rf "$W"
}
trap cleanup EXIT
export RKT_TEMPLATE_CACHE=$W/templates
"$RKT" --dir="$W/data" fetch --insecure-options=image "$IMG" >/dev/null
run() { # run NAME [env...]: a pod that says "up" and then sleeps
    env "${@:2}" "$RKT" --dir="$W/data" run --insecure-options=image --stage1=kvm --net=none \
        "$IMG" --exec=/bin/sh -- -c 'echo up; sleep 900' >"$W/$1.out" 2>"$W/$1.err" &
    echo $!
}
# Make the template first.
"$RKT" --dir="$W/data" run --insecure-options=image --stage1=kvm --net=none "$IMG" \
    --exec=/bin/true >/dev/null 2>&1
measure() { # measure LABEL ENV...
    local pids=() i
    # One after another (all alive at the end): N cold boots at once on 2 cores overran the
    # guest's 300 s to its template point under PVM.
    for i in $(seq "$N"); do
        pids+=("$(run "$1$i" "${@:2}")")
        until grep -q up "$W/$1$i.out" 2>/dev/null; do
            kill -0 "${pids[-1]}" 2>/dev/null || { cat "$W/$1$i.err" >&2; exit 1; }
            sleep 0.5
        done
    done
    local rss=0 pss=0 p
    for p in "${pids[@]}"; do
        rss=$((rss + $(awk '/^Rss:/ {print $2}' /proc/"$p"/smaps_rollup)))
        pss=$((pss + $(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup)))
    done
    echo "$1: $N pods, per pod RSS $((rss / N / 1024)) MiB, PSS $((pss / N / 1024)) MiB"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
measure restored X=1
measure cold RKT_STAGE1_KVM_TEMPLATE=0
