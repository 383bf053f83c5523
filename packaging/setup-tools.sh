#!/bin/sh
# setup-tools.sh [deb|rpm|test]...: what `make deb`, `make rpm` and
# `make package-test` need, installed only when missing: cargo-deb and
# cargo-generate-rpm from crates.io, and from apt dpkg-dev (cargo-deb's
# dependency scan), lintian, rpm, debootstrap, man-db.
# The two cargo tools are built with --debug: about 5 minutes on 2 cores
# instead of about 10 for release builds, and they still package in seconds
# (measured: .deb 7 s, .rpm 18 s).
set -eu
CARGO=${CARGO:-cargo}
need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for what in "$@"; do
	case $what in
	deb)
		command -v cargo-deb >/dev/null 2>&1 || $CARGO install cargo-deb --locked --debug
		have_pkg dpkg-dev || need="$need dpkg-dev"
		;;
	rpm)
		command -v cargo-generate-rpm >/dev/null 2>&1 || $CARGO install cargo-generate-rpm --locked --debug
		;;
	test)
		for p in lintian rpm debootstrap man-db; do have_pkg $p || need="$need $p"; done
		;;
	esac
done
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup-tools: missing packages:$need; run as root or install them" >&2
		exit 1
	fi
	echo "setup-tools: installing$need"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
