#!/usr/bin/env bash
# Fetch benchmark: `rkt fetch oci-archive:BIG` into an empty store (import + verify + render the
# tree, i.e. ready to run) against `skopeo copy oci-archive:BIG oci:DIR` + `umoci unpack`, the
# equivalent pipeline with the standard tools. BIG is the ~200 MB, 3-layer test image.
#
#   bench/fetch.sh            (RUNS=5 by default; RKT_BIN, BIG_IMAGE to override)
#
# Needs root (umoci unpack keeps owners), hyperfine, skopeo, umoci, a release build of rkt
# (built here if missing) and the big test image (built with images/build.sh --big if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
runs=${RUNS:-5}
rkt=${RKT_BIN:-$ws/target/release/rkt}
for t in hyperfine skopeo umoci python3; do
  command -v "$t" >/dev/null || { echo "fetch.sh: $t is not installed" >&2; exit 1; }
done
if [ ! -x "$rkt" ]; then
  (cd "$ws" && cargo build --release -p rkt)
fi
big=${BIG_IMAGE:-}
if [ -z "$big" ]; then
  big=$(ls -t "$ws"/target/test-images/*/big-oci.tar 2>/dev/null | head -1 || true)
fi
if [ -z "$big" ] || [ ! -f "$big" ]; then
  mkdir -p "$ws/target/bench-images"
  "$ws/images/build.sh" --big "$ws/target/bench-images"
  big="$ws/target/bench-images/big-oci.tar"
fi
work=$(mktemp -d "${TMPDIR:-/var/tmp}/rkt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "image: $big ($(du -m "$big" | cut -f1) MB), runs: $runs, work dir: $work" >&2

hyperfine --style basic --runs "$runs" --warmup 1 \
  --prepare "rm -rf $work/rkt" \
  --export-json "$work/rkt.json" \
  -n "rkt fetch (import+render)" \
  "$rkt --dir=$work/rkt fetch --insecure-options=image oci-archive:$big"

hyperfine --style basic --runs "$runs" --warmup 1 \
  --prepare "rm -rf $work/oci $work/bundle" \
  --export-json "$work/tools.json" \
  -n "skopeo copy + umoci unpack" \
  "skopeo --insecure-policy copy -q oci-archive:$big oci:$work/oci:latest && umoci unpack --image $work/oci:latest $work/bundle >/dev/null"

# Sanity: both produced the same files.
r_tree=$(ls -d "$work"/rkt/cas/tree/*/rootfs)
if ! diff -r --no-dereference "$r_tree" "$work/bundle/rootfs" >/dev/null; then
  echo "fetch.sh: rkt's tree differs from umoci's" >&2
  exit 1
fi

python3 - "$work/rkt.json" "$work/tools.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = json.load(open(sys.argv[2]))["results"][0]
print(f"rkt fetch (import+render):  mean {r['mean']:.3f} s  (min {r['min']:.3f}, stddev {r['stddev']:.3f})")
print(f"skopeo copy + umoci unpack: mean {t['mean']:.3f} s  (min {t['min']:.3f}, stddev {t['stddev']:.3f})")
print(f"ratio rkt / (skopeo+umoci): {r['mean'] / t['mean']:.2f}  (target <= 0.50)")
PY
