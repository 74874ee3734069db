#!/usr/bin/env bash
# The demo: Kyoto Tycoon (fakekt) → qsktbridge → QS root → QS replica, with the embedded
# defaults, written through KT's own HTTP RPC and read back from the replica with qsctl.
set -euo pipefail
BIN=${1:-.build/debug}
WORK=$(mktemp -d /tmp/qs-demo.XXXXXX)
KT_PORT=${QS_DEMO_KT_PORT:-1978}
ROOT_PORT=${QS_DEMO_ROOT_PORT:-7400}
REPLICA_PORT=${QS_DEMO_REPLICA_PORT:-7401}
BRIDGE_ADMIN=${QS_DEMO_BRIDGE_ADMIN:-9401}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${QS_DEMO_KEEP:-}" ] && trap - EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1; logs in $WORK"; tail -n 20 "$WORK"/*.log; exit 1
}
# Polls a command until it succeeds (the bridge batches every 500 ms).
eventually() { for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*"; exit 1; }
kt() { curl -sf -X POST "http://127.0.0.1:$KT_PORT/rpc/$1" --data "$2" >/dev/null; }

step "Kyoto Tycoon stand-in: fakekt -port $KT_PORT -ulog $WORK/ulog -sid 7 main.kch aux.kct"
mkdir -p "$WORK/ulog"
"$BIN/fakekt" -host 127.0.0.1 -port $KT_PORT -ulog "$WORK/ulog" -sid 7 main.kch aux.kct 2>"$WORK/fakekt.log" & PIDS+=($!)
step "QS root and a replica under it"
"$BIN/qsnode" --role root --data "$WORK/root" --listen 127.0.0.1:$ROOT_PORT --log-format text 2>"$WORK/root.log" & PIDS+=($!)
"$BIN/qsnode" --role replica --data "$WORK/replica" --listen 127.0.0.1:$REPLICA_PORT --upstream 127.0.0.1:$ROOT_PORT \
  --log-format text 2>"$WORK/replica.log" & PIDS+=($!)
wait_port $KT_PORT; wait_port $ROOT_PORT; wait_port $REPLICA_PORT

step "bridge: qsktbridge --source kt://127.0.0.1:$KT_PORT --root 127.0.0.1:$ROOT_PORT --db-map 0=,1=aux/"
"$BIN/qsktbridge" --source kt://127.0.0.1:$KT_PORT --root 127.0.0.1:$ROOT_PORT --db-map 0=,1=aux/ \
  --admin 127.0.0.1:$BRIDGE_ADMIN --log-format text 2>"$WORK/bridge.log" & PIDS+=($!)
wait_port $BRIDGE_ADMIN

step "writes to KT through its HTTP RPC (as the fleet's writers do today)"
kt set 'key=config/zone/1&value=%7B%22waf%22%3Atrue%7D'
kt set 'key=config/zone/2&value=%7B%22waf%22%3Afalse%7D&xt=3600'
kt set 'key=rule/9&value=block&DB=1'
kt set 'key=config/zone/3&value=temporary'
kt remove 'key=config/zone/3'
echo "5 updates written to KT"

QR=("$BIN/qsctl" --node 127.0.0.1:$REPLICA_PORT)
step "read back from the QS replica"
eventually "${QR[@]}" get aux/rule/9
printf 'config/zone/1 = '; "${QR[@]}" get config/zone/1; echo
printf 'aux/rule/9    = '; "${QR[@]}" get aux/rule/9; echo
"${QR[@]}" get config/zone/3 || echo "config/zone/3: not found (removed in KT)"
"${QR[@]}" dump --format jsonl

step "the root and the replica share one hash-chained history"
printf 'root:    '; "$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT head
printf 'replica: '; "${QR[@]}" head
printf 'bridge checkpoint (KT timestamp): '; "$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT checkpoint kt:127.0.0.1:$KT_PORT
curl -s "http://127.0.0.1:$BRIDGE_ADMIN/metrics" | grep -E '^qs_bridge_(batches_applied|changes_read|lag_seconds|source_heartbeats)' || true

step "graceful stop (SIGTERM): the bridge flushes, the nodes close their stores"
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait || true; PIDS=()
tail -n 1 "$WORK/bridge.log"; tail -n 1 "$WORK/root.log"
echo; echo "demo finished"
