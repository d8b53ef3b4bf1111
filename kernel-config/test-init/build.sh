#!/bin/bash
# Builds the static test init and its initramfs: test-init/build.sh OUTDIR
# -> OUTDIR/init (static ELF) and OUTDIR/test-initramfs.cpio.gz. Prints the cpio path last.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${1:?usage: test-init/build.sh OUTDIR}
mkdir -p "$outdir"
gcc -static -O2 -Wall -Wextra -Werror -o "$outdir/init" "$here/init.c"
"$here/../mkinitramfs.sh" "$outdir/test-initramfs.cpio.gz" "$outdir/init"
echo "$outdir/test-initramfs.cpio.gz"
