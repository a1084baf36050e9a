#!/usr/bin/env bash
# failover_hq.sh [N] [RUNS]: how long a fleet is cut off when one of two HQs
# sharing a PostgreSQL database dies. HQ A and HQ B (one `hq init`, both
# `--store postgres://...`); r01 started with `--parent A --parent B`
# (default timers); N agents (a swarm) under r01. Each run, on a fresh tree
# and database: a ping created at A proves the path through A, then A is
# killed (-9) and at once a ping is created at B. The figure: from the kill
# until every leaf of that ping is stored (`hq job wait` at B has exited;
# both CLI processes inside the figure, as in ping.sh): r01 has to notice A
# is gone, dial B, and B has to send the job.
#   defaults: N=1000 RUNS=5 (issue 14: <= 10 s with default settings)
source "$(dirname "$0")/lib.sh"

N=${1:-1000}
RUNS=${2:-5}

# tree_two_hqs: PostgreSQL, HQ A and B on it, r01 (parents A then B), N agents.
tree_two_hqs() {
    tree_new
    pg_start
    mkdir -p "$TREE/hq2"
    cp -a "$TREE/hq/ca" "$TREE/hq/hq" "$TREE/hq/admin" "$TREE/hq2/"
    mkdir -p "$TREE/hq/depot"
    ln -s "$TREE/hq/depot" "$TREE/hq2/depot" # one depot, as on a shared filesystem
    start_bg hq "$BIN/hq" serve --data-dir "$TREE/hq" --listen 127.0.0.1:0 --store "$PG_URL"
    HQ_PID=$LAST_PID
    HQ_ADDR=$(wait_addr "$TREE/hq" "$HQ_PID" hq)
    start_bg hq2 "$BIN/hq" serve --data-dir "$TREE/hq2" --listen 127.0.0.1:0 --store "$PG_URL"
    HQ2_ADDR=$(wait_addr "$TREE/hq2" "$LAST_PID" hq2)
    start_bg r01 "$BIN/relay" serve --identity "$IDS/relays/r01" \
        --data-dir "$TREE/r01" --listen 127.0.0.1:0 --parent "$HQ_ADDR" --parent "$HQ2_ADDR" \
        ${TIMING[@]+"${TIMING[@]}"}
    RELAY_NAMES=(r01)
    RELAY_ADDRS=("$(wait_addr "$TREE/r01" "$LAST_PID" r01)")
    RELAY_PIDS=("$LAST_PID")
    RELAY_FLAGS=(--relay r01)
    wait_relays
    swarms_start "$N"
    wait_clients "$N"
    settle
}

# ping_all: a ping to r01 at the HQ of $RELAYTREE_DATA_DIR, every leaf succeeded.
ping_all() {
    timed_job --ping
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
}

bench_init
ids_prepare "$N" 1
firsts=()
for ((run = 1; run <= RUNS; run++)); do
    tree_two_hqs
    ping_all
    t0=$(now_ns)
    kill -KILL "$HQ_PID"
    { wait "$HQ_PID"; } 2>/dev/null || true
    RELAYTREE_DATA_DIR=$TREE/hq2 ping_all
    first=$(secs "$t0" "$JOB_T1")
    log "run $run: $N ping results through HQ B at $first s after kill -9 of HQ A (load: $(uptime | sed 's/.*load average: //'))"
    firsts+=("$first")
    stop_pids "${PIDS[@]}"
    PIDS=()
    [[ ${BENCH_KEEP:-} == 1 ]] || rm -rf "$TREE"
done
log "load: $(uptime)"
$STATS summary "failover_hq N=$N: kill -9 of HQ A -> every ping result at HQ B" s "<= 10 s" "${firsts[@]}"
