#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the deletions page's browser test, installing
# Debian's chromium package with apt-get when it is missing. An installed browser is kept, so a
# second call costs nothing:
#
#   LETHE_CHROMIUM=$(tools/chromium.sh) go test ./proxy -run TestPageInBrowser
#
# apt-get's own output goes to stderr; stdout holds the path only.
set -euo pipefail

if [[ -n "${LETHE_CHROMIUM:-}" && -x "${LETHE_CHROMIUM}" ]]; then
  echo "$LETHE_CHROMIUM"
  exit 0
fi
for path in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [[ -x "$path" ]]; then
    echo "$path"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null; then
  echo "tools/chromium.sh: no chromium at /usr/bin/chromium and no apt-get to install it" >&2
  exit 1
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  sudo=(sudo -n)
fi
# Two test runs may ask at once; apt holds its own lock, but the update and the install must not
# interleave with another caller's, so one caller installs while the other waits.
lock="${TMPDIR:-/tmp}/lethe-chromium.lock"
(
  flock -w 900 9 || { echo "tools/chromium.sh: waited too long for $lock" >&2; exit 1; }
  if [[ ! -x /usr/bin/chromium ]]; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
  fi
) 9>"$lock"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "tools/chromium.sh: apt-get finished but /usr/bin/chromium is missing" >&2
  exit 1
fi
echo /usr/bin/chromium
