#!/usr/bin/env bash
# audit.sh [N] [R] [RUNS]: an audit of N agents (swarms) under R relays
# against a snapshot of one of them, the master holding 200 files (under
# /etc/app of a shared --root) and 50 packages (Debian packages in the root's
# dpkg database, compared with --dpkg). Every agent of the swarms shares the
# root, so every target is compliant: each sends its few bytes up.
# First the snapshot is taken (timed apart), then each run: wall time from
# just before `hq audit create --snapshot` to `hq job wait` seeing it done
# (every result stored at HQ). Each run must end with N compliant targets.
#   defaults: N=10000 R=2 RUNS=3 (issue 10: every result at HQ within 5 s)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-3}

bench_init
ids_prepare "$N" "$R"
tree_new
ROOT=$TREE/root
mkdir -p "$ROOT/etc/app" "$ROOT/var/lib/dpkg"
python3 - "$ROOT" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(200):
    with open(os.path.join(root, "etc/app", f"f{i:03d}.conf"), "w") as f:
        f.write(f"setting_{i} = {i * 7}\n" * 20)
with open(os.path.join(root, "var/lib/dpkg/status"), "w") as f:
    for i in range(50):
        f.write(f"Package: pkg{i:02d}\nStatus: install ok installed\nVersion: 1.{i}-1\n"
                "Architecture: amd64\nMaintainer: bench\nDescription: bench\n\n")
PY
servers_start "$R"
swarms_start "$N" --root "$ROOT"
wait_clients "$N"
settle
MASTER=a000-00001
t0=$(now_ns)
"$BIN/hq" snapshot create --client "$MASTER" --name bench --files '/etc/app/*.conf' --dpkg \
    --json >"$TREE/log/snapshot.json" || die "snapshot of $MASTER failed"
log "snapshot of $MASTER: $(tr -d '\n ' <"$TREE/log/snapshot.json") in $(secs "$t0" "$(now_ns)") s"
times=()
for ((run = 1; run <= RUNS; run++)); do
    t0=$(now_ns)
    AUDIT=$("$BIN/hq" audit create --snapshot bench --dest all-lower-clients "${RELAY_FLAGS[@]}" --dpkg) ||
        die "hq audit create failed"
    rc=0
    "$BIN/hq" job wait "$AUDIT" --timeout "$WAIT_TIMEOUT" >"$TREE/log/wait-$AUDIT.out" 2>&1 || rc=$?
    t1=$(now_ns)
    ((rc == 0)) || die "audit $AUDIT: job wait exit $rc ($(cat "$TREE/log/wait-$AUDIT.out"))"
    compliant=$("$BIN/hq" audit status "$AUDIT" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
assert v["done"], "not done"
print(v["totals"]["compliant"])')
    ((compliant == N)) || die "audit $AUDIT: $compliant of $N compliant"
    ELAPSED=$(secs "$t0" "$t1")
    log "run $run: audit $AUDIT: $N targets compliant in $ELAPSED s"
    times+=("$ELAPSED")
    ((run < RUNS)) && settle
done
target="none at this N; 5 s at 10000"
((N == 10000)) && target="<= 5 s"
$STATS summary "audit N=$N R=$R objects=250" s "$target" "${times[@]}"
