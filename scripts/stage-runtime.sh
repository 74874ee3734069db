#!/usr/bin/env bash
# Lays out what the container image's runtime stage copies: the executables, the health
# check, and the shared libraries the executables load that Debian does not ship (the
# Swift runtime, found with ldd). Used by the Dockerfile's build stage and, with binaries
# built on the host, by scripts/container-test.sh.
#
#   scripts/stage-runtime.sh BIN_DIR OUT_DIR EXECUTABLE…
#
# OUT_DIR/bin gets the executables and qs-healthcheck; OUT_DIR/lib the libraries of the
# Swift runtime (any path with /swift/: /usr/lib/swift/linux in the Swift image,
# /opt/swift/usr/lib/swift/linux on a host) and any that no Debian package holds;
# OUT_DIR/debian-packages the Debian packages holding the rest (liblmdb0, libcurl4, libc6,
# …), which the runtime stage installs. Needs ldd and dpkg (a Debian build stage or host).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 BIN_DIR OUT_DIR EXECUTABLE…" >&2; exit 2; }
BIN=$1; OUT=$2; shift 2
HERE=$(cd "$(dirname "$0")/.." && pwd)
command -v dpkg >/dev/null || { echo "stage-runtime: needs dpkg, to name the Debian packages of the libraries" >&2; exit 1; }
mkdir -p "$OUT/bin" "$OUT/lib"
packages=$(mktemp)
trap 'rm -f "$packages"' EXIT
for exe in "$@"; do
  [ -x "$BIN/$exe" ] || { echo "stage-runtime: $BIN/$exe is missing: build it first (swift build -c release)" >&2; exit 1; }
  cp "$BIN/$exe" "$OUT/bin/$exe"
  ldd "$BIN/$exe" | while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    [ "$path" != "not" ] || { echo "stage-runtime: $exe needs $name, which is not found" >&2; exit 1; }
    case "$path" in
      */swift/*) cp -L "$path" "$OUT/lib/$name"; continue ;;
    esac
    # The package holding the library (dpkg knows the file under its real, /usr path).
    if owner=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null); then
      echo "${owner%%:*}" >>"$packages"
    else
      cp -L "$path" "$OUT/lib/$name"
    fi
  done
done
sort -u "$packages" >"$OUT/debian-packages"
install -m 0755 "$HERE/deploy/image/qs-healthcheck" "$OUT/bin/qs-healthcheck"
echo "staged $# executables, $(ls "$OUT/lib" | wc -l) libraries, Debian packages: $(tr '\n' ' ' <"$OUT/debian-packages")"
