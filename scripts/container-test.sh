#!/usr/bin/env bash
# Builds the container image's runtime stage (Dockerfile) with executables built on this
# host and runs it for real with podman: a root and bridges as the non-root user, with a
# read-only root filesystem and a data volume, data flowing from a recorded KT capture and
# from a live fakekt into the root, the image's own health check, a clean stop and restart.
#
#   scripts/container-test.sh [BIN_DIR]        (default .build/debug; make container-test)
#   scripts/container-test.sh --from-source    the Dockerfile's own Swift build stage, run in a
#                                              local image holding this host's toolchain
#                                              (some minutes; make container-test-source)
#
# Needs root, podman, runc and debootstrap (installed with apt-get when missing). Where they
# cannot work it prints why and exits 0 without testing. The base image is made once with
# debootstrap and kept as localhost/debian-bookworm-minbase; the test image is kept as
# localhost/qs-toolkit:test; containers and volumes it made are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
FROM_SOURCE=
if [ "${1:-}" = "--from-source" ]; then FROM_SOURCE=1; shift; fi
BIN=${1:-.build/debug}
BASE=localhost/debian-bookworm-minbase
IMAGE=localhost/qs-toolkit:test
# The defaults cannot be raised on every machine (runc then fails to set rlimits), and crun
# fails on some cgroup setups: every build and run says what it needs.
PODMAN_OPTS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
TAG=qs-ct-$$
START=$(date +%s)

skip() { echo "container-test: SKIPPED: $*"; exit 0; }
passed=0
fail() { echo "container-test: FAILED: $*" >&2; echo "container-test: $passed passed, 1 failed"; exit 1; }
step() { echo "== $* ($(( $(date +%s) - START ))s)"; }

# ---- can podman work here? ----------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (podman with runc and a debootstrapped base image); run as root to test the image"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "${missing[*]} missing and no apt-get to install them"
  echo "container-test: installing podman runc debootstrap"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; } >/dev/null 2>&1 \
    || skip "cannot install podman, runc and debootstrap with apt-get"
fi
podman info >/dev/null 2>&1 || skip "podman cannot run here: $(podman info 2>&1 | tail -n 1)"

# ---- the base image, made once ------------------------------------------------------------
if ! podman image exists "$BASE"; then
  step "making $BASE with debootstrap (once)"
  ROOTFS=$(mktemp -d /tmp/qs-ct-rootfs.XXXXXX)
  if ! debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >"$ROOTFS.log" 2>&1; then
    tail -n 5 "$ROOTFS.log"; rm -rf "$ROOTFS" "$ROOTFS.log"
    skip "debootstrap cannot make a bookworm base image here (no Debian mirror reachable?)"
  fi
  tar -C "$ROOTFS" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$ROOTFS" "$ROOTFS.log"
fi

# Containers and volumes of an earlier run that was killed before it could clean up.
for c in $(podman ps -a --filter "name=^qs-ct-" --format '{{.Names}}' 2>/dev/null); do
  pid=${c#qs-ct-}; pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || podman rm -f -v -t 2 "$c" >/dev/null 2>&1 || true
done
for v in $(podman volume ls --format '{{.Name}}' 2>/dev/null | grep '^qs-ct-' || true); do
  pid=${v#qs-ct-}; pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || podman volume rm -f "$v" >/dev/null 2>&1 || true
done

WORK=$(mktemp -d /tmp/qs-ct.XXXXXX)
cleanup() {
  local c
  for c in $(podman ps -a --filter "name=^$TAG-" --format '{{.Names}}' 2>/dev/null); do
    podman rm -f -v -t 2 "$c" >/dev/null 2>&1 || true
  done
  for c in root root2 kt; do podman volume rm -f "$TAG-$c" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- the image: the Dockerfile's runtime stage with this host's executables ------------------
read -r -a EXECUTABLES <<<"$(sed -n 's/^ARG EXECUTABLES="\(.*\)"$/\1/p' Dockerfile)"
[ ${#EXECUTABLES[@]} -gt 0 ] || fail "no ARG EXECUTABLES=\"…\" line in the Dockerfile"
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [ -z "$FROM_SOURCE" ]; then
  step "staging ${EXECUTABLES[*]} from $BIN"
  scripts/stage-runtime.sh "$BIN" "$WORK/context/staging" "${EXECUTABLES[@]}" >/dev/null
  step "building $IMAGE (runtime stage, BUILDER=host)"
  podman build "${PODMAN_OPTS[@]}" --format docker --network host \
    --build-arg BUILDER=host --build-arg RUNTIME_IMAGE="$BASE" --build-arg SWIFT_IMAGE="$BASE" \
    -f Dockerfile -t "$IMAGE" "$WORK/context" >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; fail "podman build"; }
else
  # No registry here: the build stage's Swift image is the base image with the packages the
  # official Swift images install, and this host's toolchain mounted at the same path.
  command -v swift >/dev/null || skip "--from-source needs swift on PATH (its toolchain is mounted into the build)"
  TOOLCHAIN=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")")
  SWIFT_LOCAL=localhost/swift-host-toolchain
  if ! podman image exists "$SWIFT_LOCAL"; then
    step "making $SWIFT_LOCAL (once)"
    mkdir -p "$WORK/swift-image"
    cat >"$WORK/swift-image/Containerfile" <<CONTAINERFILE
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
    binutils git gnupg2 libc6-dev libcurl4-openssl-dev libedit2 libgcc-12-dev libpython3-dev libsqlite3-0 \\
    libstdc++-12-dev libxml2-dev libncurses-dev libz3-dev pkg-config tzdata zlib1g-dev ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
ENV PATH=$TOOLCHAIN/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CONTAINERFILE
    podman build "${PODMAN_OPTS[@]}" --format docker --network host -t "$SWIFT_LOCAL" "$WORK/swift-image" \
      >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; fail "making $SWIFT_LOCAL"; }
  fi
  # SwiftPM's repository cache lets the build resolve the dependencies without the network.
  mkdir -p "$WORK/swiftpm"
  [ -d "$HOME/.cache/org.swift.swiftpm" ] && cp -a "$HOME/.cache/org.swift.swiftpm/." "$WORK/swiftpm/"
  step "building $IMAGE (swift build -c release in the build stage, BUILDER=source)"
  nice -n 10 podman build "${PODMAN_OPTS[@]}" --format docker --network host \
    --build-arg BUILDER=source --build-arg RUNTIME_IMAGE="$BASE" --build-arg SWIFT_IMAGE="$SWIFT_LOCAL" \
    -v "$TOOLCHAIN:$TOOLCHAIN:ro" -v "$WORK/swiftpm:/root/.cache/org.swift.swiftpm" \
    -f Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; fail "podman build"; }
fi
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
[ -z "$old_id" ] || [ "$old_id" = "$new_id" ] || podman rmi "$old_id" >/dev/null 2>&1 || true

check() { # check DESCRIPTION COMMAND…: runs the command, counts a pass or fails the test
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok: $what"; else fail "$what"; fi
}
equals() { [ "$1" = "$2" ] || { echo "  expected '$2', got '$1'" >&2; return 1; }; }

# Runs a one-off command from the image as the image's user, read-only, on the host network.
run() { podman run --rm "${PODMAN_OPTS[@]}" --read-only --network host "$@" 2>"$WORK/run.err"; }

step "checking the image"
check "runs as uid 10001 (qs)" equals "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" "10001:10001"
check "declares /data a volume" equals "$(podman image inspect --format '{{range $k, $v := .Config.Volumes}}{{$k}}{{end}}' "$IMAGE")" "/data"
check "keeps its HEALTHCHECK" equals "$(podman image inspect --format '{{index .Config.Healthcheck.Test 1}}' "$IMAGE")" "qs-healthcheck"
check "every shared library resolves" equals "$(run "$IMAGE" sh -c 'ldd /usr/local/bin/* | grep -c "not found" || true')" "0"
helps() { run "$IMAGE" "$1" --help >/dev/null; }
for exe in "${EXECUTABLES[@]}"; do
  check "$exe --help runs in the image" helps "$exe"
done
check "the health check fails when nothing answers" equals "$(run "$IMAGE" sh -c 'qs-healthcheck 127.0.0.1:1 2>/dev/null && echo passed || echo failed')" "failed"
check "the root filesystem is read-only" equals "$(run "$IMAGE" sh -c 'touch /usr/local/bin/x 2>/dev/null && echo writable || echo read-only')" "read-only"

# N distinct ports below the kernel's ephemeral range, free now: make test runs this beside
# the XCTest suites, whose listeners (port 0) and connections take ports from that range, so
# a port chosen there could be taken again before its container binds it. From 20000 up:
# the tests' etcd members take theirs from 10000–19999 (Sources/QSTesting/EtcdCluster.swift).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
# A machine whose ephemeral range starts below 22000 has no such ports: the kernel's then.
candidates = random.sample(range(20000, low), 2000) if low >= 22000 else [0] * 2000
ports = []
for port in candidates:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        if s.getsockname()[1] not in ports:
            ports.append(s.getsockname()[1])
    except OSError:
        pass
    finally:
        s.close()
    if len(ports) == int(sys.argv[1]):
        break
else:
    raise SystemExit("not enough free ports below the ephemeral range")
print(" ".join(map(str, ports)))
PY
}
PORTS=$(free_ports 10) || fail "choosing ports"
read -r ROOT_PORT ROOT_ADMIN BRIDGE_ADMIN KT_PORT LIVE_ADMIN ROOT2_PORT ROOT2_ADMIN QSBRIDGE_ADMIN REST_PORT REST_ADMIN <<<"$PORTS"
head -c 24 /dev/urandom | base64 >"$WORK/token"
chown 10001:10001 "$WORK/token"; chmod 0400 "$WORK/token"
TOKEN=(-v "$WORK/token:/run/secrets/qs-write-token:ro" -e QS_WRITE_TOKEN_FILE=/run/secrets/qs-write-token)

# The root's expiry purge is off: the checks compare the store with the capture at its
# recorded instant, and the purge would (rightly) delete records expired since then.
start_root() {
  podman run -d --name "$TAG-root" "${PODMAN_OPTS[@]}" --read-only --network host \
    -v "$TAG-root:/data" "${TOKEN[@]}" -e QS_EXPIRY_PURGE_BATCH=0 \
    -e QS_LISTEN="127.0.0.1:$ROOT_PORT" -e QS_ADMIN="127.0.0.1:$ROOT_ADMIN" \
    "$IMAGE" qsnode >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting the root"; }
}
wait_for() { # wait_for COMMAND…: until the command succeeds, for 30 s at most
  local deadline=$(( $(date +%s) + 30 ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}
healthy() { # healthy CONTAINER: the image's own health check passes within 30 s
  wait_for podman healthcheck run "$1" >/dev/null 2>&1 || { podman logs "$1" 2>&1 | tail -n 5 >&2; return 1; }
}
ready() { curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null; }

step "root: qsnode from the image on a volume"
podman volume create "$TAG-root" >/dev/null
start_root
check "root passes the image's health check (/healthz)" healthy "$TAG-root"
check "root answers /readyz" ready "$ROOT_ADMIN"
check "root runs as uid 10001" equals "$(podman exec "$TAG-root" id -u 2>/dev/null)" "10001"

step "bridge: qsktbridge replays Fixtures/kt/basic/stream.bin into the root"
AT=$(python3 -c "import json;print(json.load(open('Fixtures/kt/basic/meta.json'))['recorded_at'])")
check "the bridge replays the capture and exits 0" run -v "$PWD/Fixtures/kt/basic:/fixtures:ro" "${TOKEN[@]}" \
  -e QS_ROOT="127.0.0.1:$ROOT_PORT" -e QS_SOURCE=capture:/fixtures/stream.bin -e QS_DB_MAP=0=,1=aux/ \
  -e QS_ADMIN="127.0.0.1:$BRIDGE_ADMIN" -e QS_LOG_FORMAT=text "$IMAGE" qsktbridge --once
dump() { run "$IMAGE" qsctl --node "127.0.0.1:$ROOT_PORT" dump --output jsonl --at "$AT" >"$WORK/dump.jsonl"; }
compare() { python3 scripts/compare_dump.py "$WORK/dump.jsonl" Fixtures/kt/basic/final.jsonl --db-map 0=,1=aux/ --at "$AT" | tail -n 1; }
check "qsctl dump from the image" dump
check "the root holds the capture's 134 records at recorded_at" equals "$(compare)" "134 expected records, 134 dumped, 0 differences"

step "stop and restart the root on its volume"
podman stop -t 20 "$TAG-root" >/dev/null 2>&1
check "the root stops on SIGTERM with exit code 0" equals "$(podman inspect --format '{{.State.ExitCode}}' "$TAG-root")" "0"
podman rm -v "$TAG-root" >/dev/null 2>&1
start_root
check "the restarted root is healthy" healthy "$TAG-root"
check "qsctl dump after the restart" dump
check "the data survived the restart" equals "$(compare)" "134 expected records, 134 dumped, 0 differences"

step "live: fakekt and a long-running qsktbridge from the image"
podman run -d --name "$TAG-kt" "${PODMAN_OPTS[@]}" --read-only --network host -v "$TAG-kt:/data" \
  -e QS_FAKEKT_HOST=127.0.0.1 -e QS_FAKEKT_PORT="$KT_PORT" -e QS_FAKEKT_SID=1 -e QS_FAKEKT_ULOG=/data/ulog \
  "$IMAGE" fakekt >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting fakekt"; }
kt_up() { podman exec "$TAG-kt" qs-healthcheck "127.0.0.1:$KT_PORT" /rpc/void 2>/dev/null; }
check "fakekt answers /rpc/void (the image's health check on another path)" wait_for kt_up
podman run -d --name "$TAG-bridge" "${PODMAN_OPTS[@]}" --read-only --network host "${TOKEN[@]}" \
  -e QS_ROOT="127.0.0.1:$ROOT_PORT" -e QS_SOURCE="kt://127.0.0.1:$KT_PORT" -e QS_SID=65000 -e QS_DB_MAP=0=live/ \
  -e QS_ADMIN="127.0.0.1:$LIVE_ADMIN" \
  "$IMAGE" qsktbridge >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting the live bridge"; }
check "the live bridge passes the image's health check (/healthz)" healthy "$TAG-bridge"
curl -fsS "http://127.0.0.1:$KT_PORT/rpc/set?key=greeting&value=hello%20from%20kt" >/dev/null || fail "a set on fakekt"
greeting() { [ "$(run "$IMAGE" qsctl --node "127.0.0.1:$ROOT_PORT" get live/greeting)" = "hello from kt" ]; }
applied() { wait_for greeting || { podman logs "$TAG-bridge" 2>&1 | tail -n 5 >&2; return 1; }; }
check "a set on KT reaches the root through the bridge" applied
check "the live bridge is ready (/readyz: connected, caught up)" wait_for ready "$LIVE_ADMIN"
check "the live bridge answers /metrics" sh -c "curl -fsS http://127.0.0.1:$LIVE_ADMIN/metrics | grep -q '^qs_bridge_batches_applied_total'"
podman stop -t 20 "$TAG-bridge" >/dev/null 2>&1
check "the live bridge stops on SIGTERM with exit code 0" equals "$(podman inspect --format '{{.State.ExitCode}}' "$TAG-bridge")" "0"

step "qsrest from the image with deploy/qsrest-acl.toml (its example producer)"
podman run -d --name "$TAG-rest" "${PODMAN_OPTS[@]}" --read-only --network host "${TOKEN[@]}" \
  -v "$PWD/deploy/qsrest-acl.toml:/etc/qsrest/acl.toml:ro" -e QS_ACL=/etc/qsrest/acl.toml \
  -e QS_ROOT="127.0.0.1:$ROOT_PORT" -e QS_LISTEN="127.0.0.1:$REST_PORT" -e QS_ADMIN="127.0.0.1:$REST_ADMIN" \
  -e QS_SOURCE_ID=qsrest-ct -e QS_BATCH_INTERVAL=100ms \
  "$IMAGE" qsrest >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting qsrest"; }
check "qsrest passes the image's health check (/healthz)" healthy "$TAG-rest"
check "qsrest is ready (/readyz: writing to the root)" wait_for ready "$REST_ADMIN"
rest_set() { curl -fsS -u example:example-token "http://127.0.0.1:$REST_PORT/rpc/set?key=example%2Fct&value=from%20qsrest" >/dev/null; }
check "a producer's set through qsrest is acknowledged" rest_set
check "the acknowledged set is at the root" equals "$(run "$IMAGE" qsctl --node "127.0.0.1:$ROOT_PORT" get example/ct)" "from qsrest"
refused() { [ "$(curl -s -o /dev/null -w '%{http_code}' -u example:example-token "http://127.0.0.1:$REST_PORT/rpc/set?key=other%2Fx&value=1")" = 403 ]; }
check "a set outside the producer's keyspace is refused (403)" refused
podman stop -t 20 "$TAG-rest" >/dev/null 2>&1
check "qsrest stops on SIGTERM with exit code 0" equals "$(podman inspect --format '{{.State.ExitCode}}' "$TAG-rest")" "0"

step "qsqsbridge: the root's log into a second root, entry for entry"
podman run -d --name "$TAG-root2" "${PODMAN_OPTS[@]}" --read-only --network host -v "$TAG-root2:/data" "${TOKEN[@]}" \
  -e QS_LISTEN="127.0.0.1:$ROOT2_PORT" -e QS_ADMIN="127.0.0.1:$ROOT2_ADMIN" \
  "$IMAGE" qsnode >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "starting the second root"; }
check "the second root is healthy" healthy "$TAG-root2"
check "qsqsbridge --once --mode compatible copies the log and exits 0" run "${TOKEN[@]}" \
  -e QS_SOURCE="qs://127.0.0.1:$ROOT_PORT" -e QS_MODE=compatible -e QS_ROOT="127.0.0.1:$ROOT2_PORT" \
  -e QS_ADMIN="127.0.0.1:$QSBRIDGE_ADMIN" -e QS_LOG_FORMAT=text "$IMAGE" qsqsbridge --once
head_of() { run "$IMAGE" qsctl --node "127.0.0.1:$1" head; }
check "both roots have the same log head (index, hash, commit time)" equals "$(head_of "$ROOT2_PORT")" "$(head_of "$ROOT_PORT")"

echo "container-test: took $(( $(date +%s) - START ))s"
echo "container-test: $passed passed, 0 failed"
