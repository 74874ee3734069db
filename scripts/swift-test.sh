#!/usr/bin/env bash
# Runs the XCTest suites once. A test that fails is a bug to fix, not a run to repeat:
# there is no rerun. A run that hangs is stopped after 15 minutes and counts as failed.
set -uo pipefail
SWIFT=${SWIFT:-swift}
timeout -k 10 900 "$SWIFT" test --skip-build --disable-swift-testing
