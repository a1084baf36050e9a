#!/usr/bin/env bash
# packages.sh [N] [R] [SIZE_MIB]: bandwidth of package distribution. A
# package of SIZE_MIB MiB of random bytes is added to HQ's depot and
# installed on N agents under R relays (one install job); then a version
# with 1% of its bytes changed is installed the same way. Prints:
#   - the bytes HQ sent for version 1, as a multiple of the package size S
#     (target: about R x S, not N x S);
#   - the bytes each relay received for version 2, as a % of S (target:
#     about 1%), and HQ's bytes for it.
# Figures come from `hq package status --json`: HQ counts the blob bytes it
# sends per relay; each relay reports the bytes it fetched from its parent.
#   defaults: N=200 R=2 SIZE_MIB=8
source "$(dirname "$0")/lib.sh"

N=${1:-200}
R=${2:-2}
SIZE_MIB=${3:-8}
S=$((SIZE_MIB * 1024 * 1024))

bench_init
tree_start "$N" "$R"
PKG=$TREE/pkg
mkdir -p "$PKG"
python3 - "$PKG/payload.bin" "$S" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(int(sys.argv[2])))
PY
printf '#!/bin/sh\ntest -f payload.bin\n' >"$PKG/setup.sh"
chmod 755 "$PKG/setup.sh"

# status_field EXPR: evaluates EXPR over `hq package status --json` (as s).
status_field() {
    "$BIN/hq" package status --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
hq_sent() { status_field 'sum(b for _, b in s["hq_egress"])'; }
relay_fetched() { status_field '" ".join(str(r["fetched_bytes"]) for r in sorted(s["relays"], key=lambda r: r["relay"]))'; }

"$BIN/hq" package add "$PKG" --name bench --version 1 --install ./setup.sh >/dev/null ||
    die "hq package add (version 1) failed"
timed_job --install bench@1
read -r s f to < <(check_job "$JOB" "$N")
((s == N)) || die "install job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
log "version 1 installed on $N agents in $ELAPSED s"
E1=$(hq_sent)
read -r -a F1 <<<"$(relay_fetched)"

# Version 2: 1% of the bytes changed, in the middle.
python3 - "$PKG/payload.bin" "$S" <<'PY'
import os, sys
n = int(sys.argv[2]); k = n // 100
with open(sys.argv[1], "r+b") as f:
    f.seek(n // 2); f.write(os.urandom(k))
PY
"$BIN/hq" package add "$PKG" --name bench --version 2 --install ./setup.sh >/dev/null ||
    die "hq package add (version 2) failed"
timed_job --install bench@2
read -r s f to < <(check_job "$JOB" "$N")
((s == N)) || die "install job $JOB (version 2): only $s of $N leaves succeeded"
log "version 2 installed on $N agents in $ELAPSED s"
E2=$(hq_sent)
read -r -a F2 <<<"$(relay_fetched)"
pcts=()
for ((i = 0; i < ${#F2[@]}; i++)); do
    pcts+=("$(awk -v a="${F1[i]}" -v b="${F2[i]}" -v s="$S" 'BEGIN { printf "%.2f", (b - a) * 100 / s }')")
done
awk -v e="$E1" -v s="$S" -v r="$R" -v n="$N" 'BEGIN {
    printf "packages v1 S=%d N=%d R=%d: hq sent %d bytes = %.3f x S (target about R x S = %d x S; N x S would be %d x S)\n",
        s, n, r, e, e / s, r, n }'
$STATS summary "packages v2 (1% changed) bytes each relay received, % of S" "%" "about 1%" "${pcts[@]}"
awk -v a="$E1" -v b="$E2" -v s="$S" -v r="$R" 'BEGIN {
    printf "packages v2: hq sent %d bytes = %.2f%% of S per relay (target about 1%%)\n", b - a, (b - a) * 100 / s / r }'
