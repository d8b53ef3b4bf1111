#!/usr/bin/env bash
# Run benchmark: `rkt run --stage1=ns` of busybox's `/bin/echo hi` (prepare a pod from an image
# already in the store, start it in fresh namespaces with an overlay root, wait, record the exit
# status) against `runc run` of the same root filesystem from a prepared OCI bundle.
#
#   bench/run-ns.sh           (RUNS=30 by default; RKT_BIN, BUSYBOX_OCI, BUSYBOX_ROOTFS to override)
#
# Needs root, hyperfine, runc, python3, a release build of rkt (built here if missing) and the
# busybox test image (built with images/build.sh if missing). Both sides get a private network
# namespace with loopback only (rkt --net=none, runc's default spec). rkt runs with --tpm=off: this
# measures the pod lifecycle, not the TPM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
runs=${RUNS:-30}
rkt=${RKT_BIN:-$ws/target/release/rkt}
for t in hyperfine runc python3; do
  command -v "$t" >/dev/null || { echo "run-ns.sh: $t is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run-ns.sh: must run as root" >&2; exit 1; }
if [ ! -x "$rkt" ]; then
  (cd "$ws" && cargo build --release -p rkt)
fi
oci=${BUSYBOX_OCI:-}
rootfs=${BUSYBOX_ROOTFS:-}
if [ -z "$oci" ]; then
  oci=$(ls -td "$ws"/target/test-images/*/busybox-oci 2>/dev/null | head -1 || true)
fi
if [ -z "$oci" ] || [ ! -d "$oci" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" "$ws/target/bench-images"
  oci="$ws/target/bench-images/busybox-oci"
fi
[ -n "$rootfs" ] || rootfs="$(dirname "$oci")/rootfs"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/rkt-bench.XXXXXX")
cleanup() {
  "$rkt" --dir="$work/rkt" gc --grace-period=0s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# rkt: the image is imported and rendered once, as it would be after `rkt fetch`.
"$rkt" --dir="$work/rkt" fetch "oci:$oci:latest" >/dev/null
out=$("$rkt" --dir="$work/rkt" run --stage1=ns --net=none --tpm=off "oci:$oci:latest" --exec /bin/echo -- hi)
[ "$out" = hi ] || { echo "run-ns.sh: rkt run printed '$out', not 'hi'" >&2; exit 1; }

# runc: a bundle with a copy of the same rootfs and runc's default spec running /bin/echo hi.
mkdir -p "$work/bundle"
cp -a "$rootfs" "$work/bundle/rootfs"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/echo", "hi"]
json.dump(c, open(p, "w"), indent=2)
PY
out=$(runc run --bundle "$work/bundle" rkt-bench-$$)
[ "$out" = hi ] || { echo "run-ns.sh: runc run printed '$out', not 'hi'" >&2; exit 1; }

echo "image: $oci, runs: $runs, work dir: $work" >&2
# Exited pods are removed between runs (untimed), so every run starts from the same store state.
hyperfine --style basic --runs "$runs" --warmup 3 --export-json "$work/run.json" \
  --prepare "$rkt --dir=$work/rkt gc --grace-period=0s >/dev/null 2>&1" \
  -n "rkt run --stage1=ns" \
  "$rkt --dir=$work/rkt run --stage1=ns --net=none --tpm=off oci:$oci:latest --exec /bin/echo -- hi" \
  -n "runc run" \
  "runc run --bundle $work/bundle rkt-bench-$$"

python3 - "$work/run.json" <<'PY'
import json, sys
r, c = json.load(open(sys.argv[1]))["results"]
print(f"rkt run --stage1=ns: mean {r['mean']*1000:.1f} ms  (min {r['min']*1000:.1f}, stddev {r['stddev']*1000:.1f})")
print(f"runc run:            mean {c['mean']*1000:.1f} ms  (min {c['min']*1000:.1f}, stddev {c['stddev']*1000:.1f})")
print(f"ratio rkt / runc: {r['mean'] / c['mean']:.2f}  (target <= 0.80)")
PY
