#!/usr/bin/env bash
# Lays out what the container image's runtime stage copies: the executables, the health
# check, and the shared libraries the executables load that Debian does not ship (the
# Swift runtime, found with ldd). Used by the Dockerfile's build stage and, with binaries
# built on the host, by scripts/container-test.sh.
#
#   scripts/stage-runtime.sh BIN_DIR OUT_DIR EXECUTABLE…
#
# OUT_DIR/bin gets the executables and qs-healthcheck, OUT_DIR/lib the libraries of the
# Swift runtime (any path with /swift/: /usr/lib/swift/linux in the Swift image,
# /opt/swift/usr/lib/swift/linux on a host) and any found outside the system directories.
# The rest come from Debian: the runtime stage installs liblmdb0 and has libc, libstdc++
# and libgcc already.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 BIN_DIR OUT_DIR EXECUTABLE…" >&2; exit 2; }
BIN=$1; OUT=$2; shift 2
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/bin" "$OUT/lib"
for exe in "$@"; do
  [ -x "$BIN/$exe" ] || { echo "stage-runtime: $BIN/$exe is missing: build it first (swift build -c release)" >&2; exit 1; }
  cp "$BIN/$exe" "$OUT/bin/$exe"
  ldd "$BIN/$exe" | while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    case "$path" in
      "not") echo "stage-runtime: $exe needs $name, which is not found" >&2; exit 1 ;;
      */swift/*) cp -L "$path" "$OUT/lib/$name" ;;
      /lib/*|/usr/lib/*|/lib64/*) ;;
      *) cp -L "$path" "$OUT/lib/$name" ;;
    esac
  done
done
install -m 0755 "$HERE/deploy/image/qs-healthcheck" "$OUT/bin/qs-healthcheck"
echo "staged $# executables and $(ls "$OUT/lib" | wc -l) libraries in $OUT"
