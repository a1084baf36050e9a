#!/usr/bin/env bash
# ping_pg.sh [N] [R] [RUNS]: ping.sh with HQ on PostgreSQL against HQ on sled,
# interleaved on one tree: the same relays and agents, HQ restarted on the
# same address alternately with its sled store and with `--store
# postgres://...` (each store keeps its own jobs), RUNS pings on each.
# PostgreSQL is a throwaway server (initdb into the tree, loopback, a free
# port, run as the `postgres` user when root; synchronous_commit and fsync on).
#   defaults: N=10000 R=2 RUNS=5 (issue 14: PostgreSQL within 1.5x of sled)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-5}

# hq_restart [STORE ARGS...]: HQ stopped, then started again on its address.
hq_restart() {
    local pid kept=()
    kill -TERM "$HQ_PID" 2>/dev/null || true
    wait "$HQ_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$HQ_PID" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
    start_bg hq "$BIN/hq" serve --data-dir "$TREE/hq" --listen "$HQ_ADDR" "$@"
    HQ_PID=$LAST_PID
    wait_addr "$TREE/hq" "$HQ_PID" hq >/dev/null
    wait_relays
}

bench_init
tree_start "$N" "$R"
pg_start
# The relays and agents remember job ids: the PostgreSQL HQ numbers its
# jobs from 1000000 so that they never meet the sled HQ's.
hq_restart --store "$PG_URL" # creates the tables
"${PG_AS[@]}" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U relaytree -d postgres -XAtq \
    -c "ALTER SEQUENCE relaytree_id_job RESTART WITH 1000000" >/dev/null ||
    die "cannot renumber the PostgreSQL HQ's jobs"
sled_times=() pg_times=()
for ((run = 1; run <= RUNS; run++)); do
    for store in sled postgres; do
        if [[ $store == sled ]]; then hq_restart; else hq_restart --store "$PG_URL"; fi
        settle
        timed_job --ping
        read -r s f to < <(check_job "$JOB" "$N")
        ((s == N)) || die "ping job $JOB on $store: only $s of $N leaves succeeded"
        log "run $run on $store: job $JOB: $N leaves succeeded in $ELAPSED s"
        if [[ $store == sled ]]; then sled_times+=("$ELAPSED"); else pg_times+=("$ELAPSED"); fi
    done
done
log "load: $(uptime)"
$STATS summary "ping N=$N R=$R HQ on sled" s "$(ping_target "$N")" "${sled_times[@]}"
$STATS summary "ping N=$N R=$R HQ on PostgreSQL" s "$(ping_target "$N")" "${pg_times[@]}"
