# bench/lib.sh: shared helpers for the bench scripts. Source it; do not run it.
#
# A tree is HQ, R relays r01..rRR directly under HQ, and `agent swarm`
# processes: relay i is home of N/R agents, split into swarms of at most
# $BENCH_SWARM_SIZE agents (one process, one sled store each). Everything
# listens on 127.0.0.1 with port 0, in a fresh temporary directory, and is
# stopped (TERM, then KILL after 10 s) when the script exits for any reason.
#
# Identities are issued once per N and kept under $RELAYTREE_BENCH_CACHE/nN
# (its own CA, hq/ and admin/, relays/rNN, agents/aKKK/aKKK-00001..., idle/),
# so repeated runs do not issue again; a run for N uses the smallest complete
# set holding at least N agents (its first N), so 100,000 serves every size. Each tree copies the cached hq/ (no
# database in it) and starts HQ empty.
#
# Environment (all optional):
#   RELAYTREE_BIN          binaries (default: <repo>/target/release)
#   RELAYTREE_BENCH_CACHE  identity cache (default: ${TMPDIR:-/tmp}/relaytree-bench-cache)
#   BENCH_TMP              where trees are made (default: ${TMPDIR:-/tmp}); must be
#                          a real disk for the durability figures to mean anything
#   BENCH_SWARM_SIZE       agents per swarm process at most (default 5000)
#   BENCH_ISSUE_CHUNK      identities per `hq cert issue --count` (default 5000)
#   BENCH_ISSUE_JOBS       issuing processes in parallel (default 2)
#   BENCH_CONNECT_TIMEOUT  seconds to wait for all N agents (default 60 + N/200)
#   BENCH_WAIT_TIMEOUT     `hq job wait --timeout` per job (default 10m)
#   BENCH_SETTLE_PCT       a tree is settled when its processes use less than this
#                          % of one core over 1 s (default 10)
#   BENCH_SETTLE_MAX       seconds to wait for that at most (default 30)
#   BENCH_KEEP=1           keep the tree's directory (logs, databases) at exit;
#                          it is always kept after a failure (exit 2)
#   BENCH_TIMING           extra session-timer flags for relays and swarms, e.g.
#                          "--heartbeat 30s --idle-timeout 120s" (100,000 agents)
#   BENCH_HQ_TIMING        the same for HQ, e.g. "--idle-timeout 120s" (keep HQ's
#                          heartbeat short: admin commands wait 20 s at most)
#   RUST_LOG               passed to every process (their default is info)

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_ROOT=$(cd "$BENCH_DIR/.." && pwd)
BIN=${RELAYTREE_BIN:-$BENCH_ROOT/target/release}
CACHE_ROOT=${RELAYTREE_BENCH_CACHE:-${TMPDIR:-/tmp}/relaytree-bench-cache}
SWARM_SIZE=${BENCH_SWARM_SIZE:-5000}
ISSUE_CHUNK=${BENCH_ISSUE_CHUNK:-5000}
ISSUE_JOBS=${BENCH_ISSUE_JOBS:-2}
WAIT_TIMEOUT=${BENCH_WAIT_TIMEOUT:-10m}
SETTLE_PCT=${BENCH_SETTLE_PCT:-10}
SETTLE_MAX=${BENCH_SETTLE_MAX:-30}
CLK_TCK=$(getconf CLK_TCK)
STATS="python3 $BENCH_DIR/stats.py"
read -r -a TIMING <<<"${BENCH_TIMING:-}"
read -r -a HQ_TIMING <<<"${BENCH_HQ_TIMING:-}"

TREE=""            # this tree's directory
IDS=""             # identity cache of this N
HQ_PID=""          # HQ's pid
HQ_ADDR=""
RELAY_NAMES=()     # r01 ...
RELAY_ADDRS=()
RELAY_PIDS=()
SWARM_PIDS=()
PIDS=()            # every process started, in order
SWARM_ROOTS=()     # swarms_start: one --root per group of agents (none: no groups)
declare -A PID_NAMES=() # pid -> name of its logs
RELAY_FLAGS=()     # --relay r01 --relay r02 ...

log() { printf '# %s\n' "$*" >&2; }
die() {
    printf 'bench: %s\n' "$*" >&2
    exit 2
}
now_ns() { date +%s%N; }
# Seconds (3 decimals) between two now_ns readings.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

# The figure for N agents: the issue's targets exist for 10,000 and 100,000.
ping_target() {
    case "$1" in
    10000) echo "<= 1 s" ;;
    100000) echo "<= 10 s" ;;
    *) echo "none at this N; 1 s at 10000, 10 s at 100000" ;;
    esac
}

# ---------------------------------------------------------------------------
# Limits, clean-up

raise_nofile() {
    # Root may go past the hard limit; others get the hard limit.
    ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    log "open files: $(ulimit -n)"
}

stop_pids() {
    local pids=("$@") pid i
    ((${#pids[@]})) || return 0
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid still running after 10 s: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    PIDS=()
    if [[ -n $TREE && -d $TREE ]]; then
        # Kept on request, or after a failure (exit 2) for its logs; not when interrupted.
        if [[ ${BENCH_KEEP:-0} == 1 || $rc -eq 2 ]]; then
            log "tree kept in $TREE (logs in $TREE/log)"
        else
            rm -rf "$TREE"
        fi
    fi
    exit "$rc"
}

bench_init() {
    [[ -x $BIN/hq && -x $BIN/relay && -x $BIN/agent ]] ||
        die "no binaries in $BIN: run 'cargo build --release' first (or set RELAYTREE_BIN)"
    command -v python3 >/dev/null || die "python3 is needed"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    raise_nofile
}

# ---------------------------------------------------------------------------
# Identities (cached per N)

# ids_prepare N RELAYS: CA, relays r01..rRR, N agents, one spare agent "idle".
ids_prepare() {
    local n=$1 r=$2 i d m best=""
    # Reuse the smallest complete set that holds at least N agents.
    for d in "$CACHE_ROOT"/n*; do
        [[ -f $d/.complete ]] || continue
        m=${d##*/n}
        [[ $m =~ ^[0-9]+$ ]] || continue
        if ((m >= n)) && { [[ -z $best ]] || ((m < ${best##*/n})); }; then
            best=$d
        fi
    done
    IDS=${best:-$CACHE_ROOT/n$n}
    mkdir -p "$IDS/relays" "$IDS/agents"
    if [[ ! -f $IDS/hq/.ready ]]; then
        rm -rf "$IDS/hq" "$IDS/relays" "$IDS/agents" "$IDS/idle"
        mkdir -p "$IDS/relays" "$IDS/agents"
        "$BIN/hq" init --data-dir "$IDS/hq" >/dev/null
        touch "$IDS/hq/.ready"
    fi
    for ((i = 1; i <= r; i++)); do
        local name
        name=$(printf 'r%02d' "$i")
        if [[ ! -f $IDS/relays/$name/.ready ]]; then
            rm -rf "$IDS/relays/$name"
            "$BIN/hq" cert issue --data-dir "$IDS/hq" --role relay --name "$name" \
                --out "$IDS/relays/$name" >/dev/null
            touch "$IDS/relays/$name/.ready"
        fi
    done
    if [[ ! -f $IDS/idle/.ready ]]; then
        rm -rf "$IDS/idle"
        "$BIN/hq" cert issue --data-dir "$IDS/hq" --role agent --name idle \
            --out "$IDS/idle" >/dev/null
        touch "$IDS/idle/.ready"
    fi
    # Agents, in chunks aKKK of $ISSUE_CHUNK (names aKKK-00001 ...), a few in parallel.
    local chunks=$(((n + ISSUE_CHUNK - 1) / ISSUE_CHUNK)) k missing=0 t0
    for ((k = 0; k < chunks; k++)); do
        [[ -f $IDS/agents/$(printf 'a%03d' "$k").ready ]] || missing=$((missing + 1))
    done
    if ((missing)); then
        log "issuing agent identities for N=$n under $IDS ($missing chunk(s) of <= $ISSUE_CHUNK; once)"
        t0=$(now_ns)
        for ((k = 0; k < chunks; k++)); do
            local c size
            c=$(printf 'a%03d' "$k")
            [[ -f $IDS/agents/$c.ready ]] && continue
            size=$((n - k * ISSUE_CHUNK))
            ((size > ISSUE_CHUNK)) && size=$ISSUE_CHUNK
            while (($(jobs -rp | wc -l) >= ISSUE_JOBS)); do
                wait -n || die "hq cert issue failed"
            done
            (
                rm -rf "$IDS/agents/$c"
                nice "$BIN/hq" cert issue --data-dir "$IDS/hq" --role agent --name "$c" \
                    --count "$size" --out "$IDS/agents/$c" >/dev/null
                touch "$IDS/agents/$c.ready"
            ) &
        done
        while (($(jobs -rp | wc -l) > 0)); do
            wait -n || die "hq cert issue failed"
        done
        log "issued in $(secs "$t0" "$(now_ns)") s"
    fi
    touch "$IDS/.complete"
}

# ---------------------------------------------------------------------------
# Processes

# start_bg NAME CMD...: runs CMD in the background, logs in $TREE/log/NAME.{out,err}.
start_bg() {
    local name=$1
    shift
    "$@" >"$TREE/log/$name.out" 2>"$TREE/log/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    PID_NAMES[$LAST_PID]=$name
}

# wait_addr DATA_DIR PID NAME: the HOST:PORT the server announced in DATA_DIR/listen.addr.
wait_addr() {
    local dir=$1 pid=$2 name=$3 i
    for ((i = 0; i < 600; i++)); do
        if [[ -s $dir/listen.addr ]]; then
            cat "$dir/listen.addr"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -5 "$TREE/log/$name.err" >&2; die "$name exited"; }
        sleep 0.05
    done
    die "$name did not announce its address within 30 s"
}

check_alive() {
    local pid
    for pid in "${PIDS[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            local name=${PID_NAMES[$pid]:-?}
            log "$name (pid $pid) exited early; last lines of $TREE/log/$name.err:"
            tail -5 "$TREE/log/$name.err" >&2 || true
            die "a process of the tree exited early"
        fi
    done
}

# tree_new: a fresh directory for one tree, with HQ's identities copied in.
tree_new() {
    TREE=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/relaytree-bench.XXXXXX")
    mkdir -p "$TREE/log"
    cp -a "$IDS/hq" "$TREE/hq"
    export RELAYTREE_DATA_DIR=$TREE/hq # admin commands: HQ's address and admin identity
    unset RELAYTREE_HQ RELAYTREE_IDENTITY
    log "tree in $TREE ($(df -T "$TREE" | awk 'NR == 2 { print $2 }') on $(df "$TREE" | awk 'NR == 2 { print $1 }'))"
}

# servers_start R: HQ and R relays under it.
servers_start() {
    local r=$1 i
    start_bg hq "$BIN/hq" serve --data-dir "$TREE/hq" --listen 127.0.0.1:0 ${HQ_TIMING[@]+"${HQ_TIMING[@]}"}
    HQ_PID=$LAST_PID
    HQ_ADDR=$(wait_addr "$TREE/hq" "$HQ_PID" hq)
    RELAY_NAMES=() RELAY_ADDRS=() RELAY_PIDS=() RELAY_FLAGS=()
    for ((i = 1; i <= r; i++)); do
        local name
        name=$(printf 'r%02d' "$i")
        start_bg "$name" "$BIN/relay" serve --identity "$IDS/relays/$name" \
            --data-dir "$TREE/$name" --listen 127.0.0.1:0 --parent "$HQ_ADDR" ${TIMING[@]+"${TIMING[@]}"}
        RELAY_PIDS+=("$LAST_PID")
        RELAY_NAMES+=("$name")
        RELAY_ADDRS+=("$(wait_addr "$TREE/$name" "$LAST_PID" "$name")")
        RELAY_FLAGS+=(--relay "$name")
    done
    wait_relays
    log "HQ on $HQ_ADDR (pid $HQ_PID); relays ${RELAY_NAMES[*]} on ${RELAY_ADDRS[*]}"
}

# wait_relays: until HQ shows every relay connected.
wait_relays() {
    local i out
    for ((i = 0; i < 300; i++)); do
        out=$("$BIN/hq" tree --json 2>/dev/null) || out=""
        if [[ -n $out ]] && python3 -c '
import json, sys
t = json.loads(sys.argv[1]); want = set(sys.argv[2:])
up = {r["relay"] for r in t["relays"] if r["connected"]}
sys.exit(0 if want <= up else 1)' "$out" "${RELAY_NAMES[@]}"; then
            return 0
        fi
        check_alive
        sleep 0.1
    done
    die "relays not connected to HQ within 30 s"
}

# swarms_start N [SWARM ARGS...]: relay i gets agents [i*N/R, (i+1)*N/R), in
# swarms of at most $SWARM_SIZE, each with a directory of symlinks to its identities.
# With SWARM_ROOTS=(DIR0 DIR1 ...) set, each relay's agents are split into as
# many groups, group g's swarms running with --root DIRg.
swarms_start() {
    local n=$1
    shift
    local r=${#RELAY_NAMES[@]} line per
    per=$(((n + r - 1) / r))
    # A relay holds one socket per agent; it can raise its own limit no
    # further than the hard limit unless it may (root with CAP_SYS_RESOURCE).
    if ((per > $(ulimit -n) - 200)); then
        die "$per agents per relay, but open files are limited to $(ulimit -n) here (ulimit -Hn $(ulimit -Hn)): use more relays or fewer agents"
    fi
    if ((per > 28000)); then
        die "$per agents per relay: more than the ephemeral ports from 127.0.0.1 to one HOST:PORT ($(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr '\t' -)); use more relays"
    fi
    SWARM_PIDS=()
    mkdir -p "$TREE/ids"
    # Prints "relay-index group swarm-dir" per swarm.
    local groups=${#SWARM_ROOTS[@]}
    ((groups > 0)) || groups=1
    while read -r line; do
        local ri gi dir name
        read -r ri gi dir <<<"$line"
        name=$(basename "$dir")
        local root=()
        ((${#SWARM_ROOTS[@]} > 0)) && root=(--root "${SWARM_ROOTS[gi]}")
        start_bg "swarm-$name" "$BIN/agent" swarm --identities "$dir" \
            --relay "${RELAY_ADDRS[ri]}" --data-dir "$TREE/swarm/$name" ${TIMING[@]+"${TIMING[@]}"} \
            ${root[@]+"${root[@]}"} "$@"
        SWARM_PIDS+=("$LAST_PID")
    done < <(python3 - "$IDS/agents" "$TREE/ids" "$n" "$r" "$SWARM_SIZE" "$groups" "${RELAY_NAMES[@]}" <<'EOF'
import os, sys
src, dst, n, r, size, groups = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
names = sys.argv[7:]
ids = []
for chunk in sorted(os.listdir(src)):
    p = os.path.join(src, chunk)
    if os.path.isdir(p):
        ids.extend(os.path.join(p, d) for d in sorted(os.listdir(p)))
if len(ids) < n:
    sys.exit(f"only {len(ids)} identities under {src}, need {n}")
ids = ids[:n]
for i in range(r):
    relay = ids[i * n // r:(i + 1) * n // r]
    for g in range(groups):
        mine = relay[g * len(relay) // groups:(g + 1) * len(relay) // groups]
        k = max(1, -(-len(mine) // size)) if mine else 0
        for s in range(k):
            part = mine[s * len(mine) // k:(s + 1) * len(mine) // k]
            tag = f"-g{g}" if groups > 1 else ""
            d = os.path.join(dst, f"{names[i]}{tag}-s{s:02d}")
            os.makedirs(d)
            for p in part:
                os.symlink(p, os.path.join(d, os.path.basename(p)))
            print(i, g, d)
EOF
    )
    log "${#SWARM_PIDS[@]} swarm process(es) for $n agents under $r relay(s)"
}

# tree_clients: registered clients as HQ counts them (hq tree --json .clients).
tree_clients() {
    "$BIN/hq" tree --json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["clients"])' 2>/dev/null || echo 0
}

# wait_clients N: until HQ counts N registered clients (deadline
# $BENCH_CONNECT_TIMEOUT); sets REG_SECS (seconds it took, polled every 2 s
# above 10,000 agents).
wait_clients() {
    local n=$1 deadline t0 c last=-1 lastlog
    deadline=${BENCH_CONNECT_TIMEOUT:-$((60 + n / 200))}
    t0=$(date +%s)
    lastlog=$t0
    while :; do
        c=$(tree_clients)
        ((c == n)) && break
        ((c > n)) && die "HQ counts $c clients, more than the $n started"
        check_alive
        if (($(date +%s) - t0 > deadline)); then
            die "only $c of $n agents registered after ${deadline} s"
        fi
        if ((c != last && $(date +%s) - lastlog >= 5)); then
            log "$c of $n agents registered"
            lastlog=$(date +%s)
            last=$c
        fi
        # `hq tree` scans HQ's client table: poll gently at large N.
        if ((n > 10000)); then sleep 2; else sleep 0.5; fi
    done
    REG_SECS=$(($(date +%s) - t0))
    log "$n agents registered in $REG_SECS s"
}

# tree_start N R [SWARM ARGS...]: a whole tree with N agents registered, settled.
tree_start() {
    local n=$1 r=$2
    shift 2
    ids_prepare "$n" "$r"
    tree_new
    servers_start "$r"
    swarms_start "$n" "$@"
    wait_clients "$n"
    settle
}

# ---------------------------------------------------------------------------
# Measuring

# cpu_ticks PID...: utime+stime (clock ticks) summed over the processes.
cpu_ticks() {
    local pid sum=0 v
    for pid in "$@"; do
        v=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || v=0
        sum=$((sum + v))
    done
    echo "$sum"
}

# rss_kib PID: resident set size (VmRSS) in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# settle: until the tree's processes use less than $SETTLE_PCT % of one core
# over 1 s (at most $SETTLE_MAX s; then go on with a note).
settle() {
    local i a b pct
    for ((i = 0; i < SETTLE_MAX; i++)); do
        a=$(cpu_ticks "${PIDS[@]}")
        sleep 1
        b=$(cpu_ticks "${PIDS[@]}")
        pct=$(((b - a) * 100 / CLK_TCK))
        ((pct < SETTLE_PCT)) && return 0
    done
    log "tree still uses ${pct}% of a core after ${SETTLE_MAX} s (heartbeats of many sessions?); measuring anyway"
}

# timed_job [CREATE ARGS...]: `hq job create --dest all-lower-clients --relay
# (every relay) ARGS`, then `hq job wait`. Sets JOB, ELAPSED (seconds, from just
# before `job create` starts to the moment `job wait` has exited: both CLI
# processes, their TLS connections, HQ's answer included), JOB_T0 and JOB_T1
# (now_ns at those two moments) and WAIT_RC.
timed_job() {
    local t0 t1
    t0=$(now_ns)
    JOB=$("$BIN/hq" job create --dest all-lower-clients "${RELAY_FLAGS[@]}" "$@") ||
        die "hq job create failed"
    WAIT_RC=0
    "$BIN/hq" job wait "$JOB" --timeout "$WAIT_TIMEOUT" >"$TREE/log/wait-$JOB.out" 2>&1 || WAIT_RC=$?
    t1=$(now_ns)
    JOB_T0=$t0 JOB_T1=$t1
    ELAPSED=$(secs "$t0" "$t1")
    ((WAIT_RC == 0 || WAIT_RC == 1)) || {
        cat "$TREE/log/wait-$JOB.out" >&2
        die "hq job wait $JOB: exit $WAIT_RC"
    }
}

# job_totals JOB: "done succeeded failed timed_out total" from `hq job list --json`
# (the brief list: no per-client rows).
job_totals() {
    "$BIN/hq" job list --json | python3 -c '
import json, sys
for j in json.load(sys.stdin):
    if str(j["job"]) == sys.argv[1]:
        t = j["totals"]
        print(str(j["done"]).lower(), t["succeeded"], t["failed"], t["timed_out"], sum(t.values()))
        break
else:
    sys.exit("no job " + sys.argv[1])' "$1"
}

# check_job JOB N: the job is done and has N leaves; prints "succeeded failed timed_out".
check_job() {
    local done s f to total
    read -r done s f to total < <(job_totals "$1")
    [[ $done == true ]] || die "job $1 is not done"
    ((total == $2)) || die "job $1 has $total leaves, expected $2"
    echo "$s $f $to"
}

# ---------------------------------------------------------------------------
# PostgreSQL (ping_pg.sh, failover_hq.sh)

# pg_start: initdb into $TREE/pg and start postgres on a free port (as the
# `postgres` user when root); sets PG_URL, PG_PORT, PG_AS.
pg_start() {
    PG_BIN=${RELAYTREE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
    [[ -x $PG_BIN/initdb ]] || die "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): apt-get install postgresql"
    local as=() port i
    if ((EUID == 0)); then
        id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user"
        as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
        chmod o+x "$TREE"
    fi
    mkdir -p "$TREE/pg"
    ((EUID == 0)) && chown postgres: "$TREE/pg"
    "${as[@]}" "$PG_BIN/initdb" -A trust -U relaytree --no-sync -E UTF8 -D "$TREE/pg/data" >"$TREE/log/initdb.out" 2>&1 ||
        die "initdb failed (see $TREE/log/initdb.out)"
    for ((i = 0; i < 5; i++)); do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        start_bg postgres "${as[@]}" "$PG_BIN/postgres" -D "$TREE/pg/data" -p "$port" -k "$TREE/pg" \
            -c listen_addresses=127.0.0.1
        local pid=$LAST_PID j
        for ((j = 0; j < 300; j++)); do
            grep -q "ready to accept connections" "$TREE/log/postgres.err" 2>/dev/null && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && grep -q "ready to accept" "$TREE/log/postgres.err"; then
            PG_URL="postgres://relaytree@127.0.0.1:$port/postgres" PG_PORT=$port PG_AS=("${as[@]}")
            log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{ print $3 }') on port $port"
            return 0
        fi
    done
    die "postgres would not start (see $TREE/log/postgres.err)"
}
