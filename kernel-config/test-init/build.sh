#!/bin/bash
# Builds the static test init and its initramfs: test-init/build.sh OUTDIR
# -> OUTDIR/init (static ELF), OUTDIR/test-initramfs.cpio.gz and OUTDIR/test-initramfs.cpio
# (uncompressed: use it under PVM). Prints the gzip path last.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${1:?usage: test-init/build.sh OUTDIR}
mkdir -p "$outdir"
gcc -static -s -O2 -Wall -Wextra -Werror -o "$outdir/init" "$here/init.c"
"$here/../mkinitramfs.sh" "$outdir/test-initramfs.cpio.gz" "$outdir/init"
"$here/../mkinitramfs.sh" "$outdir/test-initramfs.cpio" "$outdir/init"
echo "$outdir/test-initramfs.cpio.gz"
