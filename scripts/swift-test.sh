#!/usr/bin/env bash
# Runs the XCTest suites once. A test that fails is a bug to fix, not a run to repeat:
# there is no rerun. A part that hangs is stopped after 15 minutes (QS_TEST_TIMEOUT seconds)
# and counts as failed.
#
# Without arguments: every suite on LMDB, the default engine, then the store's, the node's,
# replication's, the bridges' and the read servers' tests a second time on RocksDB
# (QS_STORE_ENGINE, which the harness passes to the nodes it starts as QS_ENGINE and Store
# takes for a store it creates; docs/storage.md "Engines"). Left out of the second run, to
# keep make test short, the classes whose subject is not the store: the bridges'
# initial-copy, wire-fault, soak and health tests (KT's cursor, the network, kills, the
# bridge's signals; the other bridge tests write through both engines); the read ports'
# codecs, threads, timeouts and back pressure (which thread answers and when, not what the
# store returns: the conformance, in-place, scan and end-to-end read tests run on both);
# replication's access tokens; qsctl's exit codes, configuration mistakes and help. (The
# replica health and hostile peer tests stay: a RocksDB replica listens before its
# bootstrap, and snapshots and reads hold memory differently there.)
#
# The suites spend most of their time waiting (for processes to start, for deadlines, for
# etcd): one run after the other used about a quarter of a 2-core machine. So the parts run
# in two lanes at once (QS_TEST_JOBS, default 2; 1 runs them one after the other), each part
# a run of the test bundle itself (`swift test` holds the build directory's lock, so two of
# it cannot run at once). The parts wait in a queue, longest first, and a lane that finishes
# one takes the next, so neither lane idles while the other has two parts to go. Every line a
# part prints goes to the output as it comes, prefixed with the part's name; each part's
# whole output is also kept in .build/test-logs/<part>.log. The tests never share a port, a
# directory or a namespace (port 0, temporary directories, random /30s), so they run side by
# side as they would beside any other work.
#
# --also NAME COMMAND (repeatable, first): one more part, a shell command (make test's
# Python, replay and container tests), queued after the XCTest parts; its exit status is its
# result and its last line its summary.
#
# With other arguments: one run of `swift test` with them (make soak, scripts/tsan.sh).
set -uo pipefail
SWIFT=${SWIFT:-swift}
limit=${QS_TEST_TIMEOUT:-900}
case "$limit" in
    ''|*[!0-9]*|0) echo "QS_TEST_TIMEOUT must be a whole number of seconds above 0, not '$limit'" >&2; exit 2 ;;
esac
also_names=() also_commands=()
while [ "${1:-}" = "--also" ]; do
    if [ "$#" -lt 3 ] || [ -z "$2" ] || [ -z "$3" ]; then
        echo "--also needs a part's name and its command, e.g. --also interop 'make test-interop'" >&2
        exit 2
    fi
    case "$2" in
        lmdb-others|lmdb-bridges|rocksdb|lmdb-cluster)
            echo "--also $2: that name is one of the XCTest parts: name the part otherwise" >&2; exit 2 ;;
        *[!a-z0-9-]*)
            echo "--also '$2': a part's name is lower-case letters, digits and '-'" >&2; exit 2 ;;
    esac
    for known in "${also_names[@]}"; do
        [ "$known" = "$2" ] && { echo "--also $2 given twice: each part needs a name of its own" >&2; exit 2; }
    done
    also_names+=("$2"); also_commands+=("$3")
    shift 3
done
if [ "$#" -gt 0 ] && [ "${#also_names[@]}" -gt 0 ]; then
    echo "--also runs the parts of make test; it takes no swift test arguments after it ($*)" >&2
    exit 2
fi
if [ "$#" -gt 0 ]; then
    exec timeout -k 10 "$limit" "$SWIFT" test --skip-build --disable-swift-testing "$@"
fi
jobs=${QS_TEST_JOBS:-2}
case "$jobs" in
    1|2) ;;
    *) echo "QS_TEST_JOBS must be 1 or 2 (lanes of test parts at once), not '$jobs'" >&2; exit 2 ;;
esac

bin=$("$SWIFT" build --show-bin-path) || exit 1
bundle=$(ls -d "$bin"/*PackageTests.xctest 2>/dev/null | head -1)
if [ -z "$bundle" ]; then
    echo "no test bundle in $bin: build the tests first (swift build --build-tests)" >&2
    exit 1
fi
logs=.build/test-logs
mkdir -p "$logs"

# Each test's specifier is Module.Class/method; the parts are chosen by module and class.
classes=$("$bundle" --list-tests | grep -E '^[A-Za-z0-9_]+\.[A-Za-z0-9_]+/' | cut -d/ -f1 | sort -u)
if [ -z "$classes" ]; then
    echo "$bundle listed no tests" >&2
    exit 1
fi
pick() { grep -E "$1" <<<"$classes" | grep -vE "${2:-^$}" | paste -sd, -; }
lmdb_bridges=$(pick '^(BridgeTests|QSRestTests)\.')
lmdb_others=$(pick '.' '^(BridgeTests|QSRestTests|ClusterTests)\.')
lmdb_cluster=$(pick '^ClusterTests\.')
rocksdb=$(pick '^(QSStoreTests|QSNodeTests|ReplicationTests|BridgeTests|QSReadsTests)\.' \
    '^(BridgeTests\.(InitialCopyTests|WireFaultTests|SoakTests|BridgeHealthTests)|QSReadsTests\.(PipelinedBackPressureTests|MemcachedCodecTests|KTBinaryReadDecoderTests|KTDatabaseMapTests|ListenerDrainTests|MemcachedTimeoutTests|KTThreadsTests|MemcachedThreadsTests|ScanGateTests)|QSNodeTests\.(QsctlTests|RateLimitedLogTests|RootWordTests|ApplyLagTests|CheckedWritesTests)|ReplicationTests\.AccessTokenTests)$')

# part NAME ENGINE SPECIFIERS: one run of the bundle; its status in $logs/NAME.status. ENGINE
# empty leaves QS_STORE_ENGINE as it is (unset: LMDB, and the mixed-engine tests run).
part() {
    local name=$1 engine=$2 specs=$3 start=$SECONDS rc
    local vars=()
    [ -n "$engine" ] && vars=("QS_STORE_ENGINE=$engine")
    if [ -z "$specs" ]; then
        # The bundle given no specifier would run every test: a part that selects none is a
        # mistake in the selection above (a module renamed), not a pass.
        echo "[$name] selects no test class: fix the part's selection in scripts/swift-test.sh"
        echo "1 0" > "$logs/$name.status"
        return
    fi
    echo "[$name] started"
    env "${vars[@]}" timeout -k 10 "$limit" "$bundle" "$specs" 2>&1 \
        | tee "$logs/$name.log" | sed -u "s/^/[$name] /"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "[$name] stopped after $limit s (QS_TEST_TIMEOUT): a test hung; its last 'started' line above names it"
    echo "[$name] exit $rc after $((SECONDS - start)) s"
    echo "$rc $((SECONDS - start))" > "$logs/$name.status"
}

# command_part NAME COMMAND: an --also part.
command_part() {
    local name=$1 command=$2 start=$SECONDS rc
    echo "[$name] started: $command"
    timeout -k 10 "$limit" bash -c "$command" < /dev/null 2>&1 | tee "$logs/$name.log" | sed -u "s/^/[$name] /"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "[$name] stopped after $limit s (QS_TEST_TIMEOUT)"
    echo "[$name] exit $rc after $((SECONDS - start)) s"
    echo "$rc $((SECONDS - start))" > "$logs/$name.status"
}

# The queue, longest part first (as measured on a 2-core machine: lmdb-others ~400 s,
# lmdb-bridges ~375, rocksdb ~260, lmdb-cluster ~210, then the --also parts). A lane takes a
# part by making its claim directory (mkdir is atomic), so each part runs once.
names=(lmdb-others lmdb-bridges rocksdb lmdb-cluster "${also_names[@]}")
run_part() {
    case "$1" in
        lmdb-others) part lmdb-others "" "$lmdb_others" ;;
        lmdb-bridges) part lmdb-bridges "" "$lmdb_bridges" ;;
        rocksdb) part rocksdb rocksdb "$rocksdb" ;;
        lmdb-cluster) part lmdb-cluster "" "$lmdb_cluster" ;;
        *)
            local i
            for i in "${!also_names[@]}"; do
                [ "${also_names[$i]}" = "$1" ] && command_part "$1" "${also_commands[$i]}"
            done
            ;;
    esac
}
rm -rf "$logs"/*.status "$logs"/claims
mkdir -p "$logs/claims"
lane() {
    local name
    for name in "${names[@]}"; do
        mkdir "$logs/claims/$name" 2>/dev/null && run_part "$name"
    done
}
if [ "$jobs" -eq 1 ]; then
    lane
else
    lane & first=$!
    lane & second=$!
    wait "$first" "$second"
fi

failed=0
echo "swift-test.sh: the parts, their exit status and time:"
for name in "${names[@]}"; do
    read -r rc secs < "$logs/$name.status" 2>/dev/null || { rc=missing; secs=?; }
    summary=$(grep -E "^[[:space:]]+Executed [0-9]+ tests?," "$logs/$name.log" 2>/dev/null | tail -1 | sed 's/^[[:space:]]*//')
    [ -z "$summary" ] && summary=$(grep -v '^[[:space:]]*$' "$logs/$name.log" 2>/dev/null | tail -1 | cut -c1-200)
    echo "  $name: exit $rc, $secs s: ${summary:-no summary (see $logs/$name.log)}"
    [ "$rc" = 0 ] || failed=1
done
# The failed tests and the lines that say why, so the end of the output is enough to start
# from (a part's whole log is in $logs/<part>.log).
if [ "$failed" -ne 0 ]; then
    echo "swift-test.sh: the failed tests (part) and their failure lines:"
    for name in "${names[@]}"; do
        read -r rc _ < "$logs/$name.status" 2>/dev/null || rc=missing
        [ "$rc" = 0 ] && continue
        sed -nE "s/^Test Case '([^']+)' failed \(([0-9.]+) seconds\)/\1 after \2 s ($name)/p" "$logs/$name.log" 2>/dev/null
        grep -E ": error: " "$logs/$name.log" 2>/dev/null | head -20 | cut -c1-400 | sed "s/^/    [$name] /"
        # An --also part's output has no XCTest lines: its last lines say what failed.
        grep -qE "^Test Suite " "$logs/$name.log" 2>/dev/null \
            || { echo "$name: its last lines:"; tail -n 15 "$logs/$name.log" 2>/dev/null | cut -c1-400 | sed "s/^/    [$name] /"; }
    done | sed 's/^/  /'
fi
# The slowest tests, to keep an eye on make test's time (CI's budget is 30 minutes).
echo "swift-test.sh: the ten slowest tests (seconds, part):"
for name in lmdb-bridges lmdb-others lmdb-cluster rocksdb; do
    sed -nE "s/^Test Case '([^']+)' passed \(([0-9.]+) seconds\)/\2 \1 ($name)/p" "$logs/$name.log" 2>/dev/null
done | sort -rn | head -10 | sed 's/^/  /'
exit "$failed"
