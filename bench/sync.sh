#!/usr/bin/env bash
# sync.sh [N] [R] [SIZE_KIB]: `hq sync` of N agents (swarms) under R relays
# that fall into 3 unique collections. A master (its own --root) holds
# /etc/app/f{0,1,2}.conf of SIZE_KIB KiB each; the agents share three roots,
# group g differing from the master in f{g}.conf only (each relay holds
# agents of every group). After a snapshot and an audit, `hq sync` must make
# 3 packages, 3 jobs and 1 batch; the batch must end with N leaves
# succeeded (each re-audited clean) and the audit with N+1 compliant.
# Prints the sync's wall time (from `hq sync` to `hq job wait` on the batch)
# and the blob bytes HQ sent for it, as a multiple of the 3 packages' size
# (target: about R x, not N/3 x).
#   defaults: N=1000 R=2 SIZE_KIB=256
source "$(dirname "$0")/lib.sh"

N=${1:-1000}
R=${2:-2}
SIZE_KIB=${3:-256}

bench_init
ids_prepare "$N" "$R"
tree_new
MROOT=$TREE/master-root
SWARM_ROOTS=("$TREE/root0" "$TREE/root1" "$TREE/root2")
python3 - "$SIZE_KIB" "$MROOT" "${SWARM_ROOTS[@]}" <<'PY'
import os, sys
size = int(sys.argv[1]) * 1024
master, roots = sys.argv[2], sys.argv[3:]
content = [os.urandom(size) for _ in range(3)]
for d in [master] + roots:
    os.makedirs(os.path.join(d, "etc/app"))
for g, d in enumerate([master] + roots):
    for i in range(3):
        data = content[i]
        if d != master and i == g - 1:
            data = b"drifted\n" + data[8:]
        with open(os.path.join(d, "etc/app", f"f{i}.conf"), "wb") as f:
            f.write(data)
PY
servers_start "$R"
start_bg master "$BIN/agent" serve --identity "$IDS/idle" --data-dir "$TREE/master" \
    --relay "${RELAY_ADDRS[0]}" --root "$MROOT" ${TIMING[@]+"${TIMING[@]}"}
swarms_start "$N"
wait_clients "$((N + 1))"
settle
"$BIN/hq" snapshot create --client idle --name bench --files '/etc/app/*.conf' --no-packages \
    --json >"$TREE/log/snapshot.json" || die "snapshot failed"
AUDIT=$("$BIN/hq" audit create --snapshot bench --dest all-lower-clients "${RELAY_FLAGS[@]}" \
    --no-packages) || die "hq audit create failed"
"$BIN/hq" job wait "$AUDIT" --timeout "$WAIT_TIMEOUT" >/dev/null 2>&1 || true
audit_totals() {
    "$BIN/hq" audit status "$AUDIT" --json |
        python3 -c 'import json,sys; v=json.load(sys.stdin); t=v["totals"]; print(str(v["done"]).lower(), t["compliant"], t["non_compliant"])'
}
read -r done c nc < <(audit_totals)
[[ $done == true && $c == 1 && $nc == "$N" ]] ||
    die "audit $AUDIT: done=$done compliant=$c non_compliant=$nc (expected 1 and $N)"
hq_sent() {
    "$BIN/hq" package status --json | python3 -c 'import json,sys; print(sum(b for _, b in json.load(sys.stdin)["hq_egress"]))'
}
E0=$(hq_sent)
t0=$(now_ns)
"$BIN/hq" sync "$AUDIT" --json >"$TREE/log/sync.json" || die "hq sync failed"
read -r BATCH JOBS PKGS < <(python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
print(v["batch"], len(v["jobs"]), len({j["package"] for j in v["jobs"]}))' "$TREE/log/sync.json")
rc=0
"$BIN/hq" job wait "$BATCH" --timeout "$WAIT_TIMEOUT" >"$TREE/log/wait-$BATCH.out" 2>&1 || rc=$?
t1=$(now_ns)
((rc == 0)) || die "batch $BATCH: job wait exit $rc ($(tail -3 "$TREE/log/wait-$BATCH.out"))"
((JOBS == 3 && PKGS == 3)) || die "sync made $JOBS jobs and $PKGS packages, expected 3 and 3"
read -r s f to < <(check_job "$BATCH" "$N")
((s == N)) || die "batch $BATCH: $s of $N succeeded ($f failed)"
read -r done c nc < <(audit_totals)
((c == N + 1)) || die "after the sync, audit $AUDIT: $c compliant, expected $((N + 1))"
E1=$(hq_sent)
P=$((3 * SIZE_KIB * 1024))
log "sync of audit $AUDIT: batch $BATCH, $JOBS jobs, $PKGS packages, $N leaves re-audited clean"
awk -v n="$N" -v r="$R" -v e="$((E1 - E0))" -v p="$P" -v t="$(secs "$t0" "$t1")" 'BEGIN {
    printf "sync N=%d R=%d collections=3: 3 packages, 3 jobs, 1 batch in %.3f s; hq sent %d bytes = %.2f x the 3 packages (target about R = %d x; N/3 x would be %.0f x)\n",
        n, r, t, e, e / p, r, n / 3 }'
