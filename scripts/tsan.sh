#!/usr/bin/env bash
# Runs the XCTest suites under ThreadSanitizer (docs/reliability.md).
#
#   scripts/tsan.sh [swift test arguments, e.g. --filter HostilePeerTests]
#
# Builds the package and its tests with --sanitize=thread in a scratch directory of its own
# (.build-tsan; the ordinary .build is left alone), then runs the suites from there: the test
# bundle and every daemon a test starts (the harness takes the executables beside the
# bundle) run instrumented. Each process writes its reports to .build-tsan/tsan/report.PID,
# so a race inside a qsnode is caught as well as one in the test process.
# Suppressions, each explained, are in scripts/tsan-suppressions.txt.
# Exits 1 when a test failed or any process reported; prints the start of each report.
set -uo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
SCRATCH=${QS_TSAN_SCRATCH:-.build-tsan}
REPORTS="$PWD/$SCRATCH/tsan"
start=$(date +%s)
"$SWIFT" build --build-tests --sanitize=thread --scratch-path "$SCRATCH" || exit 2
built=$(date +%s)
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
export TSAN_OPTIONS="log_path=$REPORTS/report halt_on_error=0 suppressions=$PWD/scripts/tsan-suppressions.txt ${TSAN_OPTIONS:-}"
# Tells the tests they run instrumented (Harness.sanitizer): a CPU bound that instrumented
# code cannot meet is widened under it, and says so when it fails.
export QS_TEST_SANITIZER=thread
# Instrumented code runs several times slower: the whole run gets an hour.
QS_TEST_TIMEOUT=${QS_TEST_TIMEOUT:-3600} SWIFT="$SWIFT" ./scripts/swift-test.sh --sanitize=thread --scratch-path "$SCRATCH" "$@"
tests=$?
ran=$(date +%s)
reports=("$REPORTS"/report.*)
[ -e "${reports[0]}" ] || reports=()
echo "tsan: build $((built - start)) s, tests $((ran - built)) s, test status $tests, reports ${#reports[@]} (in $REPORTS)"
for r in "${reports[@]}"; do
    echo "== $r"
    grep -E "WARNING: ThreadSanitizer|^    #[0-9]+ " "$r" | head -12
done
[ "$tests" -eq 0 ] && [ ${#reports[@]} -eq 0 ]
