#!/usr/bin/env bash
# Builds the test images from Debian's busybox-static and the static `inspect` test app, offline.
#
#   images/build.sh OUTDIR          busybox (OCI layout, oci-archive, docker-archive, ACI) + multilayer
#   images/build.sh --big OUTDIR    only the big image (~200 MB oci-archive, 3 layers of random data)
#
# Idempotent: every output is removed and rebuilt. Needs root (file ownership in the images, umoci
# unpack), umoci, skopeo, busybox-static and cargo. See images/README.md for what each image holds.
set -euo pipefail

big=0
if [ "${1:-}" = "--big" ]; then
  big=1
  shift
fi
[ $# -eq 1 ] || { echo "usage: $0 [--big] OUTDIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (image files owned by uid 1000, umoci unpack)" >&2; exit 1; }
for t in umoci skopeo tar gzip file gpg; do
  command -v "$t" >/dev/null || { echo "build.sh: $t is not installed" >&2; exit 1; }
done

here=$(cd "$(dirname "$0")" && pwd)
ws=$(dirname "$here")
mkdir -p "$1"
out=$(cd "$1" && pwd)
# Reproducible tar streams: fixed order, owners and mtimes.
tarflags=(--sort=name --numeric-owner --mtime=@1500000000 --format=gnu)
skopeo=(skopeo --insecure-policy)
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "build.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
if [ "$big" = 1 ]; then
  work="$out/big-build"
  rm -rf "$work" "$out/big-oci.tar"
  mkdir -p "$work"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:latest"
  for i in 1 2 3; do
    mkdir -p "$work/l$i/big"
    # Random data so gzip cannot shrink it: the store and fetch see ~66 MiB per layer.
    head -c 66M /dev/urandom >"$work/l$i/big/layer$i.bin"
    tar "${tarflags[@]}" -C "$work/l$i" -cf "$work/l$i.tar" big
    umoci raw add-layer --image "$work/oci:latest" --history.created_by "layer $i: 66 MiB random" "$work/l$i.tar"
    rm -rf "$work/l$i" "$work/l$i.tar"
  done
  umoci config --image "$work/oci:latest" --config.cmd /big/layer1.bin \
    --config.label org.example.test=big
  "${skopeo[@]}" copy -q "oci:$work/oci:latest" "oci-archive:$out/big-oci.tar:latest"
  rm -rf "$work"
  log "big image: $out/big-oci.tar ($(du -m "$out/big-oci.tar" | cut -f1) MB)"
  exit 0
fi

# --------------------------------------------------------------------------------------------- inspect
log "building the static inspect binary"
unset CARGO_ENCODED_RUSTFLAGS
(
  cd "$ws"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p rkt-inspect \
    --target x86_64-unknown-linux-gnu --target-dir "$ws/target/static"
)
inspect_bin="$ws/target/static/x86_64-unknown-linux-gnu/release/inspect"
if ! file -L "$inspect_bin" | grep -Eq 'statically linked|static-pie linked'; then
  echo "build.sh: $inspect_bin is not statically linked: $(file -L "$inspect_bin")" >&2
  exit 1
fi
install -s -m 0755 "$inspect_bin" "$out/inspect"

# --------------------------------------------------------------------------------------------- rootfs
log "assembling the busybox rootfs"
busybox=/bin/busybox
file -L "$busybox" | grep -q 'statically linked' || { echo "build.sh: $busybox is not busybox-static" >&2; exit 1; }
rootfs="$out/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/user,tmp,var/tmp,proc,sys,dev}
install -m 0755 "$busybox" "$rootfs/bin/busybox"
"$busybox" --list-full | while read -r p; do
  [ "$p" = "bin/busybox" ] && continue
  mkdir -p "$rootfs/$(dirname "$p")"
  ln -sf /bin/busybox "$rootfs/$p"
done
install -m 0755 "$out/inspect" "$rootfs/inspect"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:Test User:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
wheel:x:10:user
audio:x:29:user
staff:x:50:user
user:x:1000:
nogroup:x:65534:
EOF
echo "busybox" >"$rootfs/etc/image-name"
chmod 0700 "$rootfs/root"
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
chown 1000:1000 "$rootfs/home/user"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/image-name"

# --------------------------------------------------------------------------------------------- OCI
log "building busybox-oci"
oci="$out/busybox-oci"
rm -rf "$oci" "$out/busybox-layer.tar"
umoci init --layout "$oci"
umoci new --image "$oci:latest"
(cd "$rootfs" && tar "${tarflags[@]}" -cf "$out/busybox-layer.tar" -- *)
umoci raw add-layer --image "$oci:latest" --history.created_by "busybox-static rootfs + /inspect" \
  "$out/busybox-layer.tar"
rm -f "$out/busybox-layer.tar"
umoci config --image "$oci:latest" \
  --config.cmd /inspect --config.cmd --print-hostname \
  --config.env "$PATH_ENV" \
  --config.workingdir / \
  --config.label org.example.test=busybox \
  --author "rkt tests" --os linux --architecture amd64
umoci gc --layout "$oci"
umoci stat --image "$oci:latest" >/dev/null

# Same layer, richer config: what docker2aci-style conversion must map (user by name, entrypoint +
# cmd, env, working dir, ports, volumes, stop signal).
cfg="$out/configured-oci"
rm -rf "$cfg"
cp -a "$oci" "$cfg"
umoci config --image "$cfg:latest" \
  --clear config.cmd \
  --config.entrypoint /inspect --config.entrypoint --print-user \
  --config.cmd --print-cwd --config.cmd --print-env=GREETING \
  --config.env GREETING=hello --config.env "$PATH_ENV" \
  --config.user user \
  --config.workingdir /home/user \
  --config.exposedports 8080/tcp --config.exposedports 5353/udp \
  --config.volume /data \
  --config.stopsignal SIGINT \
  --config.label org.example.test=configured
umoci gc --layout "$cfg"

rm -f "$out/busybox-oci.tar" "$out/busybox-docker.tar"
"${skopeo[@]}" copy -q "oci:$oci:latest" "oci-archive:$out/busybox-oci.tar:latest"
"${skopeo[@]}" copy -q "oci:$oci:latest" "docker-archive:$out/busybox-docker.tar:busybox:latest"

# --------------------------------------------------------------------------------------------- ACI
log "building busybox.aci"
aci="$out/aci-build"
rm -rf "$aci" "$out/busybox.aci" "$out/busybox-aci.tar"
mkdir -p "$aci"
cp -a "$rootfs" "$aci/rootfs"
cat >"$aci/manifest" <<EOF
{
  "acKind": "ImageManifest",
  "acVersion": "0.8.11",
  "name": "example.com/busybox",
  "labels": [
    {"name": "version", "value": "latest"},
    {"name": "os", "value": "linux"},
    {"name": "arch", "value": "amd64"}
  ],
  "app": {
    "exec": ["/inspect", "--print-hostname"],
    "user": "0",
    "group": "0",
    "workingDirectory": "/",
    "environment": [{"name": "PATH", "value": "${PATH_ENV#PATH=}"}]
  },
  "annotations": [
    {"name": "authors", "value": "rkt tests"},
    {"name": "org.example.test", "value": "busybox"}
  ]
}
EOF
tar "${tarflags[@]}" -C "$aci" -cf "$out/busybox-aci.tar" manifest rootfs
gzip -n -c "$out/busybox-aci.tar" >"$out/busybox.aci"
rm -rf "$aci"

# Detached OpenPGP signatures for `rkt trust` / signature checks: RSA keys (rkt v1's openpgp library
# predates EdDSA), a trusted one and an "other" one that signs the same image.
log "signing busybox.aci"
keys="$out/keys"
rm -rf "$keys" "$out"/busybox.aci*.asc
mkdir -p "$keys"
for who in trusted other; do
  home="$keys/gnupg-$who"
  mkdir -m 0700 "$home"
  gpg --homedir "$home" --batch --quiet --pinentry-mode loopback --passphrase '' \
    --quick-gen-key "rkt test $who <$who@example.com>" rsa2048 sign never
  gpg --homedir "$home" --batch --armor --export >"$keys/$who.pub.asc"
  gpg --homedir "$home" --batch --with-colons --fingerprint | awk -F: '$1=="fpr"{print $10; exit}' \
    >"$keys/$who.fingerprint"
done
gpg --homedir "$keys/gnupg-trusted" --batch --armor --detach-sign \
  --output "$out/busybox.aci.asc" "$out/busybox.aci"
gpg --homedir "$keys/gnupg-other" --batch --armor --detach-sign \
  --output "$out/busybox.aci.other.asc" "$out/busybox.aci"
gpgconf --homedir "$keys/gnupg-trusted" --kill all 2>/dev/null || true
gpgconf --homedir "$keys/gnupg-other" --kill all 2>/dev/null || true

# --------------------------------------------------------------------------------------------- multilayer
# Base = the busybox image (same layer blob, so stores can dedupe), then three layers made by
# umoci repack from changes to an unpacked bundle.
log "building multilayer-oci"
ml="$out/multilayer-oci"
bundle="$out/ml-bundle"
rm -rf "$ml" "$bundle"
cp -a "$oci" "$ml"
umoci unpack --image "$ml:latest" "$bundle"
r="$bundle/rootfs"

# Layer 1: files and directories.
mkdir -p "$r/data/dir/nested" "$r/data/emptydir" "$r/data/replace"
echo "keep" >"$r/data/keep.txt"
echo "remove me" >"$r/data/remove-me.txt"
echo "a" >"$r/data/dir/a.txt"
echo "b" >"$r/data/dir/b.txt"
echo "deep" >"$r/data/dir/nested/deep.txt"
echo "old1" >"$r/data/replace/old1.txt"
echo "old2" >"$r/data/replace/old2.txt"
chmod 0600 "$r/data/dir/b.txt"
chown 1000:1000 "$r/data/dir/a.txt"
echo "multilayer" >"$r/etc/image-name"
umoci repack --refresh-bundle --history.created_by "layer 1: add /data" --image "$ml:latest" "$bundle"

# Layer 2: delete a file (whiteout) and replace a directory's contents (opaque whiteout). umoci
# repack writes one .wh. file per deleted entry and never an opaque marker, so this layer is written
# by hand; the bundle is then unpacked again, which also has umoci apply both kinds of whiteout.
l2="$out/ml-layer2"
rm -rf "$l2"
mkdir -p "$l2/data/replace"
: >"$l2/data/.wh.remove-me.txt"
: >"$l2/data/replace/.wh..wh..opq"
echo "new" >"$l2/data/replace/new.txt"
chmod 0755 "$l2/data" "$l2/data/replace"
tar "${tarflags[@]}" -C "$l2" -cf "$l2.tar" data
umoci raw add-layer --history.created_by "layer 2: whiteouts" --image "$ml:latest" "$l2.tar"
rm -rf "$l2" "$l2.tar" "$bundle"
umoci unpack --image "$ml:latest" "$bundle"
for gone in data/remove-me.txt data/replace/old1.txt data/replace/old2.txt; do
  [ ! -e "$r/$gone" ] || { echo "build.sh: umoci unpack left $gone despite the whiteout" >&2; exit 1; }
done
[ -f "$r/data/replace/new.txt" ] || { echo "build.sh: data/replace/new.txt missing after unpack" >&2; exit 1; }

# Layer 3: a hardlink and symlinks.
echo "linked" >"$r/data/hl-src.txt"
ln "$r/data/hl-src.txt" "$r/data/hardlink"
ln -s keep.txt "$r/data/symlink"
ln -s /data/dir "$r/data/abs-symlink"
umoci repack --refresh-bundle --history.created_by "layer 3: links" --image "$ml:latest" "$bundle"

umoci config --image "$ml:latest" --config.label org.example.test=multilayer
umoci gc --layout "$ml"
rm -rf "$bundle"
umoci stat --image "$ml:latest" >/dev/null

# Check the layers hold what the tests rely on.
"$here/check-layers.sh" "$ml"
rm -f "$out/multilayer-docker.tar"
"${skopeo[@]}" copy -q "oci:$ml:latest" "docker-archive:$out/multilayer-docker.tar:multilayer:latest"

log "done:"
for f in inspect rootfs busybox-oci busybox-oci.tar busybox-docker.tar busybox.aci busybox-aci.tar \
  busybox.aci.asc busybox.aci.other.asc keys/trusted.pub.asc keys/other.pub.asc \
  configured-oci multilayer-oci multilayer-docker.tar; do
  echo "  $out/$f"
done
