#!/usr/bin/env bash
# Runs the XCTest suites once. A test that fails is a bug to fix, not a run to repeat:
# there is no rerun. A run that hangs is stopped after 15 minutes and counts as failed.
# The store's, the node's, replication's, the bridges' and the read servers' tests run a
# second time on RocksDB (QS_STORE_ENGINE, which the harness passes to the nodes it starts
# as QS_ENGINE and Store takes for a store it creates; docs/storage.md "Engines"); the
# first run is on LMDB, the default engine. Left out of the second run, to keep make test
# short: the bridges' initial-copy and wire-fault tests (minutes each; they are about KT's
# cursor and the network, and the other bridge tests write through both engines).
set -uo pipefail
SWIFT=${SWIFT:-swift}
timeout -k 10 900 "$SWIFT" test --skip-build --disable-swift-testing
first=$?
QS_STORE_ENGINE=rocksdb timeout -k 10 900 "$SWIFT" test --skip-build --disable-swift-testing --filter 'QSStoreTests|QSNodeTests|ReplicationTests|BridgeTests|QSReadsTests' \
    --skip 'BridgeTests.InitialCopyTests|BridgeTests.WireFaultTests'
second=$?
[ "$first" -eq 0 ] && [ "$second" -eq 0 ]
