#!/usr/bin/env bash
# Runs the XCTest suites once. A test that fails is a bug to fix, not a run to repeat:
# there is no rerun. A run that hangs is stopped after 15 minutes (QS_TEST_TIMEOUT seconds)
# and counts as failed. Arguments go to `swift test` (scripts/tsan.sh passes its build).
set -uo pipefail
SWIFT=${SWIFT:-swift}
timeout -k 10 "${QS_TEST_TIMEOUT:-900}" "$SWIFT" test --skip-build --disable-swift-testing "$@"
