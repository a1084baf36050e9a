#!/usr/bin/env bash
# rollout.sh [N] [R]: rollout policies at scale, on one tree of N agents
# under R relays (swarms).
#  1. `--batch 10%` to all N: a command that writes "RELAY start MS" and
#     "RELAY end MS" (real effects, by the commands themselves) around a
#     short sleep; timed from `job create` to `job wait`'s exit; the largest
#     number of commands running at once per relay is read from those lines
#     (limit: 10% of each relay's targets).
#  2. `--batch 10% --max-failures 1%` with 5% of the clients failing (by a
#     hash of the client's name, with a "fail MS" line): the moment the
#     failures passed the threshold is the time of the failure that took
#     the count past 1%; the leaves started after it, anywhere in the tree,
#     are counted (goal: under 1% of the job). When the relays' own stops
#     (past 1% of their own targets) paused the job first, the count starts
#     at the first relay's own crossing instead. The job is then canceled.
#   defaults: N=10000 R=2 (issue 11)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}

bench_init
tree_start "$N" "$R"

# 1. --batch 10%
T1=$TREE/log/batch.times
: >"$T1"
timed_job --batch 10% -- sh -c "echo \"\$RELAYTREE_RELAY start \$(date +%s%3N)\" >> '$T1'; sleep 0.2; echo \"\$RELAYTREE_RELAY end \$(date +%s%3N)\" >> '$T1'"
((WAIT_RC == 0)) || die "job $JOB: not every leaf succeeded (wait exit $WAIT_RC)"
read -r s f to < <(check_job "$JOB" "$N")
batch=$(python3 - "$T1" "$N" "$R" <<'PY'
import sys, collections
ev = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 3:
        ev[f[0]].append((int(f[2]), 1 if f[1] == "start" else -1))
n, r = int(sys.argv[2]), int(sys.argv[3])
out, ok = [], True
for relay in sorted(ev):
    cur = top = 0
    # Ends before starts at the same millisecond.
    for _, d in sorted(ev[relay]):
        cur += d
        top = max(top, cur)
    starts = sum(1 for _, d in ev[relay] if d == 1)
    limit = max(1, -(-starts * 10 // 100))
    ok = ok and top <= limit
    out.append(f"{relay}={top}/{limit}")
print(("ok" if ok else "OVER"), " ".join(out))
PY
)
verdict=${batch%% *}
log "batch 10%: job $JOB in $ELAPSED s; most in flight per relay (limit): ${batch#* }"
[[ $verdict == ok ]] || die "more leaves in flight than --batch 10% allows: ${batch#* }"
echo "rollout --batch 10% N=$N R=$R: done in $ELAPSED s, most in flight per relay/limit: ${batch#* } (load $(cut -d' ' -f1-3 /proc/loadavg))"
settle

# 2. --max-failures 1% with 5% failing
T2=$TREE/log/breaker.times
: >"$T2"
JOB=$("$BIN/hq" job create --dest all-lower-clients "${RELAY_FLAGS[@]}" --batch 10% --max-failures 1% -- \
    sh -c "h=\$(printf %s \"\$RELAYTREE_CLIENT\" | cksum | cut -d' ' -f1); echo \"\$RELAYTREE_RELAY start \$(date +%s%3N)\" >> '$T2'; if [ \$((h % 20)) -eq 0 ]; then echo \"\$RELAYTREE_RELAY fail \$(date +%s%3N)\" >> '$T2'; exit 1; fi; sleep 0.2") ||
    die "hq job create failed"
state=""
for ((i = 0; i < 1200; i++)); do
    state=$("$BIN/hq" job list --json | python3 -c '
import json, sys
for j in json.load(sys.stdin):
    if str(j["job"]) == sys.argv[1]:
        print(j["state"])' "$JOB")
    [[ $state == paused || $state == done ]] && break
    check_alive
    sleep 0.25
done
[[ $state == paused ]] || die "job $JOB: never paused (state $state)"
# What was running finishes; what started late shows up in the file.
sleep 3
"$BIN/hq" job cancel "$JOB" >/dev/null || die "hq job cancel $JOB failed"
read -r crossed after total what < <(python3 - "$T2" "$N" "$R" <<'PY'
import sys, collections
starts, fails = [], collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 3:
        if f[1] == "start":
            starts.append(int(f[2]))
        elif f[1] == "fail":
            fails[f[0]].append(int(f[2]))
n, r = int(sys.argv[2]), int(sys.argv[3])
threshold = n * 1 // 100  # past 1% of the job's targets
every = sorted(t for ts in fails.values() for t in ts)
if len(every) > threshold:
    crossed, what = every[threshold], "the-job's-threshold"
else:
    # The relays' own stops (past 1% of their own targets) paused the job
    # before its failures passed 1% of it: count from the first of those.
    own = n // r // 100
    mine = [sorted(ts)[own] for ts in fails.values() if len(ts) > own]
    if not mine:
        sys.exit(f"only {len(every)} failures, threshold {threshold}, and no relay past its own")
    crossed, what = min(mine), "a-relay's-own-threshold"
print(crossed, sum(1 for s in starts if s > crossed), len(starts), what)
PY
) || die "job $JOB: no crossing of a threshold in the commands' lines"
# Where the late starts come from, per relay: the relay's own crossing (its
# failures past 1% of its targets), its local stop and HQ's pause reaching
# it (their log lines), and the starts after each.
python3 - "$T2" "$N" "$crossed" "$TREE/log" "${RELAY_NAMES[@]}" <<'PY' >&2
import sys, re, datetime, collections
times, n, crossed, logdir, relays = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
starts, fails = collections.defaultdict(list), collections.defaultdict(list)
for line in open(times):
    f = line.split()
    if len(f) == 3:
        (starts if f[1] == "start" else fails)[f[0]].append(int(f[2]))
stamp = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
def first(path, text):
    try:
        for line in open(path, errors="replace"):
            if text in line:
                m = stamp.search(line)
                if m:
                    t = datetime.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=datetime.timezone.utc)
                    return int(t.timestamp() * 1000)
    except OSError:
        pass
    return None
hq_pause = first(f"{logdir}/hq.err", "job paused")
print(f"# crossing at +0 ms; HQ paused at {'+%d' % (hq_pause - crossed) if hq_pause else '?'} ms")
for r in relays:
    st, fl = sorted(starts.get(r, [])), sorted(fails.get(r, []))
    own = n // len(relays)
    own_cross = fl[own // 100] if len(fl) > own // 100 else None
    stop = first(f"{logdir}/{r}.err", "past the job's threshold")
    pause = first(f"{logdir}/{r}.err", "rollout control applied")
    rel = lambda t: "never" if t is None else "%+d ms" % (t - crossed)
    after = lambda t: "-" if t is None else sum(1 for s in st if s > t)
    print(f"# {r}: own crossing {rel(own_cross)}, local stop logged {rel(stop)}, pause applied {rel(pause)}; "
          f"starts after the crossing {after(crossed)}, after its own crossing {after(own_cross)}, "
          f"after its stop {after(stop)}, after the pause {after(pause)}")
PY
pct=$(awk -v a="$after" -v n="$N" 'BEGIN { printf "%.2f", a * 100 / n }')
echo "rollout --max-failures 1% with 5% failing N=$N R=$R: $after leaves started after ${what//-/ } was crossed ($pct% of the job; $total started in all; goal under 1%) (load $(cut -d' ' -f1-3 /proc/loadavg))"
