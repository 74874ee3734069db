#!/usr/bin/env bash
# A 1 GB store in a container with 512 MiB (issue 18, point 5), on each engine: builds the
# image's runtime stage with this host's qsnode (as scripts/container-test.sh does), runs a
# root in it with `--memory 512m` (no swap), fills it with 1 GiB of configuration-shaped
# payload through the write protocol and reads every record back through memcached
# (qsbench --suites fill, from the host), and samples meanwhile, every 0.5 s: the
# container's memory cgroup (usage, with the page cache it may reclaim, and rss, what it
# may not), the node's resident memory (/proc), and its metrics (own memory, RocksDB's
# block cache and memtables). Says whether anything was OOM-killed.
#
#   scripts/container-memory.sh [BIN_DIR]      (default .build/release; make container-memory)
#
# Environment: QS_CM_ENGINES (default "lmdb rocksdb"), QS_CM_MEMORY (512m), QS_CM_FILL (1GiB),
# QS_CM_OUT (bench/results: container-memory-latest.tsv and the samples).
# Needs root, podman, runc and the base image localhost/debian-bookworm-minbase
# (scripts/container-test.sh makes it once). Minutes per engine; not part of make test.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.build/release}
ENGINES=${QS_CM_ENGINES:-lmdb rocksdb}
LIMIT=${QS_CM_MEMORY:-512m}
FILL=${QS_CM_FILL:-1GiB}
OUT=${QS_CM_OUT:-bench/results}
BASE=localhost/debian-bookworm-minbase
IMAGE=localhost/qs-toolkit:memory
PODMAN_OPTS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
TAG=qs-cm-$$

die() { echo "container-memory: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (podman with runc)"
for tool in podman runc curl python3; do command -v $tool >/dev/null || die "needs $tool"; done
podman image exists "$BASE" || die "no $BASE image: run scripts/container-test.sh once (it makes it with debootstrap)"
[ -x "$BIN/qsnode" ] && [ -x "$BIN/qsbench" ] || die "$BIN/qsnode and $BIN/qsbench are needed: swift build -c release"
mkdir -p "$OUT"

WORK=$(mktemp -d /tmp/qs-cm.XXXXXX)
cleanup() {
  local c
  for c in $(podman ps -a --filter "name=^$TAG-" --format '{{.Names}}' 2>/dev/null); do podman rm -f -v -t 2 "$c" >/dev/null 2>&1 || true; done
  for e in $ENGINES; do podman volume rm -f "$TAG-$e" >/dev/null 2>&1 || true; done
  [ -z "${SAMPLER:-}" ] || kill "$SAMPLER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building $IMAGE (runtime stage, qsnode from $BIN)"
scripts/stage-runtime.sh "$BIN" "$WORK/context/staging" qsnode >/dev/null
podman build "${PODMAN_OPTS[@]}" --format docker --network host \
  --build-arg BUILDER=host --build-arg RUNTIME_IMAGE="$BASE" --build-arg SWIFT_IMAGE="$BASE" \
  -f Dockerfile -t "$IMAGE" "$WORK/context" >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; die "podman build failed"; }

free_port() { python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
metric() { awk -v m="$1" '$1 == m { printf "%d", $2; found=1 } END { if (!found) printf "0" }' "$2"; }
stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$2/memory.stat"; }

TSV="$OUT/container-memory-latest.tsv"
printf 'engine\tlimit_bytes\tpayload_bytes\trecords\tread_back\tstore_disk_bytes\tpeak_cgroup_usage_bytes\tpeak_cgroup_rss_bytes\tpeak_node_rss_bytes\tpeak_node_anon_bytes\tpeak_own_memory_bytes\tpeak_block_cache_bytes\tpeak_memtable_bytes\toom_kills\toom_killed\tfill_seconds\tread_seconds\n' >"$TSV"
for engine in $ENGINES; do
  P=$(free_port); A=$(free_port); M=$(free_port)
  echo "== $engine: qsnode in $LIMIT, $FILL of payload"
  podman run -d --name "$TAG-$engine" "${PODMAN_OPTS[@]}" --memory "$LIMIT" --memory-swap "$LIMIT" --read-only --network host \
    -v "$TAG-$engine:/data" -e QS_ENGINE="$engine" -e QS_EXPIRY_PURGE_BATCH=0 \
    -e QS_LISTEN="127.0.0.1:$P" -e QS_ADMIN="127.0.0.1:$A" -e QS_MEMCACHED="127.0.0.1:$M" -e QS_MEMCACHED_FLAGS_IN_VALUE=false \
    "$IMAGE" qsnode >/dev/null
  deadline=$(( $(date +%s) + 60 ))
  until curl -sf "http://127.0.0.1:$A/readyz" >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { podman logs "$TAG-$engine" | tail -n 20; die "$engine: the node did not become ready"; }
    sleep 0.2
  done
  pid=$(podman inspect --format '{{.State.Pid}}' "$TAG-$engine")
  cg=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" { print $3 }' "/proc/$pid/cgroup")
  [ -r "$cg/memory.max_usage_in_bytes" ] || die "no memory cgroup (v1) at $cg: this script reads cgroup v1's files"
  samples="$OUT/container-memory-$engine-samples.tsv"
  printf 'seconds\tcgroup_usage\tcgroup_rss\tcgroup_cache\tnode_rss\tnode_anon\town_memory\tblock_cache\tmemtables\n' >"$samples"
  (
    start=$(date +%s.%N)
    while kill -0 "$pid" 2>/dev/null; do
      curl -sf "http://127.0.0.1:$A/metrics" >"$WORK/metrics" 2>/dev/null || : >"$WORK/metrics"
      printf '%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
        "$(cat "$cg/memory.usage_in_bytes")" "$(stat_of rss "$cg")" "$(stat_of cache "$cg")" \
        "$(awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$pid/status")" "$(awk '/^RssAnon:/ { print $2 * 1024 }' "/proc/$pid/status")" \
        "$(metric qs_node_own_memory_bytes "$WORK/metrics")" "$(metric qs_store_rocksdb_block_cache_bytes "$WORK/metrics")" \
        "$(metric qs_store_rocksdb_memtable_bytes "$WORK/metrics")" >>"$samples" 2>/dev/null || true
      sleep 0.5
    done
  ) &
  SAMPLER=$!
  "$BIN/qsbench" --suites fill --write-target "127.0.0.1:$P" --memcached-target "127.0.0.1:$M" --fill-bytes "$FILL" \
    --out "$WORK/results-$engine" --scratch "$WORK/scratch" | tee "$WORK/fill-$engine.txt" || echo "container-memory: $engine: the fill failed" >&2
  sleep 6 # one more refresh of the node's 5 s gauges
  kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=
  hwm=$(awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/$pid/status" 2>/dev/null || echo 0)
  oom_kills=$(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control" 2>/dev/null || echo 0)
  peak_usage=$(cat "$cg/memory.max_usage_in_bytes" 2>/dev/null || echo 0)
  limit=$(cat "$cg/memory.limit_in_bytes" 2>/dev/null || echo 0)
  running=$(podman inspect --format '{{.State.Running}}' "$TAG-$engine")
  oomkilled=$(podman inspect --format '{{.State.OOMKilled}}' "$TAG-$engine")
  disk=$(du -sb "$(podman volume inspect --format '{{.Mountpoint}}' "$TAG-$engine")" | cut -f1)
  json="$WORK/results-$engine/fill-latest.json"
  [ -s "$json" ] || { podman logs "$TAG-$engine" 2>&1 | tail -n 20; die "$engine: no fill result (running=$running, OOMKilled=$oomkilled)"; }
  read -r payload records read_back fill_s read_s < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["payload_bytes"], j["records"], j["records_read"], j["write_seconds"], j["read_seconds"])' "$json")
  max() { awk -F'\t' -v c="$1" 'NR > 1 && $c > m { m = $c } END { printf "%d", m }' "$samples"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$limit" "$payload" "$records" "$read_back" "$disk" \
    "$peak_usage" "$(max 3)" "${hwm:-0}" "$(max 6)" "$(max 7)" "$(max 8)" "$(max 9)" "${oom_kills:-0}" "$oomkilled" "$fill_s" "$read_s" >>"$TSV"
  podman rm -f -v -t 10 "$TAG-$engine" >/dev/null 2>&1 || true
  podman volume rm -f "$TAG-$engine" >/dev/null 2>&1 || true
  [ "$running" = true ] || die "$engine: the node was not running at the end (OOMKilled=$oomkilled)"
  [ "${oom_kills:-0}" = 0 ] || die "$engine: $oom_kills process(es) OOM-killed in the container"
done
python3 - "$TSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
mb = lambda v: f"{int(v) / 2**20:.0f} MiB"
for r in rows:
    print(f"{r['engine']}: {int(r['payload_bytes']) / 1e9:.2f} GB payload ({r['records']} records, {r['read_back']} read back equal), "
          f"store {int(r['store_disk_bytes']) / 1e9:.2f} GB on disk; limit {mb(r['limit_bytes'])}: cgroup peak {mb(r['peak_cgroup_usage_bytes'])} "
          f"(page cache included), cgroup rss peak {mb(r['peak_cgroup_rss_bytes'])}; node RSS peak {mb(r['peak_node_rss_bytes'])}, "
          f"anon {mb(r['peak_node_anon_bytes'])}, own memory {mb(r['peak_own_memory_bytes'])}, block cache {mb(r['peak_block_cache_bytes'])}, "
          f"memtables {mb(r['peak_memtable_bytes'])}; OOM kills {r['oom_kills']} (OOMKilled {r['oom_killed']}); "
          f"fill {float(r['fill_seconds']):.0f} s, read back {float(r['read_seconds']):.0f} s")
PY
echo "container-memory: results in $TSV"
