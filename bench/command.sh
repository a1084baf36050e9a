#!/usr/bin/env bash
# command.sh [N] [RUNS] [R]: the same as ping.sh with a real command (`true`,
# spawned by every agent: run log entry "started" flushed, fork+exec, wait,
# result), interleaved with `--ping` jobs on the same tree so that the ratio
# compares like with like. Prints both figures, their ratio, and the extra
# time per leaf that spawning costs.
#   defaults: N=1000 RUNS=5 R=2 (issue 4: report it, say by how much spawning dominates)
source "$(dirname "$0")/lib.sh"

N=${1:-1000}
RUNS=${2:-5}
R=${3:-2}

bench_init
tree_start "$N" "$R"
cmd_times=()
ping_times=()
for ((run = 1; run <= RUNS; run++)); do
    timed_job -- true
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "command job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
    log "run $run: job $JOB (true): $ELAPSED s"
    cmd_times+=("$ELAPSED")
    settle
    timed_job --ping
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N leaves succeeded"
    log "run $run: job $JOB (ping): $ELAPSED s"
    ping_times+=("$ELAPSED")
    ((run < RUNS)) && settle
done
$STATS summary "command (true) N=$N R=$R" s "report; compare with ping below" "${cmd_times[@]}"
$STATS summary "ping N=$N R=$R (same tree, interleaved)" s "$(ping_target "$N")" "${ping_times[@]}"
mc=$($STATS median "${cmd_times[@]}")
mp=$($STATS median "${ping_times[@]}")
awk -v c="$mc" -v p="$mp" -v n="$N" 'BEGIN {
    printf "command/ping N=%d: %.1fx (median %.3f s vs %.3f s); spawning adds %.2f ms per leaf (target: report it)\n",
        n, (p > 0 ? c / p : 0), c, p, (c - p) * 1000 / n }'
