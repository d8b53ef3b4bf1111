#!/usr/bin/env bash
# Checks that the multilayer OCI layout (arg 1, tag latest) has the layers the tests rely on:
# base + layer 1 (files), layer 2 (a .wh. whiteout and an opaque .wh..wh..opq), layer 3 (hardlink,
# symlinks). Prints each layer's entries on failure.
set -euo pipefail
layout=${1:?usage: check-layers.sh OCI_LAYOUT}
manifest=$(skopeo --insecure-policy inspect --raw "oci:$layout:latest")
# The layer digests in order: everything after "layers" in the (single-line) manifest.
mapfile -t layers < <(printf '%s' "$manifest" | tr -d '\n ' | sed 's/.*"layers":\[//' |
  grep -o 'sha256:[0-9a-f]\{64\}')
fail() { echo "check-layers: $*" >&2; exit 1; }
[ "${#layers[@]}" -eq 4 ] || fail "expected 4 layers, found ${#layers[@]}"
blob() { echo "$layout/blobs/sha256/${1#sha256:}"; }
has() { # has LAYER_INDEX PATTERN: the layer's listing contains a line matching PATTERN
  local list
  list=$(tar -tzvf "$(blob "${layers[$1]}")")
  grep -Eq "$2" <<<"$list" || { echo "$list" >&2; fail "layer $1 lacks an entry matching /$2/"; }
}
has 1 ' data/keep\.txt$'
has 1 ' data/remove-me\.txt$'
has 1 ' data/replace/old1\.txt$'
has 2 ' data/\.wh\.remove-me\.txt$'
has 2 ' data/replace/\.wh\.\.wh\.\.opq$'
has 2 ' data/replace/new\.txt$'
has 3 '^h.* data/hardlink link to data/hl-src\.txt$|^h.* data/hl-src\.txt link to data/hardlink$'
has 3 '^l.* data/symlink -> keep\.txt$'
has 3 '^l.* data/abs-symlink -> /data/dir$'
echo "check-layers: $layout ok (${#layers[@]} layers)" >&2
