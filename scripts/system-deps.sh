#!/usr/bin/env bash
# Installs the Debian packages the test-suite uses when they are missing: redis-server, chromium, chromedriver,
# and docker-compose (to validate docker-compose.yml when no `docker compose` plugin is there; no engine needed).
set -euo pipefail
source "$(dirname "$0")/apt.sh"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: redis-server, chromium, chromedriver and compose present"
  exit 0
fi
apt_install system-deps skip "${need[@]}"
