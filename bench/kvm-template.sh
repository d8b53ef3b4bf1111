#!/bin/bash
# stage1 kvm VM templates (issue 12), same run, same image (busybox /bin/echo), alternating
# restored / cold / ns per round:
#   - `rkt run` start to the app's first output line: restored from a template, cold boot
#     (RKT_STAGE1_KVM_TEMPLATE=0) and --stage1=ns; medians and the median of per-round ratios;
#   - teardown: the app's last output line to `rkt run` returning (host-observed);
#   - one --debug restored run: the restore step (digest check, Vm::restore) and every
#     host/guest step's wall-clock time (docs/kvm-template.md, "Where the time goes").
# Usage: bench/kvm-template.sh [ROUNDS]   (env RKT=path/to/rkt, default target/release/rkt)
# Uses a throw-away --dir and template cache; `rkt stage1 template build` makes the template.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
RKT=${RKT:-target/release/rkt}
IMG=${IMG:-oci:$(ls -d target/test-images/*/busybox-oci | head -1):latest}
W=$(mktemp -d /tmp/rkt-bench-template.XXXXXX)
# ns pods keep their overlay mounts until gc: collect them before removing the directory.
trap 'for _ in 1 2; do "$RKT" --dir="$W/data" gc --grace-period=0s >/dev/null 2>&1; done; rm -rf "$W"' EXIT
export RKT_TEMPLATE_CACHE=$W/templates
"$RKT" --dir="$W/data" fetch --insecure-options=image "$IMG" >/dev/null

# Prints "FIRST TEARDOWN": seconds from start to the first stdout line, and from the last
# stdout line to the process's exit.
timed() {
    local start
    start=$(date +%s.%N)
    "$@" 2>"$W/err" | {
        first="" last=""
        while IFS= read -r _; do
            last=$(date +%s.%N)
            [ -n "$first" ] || first=$last
        done
        echo "$first $last"
    } >"$W/t"
    local end
    end=$(date +%s.%N)
    read -r first last <"$W/t"
    echo "$(echo "$first - $start" | bc) $(echo "$end - $last" | bc)"
}
run() {
    "$RKT" --dir="$W/data" run --insecure-options=image "$@" --net=none "$IMG" \
        --exec=/bin/echo -- hello
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

echo "# $(date -u +%FT%TZ) rkt $("$RKT" version 2>/dev/null | head -1 || true), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
"$RKT" --dir="$W/data" stage1 template build
echo "template build (one cold boot to the template point): $(echo "$(date +%s.%N) - $t0" | bc) s"
: >"$W/rows"
for i in $(seq "$ROUNDS"); do
    read -r r rt < <(timed run --stage1=kvm)
    read -r c ct < <(RKT_STAGE1_KVM_TEMPLATE=0 timed run --stage1=kvm)
    read -r n nt < <(timed run --stage1=ns)
    echo "$r $c $n $rt $ct $nt" >>"$W/rows"
    # How the kvm pods of this round started (restored KEY / cold template KEY / cold).
    how=$(ls -td "$W"/data/pods/*/* | head -3 | while read -r p; do cat "$p/stage1/kvm-boot" 2>/dev/null; done | tr '\n' ';')
    echo "round $i kvm-boot: $how"
    printf 'round %d: first output: restored %.3f s, cold %.3f s, ns %.3f s; teardown (last line to exit): restored %.3f s, cold %.3f s, ns %.3f s\n' \
        "$i" "$r" "$c" "$n" "$rt" "$ct" "$nt"
done
col() { awk -v c="$1" '{print $c}' "$W/rows" | median; }
ratio() { awk -v a="$1" -v b="$2" '{print $a / $b}' "$W/rows" | median; }
echo "medians of $ROUNDS rounds: restored $(col 1) s, cold $(col 2) s, ns $(col 3) s;" \
    "restored/cold $(ratio 1 2), restored/ns $(ratio 1 3) (median of per-round ratios);" \
    "teardown restored $(col 4) s, cold $(col 5) s, ns $(col 6) s"
echo "# one --debug restored run (host 'rkt: stage1 kvm: @T', guest 'guest-init: @T', wall clock):"
run --stage1=kvm --debug 2>&1 | grep -E "@[0-9]|hello" | sed 's/^/  /' || true
du -h --apparent-size "$RKT_TEMPLATE_CACHE"/*/mem | sed 's/^/template mem apparent: /'
du -h "$RKT_TEMPLATE_CACHE"/*/mem | sed 's/^/template mem on disk: /'
