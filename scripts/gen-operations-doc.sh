#!/usr/bin/env bash
# Regenerates the tables of docs/operations.md from the executables' --help (every flag
# and its QS_* variable) and from the metrics declared in Sources/ (with docs/metrics.tsv
# giving each one's unit and meaning).
#
#   scripts/gen-operations-doc.sh [BIN_DIR]            rewrite the tables (default .build/debug)
#   scripts/gen-operations-doc.sh --check [BIN_DIR]    exit 1 if they are stale (make test)
set -euo pipefail
cd "$(dirname "$0")/.."
check=()
if [ "${1:-}" = "--check" ]; then check=(--check); shift; fi
BIN=${1:-.build/debug}
exec python3 scripts/operations_doc.py "$BIN" "${check[@]}"
