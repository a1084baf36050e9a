#!/usr/bin/env bash
# memory.sh [N]: one relay under HQ.
#  - relay: VmRSS (/proc/PID/status) once it is connected to HQ and settled,
#    with no agent; again once N agents (swarm processes) are registered and the
#    tree has settled; again after one --ping job to all of them. KiB per
#    session = (RSS with sessions - RSS without) / N.
#  - idle agent: one `agent serve` (its own identity) under the same relay:
#    VmRSS 10 s after it started, then its CPU time (utime+stime of all its
#    threads, /proc/PID/stat) and context switches (voluntary+involuntary,
#    summed over /proc/PID/task/*/status) over the following 10 s.
#   default: N=10000 (issue 4: <= 32 KiB per session; idle agent < 10 MiB, no CPU)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
IDLE_WAIT=${BENCH_IDLE_WAIT:-10}
IDLE_WINDOW=${BENCH_IDLE_WINDOW:-10}

ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

bench_init
ids_prepare "$N" 1
tree_new
servers_start 1
RELAY=${RELAY_PIDS[0]}
settle
sleep 1
before=$(rss_kib "$RELAY")
log "relay RSS with no agent: $before KiB"

swarms_start "$N"
wait_clients "$N"
settle
with=$(rss_kib "$RELAY")
log "relay RSS with $N sessions: $with KiB"
swarm_kib=0
for pid in "${SWARM_PIDS[@]}"; do swarm_kib=$((swarm_kib + $(rss_kib "$pid"))); done
log "swarm RSS: $((swarm_kib / 1024)) MiB for $N agents ($((swarm_kib / N)) KiB per agent; sizing only, no target)"

timed_job --ping
read -r s f to < <(check_job "$JOB" "$N")
((s == N)) || die "ping job $JOB: only $s of $N succeeded"
log "ping job $JOB to $N agents: $ELAPSED s"
settle
after=$(rss_kib "$RELAY")
log "relay RSS after one ping job: $after KiB"

# The idle agent.
t_start=$(date +%s%N)
start_bg idle "$BIN/agent" serve --identity "$IDS/idle" --data-dir "$TREE/idle" --relay "${RELAY_ADDRS[0]}"
AGENT=$LAST_PID
wait_clients $((N + 1))
remaining=$(awk -v a="$t_start" -v b="$(date +%s%N)" -v w="$IDLE_WAIT" 'BEGIN { r = w - (b - a) / 1e9; print (r > 0 ? r : 0) }')
sleep "$remaining"
check_alive
agent_rss=$(rss_kib "$AGENT")
c0=$(cpu_ticks "$AGENT")
x0=$(ctx_switches "$AGENT")
sleep "$IDLE_WINDOW"
c1=$(cpu_ticks "$AGENT")
x1=$(ctx_switches "$AGENT")
cpu_ms=$(((c1 - c0) * 1000 / CLK_TCK))
threads=$(ls /proc/"$AGENT"/task | wc -l)

awk -v b="$before" -v w="$with" -v n="$N" 'BEGIN {
    printf "relay memory N=%d: %.1f KiB per session (RSS %.1f MiB with no agent, %.1f MiB with %d sessions) (target <= 32 KiB)\n",
        n, (w - b) / n, b / 1024, w / 1024, n }'
awk -v b="$before" -v w="$after" -v n="$N" 'BEGIN {
    printf "relay memory N=%d after one ping job: %.1f KiB per session (RSS %.1f MiB) (target <= 32 KiB)\n",
        n, (w - b) / n, w / 1024 }'
echo "idle agent RSS: $(mib "$agent_rss") MiB ${IDLE_WAIT} s after start, $threads threads (target < 10 MiB)"
echo "idle agent CPU: ${cpu_ms} ms over ${IDLE_WINDOW} s idle (CPU-time resolution $((1000 / CLK_TCK)) ms), $((x1 - x0)) context switches (target: no CPU)"
