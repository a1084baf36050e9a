#!/usr/bin/env bash
# audit.sh [N] [R] [RUNS]: an audit of N agents (swarms) under R relays
# against a snapshot of one of them, the master holding 200 files (under
# /etc/app of a shared --root) and 50 packages (Debian packages in the root's
# dpkg database, compared with --dpkg). Every agent of the swarms shares the
# root, so every target is compliant: each sends its few bytes up.
# First the snapshot is taken (timed apart), then each run: wall time from
# just before `hq audit create --snapshot` to `hq job wait` seeing it done
# (every result stored at HQ). Each run must end with N compliant targets.
# The master's object list travels by reference (a blob in HQ's depot, its
# hash in the signed order): HQ and the relays export metrics, and each run
# also prints, from their byte counters (frames on sessions and transfers):
#   - what HQ sent each relay during the run (the list once per relay in
#     run 1, then only assignments: the relays keep it);
#   - what a relay's agents sent it during the run, per agent (a compliant
#     client's result, with the frames around it); goal < 200 bytes.
#   defaults: N=10000 R=2 RUNS=3 (issue 10: every result at HQ within 5 s)
source "$(dirname "$0")/lib.sh"

N=${1:-10000}
R=${2:-2}
RUNS=${3:-3}

bench_init
ids_prepare "$N" "$R"
tree_new
ROOT=$TREE/root
mkdir -p "$ROOT/etc/app" "$ROOT/var/lib/dpkg"
python3 - "$ROOT" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(200):
    with open(os.path.join(root, "etc/app", f"f{i:03d}.conf"), "w") as f:
        f.write(f"setting_{i} = {i * 7}\n" * 20)
with open(os.path.join(root, "var/lib/dpkg/status"), "w") as f:
    for i in range(50):
        f.write(f"Package: pkg{i:02d}\nStatus: install ok installed\nVersion: 1.{i}-1\n"
                "Architecture: amd64\nMaintainer: bench\nDescription: bench\n\n")
PY
# HQ and the relays (not the swarms) export metrics: their byte counters.
SWARM_TIMING=(${TIMING[@]+"${TIMING[@]}"})
TIMING+=(--metrics 127.0.0.1:0)
HQ_TIMING+=(--metrics 127.0.0.1:0)
servers_start "$R"
TIMING=(${SWARM_TIMING[@]+"${SWARM_TIMING[@]}"})
swarms_start "$N" --root "$ROOT"

# metrics_of NAME: the metrics address NAME printed ("metrics on HOST:PORT").
metrics_of() {
    local i
    for ((i = 0; i < 100; i++)); do
        sed -n 's/^metrics on //p' "$TREE/log/$1.out" | head -1 | grep . && return 0
        sleep 0.1
    done
    die "$1 printed no metrics address"
}
HQ_METRICS=$(metrics_of hq)
RELAY_METRICS=()
for name in "${RELAY_NAMES[@]}"; do RELAY_METRICS+=("$(metrics_of "$name")"); done
# counters: one line "hq->rNN BYTES" per relay, "rNN<-agents BYTES" per relay.
counters() {
    python3 - "$HQ_METRICS" "${RELAY_NAMES[@]}" -- "${RELAY_METRICS[@]}" <<'PY'
import re, sys, urllib.request
args = sys.argv[1:]
hq, rest = args[0], args[1:]
cut = rest.index("--")
names, addrs = rest[:cut], rest[cut + 1:]
def scrape(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{([^}]*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels.get("child"))] = float(m.group(3))
    return out
h = scrape(hq)
for n in names:
    print(f"hq->{n}", int(h.get(("relaytree_child_sent_bytes_total", n), 0)))
for n, a in zip(names, addrs):
    r = scrape(a)
    print(f"{n}<-agents", int(r.get(("relaytree_child_received_bytes_total", "agents"), 0)))
PY
}
wait_clients "$N"
settle
MASTER=a000-00001
t0=$(now_ns)
"$BIN/hq" snapshot create --client "$MASTER" --name bench --files '/etc/app/*.conf' --dpkg \
    --json >"$TREE/log/snapshot.json" || die "snapshot of $MASTER failed"
log "snapshot of $MASTER: $(tr -d '\n ' <"$TREE/log/snapshot.json") in $(secs "$t0" "$(now_ns)") s"
times=()
down=()
up=()
for ((run = 1; run <= RUNS; run++)); do
    counters >"$TREE/log/counters-$run.before"
    t0=$(now_ns)
    AUDIT=$("$BIN/hq" audit create --snapshot bench --dest all-lower-clients "${RELAY_FLAGS[@]}" --dpkg) ||
        die "hq audit create failed"
    rc=0
    "$BIN/hq" job wait "$AUDIT" --timeout "$WAIT_TIMEOUT" >"$TREE/log/wait-$AUDIT.out" 2>&1 || rc=$?
    t1=$(now_ns)
    ((rc == 0)) || die "audit $AUDIT: job wait exit $rc ($(cat "$TREE/log/wait-$AUDIT.out"))"
    compliant=$("$BIN/hq" audit status "$AUDIT" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
assert v["done"], "not done"
print(v["totals"]["compliant"])')
    ((compliant == N)) || die "audit $AUDIT: $compliant of $N compliant"
    ELAPSED=$(secs "$t0" "$t1")
    log "run $run: audit $AUDIT: $N targets compliant in $ELAPSED s"
    times+=("$ELAPSED")
    counters >"$TREE/log/counters-$run.after"
    # Per relay: bytes HQ sent it; bytes per agent its agents sent it.
    read -r d u < <(python3 - "$TREE/log/counters-$run.before" "$TREE/log/counters-$run.after" "$N" "$R" <<'PY'
import sys
def load(p):
    return {k: int(v) for k, v in (l.split() for l in open(p))}
a, b, n, r = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
delta = {k: b[k] - a.get(k, 0) for k in b}
downs = [v for k, v in delta.items() if k.startswith("hq->")]
ups = [v for k, v in delta.items() if k.endswith("<-agents")]
print(sum(downs) // len(downs), round(sum(ups) / n))
PY
    )
    log "run $run: hq sent each relay $d bytes (mean over $R); each agent sent its relay $u bytes"
    down+=("$d")
    up+=("$u")
    ((run < RUNS)) && settle
done
target="none at this N; 5 s at 10000"
((N == 10000)) && target="<= 5 s"
LIST=$(sed -n 's/.*audit object list in the depot.* bytes=\([0-9]*\).*/\1/p' "$TREE/log/hq.err" | head -1)
log "object list: ${LIST:-?} bytes, once per relay hop and once per swarm process (run 1); later runs find it cached"
$STATS summary "audit N=$N R=$R objects=250" s "$target" "${times[@]}"
$STATS summary "audit N=$N R=$R: bytes hq sent each relay per run (run 1 $(printf '%s' "${down[0]}"), list ${LIST:-?})" B "report" "${down[@]}"
$STATS summary "audit N=$N R=$R: bytes each agent sent its relay per run (compliant)" B "< 200" "${up[@]}"
