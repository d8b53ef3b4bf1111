#!/bin/bash
# mkinitramfs.sh OUT.cpio[.gz] INIT_BINARY [SRC:DEST ...]
# Writes a newc cpio (gzip'd if OUT ends in .gz, else uncompressed) with /init (INIT_BINARY), /dev/console (char 5:1), empty /dev /proc
# /sys /tmp /root, and optionally more regular files (SRC copied to DEST, mode kept).
# No root needed (the archive is written directly); deterministic (mtime 0, uid/gid 0).
# Under PVM prefer the uncompressed form: the guest kernel inflates gzip in emulated kernel mode,
# which cost 7-30 s for a 0.7 MB archive (measured, see docs/kernel.md); a plain cpio is copied.
set -euo pipefail
out=${1:?usage: mkinitramfs.sh OUT.cpio[.gz] INIT_BINARY [SRC:DEST ...]}
init=${2:?usage: mkinitramfs.sh OUT.cpio[.gz] INIT_BINARY [SRC:DEST ...]}
shift 2
[[ -f $init ]] || { echo "mkinitramfs: init binary '$init' not found" >&2; exit 1; }
for extra in "$@"; do
    [[ $extra == *:/* && -f ${extra%%:*} ]] || { echo "mkinitramfs: bad extra file '$extra' (want SRC:/DEST with SRC a file)" >&2; exit 1; }
done
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
python3 - "$tmp" "$out" "$init" "$@" <<'PY'
import gzip, os, stat, sys

out, out_name, init, extras = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ino = [720000]

def entry(f, name, mode, data=b"", rdev=(0, 0)):
    ino[0] += 1
    nm = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0))
    f.write(hdr.encode() + nm)
    f.write(b"\0" * ((4 - (110 + len(nm)) % 4) % 4))
    f.write(data)
    f.write(b"\0" * ((4 - len(data) % 4) % 4))

dirs = {"dev", "proc", "sys", "tmp", "root"}
files = [("init", init)]
for e in extras:
    src, dest = e.split(":", 1)
    dest = dest.strip("/")
    parts = dest.split("/")[:-1]
    for i in range(len(parts)):
        dirs.add("/".join(parts[: i + 1]))
    files.append((dest, src))

def opener():
    if out_name.endswith(".gz"):
        return gzip.GzipFile(out, "wb", mtime=0)
    return open(out, "wb")

with opener() as f:
    for d in sorted(dirs):
        entry(f, d, stat.S_IFDIR | (0o1777 if d == "tmp" else 0o755))
    entry(f, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    for dest, src in files:
        with open(src, "rb") as s:
            data = s.read()
        perm = stat.S_IMODE(os.stat(src).st_mode) | (0o755 if dest == "init" else 0)
        entry(f, dest, stat.S_IFREG | perm, data)
    entry(f, "TRAILER!!!", 0)
PY
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
