#!/usr/bin/env bash
# failover.sh [N] [RUNS]: how long a relay's clients are cut off from HQ when
# the relay's parent dies. HQ; r01 and r02 under it; r03 started with
# `--parent r01 --parent r02` (default timers); N agents (a swarm) under r03.
# Each run, on a fresh tree: a ping to r03 proves the path through r01, then
# r01 is killed (-9). Two figures from the kill:
#  - move: until `hq tree` shows r03 connected under r02 (polled every 0.1 s);
#  - first result: until every leaf of a ping to r03, created as soon as the
#    move shows, is stored at HQ (`hq job wait` has exited; both CLI
#    processes inside the figure, as in ping.sh).
#   defaults: N=1000 RUNS=5 (issue 14: <= 10 s with default settings)
source "$(dirname "$0")/lib.sh"

N=${1:-1000}
RUNS=${2:-5}

# tree_failover: HQ, r01, r02, r03 (parents r01 then r02), N agents under r03.
tree_failover() {
    tree_new
    start_bg hq "$BIN/hq" serve --data-dir "$TREE/hq" --listen 127.0.0.1:0 ${HQ_TIMING[@]+"${HQ_TIMING[@]}"}
    HQ_PID=$LAST_PID
    HQ_ADDR=$(wait_addr "$TREE/hq" "$HQ_PID" hq)
    local name parents=() pids=() addrs=()
    for name in r01 r02; do
        start_bg "$name" "$BIN/relay" serve --identity "$IDS/relays/$name" \
            --data-dir "$TREE/$name" --listen 127.0.0.1:0 --parent "$HQ_ADDR" ${TIMING[@]+"${TIMING[@]}"}
        pids+=("$LAST_PID")
        addrs+=("$(wait_addr "$TREE/$name" "$LAST_PID" "$name")")
        parents+=(--parent "${addrs[-1]}")
    done
    P1_PID=${pids[0]}
    start_bg r03 "$BIN/relay" serve --identity "$IDS/relays/r03" \
        --data-dir "$TREE/r03" --listen 127.0.0.1:0 "${parents[@]}" ${TIMING[@]+"${TIMING[@]}"}
    local r03_pid=$LAST_PID
    RELAY_NAMES=(r01 r02 r03)
    wait_relays
    RELAY_NAMES=(r03)
    RELAY_ADDRS=("$(wait_addr "$TREE/r03" "$r03_pid" r03)")
    RELAY_PIDS=("$r03_pid")
    RELAY_FLAGS=(--relay r03)
    swarms_start "$N"
    wait_clients "$N"
    settle
}

# parent_of RELAY: "PARENT connected" per `hq tree`.
parent_of() {
    "$BIN/hq" tree --json 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["relays"]:
    if r["relay"] == sys.argv[1]:
        print(r["parent"], str(r["connected"]).lower())' "$1" 2>/dev/null || true
}

# ping_all: a ping to r03, every leaf succeeded.
ping_all() {
    timed_job --ping
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
}

bench_init
ids_prepare "$N" 3
moves=() firsts=()
for ((run = 1; run <= RUNS; run++)); do
    tree_failover
    [[ $(parent_of r03) == "r01 true" ]] || die "r03 is not under r01: $(parent_of r03)"
    ping_all
    t0=$(now_ns)
    kill -KILL "$P1_PID"
    { wait "$P1_PID"; } 2>/dev/null || true
    while [[ $(parent_of r03) != "r02 true" ]]; do
        (($(now_ns) - t0 > 120000000000)) && die "r03 not under r02 120 s after the kill"
        sleep 0.1
    done
    t_move=$(now_ns)
    ping_all
    move=$(secs "$t0" "$t_move")
    first=$(secs "$t0" "$JOB_T1")
    log "run $run: r03 under r02 $move s after kill -9 of r01; $N ping results through r02 at $first s"
    moves+=("$move")
    firsts+=("$first")
    # The next run starts on a fresh tree: stop this one.
    stop_pids "${PIDS[@]}"
    PIDS=()
    [[ ${BENCH_KEEP:-} == 1 ]] || rm -rf "$TREE"
done
$STATS summary "failover N=$N: kill -9 of the parent -> move seen at HQ" s "none" "${moves[@]}"
$STATS summary "failover N=$N: kill -9 of the parent -> every ping result through the other" s "<= 10 s" "${firsts[@]}"
