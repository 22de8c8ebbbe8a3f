#!/usr/bin/env bash
# Runs Docker Compose with whichever the machine has: the v2 plugin (`docker compose`) or the
# v1 standalone `docker-compose` (which `make test` installs from Debian). Arguments are passed
# through, e.g. scripts/compose.sh -f compose/docker-compose.yml up -d --build
# COMPOSE=<command> picks one explicitly.
set -euo pipefail
if [ -n "${COMPOSE:-}" ]; then
  # shellcheck disable=SC2086  # COMPOSE may be two words ("docker compose")
  exec ${COMPOSE} "$@"
fi
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
fi
if command -v docker-compose >/dev/null 2>&1; then
  exec docker-compose "$@"
fi
echo "neither 'docker compose' (Docker Compose v2) nor 'docker-compose' is installed" >&2
echo "install one, e.g. sudo apt-get install -y docker-compose" >&2
exit 127
