#!/usr/bin/env bash
# The demo: Kyoto Tycoon (fakekt) → qsktbridge → QS root → QS replica, with the embedded
# defaults, written through KT's own HTTP RPC and read back from the replica with qsctl.
set -euo pipefail
BIN=${1:-.build/debug}
WORK=$(mktemp -d /tmp/qs-demo.XXXXXX)
KT_PORT=${QS_DEMO_KT_PORT:-1978}
ROOT_PORT=${QS_DEMO_ROOT_PORT:-7400}
REPLICA_PORT=${QS_DEMO_REPLICA_PORT:-7401}
NEW_ROOT_PORT=${QS_DEMO_NEW_ROOT_PORT:-7402}
MEMCACHED_PORT=${QS_DEMO_MEMCACHED_PORT:-11311}
KT_HTTP_PORT=${QS_DEMO_KT_HTTP_PORT:-19780}
BRIDGE_ADMIN=${QS_DEMO_BRIDGE_ADMIN:-9401}
PIDS=()
BRIDGE_PIDS=()
cleanup() { for p in "${BRIDGE_PIDS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
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
step "QS root (127.0.0.1:$ROOT_PORT), a replica under it serving memcached (:$MEMCACHED_PORT) and KT HTTP (:$KT_HTTP_PORT), a second root (:$NEW_ROOT_PORT)"
"$BIN/qsnode" --role root --data "$WORK/root" --listen 127.0.0.1:$ROOT_PORT --log-format text 2>"$WORK/root.log" & PIDS+=($!)
"$BIN/qsnode" --role replica --data "$WORK/replica" --listen 127.0.0.1:$REPLICA_PORT --upstream 127.0.0.1:$ROOT_PORT \
  --memcached 127.0.0.1:$MEMCACHED_PORT --memcached-flags-in-value false --kt-http 127.0.0.1:$KT_HTTP_PORT --kt-db-map 0=,1=aux/ \
  --log-format text 2>"$WORK/replica.log" & PIDS+=($!)
"$BIN/qsnode" --role root --data "$WORK/new-root" --listen 127.0.0.1:$NEW_ROOT_PORT --log-format text 2>"$WORK/new-root.log" & PIDS+=($!)
wait_port $KT_PORT; wait_port $ROOT_PORT; wait_port $REPLICA_PORT; wait_port $NEW_ROOT_PORT

step "bridge: qsktbridge --source kt://127.0.0.1:$KT_PORT --root 127.0.0.1:$ROOT_PORT --db-map 0=,1=aux/"
"$BIN/qsktbridge" --source kt://127.0.0.1:$KT_PORT --root 127.0.0.1:$ROOT_PORT --db-map 0=,1=aux/ \
  --admin 127.0.0.1:$BRIDGE_ADMIN --log-format text 2>"$WORK/bridge.log" & BRIDGE_PIDS+=($!)
wait_port $BRIDGE_ADMIN
step "mirror: qsqsbridge --source qs://127.0.0.1:$ROOT_PORT --root 127.0.0.1:$NEW_ROOT_PORT --mode compatible"
"$BIN/qsqsbridge" --source qs://127.0.0.1:$ROOT_PORT --root 127.0.0.1:$NEW_ROOT_PORT --mode compatible \
  --log-format text 2>"$WORK/mirror.log" & BRIDGE_PIDS+=($!)

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
"${QR[@]}" dump --output jsonl

step "a memcached client's read on the replica (get config/zone/1 rule/9)"
exec 3<>/dev/tcp/127.0.0.1/$MEMCACHED_PORT; printf 'get config/zone/1\r\nquit\r\n' >&3; cat <&3; exec 3<&-
step "a KT client's read on the replica (GET /rpc/get?key=rule/9&DB=1)"
curl -s "http://127.0.0.1:$KT_HTTP_PORT/rpc/get?key=rule/9&DB=1"

step "a small live workload on KT (one write every 200 ms for 2 s)"
for i in $(seq 1 10); do kt set "key=live/$i&value=tick-$i"; sleep 0.2; done
eventually "$BIN/qsctl" --node 127.0.0.1:$NEW_ROOT_PORT get live/10

step "the roots and the replica share one hash-chained history"
printf 'root:     '; "$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT head
printf 'replica:  '; eventually "${QR[@]}" get live/10; "${QR[@]}" head
printf 'new root: '; "$BIN/qsctl" --node 127.0.0.1:$NEW_ROOT_PORT head
"$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT verify --against 127.0.0.1:$NEW_ROOT_PORT && echo "verify: the new root equals the legacy root"
step "qsctl status"
"$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT status
"$BIN/qsctl" --node 127.0.0.1:$REPLICA_PORT status
printf 'bridge checkpoint (KT timestamp): '; "$BIN/qsctl" --node 127.0.0.1:$ROOT_PORT checkpoint kt:127.0.0.1:$KT_PORT
curl -s "http://127.0.0.1:$BRIDGE_ADMIN/metrics" | grep -E '^qs_bridge_(batches_applied|changes_read|lag_seconds|source_heartbeats)' || true

if [ -t 0 ]; then
  step "running: fakekt :$KT_PORT, root :$ROOT_PORT, replica :$REPLICA_PORT (memcached :$MEMCACHED_PORT, KT HTTP :$KT_HTTP_PORT), new root :$NEW_ROOT_PORT — Ctrl-C stops everything"
  trap 'echo' INT; sleep infinity || true; trap - INT
fi
step "graceful stop (SIGTERM): the bridges flush, the nodes close their stores"
# Bridges first (each flushes its last batch into a root that is still up), then the nodes.
for p in "${BRIDGE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${BRIDGE_PIDS[@]}"; do wait "$p" || echo "a bridge exited $?"; done
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait || true; PIDS=()
tail -n 1 "$WORK/bridge.log"; tail -n 1 "$WORK/root.log"
echo; echo "demo finished"
