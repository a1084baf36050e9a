#!/usr/bin/env bash
# ping_pg.sh [N] [R] [RUNS]: ping.sh with HQ on PostgreSQL against HQ on sled,
# interleaved on one tree: the same relays and agents, HQ restarted on the
# same address alternately with its sled store and with `--store
# postgres://...` (each store keeps its own jobs), RUNS pings on each.
# PostgreSQL is a throwaway server (initdb into the tree, loopback, a free
# port, run as the `postgres` user when root; synchronous_commit and fsync on).
#   defaults: N=10000 R=2 RUNS=5 (issue 14: PostgreSQL within 1.5x of sled)
# BENCH_BASE_HQ=/path/to/hq: also time that HQ binary (an older build) on
# both stores, interleaved with this one on the same tree: base sled, sled,
# base postgres, postgres per run (before/after ratios on one load).
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
    start_bg hq "${HQ_BIN:-$BIN/hq}" serve --data-dir "$TREE/hq" --listen "$HQ_ADDR" "$@"
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
BASE_HQ=${BENCH_BASE_HQ:-}
[[ -z $BASE_HQ || -x $BASE_HQ ]] || die "BENCH_BASE_HQ=$BASE_HQ is not an executable"
builds=(new)
[[ -n $BASE_HQ ]] && builds=(base new)
declare -A times=()
for ((run = 1; run <= RUNS; run++)); do
    for store in sled postgres; do
        for build in "${builds[@]}"; do
            if [[ $build == base ]]; then HQ_BIN=$BASE_HQ; else HQ_BIN=$BIN/hq; fi
            if [[ $store == sled ]]; then hq_restart; else hq_restart --store "$PG_URL"; fi
            settle
            timed_job --ping
            read -r s f to < <(check_job "$JOB" "$N")
            ((s == N)) || die "ping job $JOB on $store ($build): only $s of $N leaves succeeded"
            log "run $run on $store ($build HQ): job $JOB: $N leaves succeeded in $ELAPSED s"
            times[$store.$build]+=" $ELAPSED"
        done
    done
done
HQ_BIN=$BIN/hq
log "load: $(uptime)"
for build in "${builds[@]}"; do
    tag=""
    [[ $build == base ]] && tag=" (base HQ $BASE_HQ)"
    # shellcheck disable=SC2086 # the times are words
    $STATS summary "ping N=$N R=$R HQ on sled$tag" s "$(ping_target "$N")" ${times[sled.$build]}
    # shellcheck disable=SC2086
    $STATS summary "ping N=$N R=$R HQ on PostgreSQL$tag" s "$(ping_target "$N")" ${times[postgres.$build]}
done
