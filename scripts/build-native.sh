#!/usr/bin/env bash
# Compiles the data path (native-modules.txt) with mypyc, in place: see setup.py.
# Usage: scripts/build-native.sh <venv python>
# Needs a C compiler and the Python headers; as root, apt-get installs gcc when it is missing.
# Without them the sidecar still works, as pure Python (slower): unless SIDECAR_REQUIRE_ALL=1,
# that is a note, not a failure.
set -euo pipefail
py=$1
cd "$(dirname "$0")/.."
if [ "${SIDECAR_PURE_PYTHON:-}" = 1 ]; then
  echo "SIDECAR_PURE_PYTHON=1: not compiling the data path" >&2
  exit 0
fi
if ! command -v "${CC:-cc}" >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  scripts/ensure-system-packages.sh gcc=gcc
fi
include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ "$(id -u)" -eq 0 ] && [ ! -f "$include/Python.h" ] && command -v apt-get >/dev/null; then
  # Debian's own python3 keeps its headers in a separate package.
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends python3-dev >/dev/null || true
fi
if ! command -v "${CC:-cc}" >/dev/null 2>&1 || [ ! -f "$include/Python.h" ]; then
  msg="no C compiler or no Python headers ($include/Python.h): the data path runs as pure Python (slower)"
  if [ "${SIDECAR_REQUIRE_ALL:-}" = 1 ]; then
    echo "error: $msg" >&2
    exit 1
  fi
  echo "note: $msg" >&2
  exit 0
fi
echo "compiling the data path with mypyc (about a minute)..." >&2
# Remove the old build first: a module dropped from the list must not linger as a .so.
find sidecar -name '*.so' -delete
SIDECAR_MYPYC=1 "$py" setup.py -q build_ext --inplace >build-native.log 2>&1 || {
  tail -30 build-native.log >&2
  find sidecar -name '*.so' -delete
  if [ "${SIDECAR_REQUIRE_ALL:-}" = 1 ]; then
    echo "error: the mypyc build failed (log: build-native.log)" >&2
    exit 1
  fi
  echo "warning: the mypyc build failed (log: build-native.log); the data path runs as pure Python" >&2
}
# build_ext copies unchanged extensions from build/ with their old times; what counts for the
# staleness check in sidecar/native.py is that this build matches the sources as of now.
find sidecar -name '*.so' -exec touch {} +
