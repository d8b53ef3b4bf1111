#!/bin/bash
# verify-config.sh FRAGMENT DOTCONFIG
# Checks that every option requested in FRAGMENT ended up in DOTCONFIG after olddefconfig.
# "CONFIG_X=v" must appear verbatim; "# CONFIG_X is not set" means X must not be set to anything.
# Prints one line per dropped/changed option on stderr and exits 1 if there is any.
set -euo pipefail
frag=${1:?usage: verify-config.sh FRAGMENT DOTCONFIG}
dot=${2:?usage: verify-config.sh FRAGMENT DOTCONFIG}
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        sym=${BASH_REMATCH[1]}
        got=$(grep -E "^${sym}=" "$dot" || true)
        if [[ $got != "$line" ]]; then
            echo "kernel config: requested $line but got '${got:-# $sym is not set}'" >&2
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym=${BASH_REMATCH[1]}
        if got=$(grep -E "^${sym}=" "$dot"); then
            echo "kernel config: requested $sym off but got '$got'" >&2
            bad=1
        fi
    fi
done <"$frag"
exit $bad
