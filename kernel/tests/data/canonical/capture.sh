#!/bin/sh
# Regenerates NAME.out from NAME.in with the real kernel: each input is loaded into a fresh network
# namespace with `iptables-restore -c` and read back with `iptables-save -c` (comment lines dropped).
# Needs root or unprivileged user namespaces. Captured with iptables v1.8.9 (nf_tables), kernel 6.18.
# fuzz-N.in are random inputs from `fuzz.py N`.
set -eu
cd "$(dirname "$0")"
for f in *.in; do
    unshare -Urnm sh -c "iptables-restore -c < '$f' && iptables-save -c" | grep -v '^#' > "${f%.in}.out"
done
