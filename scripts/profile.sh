#!/usr/bin/env bash
# Instruction counts (valgrind --tool=callgrind) for fixed amounts of work: repeatable on a
# loaded machine where throughput is not. Release binaries by default (QS_BIN_DIR to change).
#
#   scripts/profile.sh writes [BATCH_SIZE [BATCHES]]   a root (qsnode) applying BATCHES batches
#       of BATCH_SIZE sets over the protocol, driven by qsbench --write-target; plus the plain
#       LMDB loop doing the same sets in qsbench (its runLMDB, collected alone).
#   scripts/profile.sh read-loop [READS]               qsbench's read-loop suite: store reads
#       (checksum checked) and plain mdb_get, in one process.
#
# Profiles and their annotations go to $QS_PROFILE_OUT (default bench/profiles).
# Two workarounds for valgrind 3.19 with the Swift 6.3 toolchain: its DWARF reader gives up
# on the toolchain's DWARF 5, so a copy of each binary is run with its debug info stripped
# (symbols stay); and its sigsuspend wrapper crashes on libdispatch's read-only mask, so
# scripts/valgrind-sigsuspend.c is preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${QS_BIN_DIR:-.build/release}
OUT=${QS_PROFILE_OUT:-bench/profiles}
what=${1:-}
for tool in valgrind callgrind_annotate cc strip python3; do
    command -v $tool >/dev/null || { echo "profile.sh needs $tool (apt-get install valgrind gcc binutils python3)" >&2; exit 1; }
done
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -shared -fPIC -O2 -o "$work/sigsuspend.so" scripts/valgrind-sigsuspend.c
# QS_PROFILE_NODE: another qsnode to profile (e.g. an older build, for a before/after pair).
strip --strip-debug -o "$work/qsnode" "${QS_PROFILE_NODE:-$BIN/qsnode}"
strip --strip-debug -o "$work/qsbench" "$BIN/qsbench"
cg() { LD_PRELOAD="$work/sigsuspend.so" valgrind --tool=callgrind "$@"; }
annotate() { # file → top inclusive costs
    callgrind_annotate --inclusive=yes --threshold=99 "$1" 2>/dev/null | sed -n '1,200p' > "$1.txt"
    echo "$1.txt"
}
case "$what" in
writes)
    size=${2:-100}; batches=${3:-200}
    node_cg="$OUT/writes-node-$size.cg"; lmdb_cg="$OUT/writes-lmdb-$size.cg"
    LD_PRELOAD="$work/sigsuspend.so" valgrind --tool=callgrind --callgrind-out-file="$node_cg" \
        "$work/qsnode" --data "$work/node" --listen 127.0.0.1:0 --ready-file "$work/ready.json" --log-level warning \
        2> "$work/node.log" &
    node=$!
    for _ in $(seq 600); do [ -s "$work/ready.json" ] && break; sleep 0.5; done
    callgrind_control -z $node >/dev/null # the node's start-up is left out
    port=$(python3 -c 'import json,sys; print([e["address"] for e in json.load(open(sys.argv[1]))["listeners"] if e["name"]=="write"][0].rsplit(":",1)[1])' "$work/ready.json")
    cg --callgrind-out-file="$lmdb_cg" --collect-atstart=no --toggle-collect='*runLMDB*' \
        "$work/qsbench" --suites writes --write-target "127.0.0.1:$port" --batches "$batches" --batch-sizes "$size" \
        --rounds 1 --scratch "$work/scratch" --out "$work/results" 2> "$work/bench.log" | tail -4
    kill -TERM $node; wait $node || true
    annotate "$node_cg"; annotate "$lmdb_cg"
    echo "node:  $(grep -m1 'PROGRAM TOTALS' "$node_cg.txt")"
    echo "lmdb:  $(grep -m1 'PROGRAM TOTALS' "$lmdb_cg.txt")"
    ;;
read-loop)
    reads=${2:-200000}
    cg --callgrind-out-file="$OUT/read-loop.cg" "$work/qsbench" --suites read-loop --reads "$reads" \
        --scratch "$work/scratch" --out "$work/results" 2> "$work/bench.log"
    annotate "$OUT/read-loop.cg"
    ;;
*)
    sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
