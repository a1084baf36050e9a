#!/usr/bin/env bash
# ping.sh [N] [R] [RUNS]: a `--ping` job to N agents under R relays, RUNS times
# on one tree. Each run: wall time from just before `hq job create` starts to
# the moment `hq job wait` exits having seen the job done (every leaf final and
# stored at HQ, every relay's target set in); both CLI processes (start-up, TLS
# connection to HQ, HQ's answer) are inside the figure. Each run must end with
# N leaves, all succeeded. Also prints how long registration took (the
# swarms' start to HQ counting N clients, after a cold start of the tree).
#   defaults: N=10000 R=2 RUNS=5 (issue 4: <= 1 s; 100000 10: <= 10 s)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-5}

bench_init
tree_start "$N" "$R"
echo "registration N=$N R=$R: $REG_SECS s from the swarms' start to every client registered at HQ (target <= 60 s at 100000)"
times=()
for ((run = 1; run <= RUNS; run++)); do
    timed_job --ping
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N leaves succeeded ($f failed, $to timed out)"
    log "run $run: job $JOB: $N leaves succeeded in $ELAPSED s"
    times+=("$ELAPSED")
    ((run < RUNS)) && settle
done
$STATS summary "ping N=$N R=$R" s "$(ping_target "$N")" "${times[@]}"
