#!/bin/bash
# stage1 kvm VM templates (issue 12): `rkt run --stage1=kvm` to the app's first output line,
# restored from a template vs cold boot vs stage1 ns, same run, same image (busybox echo).
# Usage: bench/template-kvm.sh [ROUNDS]   (env RKT=path/to/rkt, default target/release/rkt)
# Uses a throw-away --dir and template cache; one cold boot makes the template.
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

# Seconds from start to the first stdout line; the rest of the output is drained.
first_line() {
    local start t
    start=$(date +%s.%N)
    t=$("$@" 2>"$W/err" | { read -r _; date +%s.%N; cat >/dev/null; })
    echo "$t - $start" | bc
}
run() {
    "$RKT" --dir="$W/data" run --insecure-options=image "$@" --net=none "$IMG" \
        --exec=/bin/echo -- hello
}
ratio() { echo "scale=3; $1 / $2" | bc; }

echo "# rkt $($RKT version 2>/dev/null | head -1 || true), load: $(cut -d' ' -f1-3 /proc/loadavg)"
t=$(first_line run --stage1=kvm)
echo "cold (makes the template): $t s"
for i in $(seq "$ROUNDS"); do
    r=$(first_line run --stage1=kvm)
    c=$(RKT_STAGE1_KVM_TEMPLATE=0 first_line run --stage1=kvm)
    n=$(first_line run --stage1=ns)
    echo "round $i: restored $r s, cold $c s, ns $n s;" \
        "restored/cold $(ratio "$r" "$c"), restored/ns $(ratio "$r" "$n")"
done
du -sh --apparent-size "$RKT_TEMPLATE_CACHE"/*/mem | sed 's/^/template mem apparent: /'
du -sh "$RKT_TEMPLATE_CACHE"/*/mem | sed 's/^/template mem on disk: /'
