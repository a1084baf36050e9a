#!/usr/bin/env bash
# clients.sh [N] [R] [RUNS]: `hq client list --json` on N clients under R
# relays, RUNS times. The agents (swarms) carry a label (`--label
# role=bench`); the tree is ready once HQ lists all N online with it (the
# relays' presence events have arrived). Each run: wall time of the whole
# CLI process (start-up, TLS to HQ, HQ's scan of its client table, the
# answer, the JSON printed to a file); it must list N clients. Then the same
# narrowed by a label and a state, for comparison.
#   defaults: N=10000 R=2 RUNS=5 (issue 11: report the time at 100,000)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-5}

# count_online FILE: clients listed online with role=bench in a client list.
count_online() {
    python3 -c '
import json, sys
l = json.load(open(sys.argv[1]))
print(sum(1 for c in l if c["state"] == "online" and c["labels"].get("role") == "bench"))' "$1"
}

bench_init
tree_start "$N" "$R" --label role=bench
out=$TREE/clients.json
t0=$(date +%s)
while :; do
    "$BIN/hq" client list --json >"$out"
    c=$(count_online "$out")
    ((c == N)) && break
    check_alive
    (($(date +%s) - t0 > 120)) && die "only $c of $N clients online with their label after 120 s"
    sleep 1
done
log "all $N clients online with their label at HQ"
times=()
for ((run = 1; run <= RUNS; run++)); do
    a=$(now_ns)
    "$BIN/hq" client list --json >"$out"
    b=$(now_ns)
    c=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$out")
    ((c == N)) || die "client list listed $c clients, not $N"
    ELAPSED=$(secs "$a" "$b")
    log "run $run: $N clients listed in $ELAPSED s ($(stat -c %s "$out") bytes of JSON)"
    times+=("$ELAPSED")
done
$STATS summary "client list --json N=$N R=$R" s "report (issue 11: 100,000 clients)" "${times[@]}"
narrow=()
for ((run = 1; run <= RUNS; run++)); do
    a=$(now_ns)
    "$BIN/hq" client list --json --label role=bench --state online --relay r01 >"$out"
    b=$(now_ns)
    narrow+=("$(secs "$a" "$b")")
done
$STATS summary "client list --json --label --state --relay N=$N R=$R" s "report" "${narrow[@]}"
