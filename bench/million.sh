#!/usr/bin/env bash
# million.sh [SIZE...]: HQ's cost per job as the tree grows to a million
# clients (issue 14, point 5). Default sizes: 10000 100000 1000000.
#
# Each size gets a fresh tree of the same shape:
#   HQ -> $MILLION_TOP real relays (top-NNNNN)
#      -> $MILLION_MID real relays under each (mid-NNNNN; 0: none)
#      -> $MILLION_SIMS simulated relays under each lowest real relay
#         (sim-NNNNN, all in one `examples/simtier` process), each holding
#         SIZE / (TOP * MID * SIMS) virtual clients.
# HQ and every relay are the real binaries (TLS, sled, fan-out, rollup);
# only the bottom tier (home relays and their agents) is simulated: each
# simulated relay registers its clients and answers every leaf it is given
# with one `succeeded`, as a home relay does for a ping. See
# examples/simtier.rs for what it leaves out.
#
# Per size: registration (time, HQ CPU), then $MILLION_RUNS ping jobs to
# every client (`--dest all-lower-clients --relay top-...`), each checked to
# end with SIZE leaves, all succeeded. For each job: wall time (job create
# to job wait done), HQ's CPU time (utime+stime from /proc), HQ's RSS after
# it and its growth, HQ's store growth on disk (du of HQ_DATA/db), the CPU of
# the real relays and of the simulator, and the load average. The last line
# per size is a summary (medians over the runs).
#
# Environment (besides bench/lib.sh's):
#   MILLION_TOP=10 MILLION_MID=10 MILLION_SIMS=1  the shape
#   MILLION_RUNS=3      ping jobs per size
#   MILLION_PERF=1      also `perf record --call-graph dwarf` HQ during one more job of each
#                       size; the report goes to $MILLION_OUT/perf-SIZE.txt
#   MILLION_OUT=DIR     where results go (default: bench-million-<date> under
#                       $BENCH_TMP or /tmp); results.tsv has one row per job
#   SIMTIER=PATH        the simulator (default: $RELAYTREE_BIN/examples/simtier)
#
# Build first: CARGO_INCREMENTAL=1 cargo build --release --bins --examples
source "$(dirname "$0")/lib.sh"

TOP=${MILLION_TOP:-10}
MID=${MILLION_MID:-10}
SIMS=${MILLION_SIMS:-1}
RUNS=${MILLION_RUNS:-3}
SIMTIER=${SIMTIER:-$BIN/examples/simtier}
[[ -x $SIMTIER ]] || SIMTIER=$BENCH_ROOT/target/release/examples/simtier

# ---------------------------------------------------------------------------
# One size, in a process of its own (its tree is stopped and removed at exit).
if [[ ${1:-} == --one ]]; then
    SIZE=$2
    OUT=$3
    bench_init
    [[ -x $SIMTIER ]] || die "no simulator at $SIMTIER: cargo build --release --examples"
    ((MID > 0)) && lowest=$((TOP * MID)) || lowest=$TOP
    nsims=$((lowest * SIMS))
    ((SIZE % nsims == 0)) || die "SIZE $SIZE does not divide among $nsims simulated relays"
    per=$((SIZE / nsims))

    # Identities: the cached CA (any complete set), and relays of this shape.
    ids_prepare 1 0
    RIDS=$IDS/million
    issue_relays() { # PREFIX COUNT
        local d=$RIDS/$1-$2
        if [[ ! -f $d.ready ]]; then
            rm -rf "$d"
            mkdir -p "$RIDS"
            "$BIN/hq" cert issue --data-dir "$IDS/hq" --role relay --name "$1" \
                --count "$2" --out "$d" >/dev/null
            touch "$d.ready"
        fi
        echo "$d"
    }
    TOPD=$(issue_relays top "$TOP")
    ((MID > 0)) && MIDD=$(issue_relays mid "$lowest")
    SIMD=$(issue_relays sim "$nsims")

    tree_new
    start_bg hq "$BIN/hq" serve --data-dir "$TREE/hq" --listen 127.0.0.1:0 ${HQ_TIMING[@]+"${HQ_TIMING[@]}"}
    HQ_PID=$LAST_PID
    HQ_ADDR=$(wait_addr "$TREE/hq" "$HQ_PID" hq)
    REAL_PIDS=()
    start_relay() { # NAME IDENTITY_DIR PARENT_ADDR -> its address in ADDR
        start_bg "$1" "$BIN/relay" serve --identity "$2" --data-dir "$TREE/$1" \
            --listen 127.0.0.1:0 --parent "$3" ${TIMING[@]+"${TIMING[@]}"}
        REAL_PIDS+=("$LAST_PID")
        ADDR=$(wait_addr "$TREE/$1" "$LAST_PID" "$1")
    }
    TOP_ADDRS=() LOW_ADDRS=()
    for ((i = 1; i <= TOP; i++)); do
        name=$(printf 'top-%05d' "$i")
        start_relay "$name" "$TOPD/$name" "$HQ_ADDR"
        TOP_ADDRS+=("$ADDR")
        RELAY_NAMES+=("$name")
        RELAY_FLAGS+=(--relay "$name")
    done
    if ((MID > 0)); then
        for ((i = 1; i <= lowest; i++)); do
            name=$(printf 'mid-%05d' "$i")
            start_relay "$name" "$MIDD/$name" "${TOP_ADDRS[(i - 1) / MID]}"
            LOW_ADDRS+=("$ADDR")
        done
    else
        LOW_ADDRS=("${TOP_ADDRS[@]}")
    fi
    specs=()
    for ((i = 1; i <= nsims; i++)); do
        name=$(printf 'sim-%05d' "$i")
        specs+=("$SIMD/$name=${LOW_ADDRS[(i - 1) / SIMS]}")
    done
    start_bg simtier "$SIMTIER" --clients "$per" "${specs[@]}"
    SIM_PID=$LAST_PID
    # The relays under HQ; the rest shows in the clients HQ counts (`hq tree`
    # polled while a million joins arrive is slow, and a busy relay's
    # RelayJoined waits behind its backlog).
    wait_relays
    log "HQ pid $HQ_PID; ${#REAL_PIDS[@]} real relays ($TOP under HQ), $nsims simulated with $per clients each"

    t0=$(now_ns)
    c0=$(cpu_ticks "$HQ_PID")
    wait_clients "$SIZE"
    settle
    reg_s=$(secs "$t0" "$(now_ns)")
    reg_cpu=$(($(cpu_ticks "$HQ_PID") - c0))
    rss_reg=$(rss_kib "$HQ_PID")
    db_reg=$(du -sb "$TREE/hq/db" | cut -f1)
    log "registered $SIZE clients in $reg_s s (to quiet); HQ CPU $(awk -v t="$reg_cpu" -v k="$CLK_TCK" 'BEGIN { printf "%.2f", t / k }') s, RSS $rss_reg KiB, store $db_reg B"
    printf 'registration\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SIZE" "$reg_s" "$reg_cpu" "$CLK_TCK" "$rss_reg" "$db_reg" >>"$OUT/registration.tsv"

    runs=$RUNS
    [[ ${MILLION_PERF:-0} == 1 ]] && runs=$((RUNS + 1))
    for ((run = 1; run <= runs; run++)); do
        perf_pid=""
        if ((run > RUNS)); then
            perf record --call-graph dwarf,8192 -F 99 -p "$HQ_PID" -o "$OUT/perf-$SIZE.data" >/dev/null 2>"$OUT/perf-$SIZE.err" &
            perf_pid=$!
            sleep 1
        fi
        rss0=$(rss_kib "$HQ_PID")
        db0=$(du -sb "$TREE/hq/db" | cut -f1)
        h0=$(cpu_ticks "$HQ_PID")
        r0=$(cpu_ticks "${REAL_PIDS[@]}")
        s0=$(cpu_ticks "$SIM_PID")
        timed_job --ping
        h1=$(cpu_ticks "$HQ_PID")
        r1=$(cpu_ticks "${REAL_PIDS[@]}")
        s1=$(cpu_ticks "$SIM_PID")
        load=$(cut -d' ' -f1 /proc/loadavg)
        rss1=$(rss_kib "$HQ_PID")
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$HQ_PID/status")
        db1=$(du -sb "$TREE/hq/db" | cut -f1)
        if [[ -n $perf_pid ]]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            perf report -i "$OUT/perf-$SIZE.data" --stdio --no-children --percent-limit 1.5 \
                >"$OUT/perf-$SIZE.txt" 2>/dev/null || true
            perf report -i "$OUT/perf-$SIZE.data" --stdio --children --percent-limit 3 -g none \
                >"$OUT/perf-$SIZE-children.txt" 2>/dev/null || true
            rm -f "$OUT/perf-$SIZE.data"
        fi
        read -r s f to < <(check_job "$JOB" "$SIZE")
        ((s == SIZE)) || die "ping job $JOB: only $s of $SIZE leaves succeeded ($f failed, $to timed out)"
        tag=run
        [[ -n $perf_pid ]] && tag=perf
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$tag" "$SIZE" "$nsims" "${#REAL_PIDS[@]}" "$ELAPSED" "$((h1 - h0))" "$CLK_TCK" \
            "$rss0" "$rss1" "$hwm" "$db0" "$db1" "$((r1 - r0))" "$((s1 - s0))" "$load" >>"$OUT/results.tsv"
        log "run $run: job $JOB: $SIZE leaves succeeded in $ELAPSED s; HQ CPU $(((h1 - h0) * 1000 / CLK_TCK)) ms, RSS $rss0 -> $rss1 KiB (peak $hwm), store $db0 -> $db1 B; load $load"
        ((run < runs)) && settle
    done
    exit 0
fi

# ---------------------------------------------------------------------------
# Every size asked for, one after the other, then the table.
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(10000 100000 1000000)
OUT=${MILLION_OUT:-${BENCH_TMP:-/tmp}/bench-million-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
log "results in $OUT; shape: $TOP top x ${MID} mid x $SIMS simulated relays; $RUNS run(s) per size"
for size in "${SIZES[@]}"; do
    bash "$0" --one "$size" "$OUT" || die "size $size failed (exit $?)"
done
python3 - "$OUT" <<'EOF'
import os, statistics, sys
out = sys.argv[1]
reg = {}
if os.path.exists(os.path.join(out, "registration.tsv")):
    for line in open(os.path.join(out, "registration.tsv")):
        _, size, secs, ticks, tck, rss, db = line.split("\t")
        reg[int(size)] = (float(secs), int(ticks) / int(tck), int(rss), int(db))
rows = {}
for line in open(os.path.join(out, "results.tsv")):
    f = line.rstrip("\n").split("\t")
    if f[0] != "run":
        continue
    size = int(f[1])
    rows.setdefault(size, []).append(dict(
        sims=int(f[2]), real=int(f[3]), wall=float(f[4]), cpu=int(f[5]) / int(f[6]),
        rss0=int(f[7]), rss1=int(f[8]), hwm=int(f[9]), db0=int(f[10]), db1=int(f[11]),
        relays_cpu=int(f[12]) / int(f[6]), sim_cpu=int(f[13]) / int(f[6]), load=float(f[14])))
print("| clients | relays (real + simulated) | HQ CPU per job | HQ CPU per client | HQ RSS after job (peak) | HQ RSS growth per job | HQ store growth per job | wall time | real relays' CPU | registration (HQ CPU) | load |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for size in sorted(rows):
    r = rows[size]
    med = lambda k: statistics.median(x[k] for x in r)
    cpu = med("cpu")
    grow = statistics.median(x["rss1"] - x["rss0"] for x in r)
    db = statistics.median(x["db1"] - x["db0"] for x in r)
    g = reg.get(size)
    regs = f"{g[0]:.0f} s ({g[1]:.1f} s)" if g else "-"
    print(f"| {size:,} | {r[0]['real']} + {r[0]['sims']} | {cpu:.2f} s | {cpu / size * 1e6:.1f} µs "
          f"| {med('rss1') / 1024:.0f} MiB ({max(x['hwm'] for x in r) / 1024:.0f}) "
          f"| {grow / 1024:.0f} MiB ({grow * 1024 / size:.0f} B/client) "
          f"| {db / 1e6:.1f} MB ({db / size:.0f} B/client) | {med('wall'):.2f} s "
          f"| {med('relays_cpu'):.1f} s | {regs} | {min(x['load'] for x in r):.1f}-{max(x['load'] for x in r):.1f} |")
EOF
