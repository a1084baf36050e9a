#!/usr/bin/env bash
# ping.sh [N] [R] [RUNS]: a `--ping` job to N agents under R relays, RUNS times
# on one tree. Each run: wall time from just before `hq job create` starts to
# the moment `hq job wait` exits having seen the job done (every leaf final and
# stored at HQ, every relay's target set in); both CLI processes (start-up, TLS
# connection to HQ, HQ's answer) are inside the figure. Each run must end with
# N leaves, all succeeded. Also prints how long registration took (the
# swarms' start to HQ counting N clients, after a cold start of the tree).
#
# Per run it also prints the CPU seconds (utime+stime from /proc/PID/stat,
# read just before `job create` and just after `job wait`) of HQ, of the
# relays (sum) and of the swarms (sum), "tree µs per leaf" = (HQ + relays
# CPU) / N (issue 12: <= 50; the swarms stand in for other machines), and the
# relays' RSS (sum, MiB) after the job; the summary gives their medians.
#   defaults: N=10000 R=2 RUNS=5 (issue 4: <= 1 s; 100000 10: <= 10 s)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-5}

# cpu_s TICKS_BEFORE TICKS_AFTER: seconds (3 decimals).
cpu_s() { awk -v a="$1" -v b="$2" -v t="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / t }'; }

bench_init
tree_start "$N" "$R"
echo "registration N=$N R=$R: $REG_SECS s from the swarms' start to every client registered at HQ (target <= 60 s at 100000)"
times=() hq_cpu=() relay_cpu=() swarm_cpu=() per_leaf=() relay_rss=()
for ((run = 1; run <= RUNS; run++)); do
    h0=$(cpu_ticks "$HQ_PID") r0=$(cpu_ticks "${RELAY_PIDS[@]}") s0=$(cpu_ticks "${SWARM_PIDS[@]}")
    timed_job --ping
    h1=$(cpu_ticks "$HQ_PID") r1=$(cpu_ticks "${RELAY_PIDS[@]}") s1=$(cpu_ticks "${SWARM_PIDS[@]}")
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
    hc=$(cpu_s "$h0" "$h1") rc=$(cpu_s "$r0" "$r1") sc=$(cpu_s "$s0" "$s1")
    us=$(awk -v h="$hc" -v r="$rc" -v n="$N" 'BEGIN { printf "%.1f", (h + r) * 1e6 / n }')
    rss=0
    for pid in "${RELAY_PIDS[@]}"; do rss=$((rss + $(rss_kib "$pid"))); done
    mib=$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')
    log "run $run: job $JOB: $N leaves succeeded in $ELAPSED s"
    log "run $run: cpu hq $hc s, relays $rc s, swarms $sc s; tree $us µs per leaf; relays rss $mib MiB"
    times+=("$ELAPSED") hq_cpu+=("$hc") relay_cpu+=("$rc") swarm_cpu+=("$sc")
    per_leaf+=("$us") relay_rss+=("$mib")
    ((run < RUNS)) && settle
done
$STATS summary "ping N=$N R=$R" s "$(ping_target "$N")" "${times[@]}"
$STATS summary "ping N=$N R=$R cpu hq per job" s "none" "${hq_cpu[@]}"
$STATS summary "ping N=$N R=$R cpu relays per job" s "none" "${relay_cpu[@]}"
$STATS summary "ping N=$N R=$R cpu swarms per job" s "none; they stand in for other machines" "${swarm_cpu[@]}"
$STATS summary "ping N=$N R=$R tree µs per leaf" µs "<= 50" "${per_leaf[@]}"
$STATS summary "ping N=$N R=$R relays rss after a job" MiB "none" "${relay_rss[@]}"
