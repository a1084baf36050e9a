#!/usr/bin/env bash
# all.sh: every measurement of issue 4 at its sizes, one after the other, then
# every figure line together. A script that fails is reported and the rest go on.
# Progress (lines starting with '#') goes to stderr; figure lines to stdout.
# BENCH_SMALL=1 runs the same at small sizes (a check that everything works).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [[ ${BENCH_SMALL:-0} == 1 ]]; then
    plan=(
        "ping.sh 500 2 2"
        "ping.sh 1000 2 2"
        "command.sh 200 2"
        "memory.sh 500"
        "idle.sh 500 2 5 1"
        "persist.sh 1000 2"
        "rerun.sh 1000 2 2"
        "packages.sh 20 2 2"
        "rollout.sh 400 2"
        "clients.sh 1000 2 2"
    )
else
    plan=(
        "ping.sh 10000 2 5"
        "ping.sh 100000 10 5"
        "command.sh 1000 5"
        "memory.sh 10000"
        "idle.sh 10000 2 60 3"
        "persist.sh 18000 5"
        "rerun.sh 100000 10 5"
        "packages.sh 20 2 64"
        "rollout.sh 10000 2"
        "clients.sh 100000 10 5"
    )
fi

# Issue the largest identity set first: every smaller size then reuses it.
max=0
for step in "${plan[@]}"; do
    read -ra argv <<<"$step"
    ((${argv[1]} > max)) && max=${argv[1]}
done
bash -c 'source "$1/lib.sh"; ids_prepare "$2" 10' _ "$here" "$max" || exit 2

figures=()
for step in "${plan[@]}"; do
    read -ra argv <<<"$step"
    echo "# === ${argv[*]}" >&2
    t0=$(date +%s)
    if out=$("$here/${argv[0]}" "${argv[@]:1}"); then
        printf '%s\n' "$out"
        while IFS= read -r l; do figures+=("$l"); done <<<"$out"
    else
        rc=$?
        printf '%s\n' "$out"
        figures+=("${argv[*]}: FAILED (exit $rc)")
    fi
    echo "# === ${argv[*]}: $(($(date +%s) - t0)) s" >&2
done
echo
echo "== relaytree bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${figures[@]}"
