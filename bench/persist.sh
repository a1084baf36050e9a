#!/usr/bin/env bash
# persist.sh [N] [RUNS]: leaf updates a relay persists durably, seen from
# outside: one relay under HQ, N agents (swarms) under it, RUNS --ping jobs.
# Per leaf the relay writes 2 leaf updates (pending when it snapshots its
# clients, succeeded when the agent reports it; a ping finished on receipt is
# not acknowledged separately, so there is no `delivered`; the agent's report
# is acknowledged only after the relay's group commit) and forwards them
# through its outbox. (Until 2026-12-01 this script counted 3 per leaf, so
# its earlier figures are 1.5x what the relay wrote.)
# For each job a sampler reads the relay's /proc/PID/stat and /proc/PID/io
# every 20 ms. Three figures:
#  - end to end: 2N / (job create -> done at HQ). A lower bound: the relay
#    shares 2 cores with HQ and the swarms, and waits for them.
#  - relay active window: 2N / (first to last 20 ms sample in which the relay
#    used CPU); still paced by the agents.
#  - per relay CPU-second: 2N / relay CPU time during the job: what the relay
#    could do with one core to itself if the disk kept up (indicative).
# N per relay is bounded by the relay's open-file limit (here the hard limit,
# 20,000, unless the process may raise it) and by the ephemeral ports from
# 127.0.0.1 to one HOST:PORT (32768-60999: ~28,000); lib.sh checks both.
#   defaults: N=18000 RUNS=5 (issue 4: >= 100,000 leaf updates/s, durably)
#
# persist.sh store [UPDATES] [RUNS] [SENDERS] [BATCH]: what fsync costs in the
# store path alone (examples/persist.rs, no network, no other process): the
# same leaf-update writes acknowledged after Store::durable, which fsyncs
# after sled's flush (what nodes do), and with --no-fsync (sled's flush only,
# which ends in sync_file_range: survives a crash, not a power cut). RUNS
# interleaved pairs, each in a fresh directory under BENCH_TMP (a real disk,
# or the figures mean nothing); medians and their ratio. Two loads: SENDERS
# concurrent senders of BATCH updates per durable() (group commit: one fsync
# covers many updates), then one sender, one update per durable() (one fsync
# per update: the latency floor).
#   defaults: UPDATES=200000 RUNS=5 SENDERS=1000 BATCH=8
#   needs: cargo build --release --example persist
source "$(dirname "$0")/lib.sh"

# store_runs LABEL UPDATES SENDERS BATCH RUNS: interleaved pairs; prints the figures.
store_runs() {
    local label=$1 updates=$2 senders=$3 batch=$4 runs=$5 run mode dir out v
    local exe=$BIN/examples/persist synced=() unsynced=()
    [[ -x $exe ]] || die "no $exe: run 'cargo build --release --example persist' first"
    for ((run = 1; run <= runs; run++)); do
        for mode in fsync no-fsync; do
            dir=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/relaytree-persist.XXXXXX")
            if [[ $mode == fsync ]]; then
                out=$("$exe" "$updates" "$senders" "$batch" "$dir")
            else
                out=$("$exe" --no-fsync "$updates" "$senders" "$batch" "$dir")
            fi
            rm -rf "$dir"
            v=$(sed -n 's/.* = \([0-9.]*\) updates\/s$/\1/p' <<<"$out")
            [[ -n $v ]] || die "unexpected output: $out"
            log "run $run $mode: $out"
            if [[ $mode == fsync ]]; then synced+=("$v"); else unsynced+=("$v"); fi
        done
    done
    $STATS summary "store path $label with fsync" "updates/s" "report" "${synced[@]}"
    $STATS summary "store path $label without fsync" "updates/s" "report" "${unsynced[@]}"
    local a b
    a=$($STATS median "${synced[@]}")
    b=$($STATS median "${unsynced[@]}")
    echo "store path $label: fsync keeps $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }') of the rate without (median $a / $b updates/s)"
}

if [[ ${1:-} == store ]]; then
    UPDATES=${2:-200000}
    RUNS=${3:-5}
    SENDERS=${4:-1000}
    BATCH=${5:-8}
    store_runs "$SENDERS senders x $BATCH per flush" "$UPDATES" "$SENDERS" "$BATCH" "$RUNS"
    # One update per flush: far fewer updates, the same number of runs.
    store_runs "1 sender x 1 per flush" $((UPDATES / 50 > 0 ? UPDATES / 50 : 1)) 1 1 "$RUNS"
    exit 0
fi

N=${1:-18000}
RUNS=${2:-5}
PER_LEAF=2

bench_init
tree_start "$N" 1
RELAY=${RELAY_PIDS[0]}
e2e=() active=() percpu=() notes=()
for ((run = 1; run <= RUNS; run++)); do
    samples=$TREE/log/relay-samples-$run
    python3 "$BENCH_DIR/sample.py" record "$RELAY" "$samples" 20 &
    SAMPLER=$!
    PIDS+=("$SAMPLER")
    PID_NAMES[$SAMPLER]=sampler
    sleep 0.2
    timed_job --ping
    sleep 0.1
    kill -TERM "$SAMPLER"
    wait "$SAMPLER" || true
    unset 'PIDS[-1]'
    read -r s f to < <(check_job "$JOB" "$N")
    ((s == N)) || die "ping job $JOB: only $s of $N succeeded"
    read -r cpu act wbytes syscw < <(python3 "$BENCH_DIR/sample.py" window "$samples" "$JOB_T0" "$JOB_T1")
    u=$((PER_LEAF * N))
    e2e+=("$(awk -v u="$u" -v t="$ELAPSED" 'BEGIN { print u / t }')")
    active+=("$(awk -v u="$u" -v t="$act" 'BEGIN { print (t > 0 ? u / t : 0) }')")
    percpu+=("$(awk -v u="$u" -v t="$cpu" 'BEGIN { print (t > 0 ? u / t : 0) }')")
    log "run $run: job $JOB: $ELAPSED s to done at HQ; relay active $act s, CPU $cpu s, wrote $wbytes bytes in $syscw write calls"
    notes+=("$(awk -v c="$cpu" -v t="$ELAPSED" -v b="$wbytes" -v u="$u" 'BEGIN { printf "%.0f%% %.0f", 100 * c / t, b / u }')")
    ((run < RUNS)) && settle
done
$STATS summary "relay persist N=$N end to end ($PER_LEAF updates per leaf, job create -> done at HQ; lower bound)" "updates/s" ">= 100000 updates/s" "${e2e[@]}"
$STATS summary "relay persist N=$N relay active window" "updates/s" ">= 100000 updates/s" "${active[@]}"
$STATS summary "relay persist N=$N per relay CPU-second (indicative)" "updates/s" ">= 100000 updates/s" "${percpu[@]}"
log "per run: relay CPU share of the job's wall time, and bytes written to storage per update: ${notes[*]}"
