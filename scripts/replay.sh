#!/usr/bin/env bash
# Replays a recorded KT feed through qsktbridge into a fresh QS root and compares the
# result with the recording's final state.
#
#   scripts/replay.sh BIN_DIR FEED [DB_MAP] [EXTRA BRIDGE FLAGS…]
#
# FEED is a capture file (a recorded replication stream), a ulog directory, or a fixture
# directory holding stream.bin and/or ulog/ plus meta.json and final.jsonl (the layout of
# Fixtures/kt/*). With final.jsonl beside the feed the dump is compared with it, expiry
# judged at meta.json's recorded_at (or $AT); otherwise the dump is printed. A file
# recorded by `qsctl record` takes its recorded_at from its sidecar FILE.meta.json.
set -euo pipefail
BIN=$1; FEED=$2; DB_MAP=${3:-0=}; shift $(( $# >= 3 ? 3 : $# ))
WORK=$(mktemp -d /tmp/qs-replay.XXXXXX)
cleanup() { [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

sources=(); dir=""
if [ -f "$FEED" ]; then sources=("capture:$FEED"); dir=$(dirname "$FEED")
elif [ -d "$FEED" ] && ls "$FEED"/*.ulog >/dev/null 2>&1; then sources=("ulog:$FEED"); dir=$(dirname "$FEED")
elif [ -d "$FEED" ]; then
  dir=$FEED
  [ -f "$FEED/stream.bin" ] && sources+=("capture:$FEED/stream.bin")
  [ -d "$FEED/ulog" ] && sources+=("ulog:$FEED/ulog")
fi
[ ${#sources[@]} -gt 0 ] || { echo "replay: $FEED is not a capture file, a ulog directory or a fixture directory" >&2; exit 2; }
AT=${AT:-}
# A recording made by `qsctl record` has its sidecar FILE.meta.json; a fixture directory has meta.json.
meta="$dir/meta.json"; [ -f "$FEED.meta.json" ] && meta="$FEED.meta.json"
if [ -z "$AT" ] && [ -f "$meta" ]; then AT=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['recorded_at'])" "$meta"); fi

status=0
for src in "${sources[@]}"; do
  rm -rf "$WORK/root"
  # No expiry purge: the dump is compared at the recording's instant, and the purge would
  # (rightly) delete records that expired since.
  # On port 0, the port read from its ready file (written once it listens): a port chosen
  # beforehand could be taken by another process before the node binds it (make test runs
  # this beside the XCTest suites).
  rm -f "$WORK/ready.json"
  "$BIN/qsnode" --data "$WORK/root" --listen 127.0.0.1:0 --ready-file "$WORK/ready.json" --expiry-purge-batch 0 \
    --log-level warning 2>"$WORK/node.log" &
  NODE_PID=$!
  for _ in $(seq 1 400); do [ -s "$WORK/ready.json" ] && break; kill -0 $NODE_PID 2>/dev/null || break; sleep 0.05; done
  PORT=$(python3 -c "import json,sys
for l in json.load(open(sys.argv[1]))['listeners']:
    if l['name'] == 'write': print(l['address'].rsplit(':', 1)[1]); break" "$WORK/ready.json" 2>/dev/null) \
    || { echo "replay: the node did not get ready:" >&2; cat "$WORK/node.log" >&2; exit 1; }
  [ -n "$PORT" ] || { echo "replay: the node's ready file names no write port" >&2; cat "$WORK/node.log" >&2; exit 1; }
  echo "== replay $src (db map $DB_MAP)"
  "$BIN/qsktbridge" --root 127.0.0.1:$PORT --source "$src" --once --db-map "$DB_MAP" --source-id replay --log-format text "$@"
  "$BIN/qsctl" --node 127.0.0.1:$PORT dump --output jsonl ${AT:+--at $AT} > "$WORK/dump.jsonl"
  "$BIN/qsctl" --node 127.0.0.1:$PORT head
  if [ -f "$dir/final.jsonl" ]; then
    python3 "$(dirname "$0")/compare_dump.py" "$WORK/dump.jsonl" "$dir/final.jsonl" --db-map "$DB_MAP" ${AT:+--at $AT} || status=1
  else
    echo "$(wc -l < "$WORK/dump.jsonl") live records (no final.jsonl to compare with):"; head -n 20 "$WORK/dump.jsonl"
  fi
  kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=
done
exit $status
