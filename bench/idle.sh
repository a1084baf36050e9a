#!/usr/bin/env bash
# idle.sh [N] [R] [WINDOW] [RUNS]: N connected idle agents under R relays, at
# the default session timers (or $BENCH_TIMING). Once every agent is
# registered and the tree has settled (settled here: HQ counts every client
# online, i.e. the registration and presence events are drained, and then
# the CPU of HQ plus the relays stopped falling from one 10 s window to the
# next: the backlog of registration work, placements included, is done;
# $BENCH_IDLE_SETTLE_MAX s at most), CPU time (utime+stime, /proc/PID/stat)
# of HQ plus the relays over WINDOW seconds, RUNS windows back to back; the
# swarms' CPU is printed beside it (they stand in for other machines). Also
# counts sessions the relays saw end during the windows (their logs: "session
# ended" or "session closed"): an idle tree must lose none.
#   defaults: N=10000 R=2 WINDOW=60 RUNS=3 (issue 12: 100,000 idle agents cost
#   HQ plus relays under 10% of one core)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
WINDOW=${3:-60}
RUNS=${4:-3}

# Lines of the relays' logs that say a session ended.
ended() {
    local n=0 name
    for name in "${RELAY_NAMES[@]}"; do
        n=$((n + $(grep -cE "session (ended|closed)" "$TREE/log/$name.err" || true)))
    done
    echo "$n"
}

SETTLE_WINDOW=${BENCH_IDLE_SETTLE_WINDOW:-10}
IDLE_SETTLE_MAX=${BENCH_IDLE_SETTLE_MAX:-600}

# tree_online: clients HQ counts online (hq tree --json .online).
tree_online() {
    "$BIN/hq" tree --json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["online"])' 2>/dev/null || echo 0
}

# idle_settle: every client online at HQ, then HQ + relays' CPU over
# successive $SETTLE_WINDOW s windows no longer falling (within 15% of the
# window before, or under 1% of a core).
idle_settle() {
    local t0 on a b pct prev=""
    t0=$(date +%s)
    while :; do
        on=$(tree_online)
        ((on >= N)) && break
        (($(date +%s) - t0 > IDLE_SETTLE_MAX)) && die "only $on of $N clients online at HQ after ${IDLE_SETTLE_MAX} s"
        check_alive
        sleep 2
    done
    log "all $N clients online at HQ (waited $(($(date +%s) - t0)) s more)"
    while :; do
        a=$(cpu_ticks "$HQ_PID" "${RELAY_PIDS[@]}")
        sleep "$SETTLE_WINDOW"
        b=$(cpu_ticks "$HQ_PID" "${RELAY_PIDS[@]}")
        pct=$(awk -v a="$a" -v b="$b" -v k="$CLK_TCK" -v w="$SETTLE_WINDOW" 'BEGIN { printf "%.2f", (b - a) / k / w * 100 }')
        log "settling: HQ + relays ${pct}% of one core over ${SETTLE_WINDOW} s"
        if awk -v p="${prev:--1}" -v c="$pct" 'BEGIN { exit !(c < 1 || (p >= 0 && c >= p * 0.85)) }'; then
            break
        fi
        if (($(date +%s) - t0 > IDLE_SETTLE_MAX)); then
            log "still falling after ${IDLE_SETTLE_MAX} s; measuring anyway"
            break
        fi
        prev=$pct
    done
    log "settled (waited $(($(date +%s) - t0)) s more)"
}

bench_init
tree_start "$N" "$R"
idle_settle
tree_pcts=() swarm_pcts=()
lost0=$(ended)
for ((run = 1; run <= RUNS; run++)); do
    t0=$(now_ns)
    a=$(cpu_ticks "$HQ_PID" "${RELAY_PIDS[@]}")
    s=$(cpu_ticks "${SWARM_PIDS[@]}")
    sleep "$WINDOW"
    check_alive
    b=$(cpu_ticks "$HQ_PID" "${RELAY_PIDS[@]}")
    t=$(cpu_ticks "${SWARM_PIDS[@]}")
    t1=$(now_ns)
    tree_pct=$(awk -v a="$a" -v b="$b" -v k="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.2f", (b - a) / k / ((t1 - t0) / 1e9) * 100 }')
    swarm_pct=$(awk -v a="$s" -v b="$t" -v k="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
        'BEGIN { printf "%.2f", (b - a) / k / ((t1 - t0) / 1e9) * 100 }')
    log "window $run: HQ + relays ${tree_pct}% of one core, swarms ${swarm_pct}% over ${WINDOW} s"
    tree_pcts+=("$tree_pct")
    swarm_pcts+=("$swarm_pct")
done
lost=$(($(ended) - lost0))
$STATS summary "idle N=$N R=$R: HQ + relays CPU over ${WINDOW} s" "% of one core" "< 10% at 100000" "${tree_pcts[@]}"
$STATS summary "idle N=$N R=$R: swarms CPU over ${WINDOW} s (other machines' share)" "% of one core" "none" "${swarm_pcts[@]}"
echo "idle N=$N R=$R: $lost sessions ended at the relays during $((RUNS * WINDOW)) s idle (target 0)"
