#!/bin/bash
# Two guest kernels side by side on restored kvm pods (each kernel gets its own template, made
# first): `rkt run --stage1=kvm` of busybox, start to the app's first output line and to `rkt run`
# returning, alternating A B A B per round; medians and the median of per-round ratios B/A.
# Also the CPU time of each `rkt run` (user+sys; the VMM and its vCPU run in it): guest kernel
# work under PVM is CPU time there, which a loaded machine inflates far less than wall time.
# Used for kernel-config changes (e.g. CONFIG_BPF_JIT, docs/kvm-template.md). A template cache
# given as RKT_TEMPLATE_CACHE is kept (and its templates reused).
# Usage: bench/kvm-kernel-ab.sh A_VMLINUX B_VMLINUX [ROUNDS]   (env RKT, default target/release/rkt)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: kvm-kernel-ab.sh A_VMLINUX B_VMLINUX [ROUNDS]}
B=${2:?usage: kvm-kernel-ab.sh A_VMLINUX B_VMLINUX [ROUNDS]}
ROUNDS=${3:-10}
RKT=${RKT:-target/release/rkt}
IMG=${IMG:-oci:$(ls -d target/test-images/*/busybox-oci | head -1):latest}
W=$(mktemp -d /tmp/rkt-bench-kab.XXXXXX)
trap 'for _ in 1 2; do "$RKT" --dir="$W/data" gc --grace-period=0s >/dev/null 2>&1; done; rm -rf "$W"' EXIT
export RKT_TEMPLATE_CACHE=${RKT_TEMPLATE_CACHE:-$W/templates}
"$RKT" --dir="$W/data" fetch --insecure-options=image "$IMG" >/dev/null

# Prints "FIRST TOTAL CPU": seconds from start to the first stdout line and to the exit, and
# the CPU seconds (user+sys) `rkt run` used.
timed() {
    local start first end
    start=$(date +%s.%N)
    first=$(/usr/bin/time -f "%U %S" -o "$W/cpu" "$@" "${cmd[@]}" 2>"$W/err" |
        { IFS= read -r _ && date +%s.%N; cat >/dev/null; }) || true
    end=$(date +%s.%N)
    [ -n "$first" ] || { cat "$W/err" >&2; exit 1; }
    echo "$(echo "$first - $start" | bc) $(echo "$end - $start" | bc) $(awk '{print $1 + $2}' "$W/cpu")"
}
cmd=("$RKT" --dir="$W/data" run --insecure-options=image --stage1=kvm --net=none "$IMG"
    --exec=/bin/echo -- hello)
run() { # run VMLINUX (a plain command line, which time(1) can start)
    timed env RKT_STAGE1_KVM_KERNEL="$1"
}
boot() { ls -td "$W"/data/pods/*/* | head -1 | xargs -I{} cat {}/stage1/kvm-boot 2>/dev/null || true; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# A=$A"
echo "# B=$B"
# One cold boot per kernel makes its template.
for k in "$A" "$B"; do run "$k" >/dev/null; done
: >"$W/rows"
for i in $(seq "$ROUNDS"); do
    read -r af at ac < <(run "$A")
    ab=$(boot)
    read -r bf bt bc < <(run "$B")
    bb=$(boot)
    echo "$af $bf $at $bt $ac $bc" >>"$W/rows"
    printf 'round %d: first output A %.3f s, B %.3f s; exit A %.3f s, B %.3f s; CPU A %.2f s, B %.2f s (%s / %s)\n' \
        "$i" "$af" "$bf" "$at" "$bt" "$ac" "$bc" "${ab%% *}" "${bb%% *}"
done
col() { awk -v c="$1" '{print $c}' "$W/rows" | median; }
ratio() { awk -v a="$1" -v b="$2" '{print $b / $a}' "$W/rows" | median; }
echo "medians of $ROUNDS rounds: first output A $(col 1) s, B $(col 2) s, B/A $(ratio 1 2);" \
    "exit A $(col 3) s, B $(col 4) s, B/A $(ratio 3 4); CPU A $(col 5) s, B $(col 6) s," \
    "B/A $(ratio 5 6) (median of per-round ratios);" \
    "load now: $(cut -d' ' -f1-3 /proc/loadavg)"
