#!/usr/bin/env bash
# Installs the Debian packages the tests (or bench) use, when they are missing.
# Usage: scripts/ensure-system-packages.sh <command>=<package> ...
# As root: apt-get installs what is missing. Otherwise: stop with a message naming them.
set -euo pipefail
missing=()
for spec in "$@"; do
  cmd=${spec%%=*}; pkg=${spec#*=}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
