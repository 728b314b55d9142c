#!/usr/bin/env bash
# Runs pip and keeps its exit status, without the warning that pip prints here for every local index folder it skips.
set -uo pipefail
pip_bin=$1; shift
out=$(mktemp)
"$pip_bin" install --quiet --disable-pip-version-check "$@" >"$out" 2>&1
rc=$?
grep -v 'is ignored: it is neither a file nor a directory' "$out" || true
rm -f "$out"
exit $rc
