#!/usr/bin/env bash
# Instruction counts (valgrind --tool=callgrind) for fixed amounts of work: repeatable on a
# loaded machine where throughput is not. Release binaries by default (QS_BIN_DIR to change).
#
#   scripts/profile.sh writes [BATCH_SIZE [BATCHES]]   a root (qsnode) applying BATCHES batches
#       of BATCH_SIZE sets over the protocol, driven by qsbench --write-target; plus the plain
#       LMDB loop doing the same sets in qsbench (its runLMDB, collected alone).
#   scripts/profile.sh read-loop [READS]               qsbench's read-loop suite: store reads
#       (checksum checked) and plain mdb_get, in one process.
#   scripts/profile.sh reads [REQUESTS]                a replica (qsnode) under callgrind serving
#       memcached get (1 and 8 connections, 10-key get) and KT GET /KEY and /rpc/get, REQUESTS
#       each (scripts/read_load.py, closed loop), from a root loaded with 100,000 keys of 100 B;
#       one dump per load, its total divided by the requests is the instructions per request.
#   scripts/profile.sh bridges [ENTRIES]               the bridges under callgrind, per change: qsqsbridge
#       --mode compatible mirroring a root of ENTRIES one-set entries (default 20,000) into an
#       empty root, and qsktbridge replaying a capture of ENTRIES KT sets (100 B values) into
#       an empty root; the target roots under callgrind too (their share of the two cores). A
#       second bridge run with nothing to do gives the start-up, which is subtracted.
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
for tool in valgrind callgrind_annotate callgrind_control cc strip nm python3; do
    command -v $tool >/dev/null || { echo "profile.sh needs $tool (apt-get install valgrind gcc binutils python3)" >&2; exit 1; }
done
mkdir -p "$OUT"
work=$(mktemp -d /tmp/qs-profile.XXXXXX)
trap 'rm -rf "$work"' EXIT
cc -shared -fPIC -O2 -o "$work/sigsuspend.so" scripts/valgrind-sigsuspend.c
# QS_PROFILE_NODE: another qsnode to profile (e.g. an older build, for a before/after pair).
# `make release` builds without the run-time exclusivity checks (Makefile: RELEASE_FLAGS);
# a plain `swift build -c release` keeps them, and they are about a quarter of a memcached
# get's instructions: counts from such a binary are not comparable with the recorded ones.
for b in "${QS_PROFILE_NODE:-$BIN/qsnode}" "$BIN/qsbench"; do
    if nm -D --undefined-only "$b" 2>/dev/null | grep swift_beginAccess >/dev/null; then
        echo "profile.sh: $b was built with run-time exclusivity checks (swift_beginAccess): build it with 'make release' (or QS_PROFILE_CHECKED=1 to profile it anyway)" >&2
        [ "${QS_PROFILE_CHECKED:-0}" = 1 ] || exit 1
    fi
done
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
reads)
    requests=${2:-20000}
    listener() { python3 -c 'import json,sys; print([e["address"] for e in json.load(open(sys.argv[1]))["listeners"] if e["name"]==sys.argv[2]][0])' "$1" "$2"; }
    waitready() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.5; done; echo "no ready file $1" >&2; exit 1; }
    # The root runs natively; it takes 1,000 batches of 100 sets (keys b0000/0000000000 …).
    "$work/qsnode" --data "$work/root" --listen 127.0.0.1:0 --ready-file "$work/root.json" --log-level warning 2> "$work/root.log" &
    root=$!
    waitready "$work/root.json"
    "$work/qsbench" --suites writes --write-target "$(listener "$work/root.json" write)" --batches 1000 --batch-sizes 100 \
        --rounds 1 --scratch "$work/scratch" --out "$work/results" > "$work/load.log" 2>&1
    cg_file="$OUT/reads.cg"
    rm -f "$cg_file" "$cg_file".*
    # The replica bootstraps natively first (a snapshot install under valgrind takes minutes),
    # then runs again under callgrind from its caught-up store.
    replica_args=(--role replica --data "$work/replica" --listen 127.0.0.1:0 --upstream "$(listener "$work/root.json" write)"
                  --memcached 127.0.0.1:0 --kt-http 127.0.0.1:0 --memcached-flags-in-value false
                  --ready-file "$work/replica.json" --log-level warning)
    caught_up() { # the last key is there
        python3 -c 'import socket,sys; h,p=sys.argv[1].rsplit(":",1); s=socket.create_connection((h,int(p))); s.sendall(b"get b0000/0000099999\r\n"); sys.exit(0 if s.recv(4096).startswith(b"VALUE") else 1)' "$1"
    }
    for pass in native callgrind; do
        rm -f "$work/replica.json"
        if [ $pass = native ]; then
            "$work/qsnode" "${replica_args[@]}" 2> "$work/replica.log" &
        else
            # valgrind itself in the background ($! is its pid, for callgrind_control)
            LD_PRELOAD="$work/sigsuspend.so" valgrind --tool=callgrind --callgrind-out-file="$cg_file" \
                "$work/qsnode" "${replica_args[@]}" 2> "$work/replica.log" &
        fi
        replica=$!
        waitready "$work/replica.json"
        mc=$(listener "$work/replica.json" memcached); kt=$(listener "$work/replica.json" kt-http)
        for _ in $(seq 1200); do caught_up "$mc" 2>/dev/null && break; sleep 0.5; done
        caught_up "$mc" || { echo "the replica did not catch up" >&2; cat "$work/replica.log" >&2; exit 1; }
        if [ $pass = native ]; then kill -TERM $replica; wait $replica || true; fi
    done
    callgrind_control -z $replica | grep -q OK # start-up and catch-up are left out
    printf "%-22s %12s %12s\n" load instructions per-request
    n=0
    for load in "mc 1 $mc" "mc 8 $mc" "mc10 1 $mc" "rest 1 $kt" "rpc 1 $kt"; do
        set -- $load
        python3 scripts/read_load.py "$3" "$1" "$2" "$requests" 100000 >> "$work/loads.log" || { echo "load $1 failed" >&2; cat "$work/loads.log" >&2; }
        callgrind_control -d "$1-$2" $replica | grep -q OK
        n=$((n + 1))
        total=$(grep -m1 -E '^(summary|totals):' "$cg_file.$n" | awk '{print $2}')
        printf "%-22s %12s %12s\n" "$1 x$2 conn" "$total" "$((total / requests))"
        cp "$cg_file.$n" "$OUT/reads-$1-$2.cg"; annotate "$OUT/reads-$1-$2.cg" >/dev/null
    done
    kill -TERM $replica $root; wait $replica $root || true
    ;;
bridges)
    n=${2:-20000}
    rm -f "$OUT"/mirror-* "$OUT"/backlog-*
    listener() { python3 -c 'import json,sys; print([e["address"] for e in json.load(open(sys.argv[1]))["listeners"] if e["name"]==sys.argv[2]][0])' "$1" "$2"; }
    waitready() { for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.5; done; echo "no ready file $1" >&2; exit 1; }
    total() { grep -m1 -E '^(summary|totals):' "$1" | awk '{print $2}'; }
    for b in qsqsbridge qsktbridge; do strip --strip-debug -o "$work/$b" "$BIN/$b"; done
    node() { # name [valgrind out] → pid in $pid, write address in $addr
        local name=$1 cgout=${2:-}
        rm -f "$work/$name.json"
        if [ -n "$cgout" ]; then
            LD_PRELOAD="$work/sigsuspend.so" valgrind --tool=callgrind --callgrind-out-file="$cgout" \
                "$work/qsnode" --data "$work/$name" --listen 127.0.0.1:0 --ready-file "$work/$name.json" --log-level warning 2> "$work/$name.log" &
        else
            "$work/qsnode" --data "$work/$name" --listen 127.0.0.1:0 --ready-file "$work/$name.json" --log-level warning 2> "$work/$name.log" &
        fi
        pid=$!
        waitready "$work/$name.json"
        addr=$(listener "$work/$name.json" write)
    }
    # The mirror's source: N batches of one set, one log entry each.
    node src; src=$pid; src_addr=$addr
    "$work/qsbench" --suites writes --write-target "$src_addr" --batches "$n" --batch-sizes 1 --write-window 16 \
        --rounds 1 --scratch "$work/scratch" --out "$work/results" > "$work/fill.log" 2>&1
    node mirror-dst "$OUT/mirror-target.cg"; dst=$pid; dst_addr=$addr
    callgrind_control -z $dst | grep -q OK
    cg --callgrind-out-file="$OUT/mirror-bridge.cg" "$work/qsqsbridge" --source "qs://$src_addr" --root "$dst_addr" \
        --mode compatible --once --log-level warning 2> "$work/mirror-bridge.log"
    callgrind_control -d mirror $dst | grep -q OK
    cg --callgrind-out-file="$OUT/mirror-bridge-idle.cg" "$work/qsqsbridge" --source "qs://$src_addr" --root "$dst_addr" \
        --mode compatible --once --log-level warning 2> "$work/mirror-bridge-idle.log"
    kill -TERM $dst $src; wait $dst $src || true
    # The backlog: a KT replication capture (acceptance byte, update frames) of N sets.
    python3 - "$work/backlog.bin" "$n" <<'PY'
import struct, sys
path, n = sys.argv[1], int(sys.argv[2])
keys = min(n, 100000)
value = bytearray(b"a" * 100)
ts = 1_700_000_000_000 * 1_000_000
def varnum(v):
    out = [v & 0x7F]; v >>= 7
    while v: out.append(0x80 | (v & 0x7F)); v >>= 7
    return bytes(reversed(out))
with open(path, "wb") as f:
    f.write(b"\xb1")
    for i in range(n):
        value[i % 100] = (value[i % 100] + 1) & 0xFF
        ts += 1
        key = b"key/%08d" % (i % keys)
        v = b"\xff" * 5 + bytes(value)
        msg = struct.pack(">HHB", 7, 0, 0xA1) + varnum(len(key)) + varnum(len(v)) + key + v
        f.write(b"\xb1" + struct.pack(">QI", ts, len(msg)) + msg)
PY
    node backlog-root "$OUT/backlog-target.cg"; root=$pid; root_addr=$addr
    callgrind_control -z $root | grep -q OK
    cg --callgrind-out-file="$OUT/backlog-bridge.cg" "$work/qsktbridge" --source "capture:$work/backlog.bin" --root "$root_addr" \
        --log-level warning 2> "$work/backlog-bridge.log"
    callgrind_control -d backlog $root | grep -q OK
    printf '\xb1' > "$work/empty.bin" # start-up: a capture with no update
    cg --callgrind-out-file="$OUT/backlog-bridge-idle.cg" "$work/qsktbridge" --source "capture:$work/empty.bin" --root "$root_addr" \
        --log-level warning 2> "$work/backlog-bridge-idle.log"
    kill -TERM $root; wait $root || true
    printf "%-32s %14s %12s\n" run instructions per-change
    for pair in "mirror-bridge mirror-bridge-idle" "backlog-bridge backlog-bridge-idle"; do
        set -- $pair
        busy=$(total "$OUT/$1.cg"); idle=$(total "$OUT/$2.cg")
        printf "%-32s %14s %12s\n" "$1 (less start-up $idle)" "$((busy - idle))" "$(((busy - idle) / n))"
        annotate "$OUT/$1.cg" >/dev/null
    done
    for t in mirror-target backlog-target; do
        f=$(ls "$OUT/$t.cg".* | head -1); mv "$f" "$OUT/$t-dump.cg"; rm -f "$OUT/$t.cg" "$OUT/$t.cg".*
        printf "%-32s %14s %12s\n" "$t (node)" "$(total "$OUT/$t-dump.cg")" "$(($(total "$OUT/$t-dump.cg") / n))"
        annotate "$OUT/$t-dump.cg" >/dev/null
    done
    ;;
*)
    sed -n '2,23p' "$0" >&2; exit 2 ;;
esac
