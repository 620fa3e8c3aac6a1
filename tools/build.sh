#!/usr/bin/env bash
# Builds the pinned third-party binaries lethe's end-to-end tests run, from the Go module proxy,
# into a cache under $HOME/.cache/lethe/bin. Each binary's version is the one its module under
# tools/ pins; a binary already built for that version is kept.
#
#   tools/build.sh prometheus     prints the path of the prometheus binary
#   tools/build.sh promtool       prints the path of promtool (same module)
#   tools/build.sh thanos         prints the path of the thanos binary (its module asks for a newer
#                                 Go; GOTOOLCHAIN=auto fetches that toolchain from the module proxy)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${LETHE_CACHE:-$HOME/.cache/lethe}/bin"
mkdir -p "$cache"

name="${1:?usage: tools/build.sh prometheus|promtool|thanos}"
case "$name" in
prometheus)
  module=github.com/prometheus/prometheus
  pkg=$module/cmd/prometheus
  tags=remove_all_sd
  ;;
promtool)
  module=github.com/prometheus/prometheus
  pkg=$module/cmd/promtool
  tags=remove_all_sd
  dir_name=prometheus
  ;;
thanos)
  module=github.com/thanos-io/thanos
  pkg=$module/cmd/thanos
  # Thanos' own release build uses slicelabels: its store gateway casts label sets unsafely and
  # panics on the first query when built with the default (stringlabels).
  tags=slicelabels
  export GOTOOLCHAIN=auto
  ;;
*)
  echo "tools/build.sh: unknown tool $name" >&2
  exit 2
  ;;
esac

dir="$here/${dir_name:-$name}"
version="$(cd "$dir" && go list -m -f '{{.Version}}' "$module")"
out="$cache/$name-$version${tags:+-$tags}"
if [ ! -x "$out" ]; then
  echo "building $name $version (once; cached in $cache)" >&2
  (cd "$dir" && go build -tags "$tags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
fi
echo "$out"
