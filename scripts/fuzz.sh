#!/usr/bin/env bash
# Fuzzes every decoder of outside bytes (Sources/qsfuzz) with libFuzzer and AddressSanitizer.
#
#   scripts/fuzz.sh [--runs N | --seconds S] [TARGET...]
#
# Builds the seeds from Fixtures/ with the ordinary debug build of qsfuzz, builds the
# fuzzing binary in its own scratch directory (.build-fuzz: -sanitize=fuzzer,address
# -DQS_FUZZ), then runs each target (all of them by default) for N executions or S
# seconds over its corpus (.fuzz/corpus/TARGET, kept between runs, seeded each time).
# Crashes are saved under .fuzz/crashes/TARGET/ (a run counts those it saved); replay one with
# `.build/debug/qsfuzz run TARGET FILE`. Prints one line per target: executions, coverage
# (edges, features), corpus size, crashes; exits 1 when a target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
SCRATCH=${QS_FUZZ_SCRATCH:-.build-fuzz}
OUT=${QS_FUZZ_DIR:-.fuzz}
limit=(-runs=2000)
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) limit=(-runs="$2"); shift 2 ;;
        --seconds) limit=(-max_total_time="$2"); shift 2 ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done

start=$(date +%s)
"$SWIFT" build --product qsfuzz >/dev/null
rm -rf "$OUT/seeds"
.build/debug/qsfuzz seeds Fixtures "$OUT/seeds" >/dev/null
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(.build/debug/qsfuzz list)
"$SWIFT" build --scratch-path "$SCRATCH" --product qsfuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DQS_FUZZ \
    2>&1 | grep -v "Cannot export local symbol" >&2 || true
bin="$SCRATCH/debug/qsfuzz"
[ -x "$bin" ] || { echo "the fuzzing build of qsfuzz failed (see above)"; exit 2; }
built=$(date +%s)
echo "fuzz build: $((built - start)) s; limit ${limit[*]}"
printf '%-20s %12s %8s %8s %8s %8s\n' target executions cov ft corpus crashes
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$OUT/corpus/$t" "$OUT/crashes/$t" "$OUT/logs"
    log="$OUT/logs/$t.log"
    touch "$OUT/logs/$t.start"
    set +e
    QS_FUZZ_TARGET="$t" ASAN_OPTIONS=detect_leaks=0 "$bin" "$OUT/corpus/$t" "$OUT/seeds/$t" "${limit[@]}" \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$OUT/crashes/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "$OUT/crashes/$t" -type f -newer "$OUT/logs/$t.start" | wc -l)
    printf '%-20s %12s %8s %8s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes"
    if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "  $t failed (exit $rc): see $log; replay with .build/debug/qsfuzz run $t $OUT/crashes/$t/*" >&2
        grep -m3 -E "Fatal error|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" | sed 's/^/  /' >&2 || true
    fi
done
echo "fuzzing: $(( $(date +%s) - built )) s for ${#targets[@]} targets"
exit $failed
