#!/usr/bin/env bash
# Install the system packages the build, the demo and the tests need.
# Idempotent: apt runs only when something is missing. Needs root for apt.
# (`make deny` installs cargo-deny itself, so `make demo` stays quick.)
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_pkg libpam0g-dev || need+=(libpam0g-dev)
have_cmd pamtester    || need+=(pamtester)
have_cmd sudo         || need+=(sudo)
have_cmd curl         || need+=(curl)
have_cmd setpriv      || need+=(util-linux)
have_cmd useradd      || need+=(passwd)
have_cmd unshare      || need+=(util-linux)
have_cmd gcc          || need+=(gcc)
have_cmd make         || need+=(make)
have_cmd tmux         || need+=(tmux)
have_cmd script       || need+=(bsdutils)
# perl with Time::HiRes: a kill loop in pam_process_state.
perl -MTime::HiRes -e 1 >/dev/null 2>&1 || need+=(perl)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages: ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

