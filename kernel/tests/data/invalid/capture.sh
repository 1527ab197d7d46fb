#!/bin/sh
# Checks that the real iptables-restore refuses every *.rules file here (and prints its message).
set -u
cd "$(dirname "$0")"
status=0
for f in *.rules; do
    if msg=$(unshare -Urnm sh -c "iptables-restore < '$f'" 2>&1); then
        echo "ACCEPTED (should be refused): $f"; status=1
    else
        echo "$f: $(echo "$msg" | head -1)"
    fi
done
exit $status
