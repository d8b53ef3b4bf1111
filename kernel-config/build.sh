#!/bin/bash
# Builds the rkt stage1-kvm guest kernel (an uncompressed vmlinux) from Debian's linux-source-6.1.
#
#   kernel-config/build.sh               build if needed; the last stdout line is the vmlinux path
#   kernel-config/build.sh --print-path  print the path it would use; exit 1 if it is not built yet
#
# Result: $RKT_KERNEL_CACHE/<key>/{vmlinux,config,System.map} (default cache /var/cache/rkt/kernel),
# key = sha256 of this script's BUILD_VERSION, the linux-source package version, the compiler
# version, the config fragment, the verify script and the patches. A cached result is reused as is.
# The build tree ($cache/build-<source version>/) is kept on purpose: the next build after a fragment
# or patch change is incremental (minutes instead of a full build). Delete it to reclaim ~1.5 GB.
# All build output goes to $cache/build-<source version>/build.log; progress lines go to stderr.
set -euo pipefail

BUILD_VERSION=1
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
frag=$here/microvm.config
verify=$here/verify-config.sh
cache=${RKT_KERNEL_CACHE:-/var/cache/rkt/kernel}

die() { echo "kernel build: $*" >&2; exit 1; }
say() { echo "kernel build: $*" >&2; }

mode=build
case "${1:-}" in
    "") ;;
    --print-path) mode=print ;;
    *) die "unknown argument '$1' (usage: build.sh [--print-path])" ;;
esac

shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob

src_version() { dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true; }

ensure_deps() {
    local missing=() p
    for p in "$SRC_PKG" flex bison bc libelf-dev libssl-dev gcc make xz-utils patch; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
    [[ -f $SRC_TAR ]] || die "$SRC_TAR missing after installing $SRC_PKG"
}

compute_key() {
    local srcver=$1 p
    {
        echo "rkt-kernel-build $BUILD_VERSION"
        echo "source $SRC_PKG $srcver"
        echo "cc $(gcc --version 2>/dev/null | head -n1)"
        echo "== fragment"; cat "$frag"
        echo "== verify"; cat "$verify"
        for p in "${patches[@]}"; do echo "== patch $(basename "$p")"; cat "$p"; done
    } | sha256sum | cut -d' ' -f1
}

if [[ $mode == print ]]; then
    srcver=$(src_version)
    [[ -n $srcver ]] || die "$SRC_PKG is not installed, so no kernel can have been built"
    out=$cache/$(compute_key "$srcver")/vmlinux
    echo "$out"
    [[ -f $out ]] || exit 1
    exit 0
fi

ensure_deps
srcver=$(src_version)
key=$(compute_key "$srcver")
outdir=$cache/$key
if [[ -f $outdir/vmlinux ]]; then
    echo "$outdir/vmlinux"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
say "waiting for the build lock $cache/.build.lock"
flock 9
if [[ -f $outdir/vmlinux ]]; then # another build.sh made it while we waited
    echo "$outdir/vmlinux"
    exit 0
fi

work=$cache/build-$srcver
tree=$work/linux-source-6.1
log=$work/build.log
mkdir -p "$work"
: >"$log"

extract() {
    say "extracting $SRC_TAR into $work"
    rm -rf "$tree" "$work/applied"
    tar -xJf "$SRC_TAR" -C "$work"
    [[ -d $tree ]] || die "$SRC_TAR did not contain linux-source-6.1/"
    mkdir -p "$work/applied"
}
[[ -d $tree && -d $work/applied ]] || extract

# Bring the tree's patch set in line with patches/: revert what was applied before (newest first),
# then apply the current set. Identical sets are left alone so nothing gets rebuilt needlessly.
same=1
applied=()
[[ -f $work/applied/series ]] && mapfile -t applied <"$work/applied/series"
if ((${#applied[@]} != ${#patches[@]})); then
    same=0
else
    for i in "${!patches[@]}"; do
        cmp -s "${patches[$i]}" "$work/applied/${applied[$i]}" || same=0
    done
fi
if ((!same)); then
    for ((i = ${#applied[@]} - 1; i >= 0; i--)); do
        say "reverting ${applied[$i]}"
        if ! patch -d "$tree" -p1 -R -s <"$work/applied/${applied[$i]}" >>"$log" 2>&1; then
            say "could not revert ${applied[$i]}; starting from a fresh tree"
            extract
            break
        fi
    done
    rm -f "$work"/applied/*
    for p in "${patches[@]}"; do
        say "applying $(basename "$p")"
        patch -d "$tree" -p1 --forward -s <"$p" >>"$log" 2>&1 ||
            die "patch $(basename "$p") does not apply to $SRC_PKG $srcver (see $log)"
        cp "$p" "$work/applied/"
        basename "$p" >>"$work/applied/series"
    done
fi

say "configuring (tinyconfig + $(basename "$frag") + olddefconfig)"
(
    cd "$tree"
    make tinyconfig
    scripts/kconfig/merge_config.sh -m .config "$frag"
    make olddefconfig
) >>"$log" 2>&1 || die "configuration failed (see $log)"
"$verify" "$frag" "$tree/.config" || die "options from $(basename "$frag") were dropped by olddefconfig (see above)"

jobs=$(nproc)
say "building vmlinux with make -j$jobs (log: $log)"
start=$(date +%s)
if ! make -C "$tree" -j"$jobs" vmlinux >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "make vmlinux failed (see $log)"
fi
secs=$(($(date +%s) - start))
say "built in ${secs}s"

tmp=$(mktemp -d "$cache/.new-$key.XXXXXX")
cp "$tree/vmlinux" "$tmp/vmlinux"
cp "$tree/.config" "$tmp/config"
cp "$tree/System.map" "$tmp/System.map"
echo "$secs" >"$tmp/build-seconds"
chmod 755 "$tmp"
rm -rf "$outdir"
mv "$tmp" "$outdir"
echo "$outdir/vmlinux"
