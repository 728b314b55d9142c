#!/usr/bin/env bash
# Installs the Debian packages the test-suite uses when they are missing: redis-server, chromium, chromedriver,
# and docker-compose (to validate docker-compose.yml when no `docker compose` plugin is there; no engine needed).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: redis-server, chromium, chromedriver and compose present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${need[*]} and cannot apt-get them here; tests that need them will skip" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
