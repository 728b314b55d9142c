# Sourced by the set-up scripts. apt_install WHO WHEN_MISSING PACKAGE...: installs the Debian packages with
# apt-get where this user can; elsewhere says what is missing and, when WHEN_MISSING is "fail", stops (else goes on).
apt_install() {
  local who=$1 when_missing=$2
  shift 2
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    if [ "$when_missing" = fail ]; then
      echo "$who: missing $*: install them (for example: sudo apt-get install $*) and run again" >&2
      exit 1
    fi
    echo "$who: missing $* and cannot apt-get them here; what needs them will skip" >&2
    return 0
  fi
  echo "$who: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
