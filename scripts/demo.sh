#!/usr/bin/env bash
# The demo: a root node with the embedded defaults, written and read through qsctl.
set -euo pipefail
BIN=${1:-.build/debug}
WORK=$(mktemp -d /tmp/qs-demo.XXXXXX)
PORT=${QS_DEMO_PORT:-7400}
ADMIN=${QS_DEMO_ADMIN_PORT:-9400}
cleanup() { [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_port() {
  for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1; log:"; cat "$WORK/node.log"; exit 1
}

step "root node: qsnode --role root --data $WORK/root --listen 127.0.0.1:$PORT --admin 127.0.0.1:$ADMIN"
"$BIN/qsnode" --role root --data "$WORK/root" --listen 127.0.0.1:$PORT --admin 127.0.0.1:$ADMIN --log-format text 2>"$WORK/node.log" &
NODE_PID=$!
wait_port $PORT
QSCTL=("$BIN/qsctl" --node 127.0.0.1:$PORT)

step "writes through the root (each one a compare-and-swap batch of source 'qsctl')"
"${QSCTL[@]}" put config/zone/1 '{"waf": true}'
"${QSCTL[@]}" put config/zone/2 '{"waf": false}' --expires $(( $(date +%s) + 3600 ))
"${QSCTL[@]}" put config/zone/1 '{"waf": true}'   # identical: dropped, no log entry
"${QSCTL[@]}" delete config/zone/2

step "reads"
printf 'config/zone/1 = '; "${QSCTL[@]}" get config/zone/1; echo
"${QSCTL[@]}" get config/zone/2 || echo "config/zone/2: not found (exit $?)"

step "the hash-chained log and the source's checkpoint"
"${QSCTL[@]}" log --from 1
"${QSCTL[@]}" head
printf 'checkpoint of source qsctl: '; "${QSCTL[@]}" checkpoint qsctl

step "dump (one JSON line per live record)"
"${QSCTL[@]}" dump --format jsonl

step "metrics (excerpt)"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E '^qs_(batches_applied|identical_writes_dropped|log_head)' || true

step "graceful stop (SIGTERM)"
kill -TERM "$NODE_PID"; wait "$NODE_PID"; NODE_PID=
tail -n 3 "$WORK/node.log"
echo; echo "demo finished"
